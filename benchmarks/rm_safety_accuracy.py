"""How often the reward model orders held-out answer pairs the way the annotation rule does: overall, by the
dimension that decides the rule's order (safety, professionalism, fluency), by the flaw of the worse answer, by the
rule's score gap and by prompt kind, each with a prompt-clustered 95% interval (`zj_utils/reward_report.py`).

    .venv/bin/python benchmarks/rm_safety_accuracy.py runs/tiny-seed0 --seed 0 [--preset tiny] [--split test|dev]

Reads OUT/rm/rankings.jsonl, the reward stage's own split (same seed and preset), the world and the reward model;
`zj rm` writes the same table for the test split to OUT/rm/report.md."""
import argparse
from pathlib import Path

from zj_utils.common import load_tokenizer, read_json
from zj_utils.data import load_jsonl
from zj_utils.presets import get_preset
from zj_utils.reward import _test_report, load_reward_model, split_by_prompt
from zj_utils.reward_report import format_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder with world/, sft/, rm/")
    ap.add_argument("--seed", type=int, default=0, help="the seed the reward stage ran with (its split)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--split", choices=["test", "dev"], default="test")
    args = ap.parse_args()
    out, preset = Path(args.run), get_preset(args.preset)
    rankings = load_jsonl(out / "rm" / "rankings.jsonl")
    dev, test = split_by_prompt(rankings, preset.rm.dev_fraction, args.seed, preset.rm.test_fraction)
    held = [r for r in rankings if r["id"] in (test if args.split == "test" else dev)]
    report = _test_report(load_reward_model(out, preset), load_tokenizer(str(out / "sft" / "merged")), held,
                          load_jsonl(out / "world" / "rank_prompts.jsonl"), read_json(out / "world" / "world.json"),
                          args.seed)
    print(format_report(report))


if __name__ == "__main__":
    main()
