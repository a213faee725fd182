"""The computations behind the notebooks' teaching cells: what a notebook shows beyond a stage's own metrics is
computed here, with a unit test each (tests/test_lessons.py), and the notebooks only call, print and plot.

Notebook 01 (the world): one disease of the knowledge graph and a record of every data kind rendered from it.
Notebook 02 (continued pre-training): NF4 with double quantisation on one weight matrix (bitsandbytes' own
quantize_4bit / dequantize_4bit, bit for bit what the stage's 4-bit model holds), LoRA's trainable parameters by
module, packing shown on a few documents (the stage's own `pack_tokens`), knowledge probes by attribute.
Notebook 03 (SFT): the loss mask of one dialogue as the stage's `SFTTrainer` builds it, the SFT data mix as the
stage used it, and one patient answered before and after SFT, judged by the evaluation's rule judge.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from .common import read_json

# --------------------------------------------------------------------------- tables


def table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    """Rows of dicts as a fixed-width text table (floats to `digits` significant digits, ints with thousands
    separators)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v):
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])


# --------------------------------------------------------------------------- 02: NF4 on one weight matrix


def _safetensors_files(model_path: str) -> list[Path]:
    p = Path(model_path)
    if not p.is_dir():  # a hub id: the stage loads it from the hub cache, so read the same snapshot
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(model_path, allow_patterns=["*.safetensors", "*.json"]))
    return sorted(p.glob("*.safetensors"))


def one_weight(model_path: str, name: str | None = None):
    """(parameter name, tensor) of one weight matrix read from a checkpoint's safetensors, without loading the
    model: `name` if given, else the first layer's MLP gate projection (else its first 2-D `proj` weight)."""
    from safetensors import safe_open

    files = _safetensors_files(model_path)
    names = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                names[k] = f
    if name is None:
        two_d = [k for k in names if k.endswith(".weight") and ".layers.0." in k and "proj" in k]
        gate = [k for k in two_d if "gate_proj" in k]
        if not (gate or two_d):
            raise ValueError(f"no layer-0 projection weight in {model_path}; pass name=")
        name = (gate or two_d)[0]
    with safe_open(str(names[name]), "pt") as st:
        return name, st.get_tensor(name)


def nf4_storage(weight, blocksize: int = 64) -> dict:
    """What NF4 (QLoRA's 4-bit NormalFloat) does to one weight matrix, with and without double quantisation,
    computed by bitsandbytes' own functional quantize_4bit / dequantize_4bit (the calls a Linear4bit makes when a
    model is loaded in 4 bits, blocks of `blocksize` weights as transformers uses).

    Each block of 64 weights is scaled by its absolute maximum (absmax) and each weight rounded to the nearest of
    16 NF4 levels (4 bits). Without double quantisation every block keeps its absmax as fp32 (32/64 = 0.5 extra
    bits per weight); with it, the absmaxes are themselves quantised to 8 bits in blocks of 256, each of those
    keeping one fp32 scale, plus one fp32 offset (8/64 + 32/(64*256) = 0.127 bits). Bytes count what each
    matrix stores; the lookup tables (16 NF4 levels, 256 8-bit levels) are the same for every matrix and
    reported apart."""
    import bitsandbytes.functional as F
    import torch

    w = weight.detach().to(torch.float32).cpu().contiguous()
    n = w.numel()

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    out = {"shape": list(w.shape), "n": n, "blocksize": blocksize}
    packed_dq, st_dq = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=True, quant_type="nf4")
    packed, st = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
    deq_dq, deq = F.dequantize_4bit(packed_dq, st_dq), F.dequantize_4bit(packed, st)
    sizes = {
        "fp32": n * 4, "bf16": n * 2,
        "nf4": nbytes(packed) + nbytes(st.absmax),
        "nf4+dq": nbytes(packed_dq) + nbytes(st_dq.absmax) + nbytes(st_dq.state2.absmax) + nbytes(st_dq.offset),
    }
    out["bytes"] = sizes
    out["bits_per_weight"] = {k: round(8 * v / n, 4) for k, v in sizes.items()}
    out["parts"] = {"packed 4-bit codes": nbytes(packed_dq), "absmax as uint8": nbytes(st_dq.absmax),
                    "absmax scales, fp32": nbytes(st_dq.state2.absmax), "offset, fp32": nbytes(st_dq.offset),
                    "absmax as fp32 (no dq)": nbytes(st.absmax)}
    out["tables"] = {"nf4 levels": nbytes(st_dq.code), "8-bit absmax levels": nbytes(st_dq.state2.code)}
    out["levels"] = [round(x, 4) for x in st_dq.code.tolist()]
    for key, d in (("nf4+dq", deq_dq), ("nf4", deq)):
        err = (w - d).flatten()
        out.setdefault("mean_abs_error", {})[key] = round(err.abs().mean().item(), 6)
        out.setdefault("max_abs_error", {})[key] = round(err.abs().max().item(), 6)
        out.setdefault("relative_error", {})[key] = round((err.norm() / w.norm().clamp_min(1e-12)).item(), 6)
    out["weights"] = w.flatten().numpy()
    out["error"] = (w - deq_dq).flatten().numpy()
    out["error_no_dq"] = (w - deq).flatten().numpy()
    out["packed"] = packed_dq
    out["absmax"] = st_dq.absmax
    return out


