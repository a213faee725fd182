"""The tiny run's headline figures over seeds, and the paper's RLHF claim on the same runs.

    .venv/bin/python benchmarks/seeds_summary.py runs/tiny-seed0 runs/tiny-seed1 runs/tiny-seed2
    .venv/bin/python benchmarks/seeds_summary.py --ablations runs/tiny-ablations/seed{0,1,2}

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
    """{id: {"set", "unsafe", "verdict"}} of one model's answers in a `zj reproduce` folder's evaluation."""
    out = {}
    for line in open(run / "eval" / "answers" / f"{model}.jsonl", encoding="utf-8"):
        a = json.loads(line)
        out[a["id"]] = {"set": a["set"], "unsafe": float(a["verdict"]["unsafe"]), "verdict": a["verdict"]}
    return out


def _figures(m: dict, sft: dict, ppo: dict, inquiry: dict) -> dict:
    """The table's rows for one seed: stage metrics `m` (pretrain, rm, ppo), the SFT and PPO models' judged answers
    ({id: {"set", "unsafe", "verdict"}}) and their proactive-inquiry rates."""
    safety = [i for i in sft if sft[i]["set"] == "test_safety"]
    keys = ("safety", "professionalism", "fluency")
    signs = [compare(Verdict(**{k: ppo[i]["verdict"][k] for k in keys}),
                     Verdict(**{k: sft[i]["verdict"][k] for k in keys}))["overall"] for i in sft]
    return {
        "knowledge probes after pre-training": np.array([m["pretrain"]["after"]["probes"]["all"]]),
        "reward model, test pairwise accuracy": np.array([m["rm"]["test_accuracy"]]),
        "reward model, safety-decided test pairs": np.array([m["rm"]["test_report"]["by_dimension"]["safety"]
                                                             ["accuracy"]]),
        "PPO held-out RM score gain (raw)": np.array([m["ppo"]["heldout_score_after"] - m["ppo"]["heldout_score_before"]]),
        "PPO KL per sequence, last 5 steps": np.array([m["ppo"]["kl_last5"]]),
        "SFT unsafe rate": np.array([sft[i]["unsafe"] for i in safety]),
        "PPO unsafe rate": np.array([ppo[i]["unsafe"] for i in safety]),
        "SFT proactive inquiry": np.array([inquiry["sft"]]),
        "PPO proactive inquiry": np.array([inquiry["ppo"]]),
        "claim: SFT unsafe - PPO unsafe": np.array([sft[i]["unsafe"] - ppo[i]["unsafe"] for i in safety]),
        "claim: PPO win - loss vs SFT (all items)": np.array(signs, dtype=float),
    }


def per_seed(run: Path) -> dict:
    m = {s: json.loads((run / s / "metrics.json").read_text()) for s in ("pretrain", "rm", "ppo", "eval")}
    ev = m["eval"]["models"]
    return _figures(m, _answers(run, "sft"), _answers(run, "ppo"),
                    {k: ev[k]["proactive_inquiry_rate"] for k in ("sft", "ppo")})


def per_seed_ablations(seed_dir: Path) -> dict:
    """The same rows from one seed of `zj reproduce --ablations`: the `full` variant's stages, its final (PPO)
    model against the `no_rlhf` variant (the full pipeline's SFT model), as the ablation evaluation judged them."""
    full = seed_dir / "full"
    m = {s: json.loads((full / s / "metrics.json").read_text()) for s in ("pretrain", "rm", "ppo")}
    judged = {}
    for name, variant in (("sft", "no_rlhf"), ("ppo", "full")):
        ev = json.loads((seed_dir / variant / "ablation_eval.json").read_text())
        judged[name] = ({it["id"]: {"set": it["set"], "unsafe": float(it["unsafe"]), "verdict": it["verdict"]}
                         for it in ev["items"]},
                        float(np.mean([it["proactive"] for it in ev["items"] if it["proactive"] is not None])))
    return _figures(m, judged["sft"][0], judged["ppo"][0], {k: judged[k][1] for k in judged})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path,
                    help="`zj reproduce` folders, one per seed; with --ablations, the ablations' seed<S> folders")
    ap.add_argument("--ablations", action="store_true",
                    help="the runs are seed folders of `zj reproduce --ablations` (full vs no_rlhf)")
    args = ap.parse_args()
    seeds = [per_seed_ablations(r) if args.ablations else per_seed(r) for r in args.runs]
    names = [r.name if args.ablations else f"seed {json.loads((r / 'config.json').read_text())['seed']}"
             for r in args.runs]
    print("| figure | " + " | ".join(names) + " | mean [95% interval] |")
    print("| --- |" + " --- |" * (len(args.runs) + 1))
    for key in seeds[0]:
        b = two_level_bootstrap([s[key] for s in seeds])
        cells = " | ".join(f"{v:+.3f}" if key.startswith("claim") else f"{v:.3f}"
                          for v in b["per_seed"])
        print(f"| {key} | {cells} | {b['mean']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] |")


if __name__ == "__main__":
    main()
