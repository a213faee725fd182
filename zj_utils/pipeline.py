"""The driver: stages in order, and `reproduce`, which executes the numbered notebooks headless with papermill
(or calls the stage functions directly) and gathers every stage's metrics into OUT/metrics.json."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import Timer, ZJError, read_json, to_jsonable, write_json
from .stages import STAGES, run_stage

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_corpus_prep", "02_continued_pretraining_qlora", "03_sft", "04_reward_model", "05_ppo",
             "06_evaluation"]
# Run by `zj reproduce --ablations` only: it trains every ablation variant over several seeds (tens of minutes on tiny).
ABLATION_NOTEBOOK = "07_ablations"


def default_out(preset_name: str, seed: int, ablations: bool = False) -> Path:
    return Path("runs") / (f"{preset_name}-ablations" if ablations else f"{preset_name}-seed{seed}")


def execute_notebook(nb: str, out: Path, parameters: dict) -> None:
    """Execute notebooks/<nb>.ipynb headless; its executed copy (outputs and all) lands in OUT/notebooks/."""
    import papermill as pm

    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    print(f"[zj reproduce] executing notebooks/{nb}.ipynb", file=sys.stderr, flush=True)
    executed = out / "notebooks" / f"{nb}.ipynb"
    try:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{nb}.ipynb"), str(executed), parameters=parameters,
                            kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        raise ZJError(f"notebook {nb} failed in cell {e.exec_count}: {e.ename}: {e.evalue}. "
                      f"The executed copy with the traceback is {executed}") from e


def collect_metrics(out) -> dict:
    out = Path(out)
    return {s: read_json(out / s / "metrics.json") for s in STAGES if (out / s / "metrics.json").exists()}


def headline(metrics: dict) -> dict:
    """The few numbers a reader looks for first."""
    h = {}
    if "pretrain" in metrics:
        p = metrics["pretrain"]
        h["probe_accuracy_before_pretrain"] = p["before"]["probes"]["all"]
        h["probe_accuracy_after_pretrain"] = p["after"]["probes"]["all"]
        h["heldout_ppl_before_after"] = [p["before"]["heldout_ppl"], p["after"]["heldout_ppl"]]
    if "rm" in metrics:
        h["reward_model_test_accuracy"] = metrics["rm"]["test_accuracy"]
    if "ppo" in metrics:
        h["ppo_heldout_score_before_after"] = [metrics["ppo"]["heldout_score_before"], metrics["ppo"]["heldout_score_after"]]
    if "eval" in metrics:
        for name, m in metrics["eval"]["models"].items():
            # proactive and unsafe are the rule judge's rates on the world's sets (None when they were not evaluated)
            h[f"{name}: knowledge / proactive / unsafe"] = [m["knowledge_accuracy"]["all"],
                                                           m.get("proactive_inquiry_rate"), m.get("unsafe_rate")]
    return h


def reproduce(preset_name: str, out, seed: int = 0, overrides: list[str] | None = None, notebooks: bool = True,
              fig_dir: str | Path = "figures", stages: list[str] | None = None) -> dict:
    """Run the whole pipeline. With notebooks, each numbered notebook is executed by papermill and its executed
    copy lands in OUT/notebooks/; figures go to `fig_dir`. OUT/metrics.json holds results only (the same bytes for
    the same preset and seed); wall-clock times go to OUT/timings.json."""
    from .presets import get_preset

    from .delta import check_not_delta

    preset = get_preset(preset_name, overrides)
    check_not_delta(preset.model)  # before the world: a run on delta weights stops before any work
    timer = Timer()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"preset": preset, "seed": seed, "overrides": overrides or [],
                                     "notebooks": notebooks})
    seconds = {}
    if notebooks:
        for nb in NOTEBOOKS:
            t = Timer()
            execute_notebook(nb, out, {"preset": preset_name, "out_dir": str(out), "seed": seed,
                                       "fig_dir": str(Path(fig_dir).resolve()), "overrides": list(overrides or [])})
            seconds[nb] = t()
    else:
        for stage in stages or STAGES:
            t = Timer()
            run_stage(stage, preset, out, seed)
            seconds[stage] = t()
    metrics = collect_metrics(out)
    summary = {"preset": preset_name, "seed": seed, "headline": headline(metrics), "stages": metrics}
    write_json(out / "metrics.json", to_jsonable(summary))
    total = timer()
    write_json(out / "timings.json", {"seconds": seconds, "total_seconds": total})
    return summary | {"total_seconds": total}


def reproduce_ablations(preset_name: str, out, seeds: int = 3, overrides: list[str] | None = None,
                        notebooks: bool = True, fig_dir: str | Path = "figures") -> dict:
    """The ablations over seeds (zj_utils/ablations.py). With notebooks, notebooks/07_ablations.ipynb drives them
    and draws the figure; without, the runner is called directly. Either way OUT/metrics.json, OUT/ablations.csv
    and OUT/ablations.md are written, and a killed run continues where it stopped."""
    from .ablations import run_ablations

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if notebooks:
        execute_notebook(ABLATION_NOTEBOOK, out, {"preset": preset_name, "out_dir": str(out), "seed": 0,
                                                  "seeds": seeds, "fig_dir": str(Path(fig_dir).resolve()),
                                                  "overrides": list(overrides or [])})
        return read_json(out / "metrics.json")
    return run_ablations(preset_name, out, seeds, overrides, fig_dir=fig_dir)
