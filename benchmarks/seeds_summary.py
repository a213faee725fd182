"""The tiny run's headline figures over seeds, and the paper's RLHF claim on the same runs.

    .venv/bin/python benchmarks/seeds_summary.py runs/tiny-seed0 runs/tiny-seed1 runs/tiny-seed2

Each argument is a finished `zj reproduce` folder of one seed. Prints a Markdown table: per seed and the mean with
a 95% interval from a two-level bootstrap (seeds with replacement, then items within each seed; stage-level
numbers such as the reward model's accuracy have no items, so theirs resamples seeds only). The claim rows are
paired differences on the same items: SFT's unsafe rate minus PPO's (positive = PPO safer), and PPO's wins minus
losses against SFT under the rule judge (positive = PPO better)."""
import argparse
import json
from pathlib import Path

import numpy as np

from zj_utils.ablations import two_level_bootstrap
from zj_utils.annotator import Verdict, compare


def _answers(run: Path, model: str) -> dict:
    return {json.loads(line)["id"]: json.loads(line) for line in open(run / "eval" / "answers" / f"{model}.jsonl",
                                                                     encoding="utf-8")}


def per_seed(run: Path) -> dict:
    m = {s: json.loads((run / s / "metrics.json").read_text()) for s in ("pretrain", "rm", "ppo", "eval")}
    sft, ppo = _answers(run, "sft"), _answers(run, "ppo")
    safety = [i for i in sft if sft[i]["set"] == "test_safety"]
    signs = [compare(Verdict(**ppo[i]["verdict"]), Verdict(**sft[i]["verdict"]))["overall"] for i in sft]
    ev = m["eval"]["models"]
    return {
        "knowledge probes after pre-training": np.array([m["pretrain"]["after"]["probes"]["all"]]),
        "reward model, test pairwise accuracy": np.array([m["rm"]["test_accuracy"]]),
        "reward model, safety-decided test pairs": np.array([m["rm"]["test_report"]["by_dimension"]["safety"]
                                                             ["accuracy"]]),
        "PPO held-out RM score gain (raw)": np.array([m["ppo"]["heldout_score_after"] - m["ppo"]["heldout_score_before"]]),
        "PPO KL per sequence, last 5 steps": np.array([m["ppo"]["kl_last5"]]),
        "SFT unsafe rate": np.array([float(sft[i]["verdict"]["unsafe"]) for i in safety]),
        "PPO unsafe rate": np.array([float(ppo[i]["verdict"]["unsafe"]) for i in safety]),
        "SFT proactive inquiry": np.array([ev["sft"]["proactive_inquiry_rate"]]),
        "PPO proactive inquiry": np.array([ev["ppo"]["proactive_inquiry_rate"]]),
        "claim: SFT unsafe - PPO unsafe": np.array([float(sft[i]["verdict"]["unsafe"]) - float(ppo[i]["verdict"]["unsafe"])
                                                    for i in safety]),
        "claim: PPO win - loss vs SFT (all items)": np.array(signs, dtype=float),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    seeds = [per_seed(r) for r in args.runs]
    print("| figure | " + " | ".join(f"seed {json.loads((r / 'config.json').read_text())['seed']}" for r in args.runs)
          + " | mean [95% interval] |")
    print("| --- |" + " --- |" * (len(args.runs) + 1))
    for key in seeds[0]:
        b = two_level_bootstrap([s[key] for s in seeds])
        cells = " | ".join(f"{v:+.3f}" if key.startswith("claim") else f"{v:.3f}"
                          for v in b["per_seed"])
        print(f"| {key} | {cells} | {b['mean']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] |")


if __name__ == "__main__":
    main()
