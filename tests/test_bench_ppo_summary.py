"""benchmarks/bench_ppo_vs_trl.py's summary over seeds on hand-made figures whose answers are known: per-seed
differences and ratios, the mean with its min and max, ratios that mean nothing, and the markdown table.
Needs no TRL: the benchmark imports only the standard library at module level."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("bench_ppo_vs_trl",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_ppo_vs_trl.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

PER_SEED = {0: {"ours": {"gain": 2.0, "secs": 1.0}, "trl": {"gain": 1.0, "secs": 2.0}},
            1: {"ours": {"gain": 1.0, "secs": 2.0}, "trl": {"gain": 4.0, "secs": 2.0}},
            2: {"ours": {"gain": -1.0, "secs": 3.0}, "trl": {"gain": 1.0, "secs": 2.0}}}


def test_ratio_is_none_where_it_means_nothing():
    assert bench.ratio(3.0, 1.5) == 2.0 and bench.ratio(-2.0, -4.0) == 0.5 and bench.ratio(0.0, 5.0) == 0.0
    assert bench.ratio(3.0, 0.0) is None and bench.ratio(-1.0, 2.0) is None and bench.ratio(1.0, -2.0) is None


def test_summarise_per_seed_rows_and_mean_with_min_max():
    s = bench.summarise(PER_SEED, ["gain", "secs"])
    g = s["gain"]
    assert g["seeds"][0] == {"trl": 1.0, "ours": 2.0, "diff": 1.0, "ratio": 2.0}
    assert g["seeds"][1] == {"trl": 4.0, "ours": 1.0, "diff": -3.0, "ratio": 0.25}
    assert g["seeds"][2] == {"trl": 1.0, "ours": -1.0, "diff": -2.0, "ratio": None}
    m = g["mean"]
    assert m["trl"] == pytest.approx(2.0) and m["trl_range"] == [1.0, 4.0]
    assert m["ours"] == pytest.approx(2 / 3) and m["ours_range"] == [-1.0, 2.0]
    assert m["diff"] == pytest.approx(-4 / 3) and m["diff_range"] == [-3.0, 1.0]
    assert m["ratio"] == pytest.approx(1 / 3)          # the ratio of the means, not the mean of the ratios
    assert m["ratio_range"] is None                     # seed 2's ratio means nothing
    t = s["secs"]["mean"]
    assert t["ratio"] == pytest.approx(1.0) and t["ratio_range"] == [0.5, 1.5]


def test_method_metrics_from_a_child_result():
    r = {"heldout_before": 0.5, "heldout_after": 0.75, "kl_final": 1.5, "kls": [0.0, 1, 2, 3, 4, 5, 6],
         "scores": [0.0, 0, 0, 0, 0, 1, 1], "train_seconds": 14.0, "steps": 7, "peak_rss_mib": 512.0,
         "trainable_params": 10}
    m = bench.method_metrics(r, k=5)
    assert m["heldout_gain"] == 0.25 and m["kl_last5_logged"] == 4.0 and m["kl_first_logged"] == 0.0
    assert m["sampled_score_gain"] == pytest.approx(0.4) and m["seconds_per_update"] == 2.0


def test_markdown_table_rows():
    s = bench.summarise(PER_SEED, ["gain"])
    lines = bench.markdown_table(s, rows=(("gain", "gain", 2),)).splitlines()
    assert lines[0] == "| metric | seed | TRL | ours | ours - TRL | ours/TRL |" and len(lines) == 2 + 3 + 1
    assert lines[2] == "| gain | 0 | 1.00 | 2.00 | 1.00 | 2.00 |"
    assert lines[4] == "| gain | 2 | 1.00 | -1.00 | -2.00 | n/a |"
    assert lines[5] == ("| gain | **mean** [min, max] | 2.00 [1.00, 4.00] | 0.67 [-1.00, 2.00] | "
                        "-1.33 [-3.00, 1.00] | 0.33 |")
