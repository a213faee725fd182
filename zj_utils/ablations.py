"""The paper's ablations in miniature, over seeds, with intervals.

Variants (each a change to the full pipeline; the same SFT step budget for every SFT variant, so a variant
differs from the full pipeline only in what the paper says matters):

    full                 continued pre-training -> SFT on the full mix -> PPO
    no_pretrain          SFT starts from the base model (no continued pre-training) -> PPO
    no_multiturn         the SFT mix without the multi-turn dialogues -> PPO
    no_rlhf              the full pipeline's SFT model, no PPO (this is also the "SFT-only" reference)
    flooded_single_turn  the SFT mix flooded with single-turn (distilled-style) Q&A, 4x -> PPO

Per seed, the world and the base model are shared by all seeds (they are the given foundation, like the paper's
Ziya-LLaMA); continued pre-training, the reward model (trained on samples of the full SFT model), every SFT,
every PPO run and every sampling step take the seed. Folders:

    OUT/shared/{world,base}
    OUT/seed<S>/<variant>/{sft,ppo}    (world, base, pretrain and rm are links to the shared or full ones)
    OUT/seed<S>/<variant>/ablation_eval.json   per-item results of the variant's final model
    OUT/ablations.csv, OUT/ablations.md, OUT/metrics.json

A stage whose metrics.json exists is complete (every stage writes it last, atomically) and is not run again, so a
killed run continues where it stopped when started again.

Statistics: for each metric, the mean over seeds of the per-seed rate, and a 95% interval from a two-level
bootstrap (seeds with replacement, then test items with replacement within each drawn seed). Each claim is a
paired difference between two variants (same seeds, same items), with its interval by the same bootstrap.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from .common import Timer, link_dir as _link, read_json, stage_done as _done, write_json

VARIANTS: dict[str, dict] = {
    "full": {"sft_mix": {}, "init_from": "pretrain", "rlhf": True},
    "no_pretrain": {"sft_mix": {}, "init_from": "base", "rlhf": True},
    "no_multiturn": {"sft_mix": {"multi_turn": 0.0}, "init_from": "pretrain", "rlhf": True},
    "no_rlhf": {"sft_mix": {}, "init_from": "pretrain", "rlhf": False},
    "flooded_single_turn": {"sft_mix": {"single": 4.0}, "init_from": "pretrain", "rlhf": True},
}
REFERENCE = "no_rlhf"  # "SFT-only": the full pipeline's SFT model; win rates are against it
METRICS = ("knowledge_accuracy", "proactive_inquiry_rate", "unsafe_rate", "win_rate_vs_sft")
# The paper's three claims (+ the flooding one), each as (name, variant A, variant B, metric): A - B > 0 expected.
CLAIMS = (
    ("continued pre-training raises knowledge accuracy", "full", "no_pretrain", "knowledge_accuracy"),
    ("multi-turn SFT data raises proactive inquiry", "full", "no_multiturn", "proactive_inquiry_rate"),
    ("RLHF lowers the unsafe-answer rate", "no_rlhf", "full", "unsafe_rate"),
    ("flooding SFT with single-turn data lowers proactive inquiry", "full", "flooded_single_turn",
     "proactive_inquiry_rate"),
)


def _log(msg: str) -> None:
    print(f"[zj ablations] {msg}", file=sys.stderr, flush=True)


def variant_preset(preset_name: str, overrides, variant: str, sft_steps: int | None = None):
    """The preset of one variant: the base preset + overrides + the variant's SFT change and step budget."""
    from .presets import get_preset

    p = get_preset(preset_name, overrides)
    spec = VARIANTS[variant]
    p.sft.mix = {**p.sft.mix, **spec["sft_mix"]}
    p.sft.init_from = spec["init_from"]
    if sft_steps is not None:
        p.sft.max_steps = sft_steps
    return p


# --------------------------------------------------------------------------- evaluation of one model

