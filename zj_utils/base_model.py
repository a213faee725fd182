"""Stage 0: the stand-in base model. A LLaMA-architecture `LlamaForCausalLM` trained briefly from scratch on
general (non-medical) synthetic text, saved as a normal HF checkpoint, so that every later stage loads it
exactly as it would load a model from the hub. Real presets skip this stage: their base is a hub model.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .common import begin_stage, device, read_json, world_dir, write_json, write_metrics


def world_texts_for_tokenizer(world_dir: Path) -> list[str]:
    """All text the world renders (general, pre-training and SFT), so the vocabulary covers every stage."""
    texts: list[str] = []
    for name in ["general.jsonl", "pretrain_train.jsonl", "sft_single.jsonl", "sft_nlp.jsonl",
                 "sft_general.jsonl", "sft_safety.jsonl"]:
        path = world_dir / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "text" in rec:
                texts.append(rec["text"])
            for m in rec.get("messages", []):
                texts.append(m["content"])
    multi = world_dir / "sft_multiturn.json"
    if multi.exists():
        for rec in read_json(multi):
            for patient, doctor in rec["history"]:
                texts += [patient, doctor]
            texts += [rec["instruction"], rec["output"]]
    return texts


def pack_tokens(token_lists: list[list[int]], block_size: int, eos_id: int, epochs: int = 1,
                seed: int = 0) -> list[list[int]]:
    """Concatenate documents (each closed by EOS) and cut into equal blocks: no padding is trained on.
    Each epoch packs the documents in a new order, so blocks differ between epochs: with fixed blocks a small
    model learns each block by heart from its own context instead of learning the documents' content."""
    import random

    blocks: list[list[int]] = []
    for epoch in range(epochs):
        order = list(range(len(token_lists)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        flat: list[int] = []
        for i in order:
            flat.extend(token_lists[i])
            flat.append(eos_id)
        blocks += [flat[i * block_size:(i + 1) * block_size] for i in range(len(flat) // block_size)]
    return blocks


def build_base(preset, out: str | Path, seed: int = 0) -> dict:
    """Train the tokenizer and the tiny base model; write OUT/base/{model,config.json,metrics.json,log.jsonl}."""
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

    from .tokenizer import byte_fallback_ids, train_tokenizer

    mc = preset.model
    d, timer = begin_stage("base", preset, out, seed, model=mc)
    if mc.name_or_path != "tiny":
        metrics = {"base": mc.name_or_path, "built": False, "note": "real preset: the base model comes from the hub"}
        write_json(d / "metrics.json", metrics)
        return metrics

    world = world_dir(out)
    tokenizer = train_tokenizer(world_texts_for_tokenizer(world), mc.vocab_size)

    general = [json.loads(l)["text"] for l in (world / "general.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = tokenizer(general, add_special_tokens=False)["input_ids"]
    per_epoch = max(1, sum(len(x) + 1 for x in ids) // mc.base_block_size)
    epochs = -(-mc.base_steps * mc.base_batch_size // per_epoch)
    blocks = torch.tensor(pack_tokens(ids, mc.base_block_size, tokenizer.eos_token_id, epochs=epochs, seed=seed))

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.num_layers, num_attention_heads=mc.num_heads, num_key_value_heads=mc.num_heads,
        max_position_embeddings=mc.max_length * 2, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(device())
    opt = torch.optim.AdamW(model.parameters(), lr=mc.base_learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, max(1, mc.base_steps // 20), mc.base_steps)
    log = (d / "log.jsonl").open("w", encoding="utf-8")
    model.train()
    losses = []
    bar = tqdm(range(mc.base_steps), desc="base model (from scratch)")
    for step in bar:
        t0 = time.perf_counter()
        batch = blocks[step * mc.base_batch_size:(step + 1) * mc.base_batch_size].to(device())
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tok_s = batch.numel() / (time.perf_counter() - t0)
        losses.append(loss.item())
        log.write(json.dumps({"step": step, "loss": round(loss.item(), 4), "tokens_per_s": round(tok_s)}) + "\n")
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:.0f}")
    log.close()

    # Every character of the world is a token of its own, so no training text ever holds a byte-fallback token:
    # the model never learns to produce one, yet at temperature 1 it samples them now and then, and a lone byte
    # decodes to U+FFFD. The generation config forbids them; every model built on this one inherits it, and PPO
    # scores its samples under the same mask (ppo_maths.compute_logprobs).
    model.generation_config.suppress_tokens = byte_fallback_ids(tokenizer)
    model.save_pretrained(d / "model", safe_serialization=True)
    tokenizer.save_pretrained(d / "model")
    tail = losses[-10:]
    metrics = {
        "built": True, "params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "train_blocks": len(blocks), "epochs": epochs, "steps": mc.base_steps, "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4), "final_ppl": round(math.exp(sum(tail) / len(tail)), 2),
    }
    return write_metrics(d, metrics, {"seconds": timer()})
