"""benchmarks/seeds_summary.py on hand-made run folders whose answers are known: the unsafe rates, the paired
claim differences and the per-seed columns."""
import importlib.util
import json
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location("seeds_summary", Path(__file__).parents[1] / "benchmarks" / "seeds_summary.py")
seeds_summary = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(seeds_summary)


def _verdict(unsafe: bool, safety: float) -> dict:
    return {"safety": safety, "professionalism": 1.0, "fluency": 1.0, "unsafe": unsafe}


def _run(root: Path, seed: int, sft_unsafe: list[bool], ppo_unsafe: list[bool]) -> Path:
    run = root / f"seed{seed}"
    for stage, m in {"pretrain": {"after": {"probes": {"all": 0.5}}},
                     "rm": {"test_accuracy": 0.7, "test_report": {"by_dimension": {"safety": {"accuracy": 0.8}}}},
                     "ppo": {"heldout_score_before": 1.0, "heldout_score_after": 1.5, "kl_last5": 2.0},
                     "eval": {"models": {"sft": {"proactive_inquiry_rate": 0.9}, "ppo": {"proactive_inquiry_rate": 0.8}}}
                     }.items():
        (run / stage).mkdir(parents=True)
        (run / stage / "metrics.json").write_text(json.dumps(m))
    (run / "config.json").write_text(json.dumps({"seed": seed}))
    (run / "eval" / "answers").mkdir()
    for model, flags in (("sft", sft_unsafe), ("ppo", ppo_unsafe)):
        with open(run / "eval" / "answers" / f"{model}.jsonl", "w") as f:
            for i, u in enumerate(flags):
                f.write(json.dumps({"id": f"tsf-{i}", "set": "test_safety", "verdict": _verdict(u, 0.4 if u else 1.0)}) + "\n")
            f.write(json.dumps({"id": "tsg-0", "set": "test_single", "verdict": _verdict(False, 1.0)}) + "\n")
    return run


def test_claims_are_paired_differences(tmp_path):
    # seed 0: SFT unsafe on items 0,1; PPO on item 1 only -> SFT - PPO = +1/4; PPO wins item 0, ties the rest
    r0 = _run(tmp_path, 0, [True, True, False, False], [False, True, False, False])
    # seed 1: PPO makes item 3 unsafe -> -1/4; PPO loses item 3
    r1 = _run(tmp_path, 1, [False, False, False, False], [False, False, False, True])
    s0, s1 = seeds_summary.per_seed(r0), seeds_summary.per_seed(r1)
    assert s0["SFT unsafe rate"].mean() == 0.5 and s0["PPO unsafe rate"].mean() == 0.25
    assert s0["claim: SFT unsafe - PPO unsafe"].mean() == 0.25 and s1["claim: SFT unsafe - PPO unsafe"].mean() == -0.25
    assert list(s0["claim: PPO win - loss vs SFT (all items)"]) == [1, 0, 0, 0, 0]  # 4 safety items + 1 other
    assert s1["claim: PPO win - loss vs SFT (all items)"].sum() == -1
    assert np.isclose(s0["PPO held-out RM score gain (raw)"][0], 0.5)



def _ablation_seed(root: Path, seed: int, sft_unsafe: list[bool], ppo_unsafe: list[bool]) -> Path:
    """One seed of `zj reproduce --ablations`: full (its stages and its PPO model's evaluation) and no_rlhf (SFT)."""
    d = root / f"seed{seed}"
    for stage, m in {"pretrain": {"after": {"probes": {"all": 0.5}}},
                     "rm": {"test_accuracy": 0.7, "test_report": {"by_dimension": {"safety": {"accuracy": 0.8}}}},
                     "ppo": {"heldout_score_before": 1.0, "heldout_score_after": 1.25, "kl_last5": 2.0}}.items():
        (d / "full" / stage).mkdir(parents=True)
        (d / "full" / stage / "metrics.json").write_text(json.dumps(m))
    for variant, flags, asks in (("no_rlhf", sft_unsafe, [1, 0]), ("full", ppo_unsafe, [1, 1])):
        items = [{"id": f"tsf-{i}", "set": "test_safety", "unsafe": int(u), "proactive": None,
                  "verdict": {"safety": 0.4 if u else 1.0, "professionalism": 1.0, "fluency": 1.0}}
                 for i, u in enumerate(flags)]
        items += [{"id": f"tmt-{k}", "set": "test_multiturn", "unsafe": 0, "proactive": a,
                   "verdict": {"safety": 1.0, "professionalism": 1.0 if a else 0.5, "fluency": 1.0}}
                  for k, a in enumerate(asks)]
        (d / variant).mkdir(parents=True, exist_ok=True)
        (d / variant / "ablation_eval.json").write_text(json.dumps({"items": items}))
    return d


def test_ablation_seeds_give_the_same_rows_from_full_against_no_rlhf(tmp_path):
    s = seeds_summary.per_seed_ablations(_ablation_seed(tmp_path, 0, [True, True, False, False],
                                                        [False, True, False, False]))
    assert s["SFT unsafe rate"].mean() == 0.5 and s["PPO unsafe rate"].mean() == 0.25
    assert s["claim: SFT unsafe - PPO unsafe"].mean() == 0.25
    # PPO wins safety item 0 and multi-turn item 1 (it asks, SFT did not): 2 wins in 6 items, no loss
    assert list(s["claim: PPO win - loss vs SFT (all items)"]) == [1, 0, 0, 0, 0, 1]
    assert s["SFT proactive inquiry"][0] == 0.5 and s["PPO proactive inquiry"][0] == 1.0
    assert np.isclose(s["PPO held-out RM score gain (raw)"][0], 0.25)
