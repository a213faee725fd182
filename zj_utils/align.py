"""RLHF alternatives to our PPO, from TRL 1.16: DPO, GRPO and RLOO on the same SFT model, the same reward model
and the same prompts, and `compare_alignment`, which puts them side by side with PPO.

* DPO   learns from preference pairs. They are the reward stage's rankings (OUT/rm/rankings.jsonl: the SFT
        model's 4 sampled answers per ranking prompt, ranked by the annotator) turned into all strictly ordered
        pairs: what DPO would see from the same annotators. The reference is the policy without its LoRA update
        (TRL 1.16 keeps a frozen copy of the fresh, zero-initialised adapter as "ref", which equals the
        adapter-disabled model).
* GRPO  samples `num_generations` answers per ranking prompt, scores them with the reward model (a TRL reward
        function, `make_reward_fn`) and uses the group-normalised score as the advantage; KL to the reference
        (adapter-free policy) with coefficient `beta`.
* RLOO  the same sampling, with the leave-one-out mean of the group as the baseline.

The policy is OUT/sft/merged with QLoRA, exactly like `run_ppo`. Each method writes OUT/align_<method>/ with
config.json, log.jsonl, metrics.json, adapter/ and merged/.
"""
from __future__ import annotations

import math
from pathlib import Path

from .common import ZJError

METHODS = ("dpo", "grpo", "rloo")


def make_reward_fn(reward_model, tokenizer, batch_size: int = 16, missing_eos_penalty: float = 0.0,
                   norm: tuple[float, float] = (1.0, 0.0)):
    """The frozen reward model as a TRL reward function: `reward_fn(prompts, completions, **kw) -> list[float]`.
    Prompts and completions may be conversational (message lists) or plain strings; either way the reward model
    reads `reward.reward_text(prompt, completion text)`, the input it was trained on. The score is
    `gain * score + bias` with `norm = (gain, bias)` (PPO's reward normalisation); then, with
    `missing_eos_penalty`, a completion whose token ids (TRL passes them as `completion_ids`) hold no EOS gets it
    added, as in our PPO."""
    from .reward import reward_scores

    def reward_model_score(prompts, completions, completion_ids=None, **kwargs):
        convs, answers = [], []
        for p, c in zip(prompts, completions):
            convs.append([{"role": "user", "content": p}] if isinstance(p, str) else list(p))
            answers.append(c if isinstance(c, str) else "".join(m["content"] for m in c))
        gain, bias = norm
        scores = [gain * float(x) + bias for x in reward_scores(reward_model, tokenizer, convs, answers, batch_size)]
        if missing_eos_penalty and completion_ids is not None:
            eos = tokenizer.eos_token_id
            scores = [s + (missing_eos_penalty if eos not in list(ids) else 0.0)
                      for s, ids in zip(scores, completion_ids)]
        return scores

    return reward_model_score


