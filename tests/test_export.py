"""`zj export --to openrlhf|verl OUT DEST` (zj_utils/export.py) on a fake run folder built here: a smoke world, a
tokenizer trained on it, a tiny random LlamaForCausalLM as the policy and a tiny LlamaForSequenceClassification as
the reward model, and a ppo/config.json with settings that differ from every default. CPU, seconds.

The engines are not installed (each pulls vLLM, Ray and DeepSpeed or FSDP stacks). What they would do with the
export is written here from their source, at the commits in tests/engine_flags.py:

- OpenRLHF 0.11.0, commit 3c3be6234e0cb353e76bb8019947db9dfe99fca7:
  openrlhf/datasets/utils.py `blending_datasets` reads a .jsonl with `datasets.load_dataset("json", data_files=...)`;
  openrlhf/datasets/prompts_dataset.py `preprocess_data` takes `data[input_key]`, a chat list, through
  `tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)` and `data.get("datasource")`;
  openrlhf/models/model.py `_get_reward_model`: the base model (`base_model_prefix`) + `nn.Linear(hidden, 1,
  bias=False)` named by `value_head_prefix` ("score"), the value at the last position whose attention mask is 1,
  and `(reward - config.mean) / config.std` when --reward.normalize_enable.
- verl 0.8.0.dev, commit b178a3cd56f58b2d502255daba591e92833930a7:
  verl/utils/dataset/rl_dataset.py `RLHFDataset` reads parquet with `datasets.load_dataset("parquet", ...)["train"]`,
  measures `tokenizer.apply_chat_template(doc[prompt_key], add_generation_prompt=True)`, returns `raw_prompt` and
  `extra_info["index"]`; verl/workers/fsdp_workers.py `RewardModelWorker` loads the reward model as
  `AutoModelForTokenClassification` (num_labels 1) and reads the logit at the last valid token.
- The launch scripts may name only flags in tests/engine_flags.py (OpenRLHF's argparse, verl's flattened config),
  and run under bash against stand-in entry points that parse exactly those flags.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine_flags import OPENRLHF_COMMIT, OPENRLHF_FLAGS, OPENRLHF_VERSION, VERL_COMMIT, VERL_KEYS, VERL_VERSION
from zj_utils.cli import main
from zj_utils.common import ZJError, write_json
from zj_utils.export import ENGINES, export_run

PPO = {"steps": 7, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 3, "learning_rate": 1.23e-05,
       "weight_decay": 0.01, "lora_r": 12, "lora_alpha": 24, "lora_dropout": 0.05, "lora_target_modules": "all-linear",
       "max_new_tokens": 40, "temperature": 0.8, "top_p": 0.95, "normalize_reward": True, "norm_samples": 64,
       "kl_coef": 0.07, "kl_estimator": "k1", "adaptive_kl": False, "target_kl": 6.0, "horizon": 0, "gamma": 0.99,
       "lam": 0.9, "cliprange": 0.15, "cliprange_value": 0.25, "vf_coef": 0.1, "max_grad_norm": 0.7,
       "whiten_advantages": True, "missing_eos_penalty": -1.0, "log_every": 1, "save_every": 5, "judge_every": 10,
       "judge_probe_prompts": 24}
GAIN, BIAS = 0.5, 1.25


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as `zj reproduce` leaves it, with tiny random models (what they say does not matter here)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from zj_utils.base_model import world_texts_for_tokenizer
    from zj_utils.presets import get_preset
    from zj_utils.tokenizer import train_tokenizer
    from zj_utils.world import build_world, write_world

    out = tmp_path_factory.mktemp("run")
    write_world(build_world(get_preset("smoke").world, 0), out / "world")
    texts = world_texts_for_tokenizer(out / "world")
    for f in sorted((out / "world").glob("test_*.jsonl")) + [out / "world" / "rank_prompts.jsonl"]:
        texts += [m["content"] for line in f.read_text(encoding="utf-8").splitlines()
                  for m in json.loads(line)["messages"]]
    tok = train_tokenizer(texts, 600)
    cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(out / "sft" / "merged")
    tok.save_pretrained(out / "sft" / "merged")
    rm = LlamaForSequenceClassification(LlamaConfig(**cfg, num_labels=1))  # pad_token_id left unset: export sets it
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)  # a head that separates answers, so equal scores mean the same computation
    rm.save_pretrained(out / "rm" / "merged")
    tok.save_pretrained(out / "rm" / "merged")
    write_json(out / "sft" / "config.json", {"stage": "sft", "preset": "smoke", "seed": 3})
    model = {"name_or_path": "tiny", "max_length": 160}
    write_json(out / "ppo" / "config.json", {"stage": "ppo", "preset": "smoke", "seed": 3, "ppo": PPO, "model": model})
    write_json(out / "ppo" / "metrics.json", {"reward_norm_gain": GAIN, "reward_norm_bias": BIAS})
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("export")
    return {e: (dest / e, export_run(e, run, dest / e)) for e in ENGINES}


def _conversations(run, n=10):
    convs = []
    for f in sorted((run / "world").glob("test_*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            convs.append(rec["messages"] + [{"role": "assistant", "content": rec.get("reference", "")}])
    assert len(convs) >= n
    return convs[:n]


def test_engines_are_the_versions_the_flags_were_read_from():
    assert (ENGINES["openrlhf"]["version"], ENGINES["openrlhf"]["commit"]) == (OPENRLHF_VERSION, OPENRLHF_COMMIT)
    assert (ENGINES["verl"]["version"], ENGINES["verl"]["commit"]) == (VERL_VERSION, VERL_COMMIT)


def test_the_reward_model_scores_ten_conversations_exactly_as_ours(run, exported):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from zj_utils.reward import reward_inputs, score_conversations

    convs = _conversations(run)
    ours_model = AutoModelForSequenceClassification.from_pretrained(run / "rm" / "merged", use_safetensors=True)
    ours_tok = AutoTokenizer.from_pretrained(run / "rm" / "merged")
    ours = score_conversations(ours_model, ours_tok, convs, batch_size=4)
    assert ours.std() > 0
    for engine, (dest, manifest) in exported.items():
        d = dest / "reward_model"
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["num_labels"] == 1 and cfg["pad_token_id"] == ours_tok.pad_token_id
        assert cfg["value_head_prefix"] == "score" and manifest["reward_model"]["head"] == "score.weight"
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForSequenceClassification.from_pretrained(d, use_safetensors=True)
        assert model.config.pad_token_id is not None
        assert torch.equal(score_conversations(model, tok, convs, batch_size=4), ours), engine
        # the engines' own reads of the same weights: OpenRLHF's (base model + `score` at the last unmasked
        # position, left padding as it batches; (r - mean) / std) and verl's (token classification, last token)
        enc = reward_inputs(tok, [c[:-1] for c in convs], [c[-1]["content"] for c in convs])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        lens = mask.sum(1)
        left_ids, left_mask = torch.full_like(ids, tok.pad_token_id), torch.zeros_like(mask)
        for i, n in enumerate(lens):
            left_ids[i, ids.shape[1] - n:], left_mask[i, ids.shape[1] - n:] = ids[i, :n], 1
        pos = (left_mask.cumsum(-1) - 1).masked_fill(left_mask == 0, 1)
        with torch.no_grad():
            hidden = model.model(left_ids, attention_mask=left_mask, position_ids=pos)["last_hidden_state"]
            eos = left_mask.shape[1] - 1 - left_mask.long().fliplr().argmax(dim=1, keepdim=True)
            r = model.score(hidden).squeeze(-1).gather(1, eos).squeeze(1)
        assert torch.allclose(r, ours, atol=1e-5), engine
        if engine == "openrlhf":
            assert (cfg["mean"], cfg["std"]) == pytest.approx((-BIAS / GAIN, 1 / GAIN))
            assert torch.allclose((r - cfg["mean"]) / cfg["std"], GAIN * ours + BIAS, atol=1e-5)
        else:
            assert "mean" not in cfg  # verl has no normalisation to read it
            tc = AutoModelForTokenClassification.from_pretrained(d, num_labels=1, use_safetensors=True)
            with torch.no_grad():
                logits = tc(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
            assert torch.allclose(logits[torch.arange(len(convs)), lens - 1], ours, atol=1e-5)


def test_the_policy_is_copied_with_its_chat_template(run, exported):
    from transformers import AutoTokenizer

    src = run / "sft" / "merged"
    for engine, (dest, manifest) in exported.items():
        assert manifest["policy"]["from"] == "sft/merged"  # no OUT/ppo/merged in this run
        assert (dest / "policy" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
        template = (src / "chat_template.jinja").read_text(encoding="utf-8")
        assert json.loads((dest / "policy" / "tokenizer_config.json").read_text())["chat_template"] == template
        tok = AutoTokenizer.from_pretrained(dest / "policy")
        msgs = [{"role": "user", "content": "你好"}]
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith("<bot>:")


def test_openrlhf_reads_the_prompts_as_its_prompt_dataset_does(run, exported):
    import datasets
    from transformers import AutoTokenizer

    dest, manifest = exported["openrlhf"]
    tok = AutoTokenizer.from_pretrained(dest / "policy")
    world = [json.loads(line) for line in (run / "world" / "rank_prompts.jsonl").read_text().splitlines()]
    data = datasets.load_dataset("json", data_files=str(dest / "data" / "train.jsonl"))["train"]  # blending_datasets
    assert len(data) == len(world) == manifest["data"]["train"]["records"]
    for row, rec in zip(data, world):
        chat = row["messages"]  # preprocess_data(data, input_key="messages", apply_chat_template=...)
        assert isinstance(chat, list) and chat == rec["messages"]
        prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert prompt.endswith("<bot>:") and rec["messages"][-1]["content"] in prompt
        assert row["datasource"] == "zhongjing/rank_prompts"
    test = datasets.load_dataset("json", data_files=str(dest / "data" / "test.jsonl"))["train"]
    n_test = sum(len(f.read_text().splitlines()) for f in (run / "world").glob("test_*.jsonl"))
    assert len(test) == n_test and {r["datasource"] for r in test} == {
        "zhongjing/test_multiturn", "zhongjing/test_safety", "zhongjing/test_single"}


def test_verl_reads_the_prompts_as_rlhf_dataset_does(run, exported):
    import datasets
    from transformers import AutoTokenizer

    dest, manifest = exported["verl"]
    tok = AutoTokenizer.from_pretrained(dest / "policy")
    for split, n in (("train", manifest["data"]["train"]["records"]), ("test", manifest["data"]["test"]["records"])):
        df = datasets.load_dataset("parquet", data_files=str(dest / "data" / f"{split}.parquet"))["train"]
        assert len(df) == n > 0
        assert set(df.column_names) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
        for i, row in enumerate(df):
            assert row["reward_model"] == {"style": "model", "ground_truth": ""}
            assert row["ability"] == "medical_dialogue" and row["data_source"].startswith("zhongjing/")
            assert row["extra_info"]["split"] == split and row["extra_info"]["index"] == i
            assert row["prompt"][-1]["role"] == "user"
            # doc2len in maybe_filter_out_long_prompts, and raw_prompt as __getitem__ returns it
            assert len(tok.apply_chat_template(row["prompt"], add_generation_prompt=True)) > 0
    first = json.loads((run / "world" / "rank_prompts.jsonl").read_text().splitlines()[0])
    df = datasets.load_dataset("parquet", data_files=str(dest / "data" / "train.parquet"))["train"]
    assert df[0]["prompt"] == first["messages"] and df[0]["extra_info"]["id"] == first["id"]


def _command(script: str, engine: str) -> dict[str, list[str]]:
    """The flags the script's engine command passes: flag -> values (a switch: [])."""
    lines = script.split(ENGINES[engine]["entry"] + " \\\n", 1)[1].splitlines()
    args = {}
    for line in lines:
        line = line.strip().rstrip("\\").strip()
        if line == '"$@"':
            break
        if engine == "openrlhf":
            flag, *value = line.split(" ", 1)
            args[flag] = value
        else:
            key, value = line.split("=", 1)
            args[key] = [value]
    return args


