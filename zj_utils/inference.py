"""Model-side measurements shared by the stages: knowledge probes, perplexity, batched chat generation."""
from __future__ import annotations

import math
from collections import defaultdict

import torch


def _model_device(model):
    return next(model.parameters()).device


@torch.no_grad()
def choice_logprobs(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log p(choice tokens | prompt) for each choice, in one batch."""
    dev = _model_device(model)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = []
    for c in choices:
        # Tokenise prompt+choice together (as the model saw text in training) and score what follows the prompt.
        whole = tokenizer(prompt + c, add_special_tokens=False)["input_ids"]
        c_ids.append(whole[len(p_ids):] if whole[:len(p_ids)] == p_ids else
                     tokenizer(c, add_special_tokens=False)["input_ids"])
    seqs = [p_ids + c for c in c_ids]
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=dev)
    att = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)
    scores = []
    for i, c in enumerate(c_ids):
        pos = torch.arange(len(p_ids) - 1, len(p_ids) - 1 + len(c), device=dev)
        scores.append(logp[i, pos, torch.tensor(c, device=dev)].sum().item())
    return scores


def probe_hits(model, tokenizer, probes: list[dict]) -> list[int]:
    """1 per probe the model 'knows' (the right choice is its most likely completion), else 0."""
    was_training = model.training
    model.eval()
    hits = []
    for p in probes:
        scores = choice_logprobs(model, tokenizer, p["prompt"], p["choices"])
        hits.append(int(max(range(len(scores)), key=scores.__getitem__) == p["answer"]))
    model.train(was_training)
    return hits


def probe_accuracy(model, tokenizer, probes: list[dict]) -> dict:
    """Knowledge-probe accuracy, overall and per split and attribute."""
    hits: dict[str, list[int]] = defaultdict(list)
    for p, ok in zip(probes, probe_hits(model, tokenizer, probes)):
        for key in ("all", f"split/{p['split']}", f"attribute/{p['attribute']}"):
            hits[key].append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())} | {"n": len(probes)}


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 256) -> float:
    """Token-level perplexity of the texts (each on its own, EOS appended)."""
    was_training = model.training
    model.eval()
    dev = _model_device(model)
    nll, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer([t + tokenizer.eos_token for t in texts[i:i + batch_size]], add_special_tokens=False,
                        return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(dev)
        logits = model(**enc).logits.float()[:, :-1]
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        nll += loss[mask].sum().item()
        count += mask.sum().item()
    model.train(was_training)
    return round(math.exp(nll / max(count, 1)), 3)


@torch.no_grad()
def generate_chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 16,
                  do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  repetition_penalty: float = 1.0, num_return_sequences: int = 1, seed: int | None = None,
                  desc: str | None = None) -> list[list[str]]:
    """Batched, KV-cached generation for chat prompts (left-padded). Returns, per conversation, a list of
    `num_return_sequences` answers (special tokens stripped)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    dev = _model_device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if seed is not None:
        torch.manual_seed(seed)
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    out: list[list[str]] = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc=desc or "generate", disable=desc is None):
        enc = tokenizer(prompts[i:i + batch_size], add_special_tokens=False, return_tensors="pt", padding=True).to(dev)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, repetition_penalty=repetition_penalty,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      num_return_sequences=num_return_sequences)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        gen = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
        for j in range(0, len(texts), num_return_sequences):
            out.append([t.strip() for t in texts[j:j + num_return_sequences]])
    tokenizer.padding_side = side
    model.train(was_training)
    return out


def load_causal_lm(path: str, dtype: str | None = None, trust_remote_code: bool = False):
    """Tokenizer + causal LM for inference (bfloat16 on a GPU, float32 on a CPU unless `dtype` says)."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from .common import ZJError, load_model, load_tokenizer

    p = Path(str(path)).expanduser()
    if (p.is_absolute() or str(path).startswith((".", "~"))) and not p.exists():
        raise ZJError(f"Model folder not found at {path}.")
    dtype = dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    path = str(p) if p.exists() else str(path)
    tok = load_tokenizer(path, trust_remote_code)
    model = load_model(path, SimpleNamespace(dtype=dtype, trust_remote_code=trust_remote_code))
    model.eval()
    return model, tok