def nf4_rows(report: dict) -> list[dict]:
    """The storage of one matrix in each format, as table rows."""
    n = report["n"]
    return [{"format": k, "bytes": v, "bits/weight": report["bits_per_weight"][k],
             "vs fp32": round(v / (4 * n), 4),
             "mean |error|": report["mean_abs_error"].get(k, 0.0), "relative error": report["relative_error"].get(k, 0.0)}
            for k, v in report["bytes"].items()]


def nf4_matches_model(report: dict, model, param_name: str) -> bool:
    """The 4-bit codes and the quantised absmaxes computed by `nf4_storage` are those the 4-bit model holds for
    the same weight (`param_name` as in the checkpoint, e.g. model.layers.0.mlp.gate_proj.weight)."""
    import torch

    module_name = param_name.removesuffix(".weight")
    modules = dict(model.named_modules())
    module = modules.get(module_name) or next(m for n, m in modules.items()
                                              if n.endswith(module_name) or n.endswith(module_name + ".base_layer"))
    if hasattr(module, "base_layer"):  # peft wraps the Linear4bit
        module = module.base_layer
    w = module.weight
    if getattr(w, "quant_state", None) is None:
        return False
    return bool(torch.equal(w.data.cpu(), report["packed"]) and torch.equal(w.quant_state.absmax.cpu(), report["absmax"]))


def plot_nf4(report: dict, title: str = ""):
    """Left: the weights and their NF4 (double-quantised) values; right: the quantisation error, with and
    without double quantisation."""
    import matplotlib.pyplot as plt
    import numpy as np

    w, err, err0 = report["weights"], report["error"], report["error_no_dq"]
    deq = w - err
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(10.0, 3.4))
    bins = np.linspace(w.min(), w.max(), 81)
    ax.hist(w, bins=bins, color="#b9c7d9", label="original weights")
    ax.hist(deq, bins=bins, histtype="step", color="#2f6db5", lw=1.4, label="after NF4 + dq (dequantised)")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(f"{report['shape'][0]}x{report['shape'][1]} weights: 16 levels per block of {report['blocksize']}",
                 fontsize=9)
    ax.legend(fontsize=7)
    lim = max(abs(err).max(), abs(err0).max())
    ebins = np.linspace(-lim, lim, 61)
    ax_err.hist(err, bins=ebins, color="#2f6db5", alpha=0.75,
                label=f"NF4 + dq: mean |err| {report['mean_abs_error']['nf4+dq']:.4g}")
    ax_err.hist(err0, bins=ebins, histtype="step", color="#d9822b", lw=1.4,
                label=f"NF4 alone: mean |err| {report['mean_abs_error']['nf4']:.4g}")
    ax_err.set_xlabel("original - dequantised")
    ax_err.set_title("quantisation error", fontsize=9)
    ax_err.legend(fontsize=7)
    for a in (ax, ax_err):
        a.grid(alpha=0.3)
        a.locator_params(axis="x", nbins=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 02: LoRA's trainable parameters

_PEFT_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "base_layer",
               "modules_to_save", "original_module")


def _true_numel(p) -> int:
    """A 4-bit parameter holds two weights per byte: count the weights of the matrix it stands for."""
    qs = getattr(p, "quant_state", None)
    if qs is not None:
        import math

        return math.prod(qs.shape)
    return p.numel()