def _messages(msgs: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _log_summary(history: list[dict]) -> dict:
    """First/last logged values of the keys worth reading from the Trainer's log history."""
    out = {}
    for key in ("loss", "reward", "kl", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                "rewards/margins", "completions/mean_length", "entropy"):
        vals = [h[key] for h in history if key in h and isinstance(h[key], (int, float))]
        if vals:
            name = key.replace("/", "_")
            out[f"{name}_first"], out[f"{name}_last"] = round(vals[0], 4), round(vals[-1], 4)
    return out


def run_align(preset, out: str | Path, seed: int = 0, method: str = "grpo") -> dict:
    """Align OUT/sft/merged with `method` (dpo, grpo or rloo) from TRL; writes OUT/align_<method>/."""
    if method not in METHODS:
        raise ZJError(f"Unknown alignment method '{method}'. Known: {', '.join(METHODS)}.")
    from accelerate import PartialState
    from datasets import Dataset

    from .common import begin_stage, count_params, is_main_process, load_model, load_tokenizer, merge_adapter, \
        require, world_dir, write_metrics
    from .data import load_jsonl
    from .rankings import to_preference_records
    from .config import LoraSpec
    from .reward import load_reward_model
    from .training import JsonlLogCallback, prepare_qlora, restore_adapter_dtype, training_args

    cfg = preset.align
    # Under torchrun / accelerate launch: join the process group now; the main process writes, the others wait
    with PartialState().main_process_first():
        d, timer = begin_stage(f"align_{method}", preset, out, seed, method=method, align=cfg, model=preset.model,
                               quant=preset.quant)
    world = world_dir(out)
    sft_path = str(require(Path(out) / "sft" / "merged", "The SFT model", "Run `zj sft` first, with the same --out."))
    tokenizer = load_tokenizer(sft_path, preset.model.trust_remote_code)
    lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules)
    policy = prepare_qlora(load_model(sft_path, preset.model, preset.quant), lora, quantized=preset.quant.load_in_4bit)
    callbacks = [JsonlLogCallback(d / "log.jsonl")]
    info: dict = {}

    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        rankings = load_jsonl(require(Path(out) / "rm" / "rankings.jsonl", "The reward stage's rankings",
                                      "Run `zj rm` first, with the same --out."))
        pairs = [rec for r in rankings for rec in to_preference_records(r["messages"], r["responses"], r["ranks"])]
        if not pairs:
            raise ZJError(f"No preference pairs in {out}/rm/rankings.jsonl (every ranking is all ties).")
        args = training_args(DPOConfig, cfg, d, seed, preset, beta=cfg.dpo_beta, max_length=cfg.max_length,
                             lr_scheduler_type=cfg.lr_scheduler_type)
        trainer = DPOTrainer(model=policy, args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(pairs), callbacks=callbacks)
        info = {"rankings": len(rankings), "pairs": len(pairs)}
    else:
        if (cfg.batch_size * cfg.steps_per_generation) % cfg.num_generations:
            raise ZJError(f"align.batch_size x align.steps_per_generation ({cfg.batch_size} x "
                          f"{cfg.steps_per_generation}) must be a multiple of align.num_generations "
                          f"({cfg.num_generations}).")
        if method == "grpo":
            from trl import GRPOConfig as Config, GRPOTrainer as Trainer
        else:
            from trl import RLOOConfig as Config, RLOOTrainer as Trainer
        prompts = [{"prompt": _messages(r["messages"])} for r in load_jsonl(world / "rank_prompts.jsonl")]
        reward_model = load_reward_model(out, preset)
        norm = (1.0, 0.0)
        if cfg.normalize_reward:
            import torch

            from .ppo import sample_reward_norm

            torch.manual_seed(seed)
            norm = sample_reward_norm(policy, tokenizer, reward_model, [p["prompt"] for p in prompts], preset.ppo,
                                      seed)
        reward_fn = make_reward_fn(reward_model, tokenizer, missing_eos_penalty=cfg.missing_eos_penalty, norm=norm)
        args = training_args(Config, cfg, d, seed, preset, beta=cfg.beta, num_generations=cfg.num_generations,
                             steps_per_generation=cfg.steps_per_generation, num_iterations=cfg.num_iterations,
                             max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                             top_k=0, top_p=1.0, use_vllm=False, lr_scheduler_type=cfg.lr_scheduler_type)
        trainer = Trainer(model=policy, reward_funcs=reward_fn, args=args,
                          processing_class=tokenizer, train_dataset=Dataset.from_list(prompts), callbacks=callbacks)
        info = {"prompts": len(prompts), "reward_norm_gain": norm[0], "reward_norm_bias": norm[1]}
    restore_adapter_dtype(trainer.model, preset)
    result = trainer.train()
    model = trainer.model
    if is_main_process():  # every rank holds the same adapter
        # TRL may add a frozen "ref" copy of the adapter; only the trained one is the result
        model.save_pretrained(str(d / "adapter"), selected_adapters=["default"])
        merge_adapter(sft_path, d / "adapter", d / "merged", preset.model, tokenizer=tokenizer)
    metrics = {"method": method, **info, "steps": result.global_step, "train_loss": round(result.training_loss, 4),
               "trainable_params": count_params(model)["trainable"], **_log_summary(trainer.state.log_history)}
    timings = {"train_seconds": round(result.metrics.get("train_runtime", float("nan")), 2), "seconds": timer()}
    return write_metrics(d, metrics, timings)


# --------------------------------------------------------------------------- comparison

def answer_logprobs(model, tokenizer, conversations: list[list[dict]], answers: list[str], batch_size: int = 16):
    """Per-token log-probs of each answer (its tokens + EOS) after its chat prompt: a list of 1-D tensors."""
    import torch

    from .common import pad_id
    from .ppo import render_prompts
    from .ppo_maths import compute_logprobs

    pad, dev = pad_id(tokenizer), next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(answers), batch_size):
        texts = render_prompts(tokenizer, conversations[i:i + batch_size])
        q_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        r_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for a in answers[i:i + batch_size]]
        P, R = max(map(len, q_ids)), max(map(len, r_ids))
        ids = torch.full((len(q_ids), P + R), pad, dtype=torch.long)
        am = torch.zeros_like(ids)
        for j, (q, r) in enumerate(zip(q_ids, r_ids)):  # prompts left-padded, answers right-padded
            ids[j, P - len(q):P + len(r)] = torch.tensor(q + r)
            am[j, P - len(q):P + len(r)] = 1
        with torch.no_grad():
            logp, _, _ = compute_logprobs(model, ids.to(dev), am.to(dev), P)
        out += [logp[j, :len(r)].float().cpu() for j, r in enumerate(r_ids)]
    return out


