"""Benchmark (NOT a test, not run in CI): our `train_ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`
on the same tiny SFT policy, reward model, prompts and settings, from one or more finished run folders.

    .venv/bin/python benchmarks/bench_ppo_vs_trl.py --runs runs/tiny-seed0 runs/tiny-seed1 runs/tiny-seed2 \
        --steps 60 --batch-size 16 --mini-batch-size 8 --threads 1 --json /tmp/bench_ppo.json

Per run (seed = the run's config.json seed unless --seed is given) each method runs in its own child process,
ours first, then TRL (so peak RSS, ru_maxrss of the child, is that method's own), on the fp32 SFT policy with a
fresh LoRA adapter (r=8, all-linear; the reference is the policy with the adapter off, in both), the frozen
reward model, world/rank_prompts.jsonl, and the same PPO settings: updates, rollouts per update, minibatch, PPO
epochs, response length, kl_coef (k1), lr (constant AdamW, weight decay 0), clip ranges, vf_coef, gamma/lam,
a -1 score for a response without EOS, no gradient clipping (TRL's PPO loop has none).

Both maximise the same reward: ours normalises the reward model's score (gain * score + bias, fitted on 64 SFT
answers, so they score mean 0, std 1; PPOConfig.normalize_reward, on by default) and TRL 1.12 has no reward
normalisation, so TRL's reward model gets the same gain and bias, those of ours' fit for that seed, folded into
its score head. (--raw-reward instead switches ours' normalisation off and leaves TRL's reward model as it is.)

The critic differs by design: ours is a linear value head on the policy's last hidden state; TRL 1.12's
PPOTrainer needs a separate value model, initialised here from the (normalised) reward model as TRL's examples
do and trained in full.

Measured for both with the same code: the mean raw RM score of greedy answers to a stratified held-out pick of
world/test_*.jsonl (ppo.heldout_subset, as the PPO stage scores) before/after; the KL of the final policy to the
reference (per-sequence sum of log pi - log pi_ref, k1) on sampled answers to those held-out prompts, both
log-probs over the distribution the sampler draws from (the generation config's suppressed tokens removed);
seconds per update (training wall time / updates) and peak RSS. Also each method's own logged KL over the last
5 updates (TRL's is not comparable: see docs/BENCHMARKS.md) and sampled-rollout scores. Prints one markdown
table (per-seed rows and the mean over seeds with its min and max, ours - TRL and ours/TRL) and writes all of
it as JSON.

The script makes its own virtual environment in .bench_venv/ (git-ignored) with trl==1.12.* and the project's
pins, then re-runs itself inside it with --inner.
"""
from __future__ import annotations

import argparse
import json
import os
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
METHODS = ("ours", "trl")  # run in this order: TRL's reward model takes the normalisation ours fitted


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


# --------------------------------------------------------------------------- the summary (pure; unit-tested)

# (key in a method's metrics, the table's label, decimals)
ROWS = (("heldout_gain", "held-out RM gain (greedy, after - before)", 3),
        ("kl_final", "KL to ref, final policy (held-out samples, same code)", 3),
        ("kl_last5_logged", "KL to ref, last 5 updates (own log)", 3),
        ("seconds_per_update", "seconds per update", 3),
        ("peak_rss_mib", "peak RSS MiB", 0))


def ratio(ours: float, trl: float) -> float | None:
    """ours / TRL, or None where that means nothing: TRL's value 0, or the two of opposite sign."""
    if trl == 0 or ours * trl < 0:
        return None
    return ours / trl


