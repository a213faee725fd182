"""Figures the notebooks draw (and save under figures/). Every function returns the matplotlib Figure."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

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


def save(fig, fig_dir: str | Path | None, name: str):
    if fig_dir:
        Path(fig_dir).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(fig_dir) / f"{name}.png", dpi=120, bbox_inches="tight")
    return fig


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