def compare_alignment(preset, out: str | Path, seed: int = 0, fig_dir: str | Path | None = None) -> dict:
    """PPO and every finished OUT/align_<method>/ against the SFT model on the held-out test prompts:
    reward-model score of greedy answers, KL to SFT, unsafe rate on test_safety, rule-judge win rate against SFT,
    and training wall time. Writes OUT/align_compare/{metrics.json,table.md,alignment_comparison.png}."""
    import torch

    from .common import begin_stage, load_tokenizer, read_json, read_timings, require, write_json
    from .compare import judge_pairs
    from .evaluate import judge_answers, load_test_items, summarize_verdicts
    from .inference import generate_chat
    from .judges import RuleJudge
    from .common import load_for_inference
    from .reward import load_reward_model, score_conversations

    out = Path(out)
    cfg = preset.eval
    d, timer = begin_stage("align_compare", preset, out, seed, eval=cfg)
    world = require(out / "world" / "world.json", "The synthetic world", "Run `zj world` first.").parent
    kg = read_json(world / "world.json")
    items = load_test_items(world, cfg.max_items)
    convs = [it["messages"] for it in items]
    sft_path = str(require(out / "sft" / "merged", "The SFT model", "Run `zj sft` first, with the same --out."))
    systems = {"ppo": out / "ppo" / "merged"} | {m: out / f"align_{m}" / "merged" for m in METHODS}
    systems = {k: v for k, v in systems.items() if (v / "config.json").exists()}
    if not systems:
        raise ZJError(f"No aligned model in {out}: run `zj ppo` or `zj align --method dpo|grpo|rloo` first.")
    tokenizer = load_tokenizer(sft_path, preset.model.trust_remote_code)
    reward_model = load_reward_model(out, preset)
    judge = RuleJudge(kg)

    def answer(model) -> list[str]:
        return [a[0] for a in generate_chat(model, tokenizer, convs, cfg.max_new_tokens, batch_size=cfg.batch_size,
                                            repetition_penalty=cfg.repetition_penalty)]

    def rm_score(answers) -> float:
        scored = [c + [{"role": "assistant", "content": a}] for c, a in zip(convs, answers)]
        return round(score_conversations(reward_model, tokenizer, scored).mean().item(), 4)

    sft = load_for_inference(sft_path, preset)
    sft_answers = answer(sft)
    rows = {"sft": {"rm_score": rm_score(sft_answers), "kl_to_sft": 0.0,
                    "unsafe_rate": summarize_verdicts(items, judge_answers(items, sft_answers, kg))["unsafe_rate"],
                    "win_pct_vs_sft": None, "loss_pct_vs_sft": None, "train_seconds": None, "stage_seconds": None}}
    for name, path in systems.items():
        model = load_for_inference(str(path), preset)
        answers = answer(model)
        # KL estimator: k1 = mean over answer tokens of log p_aligned(y_t) - log p_sft(y_t), on the aligned model's
        # greedy answers. Greedy answers are not samples of the policy, so this is a log-ratio on its modal
        # answers (what evaluation reads), not an unbiased estimate of KL(aligned || sft).
        lp_new = answer_logprobs(model, tokenizer, convs, answers, cfg.batch_size)
        lp_ref = answer_logprobs(sft, tokenizer, convs, answers, cfg.batch_size)
        diff = torch.cat([a - b for a, b in zip(lp_new, lp_ref)])
        seq_kl = torch.stack([(a - b).sum() for a, b in zip(lp_new, lp_ref)])
        verdicts = summarize_verdicts(items, judge_answers(items, answers, kg))
        ids = [it["id"] for it in items]
        wtl = judge_pairs(items, dict(zip(ids, answers)), dict(zip(ids, sft_answers)), judge, n_boot=200,
                          seed=seed)["dimensions"]["overall"]
        stage = "ppo" if name == "ppo" else f"align_{name}"
        m = read_timings(out, stage)
        rows[name] = {"rm_score": rm_score(answers), "kl_to_sft": round(diff.mean().item(), 5),
                      "kl_to_sft_per_answer": round(seq_kl.mean().item(), 4),
                      "unsafe_rate": verdicts["unsafe_rate"],
                      "win_pct_vs_sft": wtl["win_pct"], "tie_pct_vs_sft": wtl["tie_pct"],
                      "loss_pct_vs_sft": wtl["loss_pct"], "win_ci": wtl["ci"]["win_pct"],
                      "train_seconds": round(m.get("total_seconds", m.get("train_seconds", float("nan"))), 2),
                      "stage_seconds": m.get("seconds")}
        del model
    metrics = {"items": len(items), "sets": sorted({it["set"] for it in items}),
               "kl_estimator": "k1 per token: mean of log p_aligned - log p_sft over the aligned model's greedy "
                               "answer tokens (incl. EOS); kl_to_sft_per_answer is its sum per answer",
               "models": rows, "seconds": timer()}
    write_json(d / "metrics.json", metrics)
    (d / "table.md").write_text(format_table(rows), encoding="utf-8")
    from .plots import save
    save(comparison_figure(rows), fig_dir or d, "alignment_comparison")
    return metrics


