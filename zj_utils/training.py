"""Pieces every training stage shares: HF TrainingArguments from a stage config, a throughput-logging callback,
and QLoRA model preparation."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Append every Trainer log (loss, lr, ...) to OUT/<stage>/log.jsonl, with tokens/s since the previous log.
    Resuming from the checkpoint of step N keeps the lines up to step N, so the log reads as one run."""

    def __init__(self, path: Path, resume_step: int | None = None):
        from .common import is_main_process

        self.path = Path(path)
        kept = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:  # the last line of a killed run may be cut short
                    pass
        if is_main_process():  # under DDP the other ranks write nothing (on_log: the Trainer's world process zero)
            self.path.write_text("".join(kept), encoding="utf-8")
        self._t, self._tokens = time.perf_counter(), 0

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run starts past 0 tokens
        self._t, self._tokens = time.perf_counter(), state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:  # under DDP every rank logs the same numbers: write once
            return
        now, seen = time.perf_counter(), state.num_input_tokens_seen or 0
        rec = {"step": state.global_step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}}
        if seen > self._tokens and "loss" in logs:
            rec["tokens_per_s"] = round((seen - self._tokens) / max(now - self._t, 1e-9), 1)
            self._t, self._tokens = now, seen
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


COMPLETE = "COMPLETE"  # written last into a Trainer checkpoint folder: without it the folder is a torso


class AtomicCheckpointCallback(TrainerCallback):
    """Makes the Trainer's checkpoints safe to resume from after a SIGKILL at any moment.

    transformers 5.x writes `checkpoint-N/` file by file in place (weights, optimizer, scheduler, RNG, trainer
    state), so a run killed mid-save leaves a folder that `get_last_checkpoint` would happily pick. `on_save`
    runs after the whole folder is written: flush it to disk, then mark it complete with an atomic rename, and
    only then delete the older checkpoints (the Trainer's own rotation, `save_total_limit`, deletes the previous
    checkpoint before the new one is complete, so it is left off)."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for f in ckpt.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        tmp = ckpt / (COMPLETE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": state.global_step}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, ckpt / COMPLETE)
        for old in Path(args.output_dir).glob("checkpoint-*"):
            if old != ckpt and _step_of(old) is not None and _step_of(old) < state.global_step:
                shutil.rmtree(old, ignore_errors=True)


class BestOnDevCallback(TrainerCallback):
    """Early stopping on a dev split: after each evaluation keep a copy of the trainable weights when dev accuracy
    is the best so far (ties go to the lower dev loss), stop after `patience` evaluations without a new best, and
    `restore` the best weights at the end. The copy is written to `path` (safetensors, atomically) with its record
    beside it, so a resumed run continues from the same best.

    `resume_step` is the step of the checkpoint a resumed run continues from (None: a fresh run). Evaluations
    after it (made before the kill, past the last complete checkpoint) are dropped and the best and the patience
    count are replayed from the ones before, since the resumed run evaluates those steps again. Their weights
    file may still hold a dropped evaluation's weights; a deterministic re-run re-evaluates that step the same way
    and writes the same weights again."""

    def __init__(self, path: Path, patience: int, resume_step: int | None = None):
        self.path, self.patience = Path(path), patience
        self.best, self.bad, self.history = None, 0, []
        meta = self.path.with_suffix(".json")
        if resume_step is not None and meta.exists():
            for h in json.loads(meta.read_text(encoding="utf-8"))["history"]:
                if h["step"] <= resume_step:
                    self._record(h)
        elif resume_step is None:
            for f in (self.path, meta):
                f.unlink(missing_ok=True)

    def _record(self, h: dict) -> bool:
        """Add one evaluation; True when it is the best so far (ties go to the lower dev loss)."""
        self.history.append(h)
        key = (h["dev_accuracy"], -h["dev_loss"])
        if self.best is None or key > self.best:
            self.best, self.bad = key, 0
            return True
        self.bad += 1
        return False

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        from safetensors.torch import save_file

        acc, loss = metrics["eval_accuracy"], metrics["eval_loss"]
        if self._record({"step": state.global_step, "epoch": round(state.epoch or 0, 3),
                         "dev_accuracy": round(acc, 4), "dev_loss": round(loss, 4)}):
            if state.is_world_process_zero:
                tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
                tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
                save_file(tensors, str(tmp))
                os.replace(tmp, self.path)
        else:
            control.should_training_stop = self.bad >= self.patience
        if state.is_world_process_zero:
            tmp = self.path.with_name(f"{self.path.stem}.json.tmp{os.getpid()}")
            tmp.write_text(json.dumps({"best": list(self.best), "bad": self.bad, "history": self.history}),
                           encoding="utf-8")
            os.replace(tmp, self.path.with_suffix(".json"))

    def restore(self, model) -> dict | None:
        """Put the best weights back; returns the evaluation they came from (None if there was no evaluation)."""
        import torch
        from safetensors.torch import load_file

        if not self.path.exists():
            return None
        best = load_file(str(self.path))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best:
                    p.copy_(best[n].to(p.dtype))
        return max(self.history, key=lambda h: (h["dev_accuracy"], -h["dev_loss"]))


def _step_of(path: Path) -> int | None:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else None


def last_complete_checkpoint(out_dir: Path) -> Path | None:
    """The newest Trainer checkpoint under OUT/<stage>/checkpoints that was marked complete; checkpoints a kill
    left half-written (no marker) are deleted, since the Trainer would write into them again."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = sorted((p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None), key=_step_of)
    complete = [p for p in found if (p / COMPLETE).exists()]
    for p in found:
        if p not in complete:
            shutil.rmtree(p, ignore_errors=True)
    return complete[-1] if complete else None


