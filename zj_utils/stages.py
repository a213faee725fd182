"""One stage at a time: `run_stage(stage, preset, out, seed)` runs any stage of the pipeline by name.

Below the drivers: the notebooks, `zj <stage>`, `reproduce` (zj_utils/pipeline.py) and the ablation runner
(zj_utils/ablations.py) all run stages through it.
"""
from __future__ import annotations

from .common import begin_stage, write_metrics

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
