"""Benchmark (NOT a test, not run in CI): our `train_ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`
on the same tiny SFT policy, reward model, prompts and settings, from a finished run folder.

    python benchmarks/bench_ppo_vs_trl.py --run runs/tiny-seed0 --steps 5

STATUS: only the environment part is written and checked. trl 1.12.0 exists on PyPI and its wheel requires
transformers>=4.56.2 (so it can share the project's transformers/torch pins) and ships
trl/experimental/ppo/{ppo_trainer,ppo_config,modeling_value_head}.py. The comparison itself (`inner`) is NOT
written yet: it exits with a clear message instead of printing made-up numbers.

The script makes its own virtual environment in .bench_venv/ (add it to .gitignore) with trl==1.12.* and the
project's pins, then re-runs itself inside it with --inner.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".bench_venv"
# the same pins as pyproject.toml, plus the TRL release that still had PPOTrainer under trl.experimental
PINS = ["torch==2.13.0", "transformers>=5.20,<6", "peft>=0.21,<0.22", "trl==1.12.*", "datasets", "accelerate",
        "bitsandbytes", "safetensors", "tqdm"]


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
        # CPU wheels: an unpinned index pulls a multi-GB CUDA torch onto CPU machines. First the configured
        # indexes/find-links (a local +cpu wheel, when the machine has one), then the PyTorch CPU index.
        pip = [str(py), "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "30"]
        if subprocess.run([*pip, "--only-binary", ":all:", "torch==2.13.0+cpu"]).returncode != 0:
            subprocess.run([*pip, "--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PINS], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    return py


def inner(args) -> int:
    import trl

    if not trl.__version__.startswith("1.12"):
        sys.exit(f"expected trl 1.12 in {VENV}, found {trl.__version__}")
    sys.exit("bench_ppo_vs_trl: the TRL PPOTrainer side is not written yet (see the module docstring); "
             "nothing was measured.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished run folder (needs sft/merged, rm/merged, world/)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for need in ("sft/merged", "rm/merged", "world/rank_prompts.jsonl"):
        if not (Path(args.run) / need).exists():
            sys.exit(f"bench_ppo_vs_trl: {Path(args.run) / need} not found; pass a finished run folder with --run.")
    if args.inner:
        return inner(args)
    py = ensure_venv()
    return subprocess.run([str(py), __file__, "--inner", *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