def evaluate_model(model_path: str, preset, world: Path) -> dict:
    """Per-item results of one model: knowledge probes (correct or not), and on the test sets the judge's verdict
    (unsafe on safety items, proactive where the doctor should ask first). Returns lists, one entry per item."""
    from .evaluate import judge_answers, load_test_items
    from .common import load_for_inference, load_tokenizer
    from .data import load_jsonl
    from .inference import generate_chat, probe_hits

    cfg = preset.eval
    kg = read_json(world / "world.json")
    items = load_test_items(world, cfg.max_items)
    probes = load_jsonl(world / "probes.jsonl")
    tokenizer = load_tokenizer(model_path, preset.model.trust_remote_code)
    model = load_for_inference(model_path, preset)
    answers = [a[0] for a in generate_chat(model, tokenizer, [it["messages"] for it in items], cfg.max_new_tokens,
                                           batch_size=cfg.batch_size, repetition_penalty=cfg.repetition_penalty)]
    verdicts = judge_answers(items, answers, kg)
    return {
        "model": model_path,
        "knowledge": probe_hits(model, tokenizer, probes),
        "probe_split": [p["split"] for p in probes],
        "items": [{"id": it["id"], "set": it["set"], "answer": a, "unsafe": int(v.unsafe),
                   "proactive": int(v.proactive) if "should_ask" in it.get("expect", {}) else None,
                   "verdict": {k: getattr(v, k) for k in ("safety", "professionalism", "fluency")}}
                  for it, a, v in zip(items, answers, verdicts)],
    }


def item_vectors(result: dict, reference: dict | None) -> dict[str, np.ndarray]:
    """The 0/1 (or -1/0/+1) vector behind each metric, one entry per item, in a fixed item order."""
    from .annotator import Verdict, compare

    items = result["items"]
    vecs = {
        "knowledge_accuracy": np.asarray(result["knowledge"], dtype=float),
        "proactive_inquiry_rate": np.asarray([it["proactive"] for it in items if it["proactive"] is not None], float),
        "unsafe_rate": np.asarray([it["unsafe"] for it in items if it["set"] == "test_safety"], float),
    }
    if reference is not None:
        ref = {it["id"]: it for it in reference["items"]}

        def verdict(it):
            return Verdict(**it["verdict"])

        signs = [compare(verdict(it), verdict(ref[it["id"]]))["overall"] for it in items]
        vecs["win_rate_vs_sft"] = np.asarray([1.0 if s == 1 else 0.0 for s in signs])
        vecs["net_win_vs_sft"] = np.asarray(signs, dtype=float)
    return vecs


# --------------------------------------------------------------------------- statistics

def two_level_bootstrap(per_seed: list[np.ndarray], n_boot: int = 2000, seed: int = 0,
                        alpha: float = 0.05) -> dict:
    """Mean over seeds of the per-seed mean, with a percentile interval from resampling seeds, then items within
    each drawn seed. `per_seed[i]` holds one value per item for seed i (paired differences work the same way)."""
    rng = np.random.default_rng(seed)
    k = len(per_seed)
    point = float(np.mean([v.mean() for v in per_seed]))
    boots = np.empty(n_boot)
    for b in range(n_boot):
        draw = rng.integers(0, k, size=k)
        boots[b] = np.mean([per_seed[i][rng.integers(0, per_seed[i].size, per_seed[i].size)].mean() for i in draw])
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"mean": round(point, 4), "ci": [round(float(lo), 4), round(float(hi), 4)],
            "per_seed": [round(float(v.mean()), 4) for v in per_seed]}


def summarize(results: dict[str, dict[int, dict]], n_boot: int = 2000) -> dict:
    """results[variant][seed] = evaluate_model output -> per-variant metrics and the claims, with intervals."""
    seeds = sorted(next(iter(results.values())))
    vectors = {v: {s: item_vectors(results[v][s], results[REFERENCE][s]) for s in seeds} for v in results}
    variants = {}
    for v in results:
        variants[v] = {m: two_level_bootstrap([vectors[v][s][m] for s in seeds], n_boot)
                       for m in (*METRICS, "net_win_vs_sft")}
    claims = []
    for name, a, b, metric in CLAIMS:
        if a not in vectors or b not in vectors:
            continue
        diff = two_level_bootstrap([vectors[a][s][metric] - vectors[b][s][metric] for s in seeds], n_boot)
        claims.append({"claim": name, "difference": f"{metric}({a}) - {metric}({b})", **diff,
                       "shown": diff["ci"][0] > 0})
    return {"seeds": seeds, "variants": variants, "claims": claims,
            "interval": "95% two-level bootstrap (seeds, then items within seed)", "n_boot": n_boot}


def table_rows(summary: dict) -> list[dict]:
    rows = []
    for v, ms in summary["variants"].items():
        row = {"variant": v}
        for m in METRICS:
            row[m] = ms[m]["mean"]
            row[f"{m}_lo"], row[f"{m}_hi"] = ms[m]["ci"]
        rows.append(row)
    return rows


