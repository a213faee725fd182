"""`zj`: every stage from the command line, so that it scripts and launches under accelerate/torchrun.

    zj world|base|pretrain|sft|rm|ppo|eval --preset tiny --out runs/tiny-seed0 --seed 0 [--set sft.epochs=2]
    zj reproduce --preset tiny            # every notebook, headless, with papermill
    zj presets                            # what the presets are
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .common import ZJError
from .data import DataError

STAGE_HELP = {
    "world": "generate the synthetic medical world (knowledge graph and every data kind)",
    "base": "train the tokenizer and the tiny stand-in base model (tiny presets; no-op for real models)",
    "pretrain": "continued pre-training with QLoRA; perplexity and knowledge probes before/after",
    "sft": "supervised fine-tuning with TRL SFTTrainer on the four data kinds",
    "rm": "sample 4 answers per prompt, rank them, train the reward model with TRL RewardTrainer",
    "ppo": "PPO against the reward model (our implementation)",
    "eval": "judge the models on the test sets: win/tie/loss, knowledge, proactive inquiry, safety",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="preset name (see `zj presets`)")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>-seed<seed>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. --set sft.learning_rate=1e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zj", description="Zhongjing reproduction: every stage of the pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, help_text in STAGE_HELP.items():
        p = sub.add_parser(stage, help=help_text, description=help_text)
        _common(p)
        if stage == "rm":
            p.add_argument("--rankings", action="append", default=[], metavar="TSV",
                           help="add human rankings in the ranking tool's TSV format (repeatable)")
    p = sub.add_parser("reproduce", help="run the whole pipeline (notebooks via papermill)")
    _common(p)
    p.add_argument("--no-notebooks", action="store_true", help="call the stage functions directly instead")
    p.add_argument("--figures", default="figures", help="where figures go (default figures/)")
    sub.add_parser("presets", help="list the presets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _dispatch(args)
    except (ZJError, DataError) as e:
        print(f"zj {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zj {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from .presets import PRESETS, get_preset

    if args.command == "presets":
        for name, spec in PRESETS.items():
            print(f"{name:16s} {spec.get('description', '')}")
        return 0
    from .pipeline import default_out, reproduce, run_stage

    out = args.out or str(default_out(args.preset, args.seed))
    if args.command == "reproduce":
        summary = reproduce(args.preset, out, args.seed, args.overrides, notebooks=not args.no_notebooks,
                            fig_dir=args.figures)
        print(json.dumps(summary["headline"], ensure_ascii=False, indent=2))
        print(f"metrics: {out}/metrics.json  ({summary['total_seconds']:.0f} s)")
        return 0
    preset = get_preset(args.preset, args.overrides)
    kwargs = {"extra_rankings": args.rankings} if args.command == "rm" else {}
    metrics = run_stage(args.command, preset, out, args.seed, **kwargs)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    print(f"wrote {out}/{args.command}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