def summarise(per_seed: dict, keys) -> dict:
    """per_seed {seed: {"ours": {key: value}, "trl": {key: value}}} -> {key: {"seeds": {seed: row}, "mean": row}}.
    A seed's row: trl, ours, diff (ours - TRL), ratio (ours / TRL, None where meaningless). The mean row: the
    means over seeds of trl, ours and diff, each with its [min, max] over seeds (`*_range`), the ratio of the two
    means, and the [min, max] of the seeds' ratios (None if a seed's ratio is None)."""
    out = {}
    for key in keys:
        seeds = {}
        for seed, m in per_seed.items():
            o, t = m["ours"][key], m["trl"][key]
            seeds[seed] = {"trl": t, "ours": o, "diff": o - t, "ratio": ratio(o, t)}
        mean = {}
        for col in ("trl", "ours", "diff"):
            vals = [r[col] for r in seeds.values()]
            mean[col], mean[f"{col}_range"] = sum(vals) / len(vals), [min(vals), max(vals)]
        mean["ratio"] = ratio(mean["ours"], mean["trl"])
        rs = [r["ratio"] for r in seeds.values()]
        mean["ratio_range"] = None if None in rs else [min(rs), max(rs)]
        out[key] = {"seeds": seeds, "mean": mean}
    return out


def markdown_table(summary: dict, rows=ROWS) -> str:
    """One markdown table: per metric, a row per seed and the mean over seeds with [min, max]."""
    def f(v, d):
        return "n/a" if v is None else f"{v:.{d}f}"

    def fr(v, rng, d):
        return f(v, d) if rng is None else f"{f(v, d)} [{f(rng[0], d)}, {f(rng[1], d)}]"

    lines = ["| metric | seed | TRL | ours | ours - TRL | ours/TRL |", "|---|---|---:|---:|---:|---:|"]
    for key, label, d in rows:
        if key not in summary:
            continue
        for seed, r in summary[key]["seeds"].items():
            lines.append(f"| {label} | {seed} | {f(r['trl'], d)} | {f(r['ours'], d)} | {f(r['diff'], d)} | "
                         f"{f(r['ratio'], 2)} |")
        m = summary[key]["mean"]
        lines.append(f"| {label} | **mean** [min, max] | {fr(m['trl'], m['trl_range'], d)} | "
                     f"{fr(m['ours'], m['ours_range'], d)} | {fr(m['diff'], m['diff_range'], d)} | "
                     f"{fr(m['ratio'], m['ratio_range'] if m['ratio'] is not None else None, 2)} |")
    return "\n".join(lines)


def method_metrics(r: dict, k: int = 5) -> dict:
    """A child's result -> the figures the table compares (k: the last updates the logged KL is averaged over)."""
    mean = lambda xs: sum(xs) / len(xs)
    return {"heldout_before": r["heldout_before"], "heldout_after": r["heldout_after"],
            "heldout_gain": r["heldout_after"] - r["heldout_before"],
            "kl_final": r["kl_final"], "kl_last5_logged": mean(r["kls"][-k:]), "kl_first_logged": r["kls"][0],
            "sampled_score_gain": mean(r["scores"][-k:]) - mean(r["scores"][:k]),
            "seconds_per_update": r["train_seconds"] / r["steps"], "peak_rss_mib": r["peak_rss_mib"],
            "trainable_params": r["trainable_params"]}


# --------------------------------------------------------------------------- shared by both methods

