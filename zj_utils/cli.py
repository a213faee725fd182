"""`zj`: every stage from the command line, so that it scripts and launches under accelerate/torchrun.

    zj world|base|pretrain|sft|rm|ppo|eval --preset tiny --out runs/tiny-seed0 --seed 0 [--set sft.epochs=2]
    zj align --method dpo|grpo|rloo --preset tiny --out runs/tiny-seed0   # TRL alternatives to our PPO
    zj align-compare --out runs/tiny-seed0   # PPO vs DPO/GRPO/RLOO against SFT
    zj align-sweep runs/tiny-seed{0,1,2} --lrs 1e-4 3e-4 1e-3 --out runs/align-sweep   # equal steps, LR per method
    zj reproduce --preset tiny            # every notebook, headless, with papermill
    zj reproduce --preset tiny --ablations --seeds 3   # the paper's ablations over seeds, with intervals
    zj presets                            # what the presets are
    zj render-notebooks runs/tiny-seed0 --to docs/notebooks   # executed notebooks -> HTML pages
    zj estimate --preset qwen2.5-0.5b --stage sft [--[no-]gradient-checkpointing]   # predicted peak memory by part
    zj judge A.jsonl B.jsonl --tests TESTS.jsonl [--judge rule|openai|local] [--world OUT/world] [--model NAME]
             [--concurrency N] [--dry-run] [--max-items N]
    zj generate --model PATH --tests TESTS.jsonl --out answers.jsonl
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from .common import ZJError
from .data import DataError

STAGE_HELP = {
    "world": "generate the synthetic medical world (knowledge graph and every data kind)",
    "base": "train the tokenizer and the tiny stand-in base model (tiny presets; no-op for real models)",
    "pretrain": "continued pre-training with QLoRA; perplexity and knowledge probes before/after",
    "sft": "supervised fine-tuning with TRL SFTTrainer on the four data kinds",
    "rm": "sample 4 answers per prompt, rank them, train the reward model with TRL RewardTrainer",
    "ppo": "PPO against the reward model (our implementation)",
    "eval": "answer the test sets (eval.test_sets) and judge ours against earlier stages and baselines: "
            "win/tie/loss, knowledge, proactive inquiry, safety",
}


RESUMABLE = ("pretrain", "sft", "rm", "ppo", "eval")
# what to shrink when a stage runs out of memory: (batch setting, length setting)
OOM_KNOBS = {"base": ("model.base_batch_size", "model.base_block_size"),
             "pretrain": ("pretrain.batch_size", "pretrain.block_size"),
             "sft": ("sft.batch_size", "sft.max_length"), "rm": ("rm.batch_size", "rm.max_length"),
             "ppo": ("ppo.batch_size", "ppo.max_new_tokens"), "eval": ("eval.batch_size", "eval.max_new_tokens"),
             "align": ("align.batch_size", "align.max_length")}


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
        if stage in RESUMABLE:
            p.add_argument("--resume", action="store_true",
                           help="continue from the last complete checkpoint of an interrupted run (same settings)")
        if stage == "rm":
            p.add_argument("--rankings", action="append", default=[], metavar="FILE",
                           help="add human rankings: the ranking tool's TSV, or the ranking widget's JSONL "
                                "(keeps ties); repeatable, mixed with the rule annotator's")
    p = sub.add_parser("align", help="align the SFT model with TRL's DPO, GRPO or RLOO (compare with our PPO)",
                       description="DPO on the reward stage's rankings, or GRPO/RLOO against the reward model, on "
                                   "the SFT model with QLoRA; writes OUT/align_<method>/.")
    _common(p)
    p.add_argument("--method", required=True, choices=("dpo", "grpo", "rloo"))
    p = sub.add_parser("align-compare", help="compare PPO and the aligned models against SFT on the test sets",
                       description="Reward score, KL to SFT, unsafe rate, win rate vs SFT and training time of PPO "
                                   "and every OUT/align_<method>/; writes OUT/align_compare/.")
    _common(p)
    p = sub.add_parser("align-summary", help="PPO vs DPO/GRPO/RLOO over several seeds (one run folder per seed)",
                       description="Mean, lowest and highest seed of every measure of `zj align-compare`, over the "
                                   "run folders given; writes OUT/{metrics.json,table.md,alignment_over_seeds.png}.")
    p.add_argument("runs", nargs="+", help="run folders, each with align_compare/ (one per seed)")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", default=None, help="where the figure goes (default: --out)")
    p = sub.add_parser("align-sweep", help="PPO/DPO/GRPO/RLOO at equal optimizer steps, a learning-rate sweep "
                                           "per method, over finished runs (one per seed)",
                       description="Trains every method at every --lrs rate on each run's SFT and reward model "
                                   "(OUT/seed<S>/lr<LR>/), compares each cell against SFT, and picks each method's "
                                   "rate by the reward model's held-out score, never the judge; writes "
                                   "OUT/{sweep.json,table.md,alignment_sweep.png}. Finished stages are not re-run.")
    p.add_argument("runs", nargs="*", help="finished run folders (`zj reproduce`), one per seed")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3], help="learning rates to try")
    p.add_argument("--methods", nargs="+", default=["ppo", "dpo", "grpo", "rloo"],
                   choices=("ppo", "dpo", "grpo", "rloo"))
    p.add_argument("--preset", default="tiny", help="the preset the runs were made with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field for every cell (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", default=None, help="where the figure goes (default: --out)")
    p = sub.add_parser("reproduce", help="run the whole pipeline (notebooks via papermill)")
    _common(p)
    p.add_argument("--no-notebooks", action="store_true", help="call the stage functions directly instead")
    p.add_argument("--ablations", action="store_true",
                   help="the paper's ablations over --seeds seeds (full, no pre-training, no multi-turn SFT data, "
                        "no RLHF, SFT flooded with single-turn data): table, figure, metrics with 95%% intervals; "
                        "default --out runs/<preset>-ablations")
    p.add_argument("--seeds", type=int, default=3, help="with --ablations: how many seeds (0..N-1; default 3)")
    p.add_argument("--figures", default="figures", help="where figures go (default figures/)")
    sub.add_parser("presets", help="list the presets")
    p = sub.add_parser("render-notebooks", help="a run's executed notebooks -> HTML pages (docs/notebooks/)",
                       description="Render RUN/notebooks/*.ipynb, as `zj reproduce` executed them, to DEST/*.html "
                                   "with the figures embedded, and DEST/README.md listing them.")
    p.add_argument("run", help="run folder, e.g. runs/tiny-seed0")
    p.add_argument("--to", default="docs/notebooks", help="destination folder (default docs/notebooks)")
    p = sub.add_parser("estimate", help="predicted peak memory of a stage, by part, and whether it fits 24/40/80 GB",
                       description="Count the memory a stage needs (nf4 weights, LoRA, gradients, AdamW, "
                                   "activations, PPO's KV cache and reward model) for a preset; see docs/SCALING.md.")
    p.add_argument("--preset", default="tiny", help="preset name (see `zj presets`)")
    p.add_argument("--stage", required=True, choices=("pretrain", "sft", "rm", "ppo"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. --set sft.batch_size=2 (repeatable)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="gpu: CUDA with the preset's dtypes (default); cpu: RAM, as bench_memory.py measures it")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="count activations with (or without) checkpointing per layer: the same as --set "
                        "STAGE.gradient_checkpointing=true|false (default: the stage's setting; our PPO has none)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    from .data import FORMATS
    from .fetch import DATASETS
    p = sub.add_parser("validate", help="check a data file; one line per problem as PATH:LOCATION: problem",
                       description="Read a data file the way training would and report every problem. "
                                   "Exit 0 with 'ok: N records' when it is clean, 1 when it is not.")
    p.add_argument("path")
    p.add_argument("--format", choices=FORMATS, default=None, help="the file's format (default: detected)")
    p = sub.add_parser("data", help="data sets: fetch the full public sets into data/raw/")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("fetch", help="download a public data set from the Hugging Face hub",
                            description="Known: " + "; ".join(f"{k}: {v[1]}" for k, v in DATASETS.items()))
    p.add_argument("name", choices=list(DATASETS))
    p.add_argument("--dest", default=None, help="folder (default data/raw/NAME)")
    p.add_argument("--force", action="store_true", help="download again even if the folder has files")
    p = sub.add_parser("judge", help="win/tie/loss of answer file A against B on a test set, with bootstrap CIs",
                       description="Judge two answer files ({id, answer} JSONL) pairwise on a test set.")
    p.add_argument("a", help="answers of system A (JSONL, one {\"id\", \"answer\"} per test item)")
    p.add_argument("b", help="answers of system B (same shape)")
    p.add_argument("--tests", action="append", required=True, metavar="TESTS",
                   help="a test file (repeatable): CMtMedQA, Huatuo-26M, chat JSONL or the world's test_*.jsonl "
                        "(data.load_test_records); the rule judge judges only the world's")
    p.add_argument("--judge", choices=("rule", "openai", "local"), default="rule")
    p.add_argument("--world", default=None, help="OUT/world (or its world.json): the rule judge's knowledge graph")
    p.add_argument("--model", default=None, help="openai: model name (key from $OPENAI_API_KEY, URL from "
                   "$OPENAI_BASE_URL); local: model folder")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--cache", default=None, help="openai: JSONL cache of raw verdicts (default: <out>.cache.jsonl "
                   "or judge_cache.jsonl)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="openai: judge calls in flight at once (default 1); one back-off for all of them: a 429 "
                   "pauses every worker. The result is the same as with 1")
    p.add_argument("--dry-run", action="store_true",
                   help="LLM judges: print the judge calls (2 orders per item, less those in the cache) and an "
                   "estimate of the prompt tokens, then stop; sends nothing")
    p.add_argument("--max-items", type=int, default=None, metavar="N",
                   help="judge only the first N items answered in both files (a pilot)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("generate", help="answer every test item with a local model ({id, answer} JSONL)")
    p.add_argument("--model", required=True, help="model folder (or hub id)")
    p.add_argument("--tests", action="append", required=True, metavar="TESTS",
                   help="a test file (repeatable): CMtMedQA, Huatuo-26M, chat JSONL or the world's test_*.jsonl")
    p.add_argument("--out", required=True, help="answers JSONL to write")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    # issue 16: `zj delta apply` (zj_utils/delta.py) and `zj export --to openrlhf|verl` (zj_utils/export.py)
    from . import delta, export
    delta.add_parser(sub)
    export.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _dispatch(args)
    except (ZJError, DataError) as e:
        print(f"zj {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        again = " then rerun with --resume" if args.command in RESUMABLE else ""
        print(f"zj {args.command}: error: the disk is full ({e.strerror or 'No space left on device'}){where}. "
              f"Free some space or point --out at another disk,{again}.", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(_oom_message(args, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zj {args.command}: interrupted", file=sys.stderr)
        return 130


def _out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (GPU), the CPU allocator's RuntimeError, or Python's MemoryError."""
    torch = sys.modules.get("torch")  # a stage that ran out of memory has imported it
    return (isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError))
            or "can't allocate memory" in str(err))


