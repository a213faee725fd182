"""Figures the notebooks draw (and save under figures/). Every function returns the matplotlib Figure."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from .common import data_file

CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "SimHei",
             "Microsoft YaHei", "PingFang SC", "Heiti SC", "Noto Sans CJK JP")
CJK_FONT_FILES = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                  "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
                  "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc")


def use_cjk_font() -> str | None:
    """Labels are Chinese (departments, flaw names, the world's terms): draw them with a CJK font. Looks for one
    matplotlib knows, then for Noto Sans CJK's file (Debian's fonts-noto-cjk, which `make browser` installs; a
    matplotlib font cache made before it was installed does not list it). Without one, a single warning says what to
    install, instead of one warning per missing glyph. Returns the font's name, or None."""
    import warnings

    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    name = next((n for n in CJK_FONTS if n in known), None)
    if name is None:
        for path in CJK_FONT_FILES:
            if Path(path).is_file():
                font_manager.fontManager.addfont(path)
                known = {f.name for f in font_manager.fontManager.ttflist}
                name = next((n for n in CJK_FONTS if n in known), None)
                break
    if name is None:
        warnings.warn("no CJK font found: Chinese labels in the figures will show as boxes; install one "
                      "(e.g. apt-get install fonts-noto-cjk)", stacklevel=2)
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        return None
    plt.rcParams["font.sans-serif"] = [name, "DejaVu Sans"]
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["axes.unicode_minus"] = False  # CJK fonts often lack U+2212
    return name


use_cjk_font()

# The paper's three shades for stacked win/tie/loss bars.
WTL_COLORS = {"win": "#2f6db5", "tie": "#b9c7d9", "loss": "#d9822b"}


def read_log(path: str | Path, key: str) -> tuple[list[int], list[float]]:
    steps, vals = [], []
    p = Path(path)
    if not p.exists():
        return steps, vals
    for line in p.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if key in rec and rec[key] is not None:
            steps.append(rec.get("step", len(steps)))
            vals.append(rec[key])
    return steps, vals


def save(fig, fig_dir: str | Path | None, name: str) -> None:
    """Write FIG_DIR/NAME.png when FIG_DIR is set. Returns nothing: a notebook cell ending in save() would
    otherwise show the figure twice (once as the cell's value, once by the inline backend)."""
    if fig_dir:
        Path(fig_dir).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(fig_dir) / f"{name}.png", dpi=120, bbox_inches="tight")


def curves(panels: list[tuple[str | Path, str, str]], title: str = ""):
    """One small panel per (log file, key, label)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (path, key, label) in zip(axes[0], panels):
        x, y = read_log(path, key)
        ax.plot(x, y, lw=1.5)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()] if p.exists() else []


def rm_vs_judge(probe_log: str | Path, title: str = "Reward model vs rule judge on a fixed held-out probe set"):
    """PPO's judge_probe.jsonl over steps: the reward model's mean score of the policy's greedy answers (left axis)
    against the rule judge's mean scores of the same answers (right axis), and the judge's unsafe rate. The RM
    score climbing while the judge's scores stay flat or fall is over-optimisation of the reward model."""
    rows = read_jsonl(probe_log)
    steps = [r["step"] for r in rows]
    fig, (ax, ax_unsafe) = plt.subplots(1, 2, figsize=(10.0, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    ax.plot(steps, [r["rm_score"] for r in rows], color="#2f6db5", lw=2, marker="o", ms=3, label="RM score")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("reward-model score", color="#2f6db5")
    ax.grid(alpha=0.3)
    judge = ax.twinx()
    for key, color in (("judge_safety", "#3a9a5b"), ("judge_professionalism", "#d9822b"),
                       ("judge_fluency", "#8a8a8a")):
        judge.plot(steps, [r[key] for r in rows], color=color, lw=1.4, ls="--", marker="s", ms=3,
                   label=key.replace("judge_", "judge: "))
    judge.set_ylabel("rule-judge score (0-1)")
    judge.set_ylim(-0.02, 1.02)
    handles = ax.get_legend_handles_labels()[0] + judge.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=2, loc="upper center",
              bbox_to_anchor=(0.5, -0.3))
    ax.set_title("RM score (left) vs judge scores (right)", fontsize=9)
    ax_unsafe.plot(steps, [r["judge_unsafe_rate"] for r in rows], color="#c0392b", lw=1.6, marker="o", ms=3)
    ax_unsafe.set_ylim(-0.02, 1.02)
    ax_unsafe.set_xlabel("PPO step")
    ax_unsafe.set_title("rule judge: unsafe-answer rate", fontsize=9)
    ax_unsafe.grid(alpha=0.3)
    n = rows[0].get("n") if rows else 0
    fig.suptitle(f"{title} ({n} prompts)" if rows else f"{title}: no probe rows in {probe_log}", fontsize=10)
    fig.tight_layout(w_pad=3.0)
    return fig


def bars(values: dict[str, float], title: str, ylabel: str = "", ylim: tuple | None = None, color: str = "#2f6db5"):
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(values), 3.2))
    names = list(values)
    ax.bar(names, [values[n] if values[n] is not None else 0 for n in names], color=color)
    for i, n in enumerate(names):
        if values[n] is not None:
            ax.text(i, values[n], f"{values[n]:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def before_after(before: dict, after: dict, keys: list[str], title: str):
    """Grouped bars of the same measures before and after a stage."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(keys), 3.2))
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [before.get(k, 0) for k in keys], 0.4, label="before", color="#b9c7d9")
    ax.bar(x + 0.2, [after.get(k, 0) for k in keys], 0.4, label="after", color="#2f6db5")
    ax.set_xticks(x, [k.split("/")[-1] for k in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance (4 choices)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def win_tie_loss(rows: list[tuple[str, float, float, float]], title: str, ax=None):
    """Stacked horizontal bars in the paper's style: one row per opponent, (label, win%, tie%, loss%)."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(rows) + 1.2))
    labels = [r[0] for r in rows]
    left = [0.0] * len(rows)
    for j, part in enumerate(("win", "tie", "loss")):
        vals = [r[1 + j] for r in rows]
        ax.barh(labels, vals, left=left, color=WTL_COLORS[part], label=f"Ours {part.title()}" if part != "tie" else "Tie")
        for i, v in enumerate(vals):
            if v >= 6:
                ax.text(left[i] + v / 2, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="white" if part != "tie" else "black")
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("%")
    ax.set_title(title)
    ax.legend(ncol=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08) if own else (0.5, -0.45))
    if own:
        fig.tight_layout()
        return fig
    return ax.figure


