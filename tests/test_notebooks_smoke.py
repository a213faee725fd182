"""Integration: every numbered notebook, executed headless by papermill on the `smoke` preset, as
`make reproduce` does on `tiny`. Slow by design (a few minutes on 2 cores); it is the test that
the whole pipeline runs end to end."""
import json

import nbformat
import pytest

from zj_utils.pipeline import NOTEBOOKS, ROOT, STAGES, reproduce


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke-run")
    figs = out / "figures"
    summary = reproduce("smoke", out, seed=0, notebooks=True, fig_dir=figs)
    return out, figs, summary


@pytest.mark.slow
def test_every_notebook_runs_and_every_stage_writes_config_and_metrics(smoke_run):
    out, figs, summary = smoke_run
    for nb in NOTEBOOKS:
        executed = nbformat.read(out / "notebooks" / f"{nb}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb}: {errors[:1]}"
        for i, c in enumerate(executed.cells):
            if c.cell_type != "code":
                continue
            images = [o["data"]["image/png"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
            # a cell ending in a call that returns the figure showed it twice (the value and the inline backend)
            assert len(images) == len(set(images)), f"{nb} cell {i}: the same figure is shown twice"
            text = "".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
            assert "gemm_4bit_forward" not in text, f"{nb} cell {i}: bitsandbytes' kernels-hub warning is shown"
    for stage in STAGES:
        assert json.loads((out / stage / "config.json").read_text())["seed"] == 0, stage
        assert (out / stage / "metrics.json").exists(), stage
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["stages"]) == set(STAGES)
    assert saved["headline"]["reward_model_test_accuracy"] is not None


@pytest.mark.slow
def test_stage_outputs_are_real_checkpoints_and_figures(smoke_run):
    out, figs, _ = smoke_run
    for stage in ["pretrain", "sft", "rm", "ppo"]:
        assert (out / stage / "merged" / "model.safetensors").exists(), stage
        assert (out / stage / "adapter" / "adapter_model.safetensors").exists(), stage
    # data_turns_and_lengths and paper_fig4_5 read the repository's data/ (the CMtMedQA test set, the paper's CSV)
    for name in ["data_composition", "data_turns_and_lengths", "knowledge_probes", "pretrain_loss", "sft_loss",
                 "reward_model_accuracy", "ppo_curves", "eval_rates", "eval_win_tie_loss", "paper_fig4_5"]:
        assert (figs / f"{name}.png").stat().st_size > 1000, name
    ev = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"base", "sft", "ppo"} <= set(ev["models"])
    wtl = ev["pairwise"]["ppo_vs_sft"]["overall"]
    assert wtl["win"] + wtl["tie"] + wtl["loss"] == sum(ev["items"].values())


def test_committed_notebooks_have_parameters_and_no_outputs():
    for nb in NOTEBOOKS:
        book = nbformat.read(ROOT / "notebooks" / f"{nb}.ipynb", as_version=4)
        params = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, nb
        for name in ("preset", "out_dir", "seed"):
            assert f"{name} =" in params[0].source, (nb, name)
        assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), nb


def test_bitsandbytes_kernels_hub_notice_is_dropped_and_nothing_else():
    import logging

    import zj_utils  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def record(msg):
        return logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, ("No module named 'kernels'",), None)

    assert not log.filter(record("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ..."))
    assert log.filter(record("Something else went wrong: %s"))


def test_notebooks_04_and_05_reuse_completed_stages_by_parameter():
    """Stepped through by hand, 04 and 05 read a completed rm / ppo stage back (stages.run_or_reuse) unless the
    `reuse` parameter is False."""
    for nb, stage in (("04_reward_model", "rm"), ("05_ppo", "ppo")):
        book = nbformat.read(ROOT / "notebooks" / f"{nb}.ipynb", as_version=4)
        params = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
        assert "reuse = True" in params.source, nb
        assert any(f'run_or_reuse("{stage}", P, out, seed, reuse=reuse' in c.source for c in book.cells), nb
