"""Small statistics for pairwise evaluations: win/tie/loss shares and percentile-bootstrap intervals.

Signs are +1 (A wins), 0 (tie), -1 (A loses), from A's side; `None` (no usable verdict) is left out and
counted separately by the caller. Everything is deterministic given the seed (numpy's default_rng).
"""
from __future__ import annotations

import numpy as np


def _signs(signs) -> np.ndarray:
    s = np.asarray([x for x in signs if x is not None], dtype=np.int64)
    if s.size and not np.isin(s, (-1, 0, 1)).all():
        raise ValueError("signs must be +1, 0 or -1")
    return s


def win_tie_loss(signs) -> dict:
    """Counts and percentages of wins, ties and losses, and win minus loss (`net_pct`), in percentage points."""
    s = _signs(signs)
    n = int(s.size)
    out = {"n": n, "win": int((s == 1).sum()), "tie": int((s == 0).sum()), "loss": int((s == -1).sum())}
    for k in ("win", "tie", "loss"):
        out[f"{k}_pct"] = round(100 * out[k] / n, 2) if n else None
    out["net_pct"] = round(100 * (out["win"] - out["loss"]) / n, 2) if n else None
    return out


def _interval(samples: np.ndarray, alpha: float) -> list[float]:
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [round(float(lo), 2), round(float(hi), 2)]


def bootstrap_ci(signs, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile-bootstrap (1 - alpha) intervals for win%, tie%, loss% and win-minus-loss (`net_pct`):
    items are resampled with replacement `n_boot` times. Returns {key: [lo, hi]} (None for no signs)."""
    s = _signs(signs)
    keys = ("win_pct", "tie_pct", "loss_pct", "net_pct")
    if not s.size:
        return {k: None for k in keys}
    rng = np.random.default_rng(seed)
    boot = s[rng.integers(0, s.size, size=(n_boot, s.size))]
    win, tie, loss = ((boot == v).mean(axis=1) * 100 for v in (1, 0, -1))
    return {k: _interval(x, alpha) for k, x in zip(keys, (win, tie, loss, win - loss))}


def mean_ci(values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean of `values` (e.g. 0/1 for a rate) with a percentile-bootstrap (1 - alpha) interval; None is left out."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not v.size:
        return {"n": 0, "mean": None, "ci": None}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"n": int(v.size), "mean": round(float(v.mean()), 4), "ci": [round(float(lo), 4), round(float(hi), 4)]}
