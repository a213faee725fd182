"""The learning-rate sweep of the alignment methods: the pick is the reward model's, over every seed."""
import json

import pytest


def _cell(root, seed, lr, rows):
    d = root / f"seed{seed}" / f"lr{lr:g}" / "align_compare"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"models": rows}))


def _row(rm, unsafe=0.2, win=10.0, loss=5.0):
    return {"rm_score": rm, "kl_to_sft": 0.01, "unsafe_rate": unsafe, "win_pct_vs_sft": win, "loss_pct_vs_sft": loss}


SFT = {"rm_score": 0.1, "kl_to_sft": 0.0, "unsafe_rate": 0.3, "win_pct_vs_sft": None, "loss_pct_vs_sft": None}


@pytest.fixture
def sweep(tmp_path):
    # ppo: 1e-3 has the best RM score on average (0.9 vs 0.6), although 1e-4 wins on seed 1 and is safer (the
    # judge would pick it; the sweep must not); dpo: 3e-4 is best on both seeds
    for seed, ppo_lo, ppo_hi in ((0, 0.5, 1.2), (1, 0.7, 0.6)):
        _cell(tmp_path, seed, 1e-4, {"sft": SFT, "ppo": _row(ppo_lo, unsafe=0.1), "dpo": _row(0.2)})
        _cell(tmp_path, seed, 1e-3, {"sft": SFT, "ppo": _row(ppo_hi, unsafe=0.5, win=20.0, loss=30.0),
                                     "dpo": _row(0.3)})
    _cell(tmp_path, 0, 3e-4, {"sft": SFT, "dpo": _row(0.4)})
    _cell(tmp_path, 1, 3e-4, {"sft": SFT, "dpo": _row(0.5)})
    return tmp_path


def test_pick_by_reward_model_mean_over_seeds(sweep):
    from zj_utils.align_sweep import collect, pick_learning_rates

    rows = collect(sweep)
    assert set(rows["sft"]) == {None} and set(rows["sft"][None]) == {0, 1}
    assert rows["ppo"][1e-3][0]["win_minus_loss"] == -10.0
    assert rows["ppo"][1e-3][0]["rm_gain"] == pytest.approx(1.1) and rows["sft"][None][1]["rm_gain"] == 0
    assert pick_learning_rates(rows) == {"ppo": 1e-3, "dpo": 3e-4}


def test_a_rate_missing_a_seed_does_not_compete(tmp_path):
    from zj_utils.align_sweep import collect, pick_learning_rates

    _cell(tmp_path, 0, 1e-4, {"sft": SFT, "grpo": _row(0.2)})
    _cell(tmp_path, 1, 1e-4, {"sft": SFT, "grpo": _row(0.3)})
    _cell(tmp_path, 0, 1e-3, {"sft": SFT, "grpo": _row(5.0)})  # best, but only on seed 0 so far
    assert pick_learning_rates(collect(tmp_path)) == {"grpo": 1e-4}


def test_summary_table_and_cli(sweep, capsys):
    from zj_utils.cli import main

    assert main(["align-sweep", "--out", str(sweep)]) == 0
    s = json.loads((sweep / "sweep.json").read_text())
    assert s["picked_lr"] == {"ppo": 1e-3, "dpo": 3e-4}
    ppo = s["picked"]["ppo"]
    assert ppo["lr"] == 1e-3 and ppo["seeds"] == [0, 1]
    assert ppo["rm_score"] == {"mean": 0.9, "min": 0.6, "max": 1.2, "per_seed": [1.2, 0.6]}
    assert ppo["unsafe_rate"]["mean"] == 0.5 and ppo["win_minus_loss"]["mean"] == -10.0
    assert ppo["rm_gain"]["mean"] == pytest.approx(0.8)
    assert s["picked"]["sft"]["unsafe_rate"]["mean"] == 0.3 and s["picked"]["sft"]["win_minus_loss"] is None
    out = capsys.readouterr().out
    assert "| ppo | 0.001 | 2 | 0.900 [0.600, 1.200]" in out
    assert "| ppo | 0.001 (picked) | 2 |" in out and "| ppo | 0.0001 | 2 |" in out
    assert (sweep / "alignment_sweep.png").stat().st_size > 1000


def test_empty_sweep_is_a_clear_error(tmp_path):
    from zj_utils.align_sweep import summarize_sweep
    from zj_utils.common import ZJError

    with pytest.raises(ZJError, match="No finished sweep cell"):
        summarize_sweep(tmp_path)