PAPER_BASELINES = ("BenTsao", "DoctorGLM", "Ziya-LLaMA", "HuatuoGPT", "ChatGPT")
PAPER_PANELS = {"4a": "CMtMedQA test: ability & fluency", "4b": "CMtMedQA test: safety",
                "5a": "Huatuo-26M test: ability & fluency", "5b": "Huatuo-26M test: safety"}
PAPER_CITE = "Zhongjing (Yang et al., AAAI 2024, arXiv:2308.03549)"
# The paper's Figures 4 and 5 as numbers, shipped in the repository (data/README.md says how they were read)
PAPER_WTL_CSV = ("paper", "zhongjing_reported_win_tie_loss.csv")


def read_paper_wtl(csv_path: str | Path | None = None) -> dict[str, list[tuple[str, float, float, float, bool]]]:
    """The paper's Figures 4-5 from the CSV (default: the repository's data/paper/zhongjing_reported_win_tie_loss.csv):
    {panel: [(baseline, win, tie, loss, measured_from_bar_width)]}, baselines in the paper's order (top to bottom)."""
    import csv

    with open(csv_path or data_file(*PAPER_WTL_CSV), newline="", encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    panels: dict[str, list] = {}
    for fig in PAPER_PANELS:
        rows = {r["baseline"]: r for r in recs if r["figure"] == fig}
        order = [b for b in PAPER_BASELINES if b in rows] + sorted(set(rows) - set(PAPER_BASELINES))
        panels[fig] = [(b, float(rows[b]["win_pct"]), float(rows[b]["tie_pct"]), float(rows[b]["loss_pct"]),
                        rows[b].get("value_source") == "bar_width_measured") for b in order]
    return panels


def _ours_panel(ax, stats: dict, title: str):
    """Our win/tie/loss per opponent ({opponent: {win_pct, tie_pct, loss_pct, ci: {win_pct: [lo, hi]}}}, as a
    dimension entry of `zj judge`'s JSON), with the win share's interval as an error bar."""
    rows = [(opp, s["win_pct"] or 0.0, s["tie_pct"] or 0.0, s["loss_pct"] or 0.0) for opp, s in stats.items()]
    win_tie_loss(rows, title, ax=ax)
    for i, (opp, s) in enumerate(stats.items()):
        ci = (s.get("ci") or {}).get("win_pct") or s.get("win_ci")
        if ci and s.get("win_pct") is not None:
            ax.errorbar(s["win_pct"], i, xerr=[[s["win_pct"] - ci[0]], [ci[1] - s["win_pct"]]], fmt="none",
                        ecolor="black", elinewidth=1.2, capsize=3)
        if s.get("n"):
            ax.text(101, i, f"n={s['n']}", va="center", fontsize=7, color="grey")


def paper_figures(csv_path: str | Path | None = None, ours: dict | None = None, png: str | Path | None = None,
                  ours_sets: dict | None = None):
    """The paper's Figures 4 and 5 redrawn from `csv_path` (default: the repository's
    `data/paper/zhongjing_reported_win_tie_loss.csv`): four panels
    (4a/4b/5a/5b), stacked "Ours Win" / "Tie" / "Ours Loss" bars, baselines top to bottom as in the paper; a
    dagger marks rows whose values were measured from bar widths (their printed labels do not sum to 100).

    `ours` = {panel ("4a".."5b"): {opponent: dimension entry of `zj judge`'s JSON}} puts the same panel from our
    runs beside each paper panel, with the bootstrap 95% interval of the win share as an error bar; panels
    missing from `ours` say so. `ours_sets` = {panel: what our panel judged, e.g. "ppo on CMtMedQA test
    (multi-turn)"} goes in its title: our panels never borrow the paper's test-set names. Writes `png` when given.
    Returns the Figure."""
    paper = read_paper_wtl(csv_path)
    cols = 4 if ours else 2
    fig, axes = plt.subplots(2, cols, figsize=((5.0 if ours else 6.0) * cols, 7.4), squeeze=False)
    for k, panel in enumerate(PAPER_PANELS):
        r, c = divmod(k, 2)
        ax = axes[r][c * 2 if ours else c]
        rows = [(b + ("†" if measured else ""), w, t, l) for b, w, t, l, measured in paper[panel]]
        win_tie_loss(rows, f"({panel}) {PAPER_PANELS[panel]}\nreported by the paper", ax=ax)
        if ours:
            ax2 = axes[r][c * 2 + 1]
            if ours.get(panel):
                what = (ours_sets or {}).get(panel)
                _ours_panel(ax2, ours[panel], f"({panel}) ours: {PAPER_PANELS[panel].split(': ', 1)[1]}\n"
                            + (f"{what}\n" if what else "") + "(error bars: 95% bootstrap CI of win%)")
            else:
                ax2.set_axis_off()
                ax2.text(0.5, 0.5, f"({panel}) not run by us", ha="center", va="center", transform=ax2.transAxes)
    for ax in fig.axes:
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 0.955), fontsize=9, frameon=False)
    fig.suptitle(f"{PAPER_CITE}, Figures 4 (CMtMedQA) and 5 (Huatuo-26M): Zhongjing vs baselines, win/tie/loss %"
                 + (" — beside our runs" if ours else ""), fontsize=11)
    fig.text(0.01, 0.005, "Paper values read off the published figures "
             "(data/paper/zhongjing_reported_win_tie_loss.csv), "
             "judged by GPT-4 and doctors. † measured from bar widths: the printed labels do not sum to 100.",
             fontsize=7.5, color="dimgrey")
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    if png:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120, bbox_inches="tight")
    return fig


