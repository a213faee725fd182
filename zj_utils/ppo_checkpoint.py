"""PPO's checkpoints (zj_utils/ppo.py's `train_ppo` writes one every `save_every` steps and resumes from the last):
everything a resumed run needs to continue exactly as an uninterrupted one would, written atomically.

A checkpoint folder `checkpoint-NNNNNN/` holds adapter.safetensors (the LoRA), value_head.safetensors,
optimizer_and_rng.pt (optimizer state, the CPU, CUDA and minibatch-generator RNGs) and state.json (step, KL
coefficient, and whatever the loop passes: history, prompt order, Python's RNG, reward normalisation, probe rows);
`latest.json` names the last complete one.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def save_checkpoint(out_dir: Path, step: int, policy, value_head, optimizer, kl_ctl, state: dict) -> Path:
    """Everything a resumed run needs to continue exactly: adapter, value head, optimizer, KL coefficient, reward
    normalisation, the prompt order and every RNG (CPU, CUDA, the minibatch generator, Python's). Written to its
    own folder first; only then does `latest.json` point at it, so a run killed mid-write resumes from the
    previous complete checkpoint."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .common import write_json

    ckpt = out_dir / f"checkpoint-{step:06d}"
    tmp = out_dir / f".checkpoint-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(policy).items()},
              str(tmp / "adapter.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
              str(tmp / "value_head.safetensors"))
    blob = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "generator": state.pop("generator").get_state()}
    if _cuda_devices():  # generate() samples on the GPU from the CUDA generators
        blob["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(blob, tmp / "optimizer_and_rng.pt")
    write_json(tmp / "state.json", state | {"step": step, "kl_coef": kl_ctl.value})
    if ckpt.exists():
        shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)
    write_json(out_dir / "latest.json", {"checkpoint": ckpt.name, "step": step})
    for old in out_dir.glob("checkpoint-*"):
        if old != ckpt:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


def load_checkpoint(out_dir: Path, policy, value_head, optimizer, kl_ctl, generator) -> dict | None:
    """Restore the last complete checkpoint in place; returns its state (step, history, order, rng) or None."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .common import read_json

    latest = out_dir / "latest.json"
    if not latest.exists():
        return None
    ckpt = out_dir / read_json(latest)["checkpoint"]
    set_peft_model_state_dict(policy, load_file(str(ckpt / "adapter.safetensors")))
    value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))
    blob = torch.load(ckpt / "optimizer_and_rng.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    generator.set_state(blob["generator"])
    devices = _cuda_devices()
    saved = blob.get("cuda_rng") or []
    if devices and len(saved) != len(devices):
        warnings.warn(f"{ckpt.name} holds the RNG of {len(saved)} CUDA device(s), this machine has {len(devices)}: "
                      "the resumed run samples differently from an uninterrupted one", stacklevel=2)
    for i, st in zip(devices, saved):
        torch.cuda.set_rng_state(st, i)
    state = read_json(ckpt / "state.json")
    kl_ctl.value = state["kl_coef"]
    return state
