"""Stage 1: continued pre-training with QLoRA (nf4 + double quantisation, LoRA via peft), packed sequences.

Measures what the paper claims this stage adds: medical knowledge. Perplexity on held-out medical text and
knowledge-probe accuracy are taken before and after, on the same quantised model.
"""
from __future__ import annotations

from pathlib import Path

from .common import (begin_stage, count_params, is_main_process, load_model, load_tokenizer, merge_adapter, read_json,
                     resolve_model_path, world_dir, write_json, write_metrics)
from .data import load_jsonl


def run_pretrain(preset, out: str | Path, seed: int = 0, resume: bool = False) -> dict:
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    from .base_model import pack_tokens
    from .inference import perplexity, probe_accuracy
    from .training import (AtomicCheckpointCallback, JsonlLogCallback, mean_train_loss, prepare_qlora, resume_step,
                           train_resumable, training_args)

    cfg = preset.pretrain
    # Under torchrun / accelerate launch: join the process group now; the main process writes, the others wait
    with PartialState().main_process_first():
        d, timer = begin_stage("pretrain", preset, out, seed, resume, pretrain=cfg, model=preset.model,
                               quant=preset.quant)
    world = world_dir(out)
    all_texts = [r["text"] for r in load_jsonl(world / "pretrain_train.jsonl")]
    texts = all_texts[:cfg.max_texts] if cfg.max_texts > 0 else all_texts
    heldout = [r["text"] for r in load_jsonl(world / "pretrain_heldout.jsonl")]
    probes = load_jsonl(world / "probes.jsonl")

    base_path = resolve_model_path(preset.model.name_or_path, out)
    tokenizer = load_tokenizer(base_path, preset.model.trust_remote_code)
    model = load_model(base_path, preset.model, preset.quant)
    start = resume_step(d, resume)
    if start and (d / "before.json").exists():  # measured by the interrupted run on the same base
        before = read_json(d / "before.json")
    else:
        before = {"heldout_ppl": perplexity(model, tokenizer, heldout, max_length=cfg.block_size),
                  "probes": probe_accuracy(model, tokenizer, probes)}
        if is_main_process():
            write_json(d / "before.json", before)

    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Epochs are unrolled into the packing (a new document order each), so the Trainer makes one pass.
    blocks = pack_tokens(ids, cfg.block_size, tokenizer.eos_token_id, epochs=cfg.epochs, seed=seed)
    train = Dataset.from_dict({"input_ids": blocks, "labels": blocks})

    model = prepare_qlora(model, cfg.lora, quantized=preset.quant.load_in_4bit)
    params = count_params(model)
    trainer = Trainer(
        model=model,
        args=training_args(TrainingArguments, cfg, d, seed, preset, num_train_epochs=1),
        train_dataset=train,
        data_collator=default_data_collator,
        callbacks=[JsonlLogCallback(d / "log.jsonl", start), AtomicCheckpointCallback()],
    )
    result = train_resumable(trainer, d, resume)
    after = {"heldout_ppl": perplexity(model, tokenizer, heldout, max_length=cfg.block_size),
             "probes": probe_accuracy(model, tokenizer, probes)}

    if is_main_process():  # every rank holds the same adapter
        model.save_pretrained(d / "adapter", safe_serialization=True)
        merge_adapter(base_path, d / "adapter", d / "merged", preset.model, tokenizer=tokenizer)
    metrics = {
        "texts_in": len(all_texts), "train_texts": len(texts),
        "dropped": {"over_max_texts": len(all_texts) - len(texts)},  # pretrain.max_texts
        "epochs": cfg.epochs, "train_blocks": len(blocks), "block_size": cfg.block_size,
        "train_tokens": len(blocks) * cfg.block_size,
        # packing drops each epoch's last partial block; counted so that nothing goes missing unreported
        "tokens_dropped_by_packing": sum(len(x) + 1 for x in ids) * cfg.epochs - len(blocks) * cfg.block_size,
        "steps": result.global_step,
        "train_loss": mean_train_loss(trainer), "trainable_params": params["trainable"],
        "before": before, "after": after,
        "probe_gain": round(after["probes"]["all"] - before["probes"]["all"], 4),
    }
    train_seconds = result.metrics.get("train_runtime", 0.0)
    timings = {"seconds": timer(), "train_seconds": round(train_seconds, 2),
               # this process's share: a resumed run trains only the steps after its checkpoint
               "tokens_per_s": round(result.metrics.get("train_samples_per_second", 0) * cfg.block_size, 1),
               "resumed_from_step": start or 0}
    return write_metrics(d, metrics, timings)
