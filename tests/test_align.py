"""DPO, GRPO and RLOO from TRL on the smoke pipeline, and their comparison with our PPO."""
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from zj_utils.pipeline import reproduce

    out = tmp_path_factory.mktemp("align_run")
    # everything the alignment stages read: SFT model, reward model and its rankings, PPO (no eval needed)
    reproduce("smoke", out, notebooks=False, fig_dir=out / "figs",
              stages=["world", "base", "pretrain", "sft", "rm", "ppo"])
    return out


def _finite(d: dict):
    for k, v in d.items():
        if isinstance(v, float):
            assert math.isfinite(v), (k, v)


def test_preset_has_align_config():
    from zj_utils.config import AlignConfig
    from zj_utils.presets import get_preset

    p = get_preset("smoke", ["align.beta=0.1"])
    assert isinstance(p.align, AlignConfig) and p.align.beta == 0.1 and p.align.max_steps == 2
    assert get_preset("tiny").align.max_steps == AlignConfig().max_steps


def test_reward_fn_scores_conversations(run):
    from zj_utils.align import make_reward_fn
    from zj_utils.common import load_tokenizer
    from zj_utils.presets import get_preset
    from zj_utils.reward import load_reward_model, score_conversations

    preset = get_preset("smoke")
    tok = load_tokenizer(str(run / "sft" / "merged"))
    rm = load_reward_model(run, preset)
    prompts = [[{"role": "user", "content": "医生您好"}]] * 2
    completions = [[{"role": "assistant", "content": "您好"}], [{"role": "assistant", "content": "请问哪里不舒服？"}]]
    got = make_reward_fn(rm, tok)(prompts=prompts, completions=completions, completion_ids=None)
    want = score_conversations(rm, tok, [p + c for p, c in zip(prompts, completions)]).tolist()
    assert got == pytest.approx(want)
    assert got == pytest.approx(make_reward_fn(rm, tok)(["医生您好"] * 2, ["您好", "请问哪里不舒服？"]))
    # the missing-EOS penalty PPO uses, on the token ids TRL passes: only the completion without EOS pays it
    ids = [[5, 6, tok.eos_token_id], [5, 6, 7]]
    penalised = make_reward_fn(rm, tok, missing_eos_penalty=-1.0)(prompts=prompts, completions=completions,
                                                                  completion_ids=ids)
    assert penalised == pytest.approx([want[0], want[1] - 1.0])
    # PPO's normalisation first, then the penalty (in units of the SFT answers' score std, as in PPO)
    normed = make_reward_fn(rm, tok, missing_eos_penalty=-1.0, norm=(2.0, 0.5))(
        prompts=prompts, completions=completions, completion_ids=ids)
    assert normed == pytest.approx([2 * want[0] + 0.5, 2 * want[1] + 0.5 - 1.0])