def test_the_launch_scripts_are_bash_and_name_only_the_engines_flags(exported):
    for engine, (dest, manifest) in exported.items():
        script = dest / manifest["launch"]
        assert os.access(script, os.X_OK)
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text()
        assert f"{ENGINES[engine]['name']} {ENGINES[engine]['version']}" in text and ENGINES[engine]["commit"] in text
        args = _command(text, engine)
        known = OPENRLHF_FLAGS if engine == "openrlhf" else VERL_KEYS
        unknown = sorted(set(args) - known)
        assert not unknown, f"{engine}: not in its flags at {ENGINES[engine]['commit']}: {unknown}"
        assert len(args) > 40


def test_our_ppo_settings_reach_the_engines_flags(exported):
    o = _command((exported["openrlhf"][0] / "train_openrlhf.sh").read_text(), "openrlhf")
    want = {"--actor.adam.lr": "1.23e-05", "--critic.adam.lr": "1.23e-05", "--algo.kl.init_coef": "0.07",
            "--actor.eps_clip": "0.15", "--critic.value_clip": "0.25", "--algo.advantage.gamma": "0.99",
            "--algo.advantage.lambd": "0.9", "--rollout.batch_size": "8", "--train.batch_size": "4",
            "--train.max_epochs": "3", "--rollout.max_new_tokens": "40", "--rollout.temperature": "0.8",
            "--rollout.top_p": "0.95", "--actor.max_norm": "0.7", "--ds.lora.rank": "12", "--ds.lora.alpha": "24",
            "--algo.kl.estimator": "k1", "--train.seed": "3", "--data.max_len": "160", "--data.input_key": "messages",
            "--actor.adam.weight_decay": "0.01", "--ckpt.save_steps": "5"}
    assert {k: o[k] for k in want} == {k: [v] for k, v in want.items()}
    assert o["--reward.normalize_enable"] == [] and o["--data.apply_chat_template"] == []
    assert "--ds.lora.target_modules" not in o  # "all-linear" is its default; as a flag it would be a 1-item list
    # 7 rollouts of 8 prompts = 56 prompts, over the smoke world's 12 ranking prompts: 5 passes (and with more
    # prompts than that, one pass over the first 56: exactly our 7 rollouts)
    assert exported["openrlhf"][1]["data"]["train"]["records"] == 12
    assert o["--train.num_episodes"] == ["5"] and "--data.max_samples" not in o
    v = _command((exported["verl"][0] / "train_verl.sh").read_text(), "verl")
    want = {"actor_rollout_ref.actor.optim.lr": "1.23e-05", "critic.optim.lr": "1.23e-05",
            "algorithm.kl_ctrl.kl_coef": "0.07", "algorithm.kl_penalty": "kl", "algorithm.kl_ctrl.type": "fixed",
            "algorithm.use_kl_in_reward": "true", "actor_rollout_ref.actor.clip_ratio": "0.15",
            "actor_rollout_ref.actor.clip_ratio_low": "0.15", "actor_rollout_ref.actor.clip_ratio_high": "0.15",
            "critic.cliprange_value": "0.25", "algorithm.gamma": "0.99", "algorithm.lam": "0.9",
            "data.train_batch_size": "8", "actor_rollout_ref.actor.ppo_mini_batch_size": "4",
            "actor_rollout_ref.actor.ppo_epochs": "3", "trainer.total_training_steps": "7",
            "data.max_response_length": "40", "data.max_prompt_length": "120",
            "actor_rollout_ref.rollout.temperature": "0.8", "actor_rollout_ref.rollout.top_p": "0.95",
            "actor_rollout_ref.actor.grad_clip": "0.7", "actor_rollout_ref.model.lora_rank": "12",
            "actor_rollout_ref.model.lora_alpha": "24", "data.seed": "3", "trainer.save_freq": "5",
            "data.train_files": '"$HERE/data/train.parquet"', "data.val_files": '"$HERE/data/test.parquet"'}
    assert {k: v[k] for k in want} == {k: [x] for k, x in want.items()}
    for engine, (_, manifest) in exported.items():
        assert manifest["settings_from"] == "OUT/ppo/config.json"
        not_mapped = {s["ours"] for s in manifest["not_mapped"]}
        assert "ppo.vf_coef" in not_mapped and "ppo.missing_eos_penalty" in not_mapped
        assert all(s["why"] for s in manifest["not_mapped"])
    assert "ppo.normalize_reward" in {s["ours"] for s in exported["verl"][1]["not_mapped"]}


