"""Stage 2: supervised fine-tuning with TRL's `SFTTrainer` (QLoRA), the paper's four data kinds mixed at
configurable ratios, with the loss on the doctor's (assistant's) turns only."""
from __future__ import annotations

import random
from pathlib import Path

from .common import (ZJError, begin_stage, count_params, load_model, load_tokenizer, merge_adapter,
                     resolve_model_path, world_dir, write_metrics)
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


def mix_sft_data(world: Path, mix: dict, seed: int, multiturn_path: str = "",
                 available: dict | None = None) -> tuple[list[dict], dict]:
    """Sample each kind at its ratio (a whole ratio repeats every example that many times, a fraction samples
    without replacement); returns records with a `messages` field and the count per kind, so the composition can
    be reported and plotted. `available`, when given, receives the number of dialogues each kind's file holds, so
    that what a ratio < 1 leaves out is counted."""
    rng = random.Random(seed)
    unknown = set(mix) - set(SFT_FILES)
    if unknown:
        raise ZJError(f"Unknown SFT kinds in sft.mix: {sorted(unknown)}. Known: {sorted(SFT_FILES)}")
    records, counts = [], {}
    for kind, ratio in mix.items():
        path = Path(multiturn_path) if (kind == "multi_turn" and multiturn_path) else world / SFT_FILES[kind]
        dialogues = load_cmtmedqa(path) if path.suffix == ".json" else load_messages_jsonl(path)
        # Safety records of a CMtMedQA file are their own kind; keep them with the multi-turn file they came in.
        if available is not None:
            available[kind] = len(dialogues)
        n = int(round(len(dialogues) * ratio))
        # every dialogue n // len times, then a sample without replacement for the rest: 1x is each dialogue once,
        # 4x each four times, 0.5x half of them (a sample of n from n // len + 1 copies would repeat some and
        # drop others: about a quarter of a kind at 1x)
        whole, part = divmod(n, len(dialogues)) if dialogues else (0, 0)
        chosen = dialogues * whole + rng.sample(dialogues, part)
        counts[kind] = len(chosen)
        records += [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
                    for r in chosen]
    rng.shuffle(records)
    return records, counts


def sft_training_args(preset, d: Path, seed: int):
    """The stage's SFTConfig: the loss on the doctor's turns only (`assistant_only_loss`, read from the chat
    template's generation markers), optionally packed."""
    from trl import SFTConfig

    from .training import training_args

    cfg = preset.sft
    return training_args(SFTConfig, cfg, Path(d), seed, preset, max_length=cfg.max_length, assistant_only_loss=True,
                         packing=cfg.packing, packing_strategy="bfd", dataset_num_proc=None)


def run_sft(preset, out: str | Path, seed: int = 0, resume: bool = False) -> dict:
    from datasets import Dataset
    from trl import SFTTrainer

    from .inference import probe_accuracy
    from .training import (AtomicCheckpointCallback, JsonlLogCallback, mean_train_loss, prepare_qlora,
                           restore_adapter_dtype, resume_step, train_resumable)

    from accelerate import PartialState

    cfg = preset.sft
    # Under torchrun / accelerate launch this joins the process group now, so that the ranks take turns writing
    # config.json and only the main one writes the results below (every rank holds the same weights under DDP).
    state = PartialState()
    with state.main_process_first():
        d, timer = begin_stage("sft", preset, out, seed, resume, sft=cfg, model=preset.model, quant=preset.quant)
    world = world_dir(out)
    available: dict = {}
    records, counts = mix_sft_data(world, cfg.mix, seed, cfg.multiturn_path, available)
    init = sft_init_path(preset, out)
    tokenizer = load_tokenizer(init, preset.model.trust_remote_code)
    model = prepare_qlora(load_model(init, preset.model, preset.quant), cfg.lora,
                          quantized=preset.quant.load_in_4bit)
    args = sft_training_args(preset, d, seed)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer,
                         callbacks=[JsonlLogCallback(d / "log.jsonl", start := resume_step(d, resume)),
                                    AtomicCheckpointCallback()])
    restore_adapter_dtype(trainer.model, preset)
    # Without packing, TRL truncates to max_length and then drops, without a word, the examples left with no
    # doctor token to learn from; with packing it truncates nothing and its rows are packs, not examples.
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in records]
    kept = len(records) if args.packing else len(trainer.train_dataset)
    data_report = {"available": available, "mixed": len(records), "kept": kept,
                   "dropped": {"no_doctor_tokens_after_truncation": len(records) - kept},
                   "truncated_to_max_length": 0 if args.packing else sum(n > cfg.max_length for n in lengths)}
    result = train_resumable(trainer, d, resume)
    probes = probe_accuracy(model, tokenizer, load_jsonl(world / "probes.jsonl"))

    if state.is_main_process:
        model.save_pretrained(d / "adapter", safe_serialization=True)
        merge_adapter(init, d / "adapter", d / "merged", preset.model, tokenizer=tokenizer)
    metrics = {
        "init_from": cfg.init_from, "examples": len(records), "composition": counts, "data": data_report,
        "steps": result.global_step,
        "train_loss": mean_train_loss(trainer), "trainable_params": count_params(model)["trainable"],
        "probes_after_sft": probes,
    }
    timings = {"seconds": timer(), "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
               "resumed_from_step": start or 0}
    return write_metrics(d, metrics, timings)  # the main process writes; every rank waits for it there

