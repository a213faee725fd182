"""benchmarks/gpu_check.py at toy shapes on the CPU: every stage measures, trains and reports, an out-of-memory
error is retried at half the micro-batch, and the script runs without the packages the GPU machine lacks."""
import importlib.util
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_toy_run_measures_and_trains_every_stage(tmp_path):
    """The whole script at toy shapes, in a process where the packages the GPU machine lacks cannot be imported
    (it has torch, transformers, peft, bitsandbytes, accelerate: no trl, datasets, papermill)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("trl", "datasets", "papermill", "ipywidgets"):
                    raise ImportError("not on the GPU machine: " + name)
        sys.meta_path.insert(0, Block())
        sys.argv = ["gpu_check.py", "--toy", "--cpu", "--steps", "1", "--out", {str(tmp_path)!r}]
        runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "total" in run.stdout and "ERROR" not in run.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["stage"]: r for r in report["rows"]}
    assert set(rows) == {"pretrain", "rm", "ppo"}
    for stage, r in rows.items():
        assert r["error"] is None, (stage, r.get("traceback"))
        for key in ("measured_bytes", "predicted_bytes", "tokens", "tokens_per_s", "step_seconds"):
            assert _positive(r[key]), (stage, key, r[key])
        assert math.isfinite(r["loss"]), (stage, r["loss"])
        assert r["updated"] is True, stage  # LoRA B (zero at start) moved; for rm the score head is trainable
        assert r["ratio"] is None  # a CPU's peak RSS is not what the estimate predicts
    assert rows["pretrain"]["tokens"] == 2 * 32 and rows["rm"]["tokens"] == 2 * 2 * 32
    ppo = rows["ppo"]
    assert ppo["value_head_moved"] is True
    assert set(ppo["phase_peaks_gib"]) == {"generation", "reward model", "log-probs (no grad)", "update minibatches"}
    assert set(ppo["predicted_phases_gib"]) == {"generation", "log-probs (no grad)", "update minibatches"}
    assert ppo["ppo_stats"]["skipped_batches"] == 0
    assert ppo["ppo_stats"]["response_length"] > 0
    assert [r["stage"] for r in report["rows"]] == ["pretrain", "rm", "ppo"]
    assert report["device"]["device"] == "cpu" and report["device"]["bitsandbytes"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| toy | ppo | off |" in md and "PPO peak by phase" in md


def test_lora_b_check_is_false_before_a_step(gpu_check):
    # the "updated" flag above means something only if a fresh adapter fails it
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert not gpu_check.lora_b_nonzero(model)


def test_out_of_memory_is_reported_and_retried_at_half_the_batch(gpu_check, tmp_path, monkeypatch):
    real = gpu_check.RUNNERS["pretrain"]
    seen = []

    def oom_once(ctx):
        seen.append(ctx.preset.pretrain.batch_size)
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(ctx)

    monkeypatch.setitem(gpu_check.RUNNERS, "pretrain", oom_once)
    report = gpu_check.run(["--toy", "--cpu", "--steps", "1", "--stages", "pretrain", "--out", str(tmp_path)])
    first, retry = report["rows"]
    assert first["oom"] and "out of memory" in first["error"]
    assert seen == [2, 1]
    assert retry["error"] is None and retry["retry_of_oom"] == "pretrain.batch_size=1" and retry["tokens"] == 32
    assert retry["predicted_bytes"] < first["predicted_bytes"]  # predicted for the batch that ran


def test_a_failing_stage_is_reported_and_the_next_one_runs(gpu_check, tmp_path, monkeypatch):
    def mismatch(ctx):
        raise TypeError("an API the GPU machine's transformers lacks (simulated)")

    monkeypatch.setitem(gpu_check.RUNNERS, "rm", mismatch)
    argv = ["--toy", "--cpu", "--steps", "1", "--stages", "rm,pretrain", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 1  # an error that is not a measurement (as an OOM is) fails the run
    rm, pretrain = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert rm["error"].startswith("TypeError") and not rm["oom"] and "Traceback" in rm["traceback"]
    assert pretrain["error"] is None and pretrain["updated"]
