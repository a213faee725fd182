"""Benchmark (NOT a test, not run in CI): our `train_ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`
on the same tiny SFT policy, reward model, prompts and settings, from a finished run folder.

    .venv/bin/python benchmarks/bench_ppo_vs_trl.py --run runs/tiny-seed0      # 20 updates x 8, ~30 s on 2 cores

Each method runs in its own child process (so peak RSS, ru_maxrss of the child, is its own) on the fp32 SFT
policy with a fresh LoRA adapter (r=8, all-linear; the reference is the policy with the adapter off, in both),
the frozen reward model, world/rank_prompts.jsonl, and the same PPO settings: updates, rollouts per update,
minibatch, PPO epochs, response length, kl_coef (k1), lr (constant AdamW), clip ranges, vf_coef, gamma/lam, a -1
score for a response without EOS, no gradient clipping (TRL's PPO loop has none). The critic differs by design:
ours is a linear value head on the policy's last hidden state; TRL 1.12's PPOTrainer needs a separate value model,
initialised here from the reward model as TRL's examples do and trained in full. Printed for both: mean RM score
of greedy answers to 32 held-out prompts (world/test_*.jsonl) before/after, the sampled-rollout score over the
first/last 5 updates, the KL to the reference (per-sequence sum, k1) over the last 5 updates, seconds per update,
peak RSS, and ours/TRL ratios.

The script makes its own virtual environment in .bench_venv/ (add it to .gitignore) with trl==1.12.* and the
project's pins, then re-runs itself inside it with --inner.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
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


# --------------------------------------------------------------------------- shared by both methods

HELDOUT = ("test_single", "test_safety", "test_multiturn")


def _setup(args):
    """Threads, seeds, tokenizer, the SFT policy in float32 (no 4-bit: the same for both), the frozen reward
    model, the training prompts and the 32 held-out prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    sys.path.insert(0, str(ROOT))  # the project source, importable inside the bench venv (same torch/transformers)
    from zj_utils.data import load_jsonl

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Path(args.run)
    tok = AutoTokenizer.from_pretrained(str(run / "sft" / "merged"))
    policy = AutoModelForCausalLM.from_pretrained(str(run / "sft" / "merged"), dtype=torch.float32)
    rm = AutoModelForSequenceClassification.from_pretrained(str(run / "rm" / "merged"), dtype=torch.float32)
    rm.eval().requires_grad_(False)
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id
    prompts = [r["messages"] for r in load_jsonl(run / "world" / "rank_prompts.jsonl")]
    heldout = [r["messages"] for n in HELDOUT for r in load_jsonl(run / "world" / f"{n}.jsonl")][:args.heldout]
    return tok, policy, rm, prompts, heldout


def _lora(args):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def _heldout_score(policy, tok, rm, heldout, args) -> float:
    """Mean RM score of greedy answers (max_new_tokens = response length) to the held-out prompts: the same
    measure, with the project's own generate/score helpers, for both methods."""
    from zj_utils.inference import generate_chat
    from zj_utils.reward import score_conversations

    answers = generate_chat(policy, tok, heldout, args.response_length, batch_size=16)
    convs = [h + [{"role": "assistant", "content": a[0]}] for h, a in zip(heldout, answers)]
    return float(score_conversations(rm, tok, convs).mean())


def _finish(result: dict, out: Path) -> None:
    import resource

    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    out.write_text(json.dumps(result, indent=1))


def run_ours(args, out: Path) -> None:
    from peft import get_peft_model

    from zj_utils.ppo import PPOConfig, train_ppo

    tok, policy, rm, prompts, heldout = _setup(args)
    policy = get_peft_model(policy, _lora(args))
    before = _heldout_score(policy, tok, rm, heldout, args)
    cfg = PPOConfig(steps=args.steps, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                    ppo_epochs=args.ppo_epochs, learning_rate=args.lr, lora_r=args.lora_r,
                    lora_alpha=2 * args.lora_r, max_new_tokens=args.response_length, temperature=1.0,
                    kl_coef=args.kl_coef, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
                    gamma=1.0, lam=0.95, missing_eos_penalty=-1.0,
                    max_grad_norm=1e9,  # TRL's PPOTrainer loop never clips gradients: no clipping here either
                    # TRL's PPOTrainer scores raw (no reward normalisation) and takes no held-out probes
                    normalize_reward=False, judge_every=0, save_every=0)
    t0 = time.perf_counter()
    train_ppo(policy, tok, rm, prompts, cfg, out.parent / "ours_out", seed=args.seed)
    train_s = time.perf_counter() - t0
    after = _heldout_score(policy, tok, rm, heldout, args)
    log = [json.loads(line) for line in (out.parent / "ours_out" / "ppo_log.jsonl").read_text().splitlines()]
    _finish({"method": "ours", "heldout_before": before, "heldout_after": after,
             # TRL logs the score after its missing-EOS penalty; ours logs the raw score and the EOS rate
             "scores": [r["score"] + cfg.missing_eos_penalty * (1.0 - r["eos_rate"]) for r in log],
             "kls": [r["kl"] for r in log], "train_seconds": train_s, "steps": len(log), "trainable_params": sum(
                 p.numel() for p in policy.parameters() if p.requires_grad) + policy.config.hidden_size + 1},
            out)


