"""win/tie/loss shares and bootstrap intervals, against values computed by hand."""
import pytest

from zj_utils.stats import bootstrap_ci, mean_ci, win_tie_loss


def test_win_tie_loss_counts_and_percentages():
    r = win_tie_loss([1, 1, 0, -1])
    assert r == {"n": 4, "win": 2, "tie": 1, "loss": 1, "win_pct": 50.0, "tie_pct": 25.0, "loss_pct": 25.0,
                 "net_pct": 25.0}
    # None (no usable verdict) is left out: 1 win, 2 losses -> 33.33 / 0 / 66.67
    r = win_tie_loss([1, None, -1, -1])
    assert (r["n"], r["win_pct"], r["tie_pct"], r["loss_pct"], r["net_pct"]) == (3, 33.33, 0.0, 66.67, -33.33)
    assert win_tie_loss([])["win_pct"] is None
    with pytest.raises(ValueError):
        win_tie_loss([2])


def test_bootstrap_degenerate_and_two_point_cases():
    # every item a win: every resample is all wins
    assert bootstrap_ci([1] * 7) == {"win_pct": [100.0, 100.0], "tie_pct": [0.0, 0.0], "loss_pct": [0.0, 0.0],
                                     "net_pct": [100.0, 100.0]}
    # one win, one loss: a resample holds 0, 1 or 2 wins with probability 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles of win% are 0 and 100, of win-minus-loss -100 and 100, and ties never occur
    ci = bootstrap_ci([1, -1], n_boot=4000, seed=3)
    assert ci == {"win_pct": [0.0, 100.0], "tie_pct": [0.0, 0.0], "loss_pct": [0.0, 100.0], "net_pct": [-100.0, 100.0]}
    # at alpha = 0.6 the 30th/70th percentiles of {0 (1/4), 50 (1/2), 100 (1/4)} are both 50
    assert bootstrap_ci([1, -1], n_boot=4000, seed=3, alpha=0.6)["win_pct"] == [50.0, 50.0]
    assert bootstrap_ci([]) == {"win_pct": None, "tie_pct": None, "loss_pct": None, "net_pct": None}


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    signs = [1] * 30 + [0] * 10 + [-1] * 20
    a, b = bootstrap_ci(signs, seed=0), bootstrap_ci(signs, seed=0)
    assert a == b and bootstrap_ci(signs, seed=1) != a
    point = win_tie_loss(signs)
    for k in ("win_pct", "tie_pct", "loss_pct", "net_pct"):
        assert a[k][0] <= point[k] <= a[k][1]
    # sd of win% is 100*sqrt(.5*.5/60) = 6.45 points: the 95% interval is about +-12.6 points wide
    assert 20 < a["win_pct"][1] - a["win_pct"][0] < 30
    narrow = bootstrap_ci(signs, alpha=0.5)
    assert narrow["win_pct"][1] - narrow["win_pct"][0] < a["win_pct"][1] - a["win_pct"][0]


def test_mean_ci():
    assert mean_ci([1, 1, 1]) == {"n": 3, "mean": 1.0, "ci": [1.0, 1.0]}
    r = mean_ci([0, 1, 1, 1, None], n_boot=2000, seed=0)
    assert r["n"] == 4 and r["mean"] == 0.75 and 0.0 <= r["ci"][0] < 0.75 < r["ci"][1] == 1.0
    assert mean_ci([]) == {"n": 0, "mean": None, "ci": None}
