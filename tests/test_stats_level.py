"""The intervals' level, not just their shape: a 95% bootstrap interval must cover a known value in about 95% of
simulated samples (and a 90% one in about 90%), and the percentile intervals must agree with scipy's percentile
bootstrap on the same data. A 90% interval reported as 95% is about 16% narrower: the width checks in
test_stats.py (20 < width < 30) let it through; these do not."""
import numpy as np
import pytest
from scipy import stats as sps

from zj_utils.ablations import two_level_bootstrap
from zj_utils.stats import bootstrap_ci, mean_ci

P_WIN, P_TIE, P_LOSS = 0.45, 0.20, 0.35
TRUE = {"win_pct": 100 * P_WIN, "tie_pct": 100 * P_TIE, "loss_pct": 100 * P_LOSS, "net_pct": 100 * (P_WIN - P_LOSS)}


def _coverage(alpha, sims: int = 1000, n: int = 120, n_boot: int = 400, seed: int = 2024) -> dict:
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(TRUE, 0)
    for s in range(sims):
        signs = rng.choice([1, 0, -1], size=n, p=[P_WIN, P_TIE, P_LOSS])
        # alpha None: the default, which every caller (compare.py's "95% CI") relies on
        ci = bootstrap_ci(signs, n_boot=n_boot, seed=s, **({} if alpha is None else {"alpha": alpha}))
        for k, v in TRUE.items():
            hits[k] += ci[k][0] <= v <= ci[k][1]
    return {k: h / sims for k, h in hits.items()}


@pytest.mark.parametrize("alpha,lo,hi", [(None, 0.925, 0.975), (0.10, 0.87, 0.93)])
def test_bootstrap_ci_covers_known_shares_at_its_level(alpha, lo, hi):
    """1000 samples of 120 verdicts (45% wins, 20% ties, 35% losses), seeded: the share of intervals holding the
    true value is within about 3.5 binomial sds (0.007 at 95%, 0.009 at 90%) of the nominal level, allowing the
    percentile bootstrap's slight under-coverage at this n. Measured over three simulation seeds: 0.941-0.960 at
    95%, 0.887-0.922 at 90%, 0.790-0.837 at 80%, so an interval one level too narrow falls outside."""
    cov = _coverage(alpha)
    for k, c in cov.items():
        assert lo <= c <= hi, (alpha, k, c, cov)


def test_mean_ci_agrees_with_scipy_percentile_bootstrap():
    """Continuous values (no lattice of possible means): the endpoints of mean_ci and of scipy.stats.bootstrap
    (method="percentile") on the same data agree to Monte Carlo error (about 0.006 here), while a 90% interval
    would sit 0.03 inside."""
    x = np.random.default_rng(7).normal(size=100)
    ours = mean_ci(x, n_boot=8000, seed=1)["ci"]
    ref = sps.bootstrap((x,), np.mean, n_resamples=8000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(2)).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.015) and ours[1] == pytest.approx(ref.high, abs=0.015), (ours, ref)
    narrow = sps.bootstrap((x,), np.mean, n_resamples=8000, method="percentile", confidence_level=0.90,
                           random_state=np.random.default_rng(2)).confidence_interval
    assert ref.low - narrow.low < -0.02 and ref.high - narrow.high > 0.02  # the test can tell 90% from 95%


def test_two_level_bootstrap_with_one_seed_is_scipys_item_bootstrap():
    """With one seed the two-level bootstrap is the percentile bootstrap of the mean over items."""
    x = np.random.default_rng(11).normal(size=100)
    ours = two_level_bootstrap([x], n_boot=8000, seed=3)
    ref = sps.bootstrap((x,), np.mean, n_resamples=8000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(4)).confidence_interval
    assert ours["mean"] == pytest.approx(x.mean(), abs=1e-4)
    assert ours["ci"][0] == pytest.approx(ref.low, abs=0.015) and ours["ci"][1] == pytest.approx(ref.high, abs=0.015)


def test_two_level_bootstrap_with_constant_items_is_scipys_seed_bootstrap():
    """Items that do not vary within a seed leave only the seed level: the percentile bootstrap over the 20 seed
    means."""
    means = np.random.default_rng(5).normal(size=20)
    ours = two_level_bootstrap([np.full(5, m) for m in means], n_boot=6000, seed=6)
    ref = sps.bootstrap((means,), np.mean, n_resamples=6000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(8)).confidence_interval
    # sd of the mean of 20 N(0, 1) seeds ~ 0.22: endpoints agree to ~0.02 (MC), a 90% interval would be 0.07 inside
    assert ours["ci"][0] == pytest.approx(ref.low, abs=0.03) and ours["ci"][1] == pytest.approx(ref.high, abs=0.03)
