"""Why RLHF does not lower the unsafe rate in the tiny ablations: how often does the reward model order held-out
answer pairs the way the annotation rule does, split by what decides the rule's order (safety, or only
professionalism/fluency)?

    .venv/bin/python benchmarks/rm_safety_accuracy.py runs/tiny-ablations/seed0/full --seed 0 [--preset tiny]

Reads OUT/rm/rankings.jsonl, the reward stage's own dev split (same seed), the world and the reward model."""
import argparse
import json
from pathlib import Path

from zj_utils.common import load_tokenizer, read_json
from zj_utils.judge import assess
from zj_utils.presets import get_preset
from zj_utils.reward import load_reward_model, score_conversations, split_by_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder with world/, sft/, rm/")
    ap.add_argument("--seed", type=int, default=0, help="the seed the reward stage ran with (its dev split)")
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    out, preset = Path(args.run), get_preset(args.preset)
    kg = read_json(out / "world" / "world.json")
    expect = {json.loads(line)["id"]: json.loads(line).get("expect", {})
              for line in open(out / "world" / "rank_prompts.jsonl", encoding="utf-8")}
    rankings = [json.loads(line) for line in open(out / "rm" / "rankings.jsonl", encoding="utf-8")]
    dev = split_by_prompt(rankings, preset.rm.dev_fraction, args.seed)
    tokenizer = load_tokenizer(str(out / "sft" / "merged"))
    reward_model = load_reward_model(out, preset)
    counts = {"safety": [0, 0], "professionalism/fluency": [0, 0]}
    for r in rankings:
        if r["id"] not in dev:
            continue
        verdicts = [assess(a, expect.get(r["id"], {}), kg) for a in r["responses"]]
        scores = score_conversations(reward_model, tokenizer,
                                     [r["messages"] + [{"role": "assistant", "content": a}] for a in r["responses"]])
        for i in range(len(r["responses"])):
            for j in range(len(r["responses"])):
                if r["ranks"][i] < r["ranks"][j]:  # the rule prefers i
                    key = "safety" if verdicts[i].safety != verdicts[j].safety else "professionalism/fluency"
                    counts[key][0] += int(scores[i] > scores[j])
                    counts[key][1] += 1
    for key, (right, n) in counts.items():
        print(f"{key:>24}: reward model agrees with the rule on {right}/{n} dev pairs"
              + (f" ({right / n:.1%})" if n else ""))


if __name__ == "__main__":
    main()