ABLATION_PANELS = (("knowledge_accuracy", "knowledge accuracy"), ("proactive_inquiry_rate", "proactive inquiry"),
                   ("unsafe_rate", "unsafe-answer rate"), ("win_rate_vs_sft", "win rate vs SFT-only"))


def ablation_figure(summary: dict, png: str | Path | None = None):
    """One panel per metric: each variant's mean over seeds with its 95% interval, and the per-seed values."""
    variants = list(summary["variants"])
    fig, axes = plt.subplots(1, len(ABLATION_PANELS), figsize=(4.0 * len(ABLATION_PANELS), 3.6))
    for ax, (key, label) in zip(axes, ABLATION_PANELS):
        for i, v in enumerate(variants):
            m = summary["variants"][v][key]
            color = "#2f6db5" if v == "full" else "#8a8a8a"
            ax.bar(i, m["mean"], color=color, alpha=0.75)
            ax.errorbar(i, m["mean"], yerr=[[m["mean"] - m["ci"][0]], [m["ci"][1] - m["mean"]]], color="black",
                        capsize=4, lw=1.2)
            ax.scatter([i] * len(m["per_seed"]), m["per_seed"], s=12, color="black", zorder=3)
        ax.set_xticks(range(len(variants)), [v.replace("_", "\n") for v in variants], fontsize=8)
        ax.set_title(label)
        ax.set_ylim(0, 1)
    fig.suptitle(f"Ablations: mean over seeds {summary['seeds']}, 95% interval; dots = single seeds", fontsize=10)
    fig.tight_layout()
    if png:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120, bbox_inches="tight")
    return fig