def _oom_message(args, err: Exception) -> str:
    stage = args.command
    batch, length = OOM_KNOBS.get(stage, ("<stage>.batch_size", "<stage>.max_length"))
    first = str(err).splitlines()[0] if str(err) else ""
    preset = getattr(args, "preset", "tiny")
    return (f"zj {stage}: error: out of memory in stage {stage} ({first[:160]}). Try a smaller batch or length, "
            f"e.g. --set {batch}=N or --set {length}=N, and see what fits with "
            f"`zj estimate --preset {preset} --stage {stage}`.")


def _dispatch(args) -> int:
    # data commands first: they need no preset (and no torch, which the stages import)
    if args.command == "validate":
        return _validate(args.path, args.format)
    if args.command == "data":
        from .fetch import fetch
        print(f"{args.name}: {fetch(args.name, args.dest, force=args.force)}")
        return 0
    if args.command in ("delta", "export"):  # issue 16: zj_utils/delta.py, zj_utils/export.py
        from . import delta, export
        return (delta if args.command == "delta" else export).cli_main(args)
    from .presets import PRESETS, get_preset

    if args.command == "estimate":
        from .estimate import estimate, format_table

        overrides = list(args.overrides)
        if args.gradient_checkpointing is not None:  # the stage's own field, so that estimate reads what runs
            if args.stage == "ppo":
                raise ZJError("our PPO has no gradient checkpointing (its policy stays in eval mode, where HF's "
                              "checkpointing does nothing): lower ppo.mini_batch_size to save activations")
            overrides.append(f"{args.stage}.gradient_checkpointing={str(args.gradient_checkpointing).lower()}")
        est = estimate(get_preset(args.preset, overrides), args.stage, args.device)
        print(json.dumps(est.as_dict(), indent=2) if args.json else format_table(est), end="" if not args.json else "\n")
        return 0
    if args.command == "render-notebooks":
        from .notebook_html import render_notebooks

        for page in render_notebooks(args.run, args.to):
            print(f"wrote {page}")
        return 0
    if args.command == "presets":
        for name, spec in PRESETS.items():
            print(f"{name:16s} {spec.get('description', '')}")
        return 0
    if args.command == "judge":
        from .compare import format_plan, format_table, judge_files

        kwargs = {}
        if args.judge == "openai":
            kwargs["cache_path"] = args.cache or (f"{args.out}.cache.jsonl" if args.out else "judge_cache.jsonl")
        result = judge_files(args.a, args.b, args.tests, judge=args.judge, world=args.world, model=args.model,
                             out=args.out, n_boot=args.n_boot, seed=args.seed, judge_kwargs=kwargs,
                             progress=args.judge != "rule", concurrency=args.concurrency, max_items=args.max_items,
                             dry_run=args.dry_run)
        if args.dry_run:
            print(format_plan(result["dry_run"]))
            return 0
        print(format_table(result, args.a, args.b))
        if args.out:
            print(f"wrote {args.out}")
        return 0
    if args.command == "generate":
        from .compare import generate_answers

        n = generate_answers(args.model, args.tests, args.out, args.max_new_tokens, args.batch_size,
                             args.repetition_penalty)
        print(f"wrote {n} answers to {args.out}")
        return 0
    if args.command == "align-summary":
        from .align import summarize_alignment

        summarize_alignment(args.runs, args.out, args.figures)
        print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
        print(f"wrote {args.out}/")
        return 0
    if args.command == "align-sweep":
        from .align_sweep import summarize_sweep, sweep_alignment

        if args.runs:
            sweep_alignment(args.preset, args.runs, args.lrs, args.out, args.methods, args.overrides, args.figures)
        else:  # no runs: summarise the cells already in --out
            summarize_sweep(args.out, args.figures)
        print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
        print(f"wrote {args.out}/")
        return 0
    from .pipeline import default_out, reproduce
    from .stages import run_stage

    out = args.out or str(default_out(args.preset, args.seed, getattr(args, "ablations", False)))
    if args.command == "reproduce" and args.ablations:
        from .pipeline import reproduce_ablations

        if args.seeds < 2:
            raise ZJError("--ablations needs --seeds 2 or more: the intervals are over seeds")
        summary = reproduce_ablations(args.preset, out, args.seeds, args.overrides, notebooks=not args.no_notebooks,
                                      fig_dir=args.figures)
        print((Path(out) / "ablations.md").read_text(encoding="utf-8"))
        print(f"metrics: {out}/metrics.json")
        return 0
    if args.command == "reproduce":
        summary = reproduce(args.preset, out, args.seed, args.overrides, notebooks=not args.no_notebooks,
                            fig_dir=args.figures)
        print(json.dumps(summary["headline"], ensure_ascii=False, indent=2))
        print(f"metrics: {out}/metrics.json  ({summary['total_seconds']:.0f} s)")
        return 0
    preset = get_preset(args.preset, args.overrides)
    if args.command in ("align", "align-compare"):
        from .align import compare_alignment, run_align

        if args.command == "align":
            metrics, stage = run_align(preset, out, args.seed, args.method), f"align_{args.method}"
        else:
            metrics, stage = compare_alignment(preset, out, args.seed), "align_compare"
        print(json.dumps(metrics, ensure_ascii=False, indent=2))
        if args.command == "align-compare":
            print((Path(out) / "align_compare" / "table.md").read_text(encoding="utf-8"))
        print(f"wrote {out}/{stage}/")
        return 0
    kwargs = {"extra_rankings": args.rankings} if args.command == "rm" else {}
    if args.command in RESUMABLE and args.resume:
        kwargs["resume"] = True
    metrics = run_stage(args.command, preset, out, args.seed, **kwargs)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    print(f"wrote {out}/{args.command}/")
    return 0


def _validate(path: str, format: str | None) -> int:
    from .data import check

    try:
        result = check(path, format)
    except Exception as e:  # a bug in a reader must still read as one line, not a traceback
        print(f"{path}:file: could not be read ({type(e).__name__}: {e})")
        return 1
    for problem in result["problems"]:
        print(problem)
    if result["problems"]:
        n = len(result["problems"])
        how = f" (read as {result['format']})" if result["format"] else ""
        print(f"zj validate: {n} problem{'s' * (n != 1)} in {path}{how}", file=sys.stderr)
        return 1
    print(f"format: {result['format']}")
    for kind, n in sorted(result["counts"].items(), key=lambda kv: -kv[1]):
        print(f"  {kind}: {n}")
    print(f"ok: {result['records']} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