def clear_checkpoints(out_dir: Path) -> None:
    """A run that does not resume starts clean: stale checkpoints of an older run must not be resumed later."""
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)


def train_resumable(trainer, out_dir: Path, resume: bool):
    """`trainer.train()`, from the last complete checkpoint when `resume` (from scratch when there is none)."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    ckpt = last_complete_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
        if state.max_steps and state.global_step >= state.max_steps:
            # Killed after training, while measuring or merging: transformers 5.x resumed from its final checkpoint
            # runs one step past max_steps, so take the trained weights and the state (its log) from it instead.
            trainer._load_from_checkpoint(str(ckpt))
            trainer.state = state
            return TrainOutput(state.global_step, float("nan"), {})
    return trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)


def resume_step(out_dir: Path, resume: bool) -> int | None:
    """The step a resumed run continues from (for the log), or None for a fresh run (which clears old
    checkpoints)."""
    if not resume:
        clear_checkpoints(out_dir)
        return None
    ckpt = last_complete_checkpoint(out_dir)
    return _step_of(ckpt) if ckpt else 0


def mean_train_loss(trainer) -> float:
    """Mean of the per-step training losses over the whole run. The Trainer's own `training_loss` only covers
    the steps of the last `train()` call, so a resumed run would report another number; every step's loss is
    in `state.log_history` (logged at every step, and restored from the checkpoint on resume)."""
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return round(sum(losses) / len(losses), 4) if losses else float("nan")


def checkpointing_args(cls, on: bool) -> dict:
    """The TrainingArguments fields that switch HF's gradient (activation) checkpointing per decoder layer on or
    off. Non-reentrant checkpoints: the reentrant kind gives no gradient to LoRA weights when the checkpointed
    layer's input does not require grad, which it does not with a frozen base. transformers 5.24 names the fields
    activation_checkpointing* (gradient_checkpointing* are its deprecated aliases); older versions have only those."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: bool(on), f"{key}_kwargs": {"use_reentrant": False} if on else None}


def training_args(cls, stage_cfg, out_dir: Path, seed: int, preset, **extra):
    """One place that maps a stage config onto transformers/TRL TrainingArguments (or SFTConfig/RewardConfig)."""
    import torch

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and preset.model.dtype == "bfloat16"
    save_every = getattr(stage_cfg, "save_every", 0)
    kwargs = dict(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=stage_cfg.batch_size,
        per_device_eval_batch_size=stage_cfg.batch_size,
        gradient_accumulation_steps=getattr(stage_cfg, "grad_accum", 1),
        learning_rate=stage_cfg.learning_rate,
        num_train_epochs=stage_cfg.epochs,
        max_steps=getattr(stage_cfg, "max_steps", -1),
        lr_scheduler_type="cosine",
        warmup_steps=getattr(stage_cfg, "warmup_ratio", 0.05),
        # A resumable stage logs every step: its mean training loss is then computed from the log, which a
        # checkpoint restores, so a resumed run reports the same loss as an uninterrupted one.
        logging_steps=1 if save_every else 5,
        logging_first_step=True,
        # Checkpoints every `save_every` steps, made atomic by AtomicCheckpointCallback, which also prunes them
        # (save_total_limit would delete the last complete one before the new one is complete).
        save_strategy="steps" if save_every else "no",
        save_steps=save_every or 500,
        save_total_limit=None,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=bf16,
        fp16=False,
        # the stage's gradient_checkpointing field (what `zj estimate` counts); off for stages without one
        **checkpointing_args(cls, getattr(stage_cfg, "gradient_checkpointing", False)),
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kwargs.update(extra)
    return cls(**kwargs)


def prepare_qlora(model, lora_spec, task_type: str = "CAUSAL_LM", quantized: bool = True):
    """Freeze the (nf4) base, keep norms in fp32, and add the LoRA adapter: the QLoRA recipe."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from .common import lora_config

    import warnings

    with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                                category=FutureWarning)
        if quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, lora_config(lora_spec, task_type))


def restore_adapter_dtype(model, preset) -> None:
    """TRL's trainers cast a quantised model's trainable weights to bf16 (the QLoRA paper's GPU recipe). On a CPU
    with fp32 compute that only slows training and breaks fp32 heads kept by `modules_to_save` (the reward
    model's score), so put them back in the compute dtype."""
    import torch

    dtype = getattr(torch, preset.quant.compute_dtype)
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