def _setup(args):
    """Threads, seeds, tokenizer, the SFT policy in float32 (no 4-bit: the same for both), the frozen reward
    model, the training prompts and the held-out prompts (the PPO stage's stratified pick)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    sys.path.insert(0, str(ROOT))  # the project source, importable inside the bench venv (same torch/transformers)
    from zj_utils.data import load_jsonl
    from zj_utils.ppo import heldout_subset

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
    heldout = [it["messages"] for it in heldout_subset(run / "world", args.heldout)[0]]
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


def _final_kl(policy, tok, heldout, args, samples: int = 2) -> float:
    """KL(policy || reference) of the trained policy, the same estimate for both methods: `samples` sampled
    answers (temperature 1) per held-out prompt, the mean over answers of sum_t log pi - log pi_ref (k1), both
    log-probs from `compute_logprobs`, i.e. over the distribution the sampler draws from (the generation config's
    suppressed tokens removed), the reference being the policy with its adapter off."""
    import torch

    from zj_utils.ppo import PPOConfig, generate_rollouts
    from zj_utils.ppo_maths import compute_logprobs

    cfg = PPOConfig(max_new_tokens=args.response_length, temperature=1.0, top_p=1.0)
    policy.eval()
    torch.manual_seed(10_000 + args.seed)  # the same sampling seed for both methods
    kls = []
    with torch.no_grad():
        for i in range(0, len(heldout) * samples, 16):
            batch = [heldout[j % len(heldout)] for j in range(i, min(i + 16, len(heldout) * samples))]
            ro = generate_rollouts(policy, tok, batch, cfg)
            ids, am, ctx = ro.input_ids, ro.attention_mask, ro.query_ids.shape[1]
            logp, _, _ = compute_logprobs(policy, ids, am, ctx, 1.0)
            with policy.disable_adapter():
                ref, _, _ = compute_logprobs(policy, ids, am, ctx, 1.0)
            kls.append((logp - ref).sum(1))
    return float(torch.cat(kls).mean())


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
                    ppo_epochs=args.ppo_epochs, learning_rate=args.lr, weight_decay=args.weight_decay,
                    lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_new_tokens=args.response_length,
                    temperature=1.0, kl_coef=args.kl_coef, kl_estimator="k1", adaptive_kl=False, cliprange=0.2,
                    cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, missing_eos_penalty=-1.0,
                    max_grad_norm=1e9,  # TRL's PPOTrainer loop never clips gradients: no clipping here either
                    normalize_reward=not args.raw_reward,  # TRL's reward model gets the same gain and bias
                    judge_every=0, save_every=0)  # TRL takes no held-out probes and writes no checkpoints here
    t0 = time.perf_counter()
    summary = train_ppo(policy, tok, rm, prompts, cfg, out.parent / "ours_out", seed=args.seed)
    train_s = time.perf_counter() - t0
    after = _heldout_score(policy, tok, rm, heldout, args)
    log = [json.loads(line) for line in (out.parent / "ours_out" / "ppo_log.jsonl").read_text().splitlines()]
    _finish({"method": "ours", "seed": args.seed, "heldout_n": len(heldout),
             "heldout_before": before, "heldout_after": after,
             "kl_final": _final_kl(policy, tok, heldout, args),
             "reward_norm": [summary["reward_norm_gain"], summary["reward_norm_bias"]],
             # the score maximised, as TRL logs it: normalised, then the missing-EOS penalty
             "scores": [r["score_normalized"] + cfg.missing_eos_penalty * (1.0 - r["eos_rate"]) for r in log],
             "kls": [r["kl"] for r in log], "skipped_batches": summary["skipped_batches"],
             "train_seconds": train_s, "update_seconds": sum(r["seconds"] for r in log), "steps": len(log),
             "trainable_params": sum(p.numel() for p in policy.parameters() if p.requires_grad)
             + policy.config.hidden_size + 1}, out)


def _normalised_score_head(rm, gain: float, bias: float):
    """rm.score replaced by a Linear giving gain * score + bias (TRL's get_reward reads rm.score); returns the
    original head, for the raw held-out measure."""
    import torch

    old = rm.score
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(gain * old.weight)
        new.bias.fill_(bias)
        if old.bias is not None:
            new.bias.add_(gain * old.bias)
    rm.score = new.requires_grad_(False)
    return old


def run_trl(args, out: Path) -> None:
    import copy
    from contextlib import contextmanager

    import torch
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from zj_utils.reward import score_conversations

    tok, policy, rm, prompts, heldout = _setup(args)
    raw_head = rm.score
    if args.reward_norm:  # ours' (gain, bias) for this seed: both maximise the same reward
        convs = [heldout[0] + [{"role": "assistant", "content": "test"}]]
        raw = score_conversations(rm, tok, convs)
        _normalised_score_head(rm, *args.reward_norm)
        got = score_conversations(rm, tok, convs)
        assert torch.allclose(got, args.reward_norm[0] * raw + args.reward_norm[1], atol=1e-4), (raw, got)

    @contextmanager
    def raw_rm():  # the held-out measure reads the raw reward model, as for ours
        norm_head, rm.score = rm.score, raw_head
        try:
            yield rm
        finally:
            rm.score = norm_head

    tok.padding_side = "left"  # TRL's rollout takes the padded prompt batch as the generation context
    # TRL's examples initialise the value model from the reward model (the one it maximises); trained in full
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
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=args.weight_decay,
        response_length=args.response_length, temperature=1.0, stop_token="eos",
        missing_eos_penalty=1.0,  # TRL subtracts it; ours adds -1.0
        kl_coef=args.kl_coef, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        gamma=1.0, lam=0.95, whiten_rewards=False, num_sample_generations=0)
    trainer = PPOTrainer(args=targs, processing_class=tok, model=policy, ref_model=None, reward_model=rm,
                         train_dataset=train, value_model=value, eval_dataset=evald, peft_config=_lora(args))
    pol = trainer.policy_model  # the PeftModel TRL built
    tok.padding_side = "left"
    with raw_rm() as r:
        before = _heldout_score(pol, tok, r, heldout, args)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    pol.eval()
    with raw_rm() as r:
        after = _heldout_score(pol, tok, r, heldout, args)
    log = [r for r in trainer.state.log_history if "objective/scores" in r]
    _finish({"method": "trl", "seed": args.seed, "heldout_n": len(heldout),
             "heldout_before": before, "heldout_after": after,
             "kl_final": _final_kl(pol, tok, heldout, args), "reward_norm": args.reward_norm,
             "scores": [r["objective/scores"] for r in log], "kls": [r["objective/kl"] for r in log],
             "train_seconds": train_s, "steps": len(log), "trainable_params": sum(
                 p.numel() for m in (pol, value) for p in m.parameters() if p.requires_grad)}, out)


# --------------------------------------------------------------------------- the driver

SHARED = ("steps", "batch_size", "mini_batch_size", "ppo_epochs", "response_length", "kl_coef", "lr",
          "weight_decay", "lora_r", "heldout", "threads")


def run_seed(args, run: str, seed: int, tmp: Path) -> dict:
    """Both methods on one run folder, each in its own child process; returns {method: child result}."""
    res = {}
    for m in METHODS:
        d = tmp / f"seed{seed}" / m
        d.mkdir(parents=True)
        cmd = [sys.executable, __file__, "--inner", "--run", run, "--seed", str(seed), "--method", m,
               "--result", str(d / "r.json")]
        cmd += [x for k in SHARED for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        if args.raw_reward:
            cmd.append("--raw-reward")
        elif m == "trl":
            cmd += ["--reward-norm", *map(str, res["ours"]["reward_norm"])]
        print(f"--- seed {seed}, {m}: {' '.join(cmd)}", flush=True)
        env = os.environ | {k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ZJ_THREADS")}
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            raise SystemExit(f"bench_ppo_vs_trl: the {m} run on {run} failed (exit {rc}); see its traceback "
                             "above. Nothing is compared.")
        res[m] = json.loads((d / "r.json").read_text()) | {"wall_seconds": time.perf_counter() - t0}
        print(f"--- seed {seed}, {m}: done in {res[m]['wall_seconds']:.0f} s", flush=True)
    return res


def inner(args) -> int:
    import trl

    if not trl.__version__.startswith("1.12"):
        sys.exit(f"expected trl 1.12 in {VENV}, found {trl.__version__}")
    if args.method:  # a child: one method, its own process, so its peak RSS is its own
        (run_ours if args.method == "ours" else run_trl)(args, Path(args.result))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_ppo_"))
    t_start = time.perf_counter()
    results, metrics = {}, {}
    for run, seed in zip(args.runs, args.seeds):
        results[seed] = run_seed(args, run, seed, tmp)
        metrics[seed] = {m: method_metrics(r) for m, r in results[seed].items()}
    summary = summarise(metrics, [k for k, _, _ in ROWS])
    settings = (f"{args.steps} PPO updates x {args.batch_size} rollouts, minibatch {args.mini_batch_size}, "
                f"{args.ppo_epochs} PPO epochs, response <= {args.response_length} tokens, temperature 1, kl_coef "
                f"{args.kl_coef} (k1, fixed), lr {args.lr} constant AdamW (weight decay {args.weight_decay}), LoRA "
                f"r={args.lora_r} alpha={2 * args.lora_r} all-linear on the fp32 SFT policy, no grad clipping, "
                f"{'raw RM score' if args.raw_reward else 'RM score normalised (ours gain and bias, in both)'}, "
                f"{args.threads} thread(s); held-out = the {results[args.seeds[0]]['ours']['heldout_n']} prompts of "
                f"ppo.heldout_subset(world, {args.heldout}), greedy")
    table = markdown_table(summary)
    print()
    print(f"PPO: ours (zj_utils.ppo.train_ppo) vs TRL {trl.__version__} trl.experimental.ppo.PPOTrainer, "
          f"runs {' '.join(args.runs)}, seeds {args.seeds}")
    print(f"settings (both): {settings}")
    print(table)
    doc = {"trl_version": trl.__version__, "runs": args.runs, "seeds": args.seeds, "settings": {
               k: getattr(args, k) for k in SHARED} | {"raw_reward": args.raw_reward}, "settings_text": settings,
           "wall_seconds": time.perf_counter() - t_start, "results": results, "metrics": metrics,
           "summary": summary, "table_markdown": table}
    out = Path(args.json) if args.json else tmp / "bench_ppo_vs_trl.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"(all results as JSON in {out}; per-step logs under {tmp}; {doc['wall_seconds']:.0f} s in all)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", help="finished run folders (each needs sft/merged, rm/merged, world/)")
    ap.add_argument("--run", help="one finished run folder (the same as --runs RUN)")
    ap.add_argument("--seed", type=int, help="the seed, with one run (default: each run's config.json seed)")
    ap.add_argument("--steps", type=int, default=20, help="PPO updates (one rollout batch each)")
    ap.add_argument("--batch-size", type=int, default=8, help="rollouts (prompts) per update")
    ap.add_argument("--mini-batch-size", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--response-length", type=int, default=48)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's, both (ours' PPOConfig default)")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=64,
                    help="held-out pick size: ppo.heldout_subset's n (64 -> 22 prompts of each test kind)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("ZJ_THREADS", 2)),
                    help="torch threads per child (default: $ZJ_THREADS, else 2)")
    ap.add_argument("--raw-reward", action="store_true",
                    help="both maximise the raw RM score: ours' reward normalisation off, TRL's RM as it is")
    ap.add_argument("--json", help="write all results here (default: a file in the temporary run folder)")
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--reward-norm", type=float, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    runs = list(args.runs or []) + ([args.run] if args.run else [])
    if not runs:
        ap.error("pass a finished run folder with --run, or several with --runs")
    if args.seed is not None and len(runs) > 1:
        ap.error("--seed goes with one run; with several, each run's config.json seed is used")
    for run in runs:
        for need in ("sft/merged", "rm/merged", "world/rank_prompts.jsonl"):
            if not (Path(run) / need).exists():
                sys.exit(f"bench_ppo_vs_trl: {Path(run) / need} not found; pass finished run folders.")
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = [json.loads((Path(r) / "config.json").read_text())["seed"] if (Path(r) / "config.json").exists()
                 else 0 for r in runs]
    if len(set(seeds)) != len(seeds):
        sys.exit(f"bench_ppo_vs_trl: the runs' seeds {seeds} repeat; the table has one row per seed.")
    args.runs, args.seeds, args.run = [str(Path(r).resolve()) for r in runs], seeds, runs[0]
    if args.inner:
        return inner(args)
    py = ensure_venv()
    return subprocess.run([str(py), str(Path(__file__).resolve()), "--inner", *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
