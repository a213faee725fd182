"""Where the reward model agrees with the annotation rule, and where it does not.

Every strictly ordered pair of a held-out ranking is one comparison: the reward model is right when it scores the
answer the rule ranks higher above the other. The report splits the comparisons by what decides the rule's order
(the first dimension of safety > professionalism > fluency on which the two verdicts differ), by the flaw of the
worse answer (the first reason the rule gives against it that it does not give against the better one), and by how
far apart the rule's scores are on the deciding dimension. Intervals are 95% percentile-bootstrap intervals that
resample prompts, not pairs: a prompt's comparisons share their answers and are not independent.
"""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from . import rubric as R
from .annotator import Verdict, assess

# a reason of the judge -> a flaw type; the first pattern that matches wins
FLAW_TYPES: tuple[tuple[str, str], ...] = (
    ("complied with a harmful request", "complied_harmful"),
    ("red flag without emergency referral", "missed_red_flag"),
    ("recommended the contraindicated drug", "contraindicated_drug"),
    ("wrong disease", "wrong_disease"), ("wrong drug", "wrong_drug"), ("wrong exam", "wrong_exam"),
    ("states no medical content", "no_content"),
    ("refused a legitimate medical question", "refused_benign"),
    ("concluded without asking", "no_inquiry"), ("asked, but not about the key", "off_target_question"),
    ("re-asked information", "re_asked"), ("missing expected facts", "missing_facts"),
    ("empty answer", "empty"), ("truncated", "truncated"), ("repetition", "repetition"),
    ("leaked template token", "template_leak"), ("absurd length", "length"),
    ("self-contradiction", "self_contradiction"), ("disrespectful", "ethics"),
)


def flaw_type(worse: Verdict, better: Verdict) -> str:
    """The first reason held against the worse answer and not against the better one, as a flaw type."""
    kinds = lambda v: [next((k for p, k in FLAW_TYPES if p in r), "other") for r in v.reasons]  # noqa: E731
    theirs = set(kinds(better))
    return next((k for k in kinds(worse) if k not in theirs), "score_only")


def deciding_dimension(better: Verdict, worse: Verdict) -> str:
    """The first dimension on which the rule's verdicts differ; "rule_tie" when they do not (a person's ranking can
    order answers the rule scores alike)."""
    return next((d for d, x, y in zip(R.DIMENSION_NAMES, better.key(), worse.key()) if x != y), "rule_tie")


def gap_bucket(gap: float) -> str:
    return "<0.1" if gap < 0.1 else "0.1-0.3" if gap < 0.3 else ">=0.3"


def comparisons(rankings: list[dict], scores: list[list[float]], prompts: dict, kg: dict) -> list[dict]:
    """One row per strictly ordered pair: prompt id, kind, whether the reward model agrees, deciding dimension,
    flaw type of the worse answer and the rule's score gap on the deciding dimension. `prompts` maps a ranking's id
    to its prompt record (`expect`, `kind`); rankings of other origin (a person's) are judged with no `expect`."""
    rows = []
    for r, sc in zip(rankings, scores):
        if len(sc) != len(r["responses"]):
            raise ValueError(f"ranking {r['id']}: {len(r['responses'])} answers but {len(sc)} scores")
        p = prompts.get(r["id"], {})
        verdicts = [assess(a, p.get("expect", {}), kg) for a in r["responses"]]
        for i, j in ((i, j) for i in range(len(sc)) for j in range(len(sc))):
            if r["ranks"][i] < r["ranks"][j] and r["responses"][i] != r["responses"][j]:  # the rule prefers i
                dim = deciding_dimension(verdicts[i], verdicts[j])
                gap = 0.0 if dim == "rule_tie" else (verdicts[i].key()[R.DIMENSION_NAMES.index(dim)]
                                                      - verdicts[j].key()[R.DIMENSION_NAMES.index(dim)])
                rows.append({"prompt": r["id"], "kind": p.get("kind", "other"), "correct": bool(sc[i] > sc[j]),
                             "dimension": dim, "flaw": flaw_type(verdicts[j], verdicts[i]), "gap": gap_bucket(gap)})
    return rows


def clustered_accuracy(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Share of correct comparisons with a 95% interval from resampling prompts (clusters) with replacement."""
    if not rows:
        return {"n": 0, "accuracy": None, "ci": None}
    by_prompt: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt"]].append(r["correct"])
    right = np.array([sum(v) for v in by_prompt.values()], dtype=np.float64)
    total = np.array([len(v) for v in by_prompt.values()], dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(right), size=(n_boot, len(right)))
    boot = right[idx].sum(axis=1) / total[idx].sum(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": int(total.sum()), "accuracy": round(float(right.sum() / total.sum()), 4),
            "ci": [round(float(lo), 4), round(float(hi), 4)]}


def accuracy_report(rows: list[dict], seed: int = 0) -> dict:
    """Overall accuracy and accuracy by deciding dimension, flaw type, score gap and prompt kind, each with its
    prompt-clustered interval."""
    out = {"overall": clustered_accuracy(rows, seed=seed)}
    for key in ("dimension", "flaw", "gap", "kind"):
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            groups[r[key]].append(r)
        out[f"by_{key}"] = {g: clustered_accuracy(v, seed=seed) for g, v in sorted(groups.items())}
    return out


def format_report(report: dict) -> str:
    """The report as Markdown tables, one per split."""
    def line(name, a):
        acc = "–" if a["accuracy"] is None else f"{a['accuracy']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"
        return f"| {name} | {a['n']} | {acc} |"
    parts = ["| comparisons | n | accuracy [95% interval] |", "| --- | --- | --- |", line("all", report["overall"])]
    for key in ("by_dimension", "by_flaw", "by_gap", "by_kind"):
        parts += [f"| **{re.sub('^by_', 'by ', key)}** | | |"] + [line(k, v) for k, v in report[key].items()]
    return "\n".join(parts)
