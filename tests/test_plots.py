"""The figures' data, read back from what was drawn: every length of every corpus in the distributions, one dot
per held-out prompt at its gold-minus-flawed margin."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from zj_utils import plots  # noqa: E402


def test_length_distributions_draw_each_corpus_normalised_on_its_own():
    stats = {"synthetic": {"turns": [1, 2, 2, 3], "user_chars": [5, 6, 7, 8], "doctor_chars": [9, 9, 10, 12],
                           "user_tokens": [2, 3, 3, 4], "doctor_tokens": [4, 4, 5, 6], "inquiry_rate": 0.5},
             "CMtMedQA test": {"turns": [2, 4], "user_chars": [20, 30], "doctor_chars": [40, 41],
                               "user_tokens": [10, 11], "doctor_tokens": [12, 13], "inquiry_rate": 0.25}}
    fig = plots.length_distributions(stats)
    axes = fig.axes
    assert [a.get_title() for a in axes[:6]] == [t for _, t in plots.LENGTH_PANELS] + ["doctor turns that ask a question"]
    # the last panel: the share of doctor turns that ask, per corpus
    heights = [b.get_height() for b in axes[5].patches]
    assert heights == [0.5, 0.25]
    for ax in axes[:5]:
        assert len(ax.get_legend().get_texts()) == 2


def test_margin_distribution_has_one_dot_per_prompt_at_its_margin():
    rows = [{"flaw": "no_ask", "gold": 1.0, "flawed": 0.25}, {"flaw": "no_ask", "gold": 0.0, "flawed": 0.5},
            {"flaw": "contra_drug", "gold": 2.0, "flawed": -1.0}]
    fig = plots.margin_distribution(rows)
    ax = fig.axes[0]
    dots = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert sorted(dots[:, 0].round(6).tolist()) == [-0.5, 0.75, 3.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["contra_drug", "no_ask"]


def test_without_a_cjk_font_one_warning_says_what_to_install(monkeypatch):
    import warnings

    import pytest

    monkeypatch.setattr(plots, "CJK_FONTS", ("No Such CJK Font",))
    monkeypatch.setattr(plots, "CJK_FONT_FILES", ("/nonexistent/NoSuchCJK.ttc",))
    with warnings.catch_warnings():
        with pytest.warns(UserWarning, match="install one"):
            assert plots.use_cjk_font() is None


def test_with_a_cjk_font_the_figures_use_it(monkeypatch):
    from matplotlib import font_manager

    name = font_manager.fontManager.ttflist[0].name  # any font matplotlib knows stands in for a CJK one
    monkeypatch.setattr(plots, "CJK_FONTS", (name,))
    monkeypatch.setitem(plots.plt.rcParams, "font.sans-serif", ["DejaVu Sans"])
    assert plots.use_cjk_font() == name
    assert plots.plt.rcParams["font.sans-serif"][0] == name
