"""Stage 2: supervised fine-tuning with TRL's `SFTTrainer` (QLoRA), the paper's four data kinds mixed at
configurable ratios, with the loss on the doctor's (assistant's) turns only."""
from __future__ import annotations

import random
from pathlib import Path

from .common import (ZJError, begin_stage, count_params, load_model, load_tokenizer, merge_adapter,
                     resolve_model_path, world_dir, write_json)
from .data import load_cmtmedqa, load_jsonl, load_messages_jsonl

# kind -> file in OUT/world; multi-turn dialogues are in CMtMedQA's own record shape.
SFT_FILES = {"multi_turn": "sft_multiturn.json", "single": "sft_single.jsonl", "nlp": "sft_nlp.jsonl",
             "general": "sft_general.jsonl", "safety": "sft_safety.jsonl"}


def sft_init_path(preset, out: str | Path) -> str:
    """SFT starts from the continued-pre-trained model, or straight from the base (the 'no pre-training' ablation)."""
    if preset.sft.init_from == "pretrain":
        return str(Path(out) / "pretrain" / "merged")
    if preset.sft.init_from == "base":
        return resolve_model_path(preset.model.name_or_path, out)
    raise ZJError(f"sft.init_from must be 'pretrain' or 'base', got {preset.sft.init_from!r}")


def mix_sft_data(world: Path, mix: dict, seed: int, multiturn_path: str = "") -> tuple[list[dict], dict]:
    """Sample each kind at its ratio (a ratio > 1 repeats examples); returns records with a `messages` field
    and the count per kind, so the composition can be reported and plotted."""
    rng = random.Random(seed)
    unknown = set(mix) - set(SFT_FILES)
    if unknown:
        raise ZJError(f"Unknown SFT kinds in sft.mix: {sorted(unknown)}. Known: {sorted(SFT_FILES)}")
    records, counts = [], {}
    for kind, ratio in mix.items():
        path = Path(multiturn_path) if (kind == "multi_turn" and multiturn_path) else world / SFT_FILES[kind]
        dialogues = load_cmtmedqa(path) if path.suffix == ".json" else load_messages_jsonl(path)
        # Safety records of a CMtMedQA file are their own kind; keep them with the multi-turn file they came in.
        n = int(round(len(dialogues) * ratio))
        pool = dialogues * (n // len(dialogues) + 1) if dialogues else []
        chosen = rng.sample(pool, n) if n <= len(pool) else pool
        counts[kind] = len(chosen)
        records += [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
                    for r in chosen]
    rng.shuffle(records)
    return records, counts


def run_sft(preset, out: str | Path, seed: int = 0) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .inference import probe_accuracy
    from .training import JsonlLogCallback, prepare_qlora, restore_adapter_dtype, training_args

    cfg = preset.sft
    d, timer = begin_stage("sft", preset, out, seed, sft=cfg, model=preset.model, quant=preset.quant)
    world = world_dir(out)
    records, counts = mix_sft_data(world, cfg.mix, seed, cfg.multiturn_path)
    init = sft_init_path(preset, out)
    tokenizer = load_tokenizer(init, preset.model.trust_remote_code)
    model = prepare_qlora(load_model(init, preset.model, preset.quant), cfg.lora,
                          quantized=preset.quant.load_in_4bit)
    args = training_args(SFTConfig, cfg, d, seed, preset, max_length=cfg.max_length, assistant_only_loss=True,
                         packing=False, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, callbacks=[JsonlLogCallback(d / "log.jsonl")])
    restore_adapter_dtype(trainer.model, preset)
    result = trainer.train()
    probes = probe_accuracy(model, tokenizer, load_jsonl(world / "probes.jsonl"))

    model.save_pretrained(d / "adapter", safe_serialization=True)
    merge_adapter(init, d / "adapter", d / "merged", preset.model, tokenizer=tokenizer)
    metrics = {
        "init_from": cfg.init_from, "examples": len(records), "composition": counts, "steps": result.global_step,
        "train_loss": round(result.training_loss, 4), "trainable_params": count_params(model)["trainable"],
        "probes_after_sft": probes, "seconds": timer(),
    }
    write_json(d / "metrics.json", metrics)
    return metrics