def trainable_parameters(model) -> dict:
    """Trainable and frozen weights by module name (q_proj, gate_proj, embed_tokens, ...; the same name in every
    layer counted together). A 4-bit weight counts the weights it stands for, not its bytes. LoRA's A and B are
    trainable; a module in `modules_to_save` (embed_tokens, lm_head in the pre-training preset) trains a full copy
    while its original stays frozen beside it."""
    rows: dict[str, dict] = {}
    for name, p in model.named_parameters():
        parts = [x for x in name.split(".") if x != "default"]
        if parts[-1] in ("weight", "bias"):
            parts = parts[:-1]
        cut = next((i for i, x in enumerate(parts) if x in _PEFT_PARTS), len(parts))
        module = parts[cut - 1] if cut else parts[-1]
        how = ("LoRA A/B" if any(x.startswith("lora_") for x in parts) else
               "full copy" if "modules_to_save" in parts else "")
        r = rows.setdefault(module, {"module": module, "trainable": 0, "frozen": 0, "trained as": "", "frozen as": ""})
        n = _true_numel(p)
        if p.requires_grad:
            r["trainable"] += n
            r["trained as"] = how or "full"
        else:
            r["frozen"] += n
            kind = "nf4" if getattr(p, "quant_state", None) is not None else str(p.dtype).removeprefix("torch.")
            r["frozen as"] = kind if r["frozen as"] in ("", kind) else "mixed"
    out = list(rows.values())
    trainable, frozen = sum(r["trainable"] for r in out), sum(r["frozen"] for r in out)
    return {"rows": out, "trainable": trainable, "frozen": frozen, "total": trainable + frozen,
            "trainable_share": round(trainable / max(trainable + frozen, 1), 4),
            "lora_modules": [r["module"] for r in out if r["trained as"] == "LoRA A/B"],
            "full_copies": [r["module"] for r in out if r["trained as"] == "full copy"]}


# --------------------------------------------------------------------------- 02: packing


def packing_view(token_lists: list[list[int]], block_size: int, eos_id: int, seed: int = 0) -> dict:
    """The pre-training stage's packing (`base_model.pack_tokens`, one epoch) of a few documents, with the
    document each token came from: `owners` is packed by the same call on lists of document indices (EOS: -1),
    so the shuffled order is the stage's own. `tail` is what does not fill a last block and is dropped."""
    from .base_model import pack_tokens

    blocks = pack_tokens(token_lists, block_size, eos_id, epochs=1, seed=seed)
    labels = [[i] * len(t) for i, t in enumerate(token_lists)]
    owners = pack_tokens(labels, block_size, -1, epochs=1, seed=seed)
    flat_ids = pack_tokens(token_lists, 1, eos_id, epochs=1, seed=seed)  # block size 1: nothing is dropped
    flat_owners = pack_tokens(labels, 1, -1, epochs=1, seed=seed)
    order = list(dict.fromkeys(o[0] for o in flat_owners if o[0] >= 0))
    kept = len(blocks) * block_size
    return {"blocks": blocks, "owners": owners, "order": order, "block_size": block_size,
            "tail": [x[0] for x in flat_ids[kept:]], "tail_owners": [x[0] for x in flat_owners[kept:]],
            "tokens": len(flat_ids), "kept": kept}


def _segments(ids: list[int], owners: list[int]) -> list[tuple[int, list[int]]]:
    segs: list[tuple[int, list[int]]] = []
    for t, o in zip(ids, owners):
        if segs and segs[-1][0] == o:
            segs[-1][1].append(t)
        else:
            segs.append((o, [t]))
    return segs