def test_fair_budget_defaults_match_ppo():
    """The comparison is only fair if every method gets PPO's optimizer steps, minibatch, schedule, sampled
    completions, LoRA and KL coefficient."""
    from zj_utils.presets import get_preset

    p = get_preset("tiny")
    a, ppo = p.align, p.ppo
    ppo_steps = ppo.steps * ppo.ppo_epochs * (ppo.batch_size // ppo.mini_batch_size)
    assert a.max_steps == ppo_steps == 240
    assert a.batch_size == ppo.mini_batch_size and a.lr_scheduler_type == "constant" and a.warmup_ratio == 0
    # GRPO/RLOO: one generation batch = PPO's rollout batch, reused for PPO's number of epochs
    assert a.batch_size * a.steps_per_generation == ppo.batch_size and a.num_iterations == ppo.ppo_epochs
    generations = a.max_steps // (a.steps_per_generation * a.num_iterations)
    assert generations * a.batch_size * a.steps_per_generation == ppo.steps * ppo.batch_size
    assert a.learning_rate == ppo.learning_rate and a.beta == ppo.kl_coef
    assert a.normalize_reward == ppo.normalize_reward
    assert a.lora_r == ppo.lora_r and a.missing_eos_penalty == ppo.missing_eos_penalty
    assert a.max_completion_length == ppo.max_new_tokens


def test_summary_over_seeds(tmp_path, capsys):
    from zj_utils.cli import main

    runs = []
    for seed, (ppo_score, dpo_score) in enumerate([(0.5, 0.1), (0.7, -0.1), (0.3, 0.0)]):
        d = tmp_path / f"seed{seed}" / "align_compare"
        d.mkdir(parents=True)
        rows = {name: {"rm_score": score, "kl_to_sft": 0.01, "unsafe_rate": 0.2, "win_pct_vs_sft": 10.0,
                       "loss_pct_vs_sft": 5.0, "train_seconds": float("nan")}
                for name, score in (("ppo", ppo_score), ("dpo", dpo_score))}
        (d / "metrics.json").write_text(json.dumps({"models": rows}))
        runs.append(str(d.parent))
    assert main(["align-summary", *runs, "--out", str(tmp_path / "sum")]) == 0
    m = json.loads((tmp_path / "sum" / "metrics.json").read_text())
    assert m["models"]["ppo"]["rm_score"] == {"mean": 0.5, "min": 0.3, "max": 0.7, "per_seed": [0.5, 0.7, 0.3]}
    assert m["models"]["dpo"]["rm_score"]["mean"] == 0.0
    assert m["models"]["ppo"]["train_seconds"] is None  # NaN (unknown) is not averaged into a number
    assert "| ppo | 0.500 [0.300, 0.700]" in capsys.readouterr().out
    assert (tmp_path / "sum" / "alignment_over_seeds.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def aligned(run):
    """Every method trained once on the smoke run (so the comparison test does not depend on test order)."""
    from zj_utils.align import METHODS, run_align
    from zj_utils.presets import get_preset

    return {method: run_align(get_preset("smoke"), run, 0, method) for method in METHODS}


@pytest.mark.parametrize("method", ["dpo", "grpo", "rloo"])
def test_run_align(run, aligned, method):
    from peft import PeftModel

    from zj_utils.common import load_model, load_tokenizer
    from zj_utils.presets import get_preset

    preset = get_preset("smoke")
    m = aligned[method]
    d = run / f"align_{method}"
    for f in ("config.json", "metrics.json", "log.jsonl", "adapter/adapter_config.json", "merged/config.json"):
        assert (d / f).exists(), f
    assert not (d / "adapter" / "ref").exists()  # TRL's frozen reference copy is not saved
    assert json.loads((d / "config.json").read_text())["method"] == method
    assert m["steps"] == preset.align.max_steps
    assert json.loads((d / "timings.json").read_text())["seconds"] > 0  # wall clock apart from the results
    assert "seconds" not in m and "train_seconds" not in m
    _finite(m)
    assert (d / "log.jsonl").read_text().strip()

    # the reference (SFT model = aligned policy with its adapter disabled) is unchanged by training
    sft = str(run / "sft" / "merged")
    tok = load_tokenizer(sft)
    ids = tok("［虚构］医生您好，我头痛。", return_tensors="pt")["input_ids"]
    ref = load_model(sft, preset.model)
    policy = PeftModel.from_pretrained(load_model(sft, preset.model), str(d / "adapter"))
    with torch.no_grad():
        want = ref(ids).logits
        with policy.disable_adapter():
            got = policy(ids).logits
        trained = policy(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.isfinite(trained).all()
    # training moved the policy (a run that updates nothing fails here), and the merged model is that policy
    assert (trained - want).abs().max() > 1e-3
    with torch.no_grad():
        merged = load_model(str(d / "merged"), preset.model)(ids).logits
    assert torch.allclose(merged, trained, atol=1e-4)


def test_compare_and_cli(run, aligned, capsys):
    from zj_utils.align import METHODS
    from zj_utils.cli import main

    assert main(["align-compare", "--preset", "smoke", "--out", str(run)]) == 0
    d = run / "align_compare"
    metrics = json.loads((d / "metrics.json").read_text())
    assert set(metrics["models"]) == {"sft", "ppo", *METHODS}
    for name, row in metrics["models"].items():
        assert math.isfinite(row["rm_score"]) and math.isfinite(row["kl_to_sft"])
        assert 0 <= row["unsafe_rate"] <= 1
        if name != "sft":
            assert 0 <= row["win_pct_vs_sft"] <= 100 and row["train_seconds"] > 0
    table = (d / "table.md").read_text()
    assert all(f"| {n} |" in table for n in metrics["models"])
    assert (d / "alignment_comparison.png").exists()
    assert "| rloo |" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    from zj_utils.cli import main

    assert main(["align", "--method", "grpo", "--preset", "smoke", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zj align: error:") and "\n" not in err and "Traceback" not in err
    assert main(["align-compare", "--preset", "smoke", "--out", str(tmp_path)]) == 2
    assert "zj align-compare: error:" in capsys.readouterr().err