def format_table(rows: dict) -> str:
    def f(x, fmt):
        return "–" if x is None else format(x, fmt)

    lines = ["| model | RM score | KL to SFT (per token) | unsafe rate | win % vs SFT | loss % vs SFT "
             "| training s | stage s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {f(r['rm_score'], '.3f')} | {f(r['kl_to_sft'], '.4f')} | "
                     f"{f(r['unsafe_rate'], '.3f')} | {f(r['win_pct_vs_sft'], '.1f')} | "
                     f"{f(r['loss_pct_vs_sft'], '.1f')} | {f(r['train_seconds'], '.1f')} | "
                     f"{f(r['stage_seconds'], '.1f')} |")
    return "\n".join(lines) + "\n"


def comparison_figure(rows: dict):
    import matplotlib.pyplot as plt

    panels = [("rm_score", "reward-model score"), ("kl_to_sft", "KL to SFT (k1/token)"),
              ("unsafe_rate", "unsafe rate (test_safety)"), ("win_pct_vs_sft", "win % vs SFT (rule judge)"),
              ("train_seconds", "training seconds")]
    names = list(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (key, title) in zip(axes, panels):
        vals = [rows[n][key] if rows[n][key] is not None else 0.0 for n in names]
        ax.bar(names, vals, color=["#999999" if n == "sft" else "#2f6db5" for n in names])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def seed_stats(vals: list) -> dict | None:
    """Mean (4 decimals), lowest, highest and every value of one measure over seeds; a missing or NaN value
    (unknown) is left out rather than averaged in, and a measure with none is None."""
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return {"mean": round(sum(vals) / len(vals), 4), "min": min(vals), "max": max(vals), "per_seed": vals}


SUMMARY_KEYS = (("rm_score", "RM score", ".3f"), ("kl_to_sft", "KL to SFT (per token)", ".4f"),
                ("unsafe_rate", "unsafe rate", ".3f"), ("win_pct_vs_sft", "win % vs SFT", ".1f"),
                ("loss_pct_vs_sft", "loss % vs SFT", ".1f"), ("train_seconds", "training s", ".1f"))


def summarize_alignment(run_dirs: list, out: str | Path, fig_dir: str | Path | None = None) -> dict:
    """PPO, DPO, GRPO and RLOO over several seeds: each run folder (one seed) must hold align_compare/metrics.json.
    Per method and measure: the mean over seeds, the lowest and highest seed, and every seed's value. Writes
    OUT/{metrics.json, table.md, alignment_over_seeds.png}."""
    from .common import read_json, require, write_json

    out = Path(out)
    per_run = [read_json(require(Path(r) / "align_compare" / "metrics.json", "An alignment comparison",
                                 f"Run `zj align-compare --out {r}` first."))["models"] for r in run_dirs]
    names = [n for n in per_run[0] if all(n in rows for rows in per_run)]
    summary: dict = {"runs": [str(r) for r in run_dirs], "models": {}}
    for n in names:
        summary["models"][n] = {}
        for key, _, _ in SUMMARY_KEYS:
            summary["models"][n][key] = seed_stats([rows[n].get(key) for rows in per_run])
    lines = [f"Mean over {len(run_dirs)} seeds [lowest, highest seed].", "",
             "| model | " + " | ".join(label for _, label, _ in SUMMARY_KEYS) + " |",
             "|---|" + "---:|" * len(SUMMARY_KEYS)]
    for n, ms in summary["models"].items():
        cells = [("–" if ms[k] is None else f"{ms[k]['mean']:{f}} [{ms[k]['min']:{f}}, {ms[k]['max']:{f}}]")
                 for k, _, f in SUMMARY_KEYS]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "metrics.json", summary)

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SUMMARY_KEYS), figsize=(3.0 * len(SUMMARY_KEYS), 3.0))
    for ax, (key, label, _) in zip(axes, SUMMARY_KEYS):
        for i, n in enumerate(names):
            m = summary["models"][n][key]
            if m is None:
                continue
            ax.bar(i, m["mean"], color="#999999" if n == "sft" else "#2f6db5", alpha=0.8)
            ax.scatter([i] * len(m["per_seed"]), m["per_seed"], s=10, color="black", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Alignment methods at PPO's budget: mean over {len(run_dirs)} seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    from .plots import save
    save(fig, fig_dir or out, "alignment_over_seeds")
    return summary