def render_blocks(view: dict, tokenizer, max_chars: int = 0) -> list[str]:
    """One line per block: each document's run of tokens opens with [doc k] and every EOS separator is written
    out; the dropped tail last. `max_chars` > 0 elides the middle of long runs."""
    eos = tokenizer.eos_token

    def run(o, ids):
        if o < 0:
            return eos * len(ids)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if max_chars and len(text) > max_chars:
            text = text[:max_chars // 2] + "…" + text[-(max_chars - max_chars // 2):]
        return f"[doc {o}]{text}"

    lines = [f"block {i} ({len(b)} tokens): " + "".join(run(o, ids) for o, ids in _segments(b, ow))
             for i, (b, ow) in enumerate(zip(view["blocks"], view["owners"]))]
    if view["tail"]:
        lines.append(f"dropped tail ({len(view['tail'])} tokens, less than a block): "
                     + "".join(run(o, ids) for o, ids in _segments(view["tail"], view["tail_owners"])))
    return lines


# --------------------------------------------------------------------------- 02: knowledge probes by attribute


def probes_by_attribute(before: dict, after: dict, probes: list[dict] | None = None) -> list[dict]:
    """Probe accuracy before and after a stage for each attribute (the stage's metrics hold `attribute/<name>`
    keys), with the number of probes per attribute when the probe list is given."""
    counts: dict[str, int] = {}
    for p in probes or []:
        counts[p["attribute"]] = counts.get(p["attribute"], 0) + 1
    rows = []
    for key in sorted(k for k in after if k.startswith("attribute/")):
        attr = key.split("/", 1)[1]
        b, a = before.get(key), after[key]
        rows.append({"attribute": attr, "n": counts.get(attr), "before": b, "after": a,
                     "gain": None if b is None else round(a - b, 4)})
    return rows


def plot_probes_by_attribute(rows: list[dict], title: str = "knowledge probes by attribute", chance: float = 0.25):
    """Grouped horizontal bars: accuracy before and after, per attribute (n probes each), chance marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.45 * len(rows)))
    ax.barh(y - 0.2, [r["before"] or 0 for r in rows], 0.4, color="#b9c7d9", label="before")  # above, once inverted
    ax.barh(y + 0.2, [r["after"] for r in rows], 0.4, color="#2f6db5", label="after")
    for i, r in enumerate(rows):
        ax.text(r["after"] + 0.01, i + 0.2, f"{r['after']:.2f}", va="center", fontsize=7)
    ax.set_yticks(y, [f"{r['attribute']} (n={r['n']})" if r["n"] else r["attribute"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.axvline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xlabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 03: the loss mask


def pick_dialogue(dialogues: list[dict], tokenizer, max_length: int, min_doctor_turns: int = 2) -> dict:
    """The first dialogue with at least `min_doctor_turns` doctor turns that fits in `max_length` tokens once
    rendered by the chat template (so that truncation hides none of it); else the one with the most turns."""
    def doctor_turns(d):
        return sum(m["role"] == "assistant" for m in d["messages"])

    for d in dialogues:
        n = len(tokenizer.apply_chat_template(d["messages"], tokenize=True, return_dict=True)["input_ids"])
        if doctor_turns(d) >= min_doctor_turns and n <= max_length:
            return d
    return max(dialogues, key=doctor_turns)


def sft_loss_mask(preset, tokenizer, model, messages: list[dict], seed: int = 0) -> dict:
    """The labels of one dialogue exactly as the SFT stage trains on them: a TRL `SFTTrainer` built with the
    stage's own arguments (`sft.sft_training_args`: assistant_only_loss, max_length, packing) prepares the
    example, and its data collator makes the batch. Labels are the token ids where the loss falls and -100
    elsewhere (the model shifts them by one inside). `model` is any causal LM for that tokenizer: the labels do
    not depend on it."""
    import datasets
    from datasets import Dataset
    from trl import SFTTrainer

    from .sft import sft_training_args

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one example: the four preparation bars would only clutter the cell
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed arguments, as in the stage's log
            args = sft_training_args(preset, Path(tmp), seed)
            trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                                 train_dataset=Dataset.from_list([{"messages": messages}]))
            batch = trainer.data_collator([trainer.train_dataset[0]])
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    ids = batch["input_ids"][0].tolist()
    labels = batch["labels"][0].tolist()
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    return {"input_ids": ids, "labels": labels, "trained": [x != -100 for x in labels],
            "n_tokens": len(ids), "n_trained": sum(x != -100 for x in labels), "untruncated_tokens": len(full),
            "max_length": args.max_length}


def mark_trained(tokenizer, ids: list[int], trained: list[bool], open_: str = "⟦", close: str = "⟧") -> str:
    """The dialogue as the model reads it, special tokens included, with each run of trained tokens in ⟦...⟧."""
    out, run, state = [], [], None
    for t, m in list(zip(ids, trained)) + [(None, None)]:
        if m != state and run:
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{open_}{text}{close}" if state else text)
            run = []
        if t is not None:
            run.append(t)
        state = m
    return "".join(out)


# --------------------------------------------------------------------------- 03: the SFT data mix

SFT_KINDS = {"multi_turn": "multi-turn doctor-patient dialogues (CMtMedQA)",
             "single": "single-turn medical Q&A",
             "nlp": "medical NLP tasks",
             "general": "general dialogue and self-cognition",
             "safety": "safety (this project's fifth slice)"}


def sft_mix_table(metrics: dict, config: dict) -> list[dict]:
    """The SFT mix as the stage used it, per kind: the paper's name for it, the dialogues its file holds, the
    ratio (sft.mix in OUT/sft/config.json) and the examples trained on (`composition` in OUT/sft/metrics.json),
    with each kind's share of the mix."""
    used = metrics["composition"]
    available = metrics.get("data", {}).get("available", {})
    mix = config.get("sft", config).get("mix", {})
    total = sum(used.values())
    return [{"kind": k, "paper's kind": SFT_KINDS.get(k, k), "available": available.get(k), "ratio": mix.get(k),
             "used": n, "share": round(n / total, 4) if total else 0.0} for k, n in used.items()]


# --------------------------------------------------------------------------- 03: before and after SFT


def pick_inquiry_item(items: list[dict]) -> dict:
    """A test prompt where the doctor should ask before concluding (`expect.should_ask`): the one with the most
    turns, the first of those."""
    asking = [it for it in items if "should_ask" in it.get("expect", {})]
    if not asking:
        raise ValueError("no test item expects the doctor to ask (expect.should_ask)")
    return max(asking, key=lambda it: len(it["messages"]))


def inquiry_verdict(answer: str, item: dict, kg: dict) -> dict:
    """Does the doctor ask first? The evaluation's rule judge on one answer: a question about the case
    (proactive inquiry), a question about the very thing that tells the look-alike diseases apart
    (`expect.should_ask`), and the judge's reasons."""
    from .evaluate import judge_answers

    v = judge_answers([item], [answer], kg)[0]
    return {"asks about the case": v.proactive,
            "asks the key question": bool(item.get("expect", {}).get("should_ask")) and v.abilities.get("proactivity") == 1.0,
            "professionalism": v.professionalism, "reasons": "; ".join(v.reasons) or "-"}


def before_after(models: dict, tokenizer, item: dict, kg: dict, max_new_tokens: int) -> list[dict]:
    """Each model's greedy answer to one test prompt (the evaluation's `generate_chat`), with its inquiry
    verdict."""
    from .inference import generate_chat

    rows = []
    for name, model in models.items():
        answer = generate_chat(model, tokenizer, [item["messages"]], max_new_tokens)[0][0]
        rows.append({"model": name, "answer": answer} | inquiry_verdict(answer, item, kg))
    return rows


def load_kg(out) -> dict:
    """The run's knowledge graph (OUT/world/world.json), which the rule judge scores against."""
    return read_json(Path(out) / "world" / "world.json")



# --------------------------------------------------------------------------- notebook 01

# the world's files that carry one disease's facts, in the order the pipeline reads them (general.jsonl holds none)
DISEASE_FILES = ("pretrain_train.jsonl", "pretrain_heldout.jsonl", "sft_single.jsonl", "sft_multiturn.json",
                 "sft_nlp.jsonl", "sft_safety.jsonl", "rank_prompts.jsonl", "test_single.jsonl",
                 "test_multiturn.jsonl", "test_safety.jsonl", "probes.jsonl")


def render_record(rec: dict) -> str:
    """One record of the world as text: a passage, a dialogue (chat messages or CMtMedQA's history + instruction /
    output), or a probe with its right choice marked."""
    if "text" in rec:
        return rec["text"]
    if "messages" in rec:
        return "\n".join(f"{m['role']}: {m['content']}" for m in rec["messages"])
    if "history" in rec:
        turns = [(u, a) for u, a in rec["history"]] + [(rec["instruction"], rec["output"])]
        return "\n".join(f"{role}: {t}" for u, a in turns for role, t in (("user", u), ("assistant", a)))
    if "choices" in rec:
        return rec["prompt"] + " " + " / ".join(("✓" if i == rec["answer"] else "") + c
                                                for i, c in enumerate(rec["choices"]))
    raise ValueError(f"no rendering for a record with keys {sorted(rec)}")


def one_disease_everywhere(world_dir, disease_id: str) -> list[dict]:
    """The first record of each data kind that the disease `disease_id` was rendered into: [{"file", "kind", "id",
    "text"}] in DISEASE_FILES' order. A record belongs to the disease by its disease_id, or (CMtMedQA's shape, which
    has none) by its cate2, the disease's name."""
    import json

    world_dir = Path(world_dir)
    name = next(d["name"] for d in read_json(world_dir / "world.json")["diseases"] if d["id"] == disease_id)
    out = []
    for f in DISEASE_FILES:
        path = world_dir / f
        recs = (json.loads(path.read_text(encoding="utf-8")) if f.endswith(".json") else
                [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])
        rec = next((r for r in recs if r.get("disease_id") == disease_id or r.get("cate2") == name), None)
        if rec is not None:
            out.append({"file": f, "kind": rec.get("kind") or rec.get("attribute") or "dialogue",
                        "id": rec.get("id", ""), "text": render_record(rec)})
    return out
