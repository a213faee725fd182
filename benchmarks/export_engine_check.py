"""Feed a `zj export` folder to the engine's own dataset code, read from the engine's git history at the commit the
export was written against (no install: the few modules that read prompts import without a GPU).

    python benchmarks/export_engine_check.py DEST --engine-git OPENRLHF_OR_VERL_GIT_DIR

OpenRLHF: openrlhf/datasets/utils.py `blending_datasets` and openrlhf/datasets/prompts_dataset.py `PromptDataset`
with the launch script's --data.input_key/--data.apply_chat_template; every prompt must be the policy's chat
template of the world's messages with the generation prompt. verl (needs omegaconf): verl/utils/dataset/
rl_dataset.py `RLHFDataset` on data/train.parquet and data/test.parquet with the script's data.* settings (its
`copy_to_local` and `load_extern_object` stubbed: local files, no custom class), then `__getitem__` and
`collate_fn` on every row. Prints one summary line per split; exits 1 on the first mismatch.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path


def show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"], capture_output=True,
                          text=True, check=True).stdout


def load(name: str, source: str, tmp: Path):
    f = tmp / f"{name}.py"
    f.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, f)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def check_openrlhf(dest: Path, git_dir: str, commit: str, tok, tmp: Path) -> None:
    utils = load("openrlhf_datasets_utils", show(git_dir, commit, "openrlhf/datasets/utils.py"), tmp)
    pd = load("openrlhf_prompts_dataset", show(git_dir, commit, "openrlhf/datasets/prompts_dataset.py"), tmp)
    data_args = types.SimpleNamespace(input_key="messages", label_key=None, apply_chat_template=True,
                                      image_key="images")
    strategy = types.SimpleNamespace(args=types.SimpleNamespace(data=data_args, use_ms=False),
                                     print=lambda *a, **k: None, is_rank_0=lambda: False)
    for split in ("train", "test"):
        path = dest / "data" / f"{split}.jsonl"
        world = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        data = utils.blending_datasets(str(path), None, strategy, dataset_split="train")
        ds = pd.PromptDataset(data, tok, strategy)
        assert len(ds) == len(world), (len(ds), len(world))
        for i, rec in enumerate(world):
            source, prompt, label, image = ds[i]
            want = tok.apply_chat_template(rec["messages"], tokenize=False, add_generation_prompt=True)
            assert prompt == want, (i, prompt, want)
            assert source == rec["datasource"] and label == "" and image is None
        batch = ds.collate_fn([ds[i] for i in range(min(4, len(ds)))])
        print(f"openrlhf {commit[:12]} {split}: {len(ds)} prompts through blending_datasets + PromptDataset, "
              f"each the chat template of its messages; batch of {len(batch[1])}, datasources {sorted(set(ds.datasources))}")


def check_verl(dest: Path, git_dir: str, commit: str, tok, tmp: Path) -> None:
    from omegaconf import OmegaConf

    verl = types.ModuleType("verl")
    vutils = types.ModuleType("verl.utils")
    imp = types.ModuleType("verl.utils.import_utils")
    fs = types.ModuleType("verl.utils.fs")

    def load_extern_object(*a, **k):
        raise AssertionError("no custom dataset class in a zj export")

    imp.load_extern_object = load_extern_object
    fs.copy_to_local = lambda src, cache_dir=None, use_shm=False, **k: src
    sys.modules.update({"verl": verl, "verl.utils": vutils, "verl.utils.import_utils": imp, "verl.utils.fs": fs})
    rl = load("verl_rl_dataset", show(git_dir, commit, "verl/utils/dataset/rl_dataset.py"), tmp)
    script = (dest / "train_verl.sh").read_text(encoding="utf-8")
    max_prompt = int(script.split("data.max_prompt_length=", 1)[1].split()[0])
    for split in ("train", "test"):
        cfg = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": max_prompt, "truncation": "error",
                                "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1,
                                "return_raw_chat": True, "cache_dir": str(tmp / "cache")})
        ds = rl.RLHFDataset(data_files=[str(dest / "data" / f"{split}.parquet")], tokenizer=tok, config=cfg)
        n_file = len(__import__("pyarrow.parquet", fromlist=["x"]).read_table(dest / "data" / f"{split}.parquet"))
        rows = [ds[i] for i in range(len(ds))]
        for i, row in enumerate(rows):
            assert row["raw_prompt"] == row["prompt"] and row["raw_prompt"][-1]["role"] == "user", i
            assert row["extra_info"]["split"] == split and isinstance(row["index"], int)
            assert row["reward_model"] == {"style": "model", "ground_truth": ""}
        batch = rl.collate_fn(rows[:4])
        print(f"verl {commit[:12]} {split}: RLHFDataset kept {len(ds)} of {n_file} prompts (max_prompt_length "
              f"{max_prompt}); __getitem__ gives raw_prompt and index for each; collate_fn keys {sorted(batch)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", help="a `zj export` folder")
    ap.add_argument("--engine-git", required=True, help="the engine's git directory (e.g. a bare mirror)")
    ap.add_argument("--commit", default=None, help="default: the commit in DEST/manifest.json")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    dest = Path(args.dest)
    manifest = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    commit = args.commit or manifest["engine_commit"]
    tok = AutoTokenizer.from_pretrained(dest / "policy", trust_remote_code=False)
    with tempfile.TemporaryDirectory() as tmp:
        if manifest["engine"] == "openrlhf":
            check_openrlhf(dest, args.engine_git, commit, tok, Path(tmp))
        else:
            check_verl(dest, args.engine_git, commit, tok, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
