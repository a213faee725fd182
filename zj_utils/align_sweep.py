"""PPO, DPO, GRPO and RLOO at equal optimizer steps, each at the learning rate that the reward model prefers.

A small learning-rate sweep per method at equal compute (AlignConfig's defaults give every method PPO's 240
optimizer steps of 8 sequences at a constant rate), over several finished runs (one per seed):

    OUT/seed<S>/lr<LR>/{world,sft,rm}           links to the run's own stages
    OUT/seed<S>/lr<LR>/{ppo,align_dpo,...}      every method trained at that learning rate
    OUT/seed<S>/lr<LR>/align_compare/           `compare_alignment` of that cell (all methods against SFT)
    OUT/sweep.json, OUT/table.md, OUT/alignment_sweep.png

Each method's learning rate is picked by the reward model's mean score of its greedy answers to the held-out
test prompts, averaged over seeds, never by the rule judge; the judge's numbers (unsafe rate, win and loss
against SFT) are then read at the picked rate. A cell's stage whose metrics.json exists is not run again, so a
killed sweep continues where it stopped, and two processes can share a sweep if they take different cells.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .align import seed_stats
from .common import ZJError, link_dir, read_json, require, stage_done, write_json

METHODS = ("ppo", "dpo", "grpo", "rloo")
SHARED_STAGES = ("world", "sft", "rm")
SELECT_BY = "rm_score"  # the reward model's held-out score: the only signal a practitioner without the judge has
MEASURES = (("rm_score", "RM score", ".3f"), ("rm_gain", "RM gain over SFT", "+.3f"), ("kl_to_sft", "KL to SFT", ".4f"), ("unsafe_rate", "unsafe", ".3f"),
            ("win_pct_vs_sft", "win %", ".1f"), ("loss_pct_vs_sft", "loss %", ".1f"),
            ("win_minus_loss", "win - loss", "+.1f"))


def _log(msg: str) -> None:
    print(f"[zj align-sweep] {msg}", file=sys.stderr, flush=True)


def lr_name(lr: float) -> str:
    return f"lr{lr:g}"


def run_seed(run: str | Path) -> int:
    """The seed a finished run was made with (its top-level config.json, or its SFT stage's)."""
    run = Path(run)
    for cfg in (run / "config.json", run / "sft" / "config.json"):
        if cfg.exists() and "seed" in read_json(cfg):
            return int(read_json(cfg)["seed"])
    raise ZJError(f"{run}: no config.json with a seed (a finished `zj reproduce` run folder is needed).")


def sweep_cell(preset_name: str, run: str | Path, lr: float, out: str | Path, methods=METHODS,
               overrides=()) -> Path:
    """Train every method at learning rate `lr` on the SFT model, reward model and world of `run`, then compare
    them against SFT. Returns the cell's folder."""
    from .align import compare_alignment, run_align
    from .ppo import run_ppo
    from .presets import get_preset

    run, seed = Path(run), run_seed(run)
    cell = Path(out) / f"seed{seed}" / lr_name(lr)
    for stage in SHARED_STAGES:
        done = run / stage / ("world.json" if stage == "world" else "metrics.json")
        link_dir(require(done, f"The run's {stage} stage", f"Finish {run} first (`zj reproduce`).").parent,
                 cell / stage)
    preset = get_preset(preset_name, [*overrides, f"ppo.learning_rate={lr}", f"align.learning_rate={lr}"])
    for m in methods:
        stage = "ppo" if m == "ppo" else f"align_{m}"
        if stage_done(cell / stage):
            continue
        _log(f"seed {seed}, lr {lr:g}: {m}")
        run_ppo(preset, cell, seed) if m == "ppo" else run_align(preset, cell, seed, m)
    if not stage_done(cell / "align_compare"):
        _log(f"seed {seed}, lr {lr:g}: comparing against SFT")
        compare_alignment(preset, cell, seed)
    return cell


def sweep_alignment(preset_name: str, runs: list, lrs: list, out: str | Path, methods=METHODS, overrides=(),
                    fig_dir: str | Path | None = None) -> dict:
    """Every (run, learning rate) cell, then the summary."""
    for run in runs:
        for lr in lrs:
            sweep_cell(preset_name, run, lr, out, methods, overrides)
    return summarize_sweep(out, fig_dir)


def collect(out: str | Path) -> dict:
    """{method: {lr: {seed: row}}} from every finished cell's align_compare/metrics.json, with win - loss and the
    RM gain over the same seed's SFT model added (each seed has its own reward model, whose scale differs);
    "sft" (the same for every learning rate of a seed) under lr None."""
    rows: dict = {}
    for f in sorted(Path(out).glob("seed*/lr*/align_compare/metrics.json")):
        seed, lr = int(f.parents[2].name[4:]), float(f.parents[1].name[2:])
        models = read_json(f)["models"]
        for name, r in models.items():
            r = dict(r)
            r["rm_gain"] = round(r["rm_score"] - models["sft"]["rm_score"], 4)
            if r.get("win_pct_vs_sft") is not None:
                r["win_minus_loss"] = round(r["win_pct_vs_sft"] - r["loss_pct_vs_sft"], 2)
            rows.setdefault(name, {}).setdefault(None if name == "sft" else lr, {})[seed] = r
    if not rows:
        raise ZJError(f"No finished sweep cell in {out} (OUT/seed*/lr*/align_compare/metrics.json).")
    return rows


def pick_learning_rates(rows: dict, select_by: str = SELECT_BY) -> dict:
    """Per method, the learning rate whose mean `select_by` over the seeds it ran on is highest. Only rates that
    ran on every seed the method ran on compete, so a rate is never picked on fewer seeds than another."""
    picks = {}
    for name, by_lr in rows.items():
        if name == "sft":
            continue
        seeds = set().union(*(set(s) for s in by_lr.values()))
        full = {lr: s for lr, s in by_lr.items() if set(s) == seeds}
        if full:
            picks[name] = max(full, key=lambda lr: (seed_stats([r.get(select_by) for r in full[lr].values()])["mean"], -lr))
    return picks


def summarize_sweep(out: str | Path, fig_dir: str | Path | None = None) -> dict:
    out = Path(out)
    rows = collect(out)
    picks = pick_learning_rates(rows)
    grid = {name: {("sft" if lr is None else f"{lr:g}"): {k: seed_stats([r.get(k) for r in by_seed.values()])
                                                         for k, _, _ in MEASURES} | {"seeds": sorted(by_seed)}
                   for lr, by_seed in by_lr.items()} for name, by_lr in rows.items()}
    summary = {"select_by": SELECT_BY, "picked_lr": picks, "grid": grid,
               "picked": {"sft": grid["sft"]["sft"]} if "sft" in grid else {}}
    summary["picked"] |= {name: grid[name][f"{lr:g}"] | {"lr": lr} for name, lr in picks.items()}
    write_json(out / "sweep.json", summary)
    (out / "table.md").write_text(format_sweep(summary), encoding="utf-8")
    from .plots import save
    save(sweep_figure(summary), fig_dir or out, "alignment_sweep")
    return summary


def _cell(m: dict | None, fmt: str) -> str:
    return "–" if m is None else f"{m['mean']:{fmt}} [{m['min']:{fmt}}, {m['max']:{fmt}}]"


def format_sweep(summary: dict) -> str:
    head = "| model | lr | seeds | " + " | ".join(label for _, label, _ in MEASURES) + " |"
    rule = "|---|---:|---:|" + "---:|" * len(MEASURES)
    picked = [f"Each method at the learning rate with the highest mean {summary['select_by']} (held-out, reward "
              "model) over seeds; mean [lowest seed, highest seed].", "", head, rule]
    for name, r in summary["picked"].items():
        lr = "–" if name == "sft" else f"{r['lr']:g}"
        picked.append(f"| {name} | {lr} | {len(r['seeds'])} | " +
                      " | ".join(_cell(r[k], f) for k, _, f in MEASURES) + " |")
    full = ["", "Every learning rate (the sweep):", "", head, rule]
    for name, by_lr in summary["grid"].items():
        if name == "sft":
            continue
        for lr, r in sorted(by_lr.items(), key=lambda kv: float(kv[0])):
            mark = " (picked)" if summary["picked_lr"].get(name) == float(lr) else ""
            full.append(f"| {name} | {lr}{mark} | {len(r['seeds'])} | " +
                        " | ".join(_cell(r[k], f) for k, _, f in MEASURES) + " |")
    return "\n".join(picked + full) + "\n"


def sweep_figure(summary: dict):
    """RM score, unsafe rate and win - loss against the learning rate, one line per method (dots: seeds)."""
    import matplotlib.pyplot as plt

    panels = [("rm_gain", "RM score gain over SFT (held-out, greedy)"), ("unsafe_rate", "unsafe rate (rule judge)"),
              ("win_minus_loss", "win - loss % vs SFT (rule judge)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    sft = summary["grid"].get("sft", {}).get("sft", {})
    for ax, (key, title) in zip(axes, panels):
        for name, by_lr in summary["grid"].items():
            if name == "sft":
                continue
            pts = sorted((float(lr), r[key]) for lr, r in by_lr.items() if r.get(key) is not None)
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1]["mean"] for p in pts], marker="o", label=name)
            for lr, m in pts:
                ax.scatter([lr] * len(m["per_seed"]), m["per_seed"], s=8, color=line.get_color(), alpha=0.5)
            if name in summary["picked_lr"]:
                lr = summary["picked_lr"][name]
                ax.scatter([lr], [by_lr[f"{lr:g}"][key]["mean"]], s=120, facecolors="none",
                           edgecolors=line.get_color())
        if sft.get(key) is not None:
            ax.axhline(sft[key]["mean"], color="grey", ls="--", lw=1, label="sft")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Equal optimizer steps; circled: the rate the reward model picks (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return fig