def run_trl(args, out: Path) -> None:
    import copy

    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok, policy, rm, prompts, heldout = _setup(args)
    tok.padding_side = "left"  # TRL's rollout takes the padded prompt batch as the generation context
    # TRL's examples initialise the value model from the reward model; it is trained in full
    value = copy.deepcopy(rm).requires_grad_(True)

    def encode(msgs):
        return {"input_ids": tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]}

    train = Dataset.from_list([encode(m) for m in prompts])
    evald = Dataset.from_list([encode(m) for m in heldout[:8]])
    targs = PPOConfig(
        output_dir=str(out.parent / "trl_out"), report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=args.seed, bf16=False, fp16=False, use_cpu=True,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size, num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.steps * args.batch_size, local_rollout_forward_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
        response_length=args.response_length, temperature=1.0, stop_token="eos",
        missing_eos_penalty=1.0,  # TRL subtracts it; ours adds -1.0
        kl_coef=args.kl_coef, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        gamma=1.0, lam=0.95, whiten_rewards=False, num_sample_generations=0)
    trainer = PPOTrainer(args=targs, processing_class=tok, model=policy, ref_model=None, reward_model=rm,
                         train_dataset=train, value_model=value, eval_dataset=evald, peft_config=_lora(args))
    pol = trainer.policy_model  # the PeftModel TRL built
    tok.padding_side = "left"
    before = _heldout_score(pol, tok, rm, heldout, args)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    pol.eval()
    after = _heldout_score(pol, tok, rm, heldout, args)
    log = [r for r in trainer.state.log_history if "objective/scores" in r]
    _finish({"method": "trl", "heldout_before": before, "heldout_after": after,
             "scores": [r["objective/scores"] for r in log], "kls": [r["objective/kl"] for r in log],
             "train_seconds": train_s, "steps": len(log), "trainable_params": sum(
                 p.numel() for m in (pol, value) for p in m.parameters() if p.requires_grad)}, out)


# --------------------------------------------------------------------------- the driver

def inner(args) -> int:
    import trl

    if not trl.__version__.startswith("1.12"):
        sys.exit(f"expected trl 1.12 in {VENV}, found {trl.__version__}")
    if args.method:  # a child: one method, its own process, so its peak RSS is its own
        (run_ours if args.method == "ours" else run_trl)(args, Path(args.result))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_ppo_"))
    res = {}
    for m in ("trl", "ours"):
        d = tmp / m
        d.mkdir()
        cmd = [sys.executable, __file__, *[a for a in sys.argv[1:]], "--method", m, "--result", str(d / "r.json")]
        print(f"--- {m}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            print(f"bench_ppo_vs_trl: the {m} run failed (exit {rc}); see its traceback above. "
                  "Nothing is compared.", flush=True)
            return rc
        res[m] = json.loads((d / "r.json").read_text()) | {"wall_seconds": time.perf_counter() - t0}

    k = min(5, args.steps)
    mean = lambda xs: sum(xs) / len(xs)
    rows = {}
    for m, r in res.items():
        rows[m] = {
            "heldout RM score before": r["heldout_before"],
            "heldout RM score after": r["heldout_after"],
            "heldout RM score gain": r["heldout_after"] - r["heldout_before"],
            f"sampled score first {k} steps (-1 if no EOS)": mean(r["scores"][:k]),
            f"sampled score last {k} steps (-1 if no EOS)": mean(r["scores"][-k:]),
            "sampled score gain": mean(r["scores"][-k:]) - mean(r["scores"][:k]),
            f"KL to ref, last {k} steps (seq sum, k1)": mean(r["kls"][-k:]),
            "seconds per PPO step": r["train_seconds"] / r["steps"],
            "peak RSS MiB": r["peak_rss_mib"],
            "trainable params": r["trainable_params"],
        }
    print()
    print(f"PPO: ours (zj_utils.ppo.train_ppo) vs TRL {trl.__version__} trl.experimental.ppo.PPOTrainer, run {args.run}")
    print(f"settings (both): {args.steps} PPO updates x {args.batch_size} rollouts, minibatch {args.mini_batch_size}, "
          f"{args.ppo_epochs} PPO epochs, response <= {args.response_length} tokens, kl_coef {args.kl_coef} (k1), "
          f"lr {args.lr} constant AdamW, LoRA r={args.lora_r} alpha={2 * args.lora_r} all-linear on the fp32 SFT "
          f"policy, no grad clipping, {args.threads} threads, seed {args.seed}; held-out = first {args.heldout} "
          f"prompts of world/test_*.jsonl, greedy")
    print("critic: ours = linear value head on the policy's last hidden state (shares the LoRA trunk); "
          "TRL = separate full value model initialised from the reward model, trained in full")
    w = max(map(len, rows["ours"]))
    print(f"{'':{w}}  {'TRL':>12}  {'ours':>12}  {'ours/TRL':>9}")
    for key in rows["ours"]:
        a, b = rows["trl"][key], rows["ours"][key]
        ratio = f"{b / a:9.3f}" if a not in (0, 0.0) else f"{'n/a':>9}"
        fmt = (lambda v: f"{v:12.0f}") if "params" in key or "RSS" in key else (lambda v: f"{v:12.4f}")
        print(f"{key:{w}}  {fmt(a)}  {fmt(b)}  {ratio}")
    (tmp / "summary.json").write_text(json.dumps(rows, indent=1))
    print(f"(per-step logs and this table as JSON under {tmp})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished run folder (needs sft/merged, rm/merged, world/)")
    ap.add_argument("--steps", type=int, default=20, help="PPO updates (one rollout batch each)")
    ap.add_argument("--batch-size", type=int, default=8, help="rollouts (prompts) per update")
    ap.add_argument("--mini-batch-size", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--response-length", type=int, default=48)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=("ours", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for need in ("sft/merged", "rm/merged", "world/rank_prompts.jsonl"):
        if not (Path(args.run) / need).exists():
            sys.exit(f"bench_ppo_vs_trl: {Path(args.run) / need} not found; pass a finished run folder with --run.")
    if args.inner:
        return inner(args)
    py = ensure_venv()
    return subprocess.run([str(py), str(Path(__file__).resolve()), "--inner", *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
