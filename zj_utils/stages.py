"""One stage at a time: `run_stage(stage, preset, out, seed)` runs any stage of the pipeline by name.

Below the drivers: the notebooks, `zj <stage>`, `reproduce` (zj_utils/pipeline.py) and the ablation runner
(zj_utils/ablations.py) all run stages through it. `run_or_reuse` reads a completed stage back instead of training
it again, for a notebook stepped through by hand.
"""
from __future__ import annotations

from pathlib import Path

from .common import begin_stage, read_json, to_jsonable, write_metrics

STAGES = ["world", "base", "pretrain", "sft", "rm", "ppo", "eval"]


def run_world(preset, out, seed: int = 0) -> dict:
    from .world import build_world, write_world

    d, timer = begin_stage("world", preset, out, seed, world=preset.world)
    counts = write_world(build_world(preset.world, seed), d)
    return write_metrics(d, {"files": counts}, {"seconds": timer()})


def run_stage(stage: str, preset, out, seed: int = 0, **kwargs) -> dict:
    from . import base_model, evaluate, ppo, pretrain, reward, sft
    from .delta import check_not_delta

    if stage != "world":  # every stage after the world stands on the base model: never on delta weights
        check_not_delta(preset.model)
    runners = {"world": run_world, "base": base_model.build_base, "pretrain": pretrain.run_pretrain,
               "sft": sft.run_sft, "rm": reward.run_rm, "ppo": ppo.run_ppo, "eval": evaluate.run_eval}
    return runners[stage](preset, out, seed, **kwargs)


# ---------------------------------------------------------------- reusing a completed stage (notebooks by hand)

def newer_than(path, inputs) -> bool:
    """True when `path` exists and was last written after every file of `inputs` that exists."""
    path = Path(path)
    if not path.exists():
        return False
    mtime = path.stat().st_mtime_ns
    return all(mtime > Path(p).stat().st_mtime_ns for p in inputs if Path(p).exists())


def why_not_reuse(stage: str, preset, out, seed: int = 0, **kwargs) -> str | None:
    """None when OUT/<stage> holds a completed run of this very stage, else why not. Completed: its metrics.json
    (written last) is newer than its config.json (written first), so the last start finished. This very stage:
    config.json names the same preset and seed and holds the same settings (each section the stage records, e.g.
    `rm`, `model`, `quant`, as the preset has it now; `extra_rankings` as passed). Still valid: its metrics.json
    is newer than that of every earlier stage in OUT, so no stage it may read was re-run after it, and than every
    `extra_rankings` file (a person ranking more). Code changes are not seen: after editing zj_utils, retrain."""
    import json

    d = Path(out) / stage
    metrics, config = d / "metrics.json", d / "config.json"
    if not metrics.exists() or not config.exists():
        return f"no completed run in {d}"
    if not newer_than(metrics, [config]):
        return f"the last run in {d} started and did not finish"
    cfg = read_json(config)
    if cfg.get("preset") != preset.name or cfg.get("seed") != seed:
        return f"{d} holds preset {cfg.get('preset')!r} seed {cfg.get('seed')}, not {preset.name!r} seed {seed}"
    for key, saved in cfg.items():
        if key in ("stage", "preset", "seed"):
            continue
        if key == "extra_rankings":
            want = [str(p) for p in kwargs.get("extra_rankings") or []]
        elif hasattr(preset, key):
            want = getattr(preset, key)
        else:
            return f"{config} records {key!r}, which this check cannot compare"
        if json.loads(json.dumps(to_jsonable(want))) != saved:
            return f"its {key!r} settings differ from the preset's now"
    earlier = STAGES[:STAGES.index(stage)] if stage in STAGES else []
    stale = [s for s in earlier if not newer_than(metrics, [Path(out) / s / "metrics.json"])]
    if stale:
        return f"stage(s) {', '.join(stale)} ran after it"
    changed = [str(p) for p in kwargs.get("extra_rankings") or [] if not newer_than(metrics, [p])]
    if changed:
        return f"{', '.join(changed)} changed after it"
    return None


def run_or_reuse(stage: str, preset, out, seed: int = 0, reuse: bool = True, **kwargs) -> dict:
    """`run_stage`, unless `reuse` and OUT/<stage> already holds a completed, still valid run of the same stage
    with the same preset, seed and settings (`why_not_reuse`): then its metrics.json is read back and nothing is
    trained. A notebook stepped through by hand then costs seconds per re-run; `reuse=False` always retrains.
    Prints which of the two happened and why."""
    why = why_not_reuse(stage, preset, out, seed, **kwargs) if reuse else "reuse=False"
    if why is None:
        print(f"[{stage}] reusing the completed run in {Path(out) / stage} (same preset, seed and settings, newer "
              "than the stages before it); pass reuse=False to train again")
        return read_json(Path(out) / stage / "metrics.json")
    print(f"[{stage}] training: {why}")
    return run_stage(stage, preset, out, seed, **kwargs)
