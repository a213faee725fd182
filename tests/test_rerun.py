"""Bit-for-bit reruns: the smoke pipeline, run twice with the same preset and seed on the CPU, writes the same bytes
to every stage's metrics.json. Wall-clock values (seconds, tokens/s) live in OUT/<stage>/timings.json instead.

The two runs are separate processes (nothing shared but the code), started side by side with one thread each:
that halves the wall time on a 2-core machine, and a result that depended on thread timing would show here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zj_utils.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
RUN = ("import sys\n"
       "from zj_utils.pipeline import STAGES, run_stage\n"
       "from zj_utils.presets import get_preset\n"
       "preset = get_preset('smoke')\n"
       "for stage in STAGES:\n"
       "    run_stage(stage, preset, sys.argv[1], 0)\n")


def _wall_clock(key: str) -> bool:
    k = key.lower()
    return (k in ("seconds", "time", "elapsed", "duration") or k.endswith(("_seconds", "_per_s", "_time"))
            or "per_second" in k or "runtime" in k)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    runs = [tmp_path_factory.mktemp(f"rerun-{x}") for x in "ab"]
    env = dict(os.environ, ZJ_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    procs = []
    for out in runs:
        log = open(out.parent / f"{out.name}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-c", RUN, str(out)], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        rc = proc.wait()
        log.close()
        assert rc == 0, Path(log.name).read_text()[-3000:]
    return runs


@pytest.mark.parametrize("stage", STAGES)
def test_same_preset_and_seed_give_byte_identical_metrics(two_runs, stage):
    a, b = (run / stage / "metrics.json" for run in two_runs)
    assert a.read_bytes() == b.read_bytes(), f"{stage}: metrics.json differs between two runs with seed 0"


def _keys(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{path}.{k}", k
            yield from _keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _keys(v, f"{path}[{i}]")


@pytest.mark.parametrize("stage", STAGES)
def test_metrics_hold_no_wall_clock_values(two_runs, stage):
    """Equal bytes could still hide a timing that happened to round alike; no key may name one."""
    metrics = json.loads((two_runs[0] / stage / "metrics.json").read_text())
    timed = [p for p, k in _keys(metrics) if _wall_clock(k)]
    assert not timed, f"{stage}: wall-clock values in metrics.json (they belong in timings.json): {timed}"
