import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]


def test_every_preset_builds_and_differs_only_by_data():
    for name in PRESETS:
        p = get_preset(name)
        assert p.name == name
        assert p.model.trust_remote_code is False  # safe default, every preset
    assert get_preset("smoke").world.n_diseases < get_preset("tiny").world.n_diseases
    assert get_preset("zhongjing-13b").model.name_or_path != "tiny"


def test_overrides_are_parsed_and_checked():
    p = get_preset("tiny", ["sft.learning_rate=1e-4", "sft.mix={\"single\": 2.0}", "ppo.kl_estimator=k3"])
    assert p.sft.learning_rate == 1e-4 and p.sft.mix == {"single": 2.0} and p.ppo.kl_estimator == "k3"
    assert get_preset("tiny").sft.learning_rate != 1e-4  # presets are not mutated by overrides
    with pytest.raises(ZJError, match=r"Unknown setting 'preset\.sft\.learning_rat'"):
        get_preset("tiny", ["sft.learning_rat=1"])
    with pytest.raises(ZJError, match="Unknown preset 'nope'. Known presets: tiny"):
        get_preset("nope")


def test_cli_gives_one_line_errors_not_tracebacks(capsys, tmp_path):
    assert main(["sft", "--preset", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "zj sft: error: Unknown preset 'nope'" in err and "Traceback" not in err
    # A stage whose input is missing says which stage to run first.
    assert main(["pretrain", "--preset", "smoke", "--out", str(tmp_path)]) == 2
    assert "Run `zj" in capsys.readouterr().err


def test_a_badly_typed_setting_stops_before_the_stage_and_leaves_a_finished_run_as_it_was(capsys, tmp_path):
    for bad, said in (("sft.epochs=abc", "'sft.epochs': \"abc\" (str); the setting takes float"),
                      ("rm.lora.r=2.5", "'rm.lora.r': 2.5 (float); the setting takes int"),
                      ("sft.learning_rate=true", "'sft.learning_rate': true (bool); the setting takes float"),
                      ("sft.lora=3", "'sft.lora': it is a group of settings")):
        with pytest.raises(ZJError, match=re.escape(said)):
            get_preset("tiny", [bad])
    p = get_preset("tiny", ["sft.epochs=3", "rm.lora.target_modules=[\"q_proj\"]", "eval.max_items=50"])
    assert p.sft.epochs == 3 and p.rm.lora.target_modules == ["q_proj"] and p.eval.max_items == 50
    finished = tmp_path / "sft"
    finished.mkdir()
    record = {"config.json": '{"stage": "sft", "seed": 0}', "metrics.json": '{"final_loss": 1.9}'}
    for name, text in record.items():
        (finished / name).write_text(text)
    assert main(["sft", "--preset", "smoke", "--out", str(tmp_path), "--set", "sft.epochs=abc"]) == 2
    err = capsys.readouterr().err
    assert "Bad value for 'sft.epochs'" in err and "Traceback" not in err
    assert {n: (finished / n).read_text() for n in record} == record


def test_a_fresh_start_over_a_finished_stage_marks_it_unfinished(tmp_path):
    from zj_utils.common import begin_stage, stage_done, write_metrics

    p = get_preset("smoke")
    d, _ = begin_stage("sft", p, tmp_path, 0)
    write_metrics(d, {"final_loss": 1.9}, {"seconds": 1})
    assert stage_done(d)
    begin_stage("sft", p, tmp_path, 0, resume=True)  # resuming keeps the record
    assert stage_done(d)
    begin_stage("sft", p, tmp_path, 1)  # a new run: the old results do not describe it
    assert not stage_done(d) and not (d / "timings.json").exists()
    assert json.loads((d / "config.json").read_text())["seed"] == 1


def test_console_script_lists_presets():
    res = subprocess.run([sys.executable, "-m", "zj_utils.cli", "presets"], capture_output=True, text=True, check=True)
    assert all(name in res.stdout for name in PRESETS)


def _names(reqs):
    return {re.split(r"[<>=!\[ ]", r.strip(), maxsplit=1)[0].lower() for r in reqs}


def test_environment_yml_and_pyproject_list_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = (ROOT / "environment.yml").read_text()
    conda_deps = {line.split("- ", 1)[1].split("#")[0].strip() for line in env.splitlines()
                  if line.startswith("      - ") and not line.strip().startswith("- -e")}
    assert _names(conda_deps) == pip_deps
    assert "torch==2.13.0" in project["dependencies"] and "torch==2.13.0" in env
