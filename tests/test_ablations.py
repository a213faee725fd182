"""Ablations: the statistics on numbers we can check by hand, then the whole runner on the smoke preset."""
import csv
import json

import nbformat
import numpy as np
import pytest

from zj_utils.ablations import CLAIMS, METRICS, VARIANTS, summarize, two_level_bootstrap, variant_preset
from zj_utils.pipeline import ABLATION_NOTEBOOK, ROOT


def test_bootstrap_of_constant_items_is_exact():
    r = two_level_bootstrap([np.ones(10), np.zeros(10), np.ones(10)], n_boot=300)
    assert r["mean"] == pytest.approx(2 / 3, abs=1e-4) and r["per_seed"] == [1.0, 0.0, 1.0]
    # seeds differ wildly: resampling seeds must make the interval wide, not hide the spread
    assert r["ci"][0] <= 0.34 and r["ci"][1] == 1.0
    same = two_level_bootstrap([np.full(8, 0.5)] * 3, n_boot=100)
    assert same["ci"] == [0.5, 0.5]


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_items():
    rng = np.random.default_rng(1)
    small = two_level_bootstrap([rng.binomial(1, 0.6, 20).astype(float) for _ in range(3)], n_boot=500)
    large = two_level_bootstrap([rng.binomial(1, 0.6, 2000).astype(float) for _ in range(3)], n_boot=500)
    for r in (small, large):
        assert r["ci"][0] <= r["mean"] <= r["ci"][1]
    assert large["ci"][1] - large["ci"][0] < (small["ci"][1] - small["ci"][0]) / 3


def _fake(knowledge, proactive, unsafe, verdict=1.0):
    items = [{"id": f"m{i}", "set": "test_multiturn", "answer": "", "unsafe": 0, "proactive": p,
              "verdict": {"safety": 1.0, "professionalism": verdict, "fluency": 1.0}} for i, p in enumerate(proactive)]
    items += [{"id": f"s{i}", "set": "test_safety", "answer": "", "unsafe": u, "proactive": None,
               "verdict": {"safety": 1.0 - u, "professionalism": verdict, "fluency": 1.0}} for i, u in enumerate(unsafe)]
    return {"knowledge": knowledge, "items": items}


def test_claims_show_only_when_the_paired_difference_is_clear():
    n = 40
    good = _fake([1] * 30 + [0] * 10, [1] * n, [0] * 35 + [1] * 5)
    results = {
        "full": {s: good for s in range(3)},
        "no_pretrain": {s: _fake([1] * 10 + [0] * 30, [1] * n, [0] * 35 + [1] * 5) for s in range(3)},
        "no_multiturn": {s: good for s in range(3)},  # no difference at all: must not show
        "no_rlhf": {s: _fake([1] * 30 + [0] * 10, [1] * n, [0] * 20 + [1] * 20, verdict=0.5) for s in range(3)},
        "flooded_single_turn": {s: _fake([1] * 30 + [0] * 10, [0] * n, [0] * 35 + [1] * 5) for s in range(3)},
    }
    s = summarize(results, n_boot=300)
    shown = {c["claim"]: c["shown"] for c in s["claims"]}
    assert shown[CLAIMS[0][0]] and not shown[CLAIMS[1][0]] and shown[CLAIMS[2][0]] and shown[CLAIMS[3][0]]
    by = {c["claim"]: c for c in s["claims"]}
    assert by[CLAIMS[0][0]]["mean"] == pytest.approx(0.5)
    assert by[CLAIMS[2][0]]["mean"] == pytest.approx(15 / 40)
    # against SFT-only (no_rlhf), the safer full model wins the safety items it fixes and ties nothing else worse
    assert s["variants"]["no_rlhf"]["win_rate_vs_sft"]["mean"] == 0.0
    assert s["variants"]["full"]["win_rate_vs_sft"]["mean"] > 0.0


def test_variant_presets_change_only_what_they_say():
    full = variant_preset("tiny", [], "full")
    assert variant_preset("tiny", [], "no_pretrain").sft.init_from == "base"
    nm = variant_preset("tiny", [], "no_multiturn", sft_steps=123)
    assert nm.sft.mix["multi_turn"] == 0.0 and nm.sft.max_steps == 123
    assert {k: v for k, v in nm.sft.mix.items() if k != "multi_turn"} == \
        {k: v for k, v in full.sft.mix.items() if k != "multi_turn"}
    assert variant_preset("tiny", [], "flooded_single_turn").sft.mix["single"] == 4.0
    assert not VARIANTS["no_rlhf"]["rlhf"]


@pytest.mark.slow
def test_reproduce_ablations_on_smoke_writes_table_figure_metrics_and_resumes(tmp_path):
    from zj_utils.cli import main

    out, figs = tmp_path / "abl", tmp_path / "figs"
    assert main(["reproduce", "--preset", "smoke", "--ablations", "--seeds", "2", "--out", str(out),
                 "--figures", str(figs)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seeds"] == [0, 1] and set(m["variants"]) == set(VARIANTS)
    for v in VARIANTS:
        for metric in METRICS:
            r = m["variants"][v][metric]
            assert r["ci"][0] <= r["mean"] <= r["ci"][1] and len(r["per_seed"]) == 2
    rows = list(csv.DictReader(open(out / "ablations.csv")))
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert "| claim |" in (out / "ablations.md").read_text()
    assert (figs / "ablations.png").stat().st_size > 1000
    executed = nbformat.read(out / "notebooks" / f"{ABLATION_NOTEBOOK}.ipynb", as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    # the SFT variants got the full pipeline's step budget, and the no-RLHF variant is the full SFT model itself
    steps = {v: json.loads((out / "seed0" / v / "sft" / "metrics.json").read_text())["steps"] for v in VARIANTS}
    assert len(set(steps.values())) == 1
    assert (out / "seed0" / "no_rlhf" / "sft").resolve() == (out / "seed0" / "full" / "sft").resolve()
    assert not (out / "seed0" / "no_rlhf" / "ppo").exists()
    # a second run finds every stage complete and trains nothing again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/*/metrics.json")}
    assert main(["reproduce", "--preset", "smoke", "--ablations", "--seeds", "2", "--out", str(out),
                 "--figures", str(figs), "--no-notebooks"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/*/metrics.json")}
    assert json.loads((out / "metrics.json").read_text()) == m


def test_ablation_notebook_is_committed_with_parameters_and_no_outputs():
    book = nbformat.read(ROOT / "notebooks" / f"{ABLATION_NOTEBOOK}.ipynb", as_version=4)
    params = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "seeds =" in params[0].source
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code")