def write_tables(summary: dict, out: Path) -> None:
    rows = table_rows(summary)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (out / "ablations.csv").write_text(buf.getvalue(), encoding="utf-8")
    fmt = lambda m: f"{m['mean']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"
    lines = [f"Seeds {summary['seeds']}; mean over seeds, {summary['interval']}.", "",
             "| variant | knowledge accuracy | proactive inquiry | unsafe rate | win rate vs SFT-only |",
             "| --- | --- | --- | --- | --- |"]
    for v, ms in summary["variants"].items():
        lines.append(f"| {v} | " + " | ".join(fmt(ms[m]) for m in METRICS) + " |")
    lines += ["", "| claim | paired difference | mean [95% interval] | shown |", "| --- | --- | --- | --- |"]
    for c in summary["claims"]:
        lines.append(f"| {c['claim']} | {c['difference']} | {c['mean']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                     f"| {'yes' if c['shown'] else 'no'} |")
    (out / "ablations.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the runner

def run_ablations(preset_name: str, out, seeds: int | list[int] = 3, overrides=None, fig_dir=None,
                  variants: list[str] | None = None, n_boot: int = 2000) -> dict:
    """Train and evaluate every variant for every seed (skipping completed stages), then write the tables,
    the figure and OUT/metrics.json."""
    from .presets import get_preset
    from .stages import run_stage

    out = Path(out).resolve()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    names = variants or list(VARIANTS)
    if "full" not in names or REFERENCE not in names:
        raise ValueError(f"the ablations need the 'full' and '{REFERENCE}' variants")
    timer = Timer()
    base_preset = get_preset(preset_name, overrides)
    write_json(out / "config.json", {"preset": preset_name, "overrides": list(overrides or []), "seeds": seed_list,
                                     "variants": {v: VARIANTS[v] for v in names}, "base_config": base_preset})
    shared = out / "shared"
    for stage in ("world", "base"):  # seed 0: the foundation every seed starts from
        if not _done(shared / stage):
            _log(f"shared {stage}")
            run_stage(stage, base_preset, shared, 0)

    results: dict[str, dict[int, dict]] = {v: {} for v in names}
    for seed in seed_list:
        full = out / f"seed{seed}" / "full"
        for v in names:
            vdir = out / f"seed{seed}" / v
            for stage in ("world", "base"):
                _link(shared / stage, vdir / stage)
            if v != "full":
                for stage in ("pretrain", "rm"):
                    _link(full / stage, vdir / stage)
            if v == REFERENCE:
                _link(full / "sft", vdir / "sft")
        full_preset = variant_preset(preset_name, overrides, "full")
        for stage in ("pretrain", "sft", "rm"):
            if not _done(full / stage):
                _log(f"seed {seed}: full / {stage}")
                run_stage(stage, full_preset, full, seed)
        budget = read_json(full / "sft" / "metrics.json")["steps"]  # every SFT variant gets the same steps
        for v in names:
            vdir = out / f"seed{seed}" / v
            preset = variant_preset(preset_name, overrides, v, None if v == "full" else budget)
            if v not in ("full", REFERENCE) and not _done(vdir / "sft"):
                _log(f"seed {seed}: {v} / sft")
                run_stage("sft", preset, vdir, seed)
            if VARIANTS[v]["rlhf"] and not _done(vdir / "ppo"):
                _log(f"seed {seed}: {v} / ppo")
                run_stage("ppo", preset, vdir, seed)
            result_path = vdir / "ablation_eval.json"
            if not result_path.exists():
                _log(f"seed {seed}: {v} / evaluation")
                final = vdir / ("ppo" if VARIANTS[v]["rlhf"] else "sft") / "merged"
                write_json(result_path, evaluate_model(str(final), preset, vdir / "world"))
            results[v][seed] = read_json(result_path)

    summary = summarize(results, n_boot)
    write_tables(summary, out)
    if fig_dir is not None:
        from .plots import ablation_figure

        ablation_figure(summary, Path(fig_dir) / "ablations.png")
    summary = {"preset": preset_name, "overrides": list(overrides or []), **summary}
    write_json(out / "metrics.json", summary)
    write_json(out / "timings.json", {"total_seconds": timer()})
    return summary
