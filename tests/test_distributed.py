"""DDP: SFT on the smoke preset with 2 CPU processes (gloo), launched by torchrun and by `accelerate launch`, must
train the same model as one process with the same global batch (per-device batch halved): same loss and, above
all, the same adapter weights. A run whose ranks did not synchronise their gradients would end with rank 0's
half-batch model: its adapter is ~150% (relative) away from the one-process adapter; DDP's is ~5e-6 away."""
import json
import os
import shutil
import subprocess
import sys
import warnings

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
    printed; cause not found), so a launch that fails is tried again, up to 3 times. Every failed attempt is
    counted and shown: printed, and as a warning in pytest's summary even when a later attempt passes; if none
    succeeds, all their outputs are the failure. A launch that succeeds is checked in full: retries never relax a
    check."""
    failures = []
    for _ in range(3):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            if failures:
                msg = (f"2-process launch succeeded after {len(failures)} failed attempt(s):\n"
                       + "\n---\n".join(failures))
                print(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return proc
        failures.append(_tail(proc))
        print(f"2-process launch failed (attempt {len(failures)} of 3):\n{failures[-1]}")
    raise AssertionError(f"all {len(failures)} launches failed:\n" + "\n---\n".join(failures))


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
start = torch.cat([p.detach().flatten() for p in policy.parameters() if p.requires_grad]).clone()
cfg = PPOConfig(steps=3, batch_size=4, mini_batch_size=2, ppo_epochs=1, learning_rate=3e-3, max_new_tokens=8,
                save_every=2)
summary = train_ppo(policy, tok, make_counting_rm(tok), PROMPTS, cfg, sys.argv[1], seed=0)
flat = torch.cat([p.detach().flatten() for p in policy.parameters() if p.requires_grad])
every = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(every, flat)
if dist.get_rank() == 0:
    print("RESULT", json.dumps({{"diff": float((every[0] - every[1]).abs().max()),
                                "moved": float((flat - start).abs().max()), "norm": float(flat.norm())}}))
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
    # the ranks hold the same adapter, and it is not the one they started from (lora_A starts random, so a
    # norm > 0 alone would hold without any update)
    assert res["diff"] == 0.0 and res["moved"] > 1e-4, res
    rows = [json.loads(l) for l in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one writer, not two interleaved
    assert json.loads((out / "latest.json").read_text())["step"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").exists()


DDP_STEP_SCRIPT = """
import sys
import torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from ppo_fixtures import sgd_update
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
before, after = sgd_update([2 * rank, 2 * rank + 1])
every = [torch.zeros_like(after) for _ in range(dist.get_world_size())]
dist.all_gather(every, after)
if rank == 0:
    torch.save({{"before": before, "after": after, "every": every}}, sys.argv[1])
dist.destroy_process_group()
"""


def test_ppo_ddp_update_equals_the_one_process_update_on_the_global_batch(tmp_path):
    """Two ranks, each with half of a fixed batch of 4 (7 response tokens each), make the same update as one process
    with all 4: the gradients are averaged over the ranks, not summed. SGD without clipping makes the update
    proportional to the gradient (AdamW's first step would be blind to a factor 2); two epochs, so the second
    update starts from the first."""
    from ppo_fixtures import sgd_update

    torch.set_num_threads(1)
    before1, after1 = sgd_update([0, 1, 2, 3])
    script = tmp_path / "ppo_ddp_step.py"
    script.write_text(DDP_STEP_SCRIPT.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, ZJ_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(script), str(tmp_path / "two.pt")], env, 180)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert torch.equal(two["before"], before1)  # the same start on every process
    assert torch.equal(two["every"][0], two["every"][1])  # ranks in step
    one_update, two_update = after1 - before1, two["after"] - two["before"]
    assert one_update.abs().max() > 1e-3  # it moved (LoRA B and the value head start at 0)
    torch.testing.assert_close(two_update, one_update, rtol=1e-4, atol=1e-6)
