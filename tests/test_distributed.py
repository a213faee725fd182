"""DDP: SFT on the smoke preset with 2 CPU processes (gloo), launched by torchrun and by `accelerate launch`, must
train the same model as one process with the same global batch (per-device batch halved): same loss and, above
all, the same adapter weights. A run whose ranks did not synchronise their gradients would end with rank 0's
half-batch model: its adapter is ~150% (relative) away from the one-process adapter; DDP's is ~5e-6 away."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from zj_utils.pipeline import ROOT, run_stage
from zj_utils.presets import get_preset

# dropout 0: the only randomness left is the data order, which the seeded sampler shares between ranks
SFT = ["--preset", "smoke", "--seed", "0", "--set", "sft.init_from=base", "--set", "sft.lora.dropout=0",
       "--set", "sft.max_steps=4", "--set", "sft.save_every=0"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """World + base model once, then SFT in one process with batch 8: what the 2-process runs must match."""
    out = tmp_path_factory.mktemp("ddp") / "one"
    preset = get_preset("smoke")
    run_stage("world", preset, out, 0)
    run_stage("base", preset, out, 0)
    m, a = _run([sys.executable, "-m", "zj_utils.cli", "sft", *SFT, "--set", "sft.batch_size=8", "--out", str(out)],
                out)
    return out, m, a


def _copy_inputs(one, name):
    two = one.parent / name
    for stage in ("world", "base"):
        shutil.copytree(one / stage, two / stage)
    return two


def _run(cmd, out):
    env = dict(os.environ, ZJ_THREADS="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", MASTER_ADDR="127.0.0.1")
    proc = _launch(cmd, env, 240)
    return json.loads((out / "sft" / "metrics.json").read_text()), load_file(str(out / "sft" / "adapter" /
                                                                               "adapter_model.safetensors"))


def _launch(cmd, env, timeout):
    """Run a 2-process launch. On a loaded machine about 1 launch in 7 lost a rank at start-up (exit 1, nothing
    printed; cause not found), so a launch that fails is tried again, up to 3 times, and every failed attempt's
    output is shown if none succeeds. A launch that succeeds is checked in full: retries never relax a check."""
    failures = []
    for _ in range(3):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            if failures:
                print(f"launch succeeded after {len(failures)} failed attempt(s):\n" + "\n".join(failures))
            return proc
        failures.append(_tail(proc))
    raise AssertionError("\n---\n".join(failures))


def _tail(proc) -> str:
    """What the ranks printed before the launcher's own traceback, without progress bars and library chatter."""
    raw = proc.stdout + "\n" + proc.stderr
    cut = raw.rfind("Traceback (most recent call last)")
    lines = [l for l in raw[:cut if cut > 0 else len(raw)].splitlines()
             if l.strip() and "it/s]" not in l and "kernels" not in l]
    return f"exit {proc.returncode}:\n" + "\n".join(lines[-60:])


def _check_same(one, two, m1, a1, m2, a2):
    assert m1["steps"] == m2["steps"] == 4
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=2e-3)
    assert a1.keys() == a2.keys()
    lora_b = [k for k in a1 if "lora_B" in k]
    assert lora_b and all(a1[k].abs().max() > 0 for k in lora_b)  # the adapter did move from its zero start
    moved = max(float((a1[k] - a2[k]).abs().max() / a1[k].abs().max()) for k in lora_b)
    assert moved < 1e-3, f"2-process adapter differs from the 1-process one by {moved:.3f} (relative)"
    # the same files as a one-process run: no per-rank leftovers
    assert sorted(p.name for p in (two / "sft").iterdir()) == sorted(p.name for p in (one / "sft").iterdir())


def test_sft_under_torchrun_on_two_processes_matches_one_process(reference):
    one, m1, a1 = reference
    two = _copy_inputs(one, "torchrun")
    m2, a2 = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "zj_utils.cli", "sft", *SFT, "--set", "sft.batch_size=4", "--out", str(two)], two)
    _check_same(one, two, m1, a1, m2, a2)


def test_sft_under_accelerate_launch_with_the_ddp_config_matches_one_process(reference):
    one, m1, a1 = reference
    two = _copy_inputs(one, "accelerate")
    # the GPU config as shipped; on a machine without GPUs its processes fall back to CPU (gloo), without bf16
    m2, a2 = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--mixed_precision", "no",
                   "--main_process_port", str(_free_port()),
                   "-m", "zj_utils.cli", "sft", *SFT, "--set", "sft.batch_size=4", "--out", str(two)], two)
    _check_same(one, two, m1, a1, m2, a2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PPO_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_ppo import PROMPTS, make_counting_rm, make_policy, make_tokenizer
from zj_utils.ppo import PPOConfig, train_ppo
dist.init_process_group("gloo")
tok = make_tokenizer()
policy = make_policy(tok)
cfg = PPOConfig(steps=3, batch_size=4, mini_batch_size=2, ppo_epochs=1, learning_rate=3e-3, max_new_tokens=8,
                save_every=2)
summary = train_ppo(policy, tok, make_counting_rm(tok), PROMPTS, cfg, sys.argv[1], seed=0)
flat = torch.cat([p.detach().flatten() for p in policy.parameters() if p.requires_grad])
every = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(every, flat)
if dist.get_rank() == 0:
    print("RESULT", json.dumps({{"diff": float((every[0] - every[1]).abs().max()),
                                "moved": float((flat - every[0]).abs().max()), "norm": float(flat.norm())}}))
dist.destroy_process_group()
"""


def test_our_ppo_under_torchrun_keeps_ranks_in_step_and_writes_once(tmp_path):
    """Each rank rolls out its own prompts with its own samples; averaged gradients keep the adapters equal."""
    script = tmp_path / "ppo_ddp.py"
    script.write_text(PPO_SCRIPT.format(tests=str(ROOT / "tests")))
    out = tmp_path / "ppo"
    env = dict(os.environ, ZJ_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(out)], env, 180)
    res = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0][7:])
    assert res["diff"] == 0.0 and res["norm"] > 0
    rows = [json.loads(l) for l in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one writer, not two interleaved
    assert json.loads((out / "latest.json").read_text())["step"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").exists()