STANDIN = {
    "openrlhf": ("openrlhf/cli/train_ppo_ray.py", """
        import argparse, json, os, sys
        sys.path.insert(0, os.environ["FLAGS_DIR"])
        from engine_flags import OPENRLHF_FLAGS
        p = argparse.ArgumentParser(allow_abbrev=False)
        for f in sorted(OPENRLHF_FLAGS):
            p.add_argument(f, nargs="*")
        print(json.dumps({"--" + k: v for k, v in vars(p.parse_args()).items() if v is not None}))
    """),
    "verl": ("verl/trainer/main_ppo.py", """
        import json, os, sys
        sys.path.insert(0, os.environ["FLAGS_DIR"])
        from engine_flags import VERL_KEYS
        args = dict(a.split("=", 1) for a in sys.argv[1:])
        bad = sorted(set(args) - VERL_KEYS)
        if bad:
            sys.exit(f"Could not override {bad}: not in the config")
        print(json.dumps(args))
    """),
}


def _standin(tmp_path, engine: str) -> dict:
    """An importable stand-in for the engine: its version in package metadata, and an entry point that parses
    exactly the flags of the engine version we read (argparse refuses any other) and prints what it got."""
    root = tmp_path / f"standin-{engine}"
    path, code = STANDIN[engine]
    (root / path).parent.mkdir(parents=True)
    for parent in (root / path).parents:
        if parent == root:
            break
        (parent / "__init__.py").touch()
    (root / path).write_text(textwrap.dedent(code))
    dist = root / f"{engine}-{ENGINES[engine]['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {engine}\nVersion: {ENGINES[engine]['version']}\n")
    env = dict(os.environ, PYTHONPATH=str(root), FLAGS_DIR=str(Path(__file__).parent),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("NGPUS", None)
    return env


def test_the_launch_scripts_run_under_bash_against_the_engines_flags(exported, tmp_path):
    for engine, (dest, manifest) in exported.items():
        env = _standin(tmp_path, engine)
        script = str(dest / manifest["launch"])
        res = subprocess.run(["bash", script], env=dict(env, NGPUS="4", VLLM_TP="2"), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        if engine == "openrlhf":
            assert got["--actor.model_name_or_path"] == [str(dest / "policy")]
            assert got["--vllm.num_engines"] == ["2"] and got["--actor.num_gpus_per_node"] == ["4"]
            assert got["--actor.adam.lr"] == ["1.23e-05"]
        else:
            assert got["actor_rollout_ref.model.path"] == str(dest / "policy")
            assert got["trainer.n_gpus_per_node"] == "4" and got["trainer.logger"] == '["console"]'
        # our minibatch of 4 cannot be split over 3 GPUs: the script says so before the engine starts
        res = subprocess.run(["bash", script], env=dict(env, NGPUS="3"), capture_output=True, text=True)
        assert res.returncode == 2 and "multiples of NGPUS=3" in res.stderr and not res.stdout


def test_the_ppo_policy_is_preferred_and_the_manifest_says_so(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    shutil.copytree(run / "sft" / "merged", tmp_path / "run" / "ppo" / "merged")
    m = export_run("openrlhf", tmp_path / "run", tmp_path / "dest")
    assert m["policy"]["from"] == "ppo/merged" and "PPO ran" in m["policy"]["why"]
    # without ppo/config.json, the settings come from the preset the run was made with
    (tmp_path / "run" / "ppo" / "config.json").unlink()
    m = export_run("verl", tmp_path / "run", tmp_path / "dest2")
    assert m["settings_from"] == "preset smoke (no PPO run)" and m["seed"] == 3
    script = (tmp_path / "dest2" / "train_verl.sh").read_text()
    assert "trainer.total_training_steps=3 " in script  # smoke's ppo.steps


def test_export_errors_are_one_line(run, tmp_path, capsys, exported):
    dest = exported["verl"][0]
    assert main(["export", "--to", "verl", str(run), str(dest)]) == 2  # never over an earlier export
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not empty" in err and "--force" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--to", "openrlhf", str(empty), str(tmp_path / "d")]) == 2
    assert "Run `zj sft`" in capsys.readouterr().err
    # a reward model with two labels is not a scalar reward
    import shutil

    shutil.copytree(run, tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "rm" / "merged" / "config.json").read_text())
    cfg["id2label"] = {"0": "A", "1": "B"}
    (tmp_path / "run" / "rm" / "merged" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ZJError, match="2 labels, expected 1"):
        export_run("openrlhf", tmp_path / "run", tmp_path / "d2")
    assert main(["export", "--to", "openrlhf", str(run), str(tmp_path / "d3")]) == 0
    out = capsys.readouterr().out
    assert "policy from OUT/sft/merged" in out and re.search(r"\d+ settings mapped", out)