def accuracy_by_epoch(rows: list[dict], title: str = "reward model: pairwise accuracy by epoch"):
    """`reward.accuracy_by_epoch` rows: train-batch and dev accuracy per epoch, with chance (0.5) dotted."""
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for key, label, color in (("train_accuracy", "train (batches, during training)", "#8a8a8a"),
                              ("dev_accuracy", "dev (held-out prompts)", "#2f6db5")):
        pts = [(r["epoch"], r[key]) for r in rows if r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", lw=1.6, color=color, label=label)
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pairwise accuracy")
    ax.set_xticks([r["epoch"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gold_vs_flawed(table: dict[str, dict], title: str = "reward model: gold vs flawed answers (held-out prompts)"):
    """`reward.flaw_table`: mean score of the gold and of the flawed answer per flaw type, and the share of prompts
    where the gold one scores higher above each pair of bars."""
    import numpy as np

    names = list(table)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(names), 3.4))
    ax.bar(x - 0.2, [table[n]["gold_mean"] for n in names], 0.4, label="gold answer", color="#3a9a5b")
    ax.bar(x + 0.2, [table[n]["flawed_mean"] for n in names], 0.4, label="flawed answer", color="#d9822b")
    top = max([max(table[n]["gold_mean"], table[n]["flawed_mean"]) for n in names] + [0.0])
    for i, n in enumerate(names):
        ax.text(i, top, f"gold higher\n{table[n]['gold_higher']:.0%} of {table[n]['n']}", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("reward-model score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(y=0.25)
    fig.tight_layout()
    return fig


def kl_sweep(rows: list[dict], title: str = "PPO: final KL vs final score, one run per kl_coef"):
    """`kl_sweep.run_kl_sweep` rows: each run's KL to the reference against its normalised reward-model score (both
    means over its last steps), labelled with its beta; the runs joined in beta order."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    rows = sorted(rows, key=lambda r: r["kl_coef"])
    ax.plot([r["kl"] for r in rows], [r["score_normalized"] for r in rows], color="#b9c7d9", lw=1, zorder=1)
    ax.scatter([r["kl"] for r in rows], [r["score_normalized"] for r in rows], color="#2f6db5", zorder=2)
    for r in rows:
        ax.annotate(f"β={r['kl_coef']:g}", (r["kl"], r["score_normalized"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.margins(x=0.15, y=0.15)  # room for the labels
    ax.set_xlabel("KL(policy || reference) per answer, nats")
    ax.set_ylabel("reward-model score (SFT-answer stds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


LENGTH_PANELS = (("turns", "patient turns per dialogue"), ("user_chars", "characters per patient turn"),
                 ("doctor_chars", "characters per doctor turn"), ("user_tokens", "tokens per patient turn"),
                 ("doctor_tokens", "tokens per doctor turn"))


def length_distributions(stats: dict[str, dict]):
    """corpus_stats.describe() of several corpora (name -> stats): each length's distribution per corpus, each
    normalised on its own (seaborn's histplot, common_norm=False: corpora of different sizes compare by shape),
    and the share of doctor turns that ask a question."""
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(2, 3, figsize=(14, 6.4))
    axes = axes.ravel()
    for ax, (key, title) in zip(axes, LENGTH_PANELS):
        frame = pd.DataFrame([(name, v) for name, s in stats.items() for v in s[key]], columns=["corpus", key])
        sns.histplot(frame, x=key, hue="corpus", stat="density", common_norm=False, element="step", ax=ax,
                     discrete=key == "turns", bins="auto" if key == "turns" else 30)
        ax.set_title(title)
        ax.set_xlabel("")
    axes[5].bar(list(stats), [s["inquiry_rate"] or 0 for s in stats.values()], color="#2f6db5")
    axes[5].set_title("doctor turns that ask a question")
    fig.tight_layout()
    return fig


def margin_distribution(rows: list[dict], title: str = "reward model: gold minus flawed score, per held-out prompt"):
    """reward.gold_vs_flawed rows: the distribution of (gold score - flawed score) per flaw type, a box and every
    prompt as a dot; right of 0 the reward model prefers the gold answer."""
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame({"flaw": [r["flaw"] for r in rows], "margin": [r["gold"] - r["flawed"] for r in rows]})
    order = sorted(frame["flaw"].unique())
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.7 * len(order)))
    import warnings

    with warnings.catch_warnings():  # seaborn 0.13 passes boxplot's `vert`, which matplotlib 3.11 deprecates
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        sns.boxplot(frame, x="margin", y="flaw", order=order, color="#d9e3f0", showfliers=False, ax=ax)
    sns.stripplot(frame, x="margin", y="flaw", order=order, color="#2f6db5", size=3, alpha=0.6, ax=ax)
    ax.axvline(0, color="#c0392b", lw=1)
    ax.set_xlabel("gold score - flawed score")
    ax.set_ylabel("")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
