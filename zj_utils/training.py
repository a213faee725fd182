"""Pieces every training stage shares: HF TrainingArguments from a stage config, a throughput-logging callback,
and QLoRA model preparation."""
from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Append every Trainer log (loss, lr, ...) to OUT/<stage>/log.jsonl, with tokens/s since the previous log."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.write_text("", encoding="utf-8")
        self._t = time.perf_counter()
        self._tokens = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        now, seen = time.perf_counter(), state.num_input_tokens_seen or 0
        rec = {"step": state.global_step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}}
        if seen > self._tokens and "loss" in logs:
            rec["tokens_per_s"] = round((seen - self._tokens) / max(now - self._t, 1e-9), 1)
            logs["tokens_per_s"] = rec["tokens_per_s"]
            self._t, self._tokens = now, seen
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def training_args(cls, stage_cfg, out_dir: Path, seed: int, preset, **extra):
    """One place that maps a stage config onto transformers/TRL TrainingArguments (or SFTConfig/RewardConfig)."""
    import torch

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and preset.model.dtype == "bfloat16"
    return cls(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=stage_cfg.batch_size,
        per_device_eval_batch_size=stage_cfg.batch_size,
        gradient_accumulation_steps=getattr(stage_cfg, "grad_accum", 1),
        learning_rate=stage_cfg.learning_rate,
        num_train_epochs=extra.pop("num_train_epochs", stage_cfg.epochs),
        max_steps=getattr(stage_cfg, "max_steps", -1),
        lr_scheduler_type="cosine",
        warmup_steps=getattr(stage_cfg, "warmup_ratio", 0.05),
        logging_steps=5,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
        disable_tqdm=False,
        **extra,
    )


def prepare_qlora(model, lora_spec, task_type: str = "CAUSAL_LM", quantized: bool = True):
    """Freeze the (nf4) base, keep norms in fp32, and add the LoRA adapter: the QLoRA recipe."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from .common import lora_config

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
