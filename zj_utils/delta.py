"""`zj delta apply`: rebuild a model that is published as delta weights, and the check that stops a stage
from training on a delta.

The paper's base model, IDEA-CCNL/Ziya-LLaMA-13B-v1, is published only as the difference to LLaMA-13B: the
LLaMA licence forbids publishing the full weights. Its model card rebuilds the model with Fengshenbang-LM's
`fengshen/utils/apply_delta.py` (itself FastChat's `fastchat/model/apply_delta.py`): for every parameter,
target = base + delta, except the token embeddings and the LM head, whose vocabulary Ziya enlarged from
LLaMA's 32,000 to 39,424 rows: those the delta holds whole, and the target takes them from it unchanged (and
the rotary `inv_freq` buffer of old checkpoints is taken from the delta too; transformers recomputes it, so
we drop it). The target gets the delta's config and tokenizer (the enlarged vocabulary).

This module does the same streaming, tensor by tensor: a tensor is read from each side (safetensors with
`safe_open`; a pickle checkpoint only through `torch.load(weights_only=True, mmap=True)`), summed in float32,
cast to the delta's dtype (or `--dtype`) and written into safetensors shards of at most `shard_bytes`, so the
peak memory is one shard plus a few tensors, not two 13B models. The target folder gets `zj_delta.json`, a
record of what was done, which is also how `check_not_delta` knows a folder is a rebuilt model.

    zj delta apply --base LLAMA13B_HF_DIR --delta ZIYA_DELTA_DIR --out TARGET_DIR
    zj sft --preset zhongjing-13b --set model.name_or_path=TARGET_DIR ...

`--embeddings add` is the other convention (older FastChat/LLaVA deltas): embeddings and LM head are
differences too, and a delta with more rows adds the base to its first rows.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .common import ZJError, write_json

MARKER = "zj_delta.json"

# Hub ids published as deltas, and the base each needs. The check below matches these case-insensitively, and
# also their snapshot folders in the HF cache (models--ORG--NAME).
KNOWN_DELTAS: dict[str, dict] = {
    "IDEA-CCNL/Ziya-LLaMA-13B-v1": {"base": "LLaMA-13B (Meta's weights converted to HF format)", "embeddings": "copy"},
    "IDEA-CCNL/Ziya-LLaMA-13B-v1.1": {"base": "LLaMA-13B (Meta's weights converted to HF format)", "embeddings": "copy"},
    "IDEA-CCNL/Ziya-LLaMA-13B-Pretrain-v1": {"base": "LLaMA-13B (Meta's weights converted to HF format)",
                                             "embeddings": "copy"},
}

# Parameters the delta holds whole under Ziya's convention ("copy"): they are resized to the enlarged vocabulary.
WHOLE = ("embed_tokens.weight", "lm_head.weight")
# Buffers old checkpoints saved and transformers now recomputes: left out of the target.
DROPPED = ("rotary_emb.inv_freq",)
# Families whose final RMSNorm weight is used as-is (x * w, initialised to 1), so a real model's is far from 0
# and a delta's (the change from fine-tuning) is near 0. Not Gemma-like norms that compute x * (1 + w).
PLAIN_NORM_TYPES = ("llama", "mistral", "qwen2", "qwen3", "baichuan", "internlm2")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")
DTYPES = ("float16", "bfloat16", "float32")


# --------------------------------------------------------------------------- reading weights, tensor by tensor

class Weights:
    """The tensors of a model folder, read one at a time: safetensors (preferred) or, when a folder has only
    pickle shards (Ziya's delta is pytorch_model-*.bin), `torch.load` with weights_only=True and mmap."""

    def __init__(self, folder: str | Path, what: str):
        self.folder = Path(folder)
        self.what = what
        if not self.folder.is_dir():
            raise ZJError(f"The {what} folder {folder} does not exist. Download it first (a hub snapshot, e.g. "
                          f"`huggingface-cli download REPO --local-dir DIR`), then give its folder.")
        self.files = sorted(self.folder.glob("*.safetensors"))
        self.kind = "safetensors"
        if not self.files:
            self.files = sorted(p for p in self.folder.glob("*.bin") if p.name.startswith("pytorch_model"))
            self.kind = "bin"
        if not self.files:
            raise ZJError(f"The {what} folder {folder} has no weights (*.safetensors or pytorch_model*.bin).")
        self.where: dict[str, Path] = {}
        self._shapes: dict[str, tuple] = {}
        for f in self.files:
            for name, shape in self._index(f).items():
                if name not in self.where:
                    self.where[name], self._shapes[name] = f, shape

    def _load_bin(self, f: Path) -> dict:
        import torch

        try:  # mmap: a 10 GB shard costs no memory until a tensor is read
            return torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
            return torch.load(f, map_location="cpu", weights_only=True)

    def _index(self, f: Path) -> dict[str, tuple]:
        if self.kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt", device="cpu") as h:
                return {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
        return {k: tuple(v.shape) for k, v in self._load_bin(f).items()}

    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple:
        return self._shapes[name]

    def get(self, name: str):
        """The tensor, copied out of the file. The file is opened for this one read and closed again: a mapping
        kept open would keep every page read so far resident, i.e. both models by the end."""
        f = self.where[name]
        if self.kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt", device="cpu") as h:
                return h.get_tensor(name)
        sd = self._load_bin(f)
        t = sd[name].clone()
        del sd
        return t

    def config(self) -> dict:
        p = self.folder / "config.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def _is_whole(name: str) -> bool:
    return name.endswith(WHOLE)


def _is_dropped(name: str) -> bool:
    return name.endswith(DROPPED)


def _how(name: str, base: Weights, delta: Weights, embeddings: str) -> str:
    """How the target's tensor `name` is made: "added" (base + delta) or "copied" (the delta's, whole). Reads
    shapes only (the files' headers), so every mismatch is found before anything is written."""
    d_shape = delta.shape(name)
    if name not in base:
        if _is_whole(name) and embeddings == "copy":
            return "copied"
        raise ZJError(f"tensor {name} is in the delta but not in the base: wrong base model? "
                      f"(the base has {len(base.names())} tensors)")
    b_shape = base.shape(name)
    if _is_whole(name):
        if b_shape[1:] != d_shape[1:]:
            raise ZJError(f"tensor {name}: base shape {b_shape} vs delta shape {d_shape}: the hidden sizes differ, "
                          "so this delta was not made against this base")
        if embeddings == "copy":  # Ziya: the delta holds the enlarged vocabulary's rows whole
            return "copied"
        if d_shape[0] < b_shape[0]:
            raise ZJError(f"tensor {name}: base shape {b_shape} vs delta shape {d_shape}: the delta has fewer "
                          "vocabulary rows than the base")
        return "added"
    if b_shape != d_shape:
        raise ZJError(f"tensor {name}: base shape {b_shape} vs delta shape {d_shape}: only the embeddings and "
                      "the LM head may differ (the vocabulary); this delta was not made against this base")
    return "added"


def _combine(name: str, how: str, base: Weights, delta: Weights, dtype):
    """One target tensor: the delta's whole tensor, or base + delta summed in float32 and cast once (a delta with
    more rows than the base, under the "add" convention, keeps its own values beyond the base's rows)."""
    import torch

    d = delta.get(name)
    out_dtype = dtype or d.dtype
    if how == "copied":
        return d.to(out_dtype).contiguous()
    b = base.get(name).to(torch.float32)
    t = d.to(torch.float32).clone()
    t[:b.shape[0]] += b
    return t.to(out_dtype).contiguous()


def apply_delta(base_dir: str | Path, delta_dir: str | Path, out_dir: str | Path, embeddings: str = "copy",
                dtype: str | None = None, shard_bytes: int = 5 * 2**30, progress: bool = False) -> dict:
    """Write target = base + delta into `out_dir` (safetensors shards + index, the delta's config and tokenizer,
    and `zj_delta.json`). Raises ZJError, one line naming the tensor, when a shape does not fit."""
    import torch
    from safetensors.torch import save_file

    if embeddings not in ("copy", "add"):
        raise ZJError(f"--embeddings {embeddings}: expected copy (Ziya) or add (FastChat)")
    if dtype is not None and dtype not in DTYPES:
        raise ZJError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype) if dtype else None
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ZJError(f"{out} exists and is not empty: give a new folder for the target model")
    base, delta = Weights(base_dir, "base model"), Weights(delta_dir, "delta")
    if Path(base_dir).resolve() == Path(delta_dir).resolve():
        raise ZJError("--base and --delta are the same folder")

    extra = [n for n in base.names() if n not in delta and not _is_dropped(n)]
    if extra:
        raise ZJError(f"tensor {extra[0]} is in the base but not in the delta ({len(extra)} such tensors): "
                      "wrong base model, or an incomplete delta download?")

    names = delta.names()
    plan = {n: _how(n, base, delta, embeddings) for n in names if not _is_dropped(n)}  # every shape, first

    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    current: dict = {}
    size = 0
    counts = {"added": 0, "copied": 0, "dropped": 0}
    copied, dropped = [], []
    total = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc="applying delta", unit="tensor")

    def flush():
        nonlocal current, size
        if current:
            tmp = out / f".shard-{len(shards):05d}.safetensors"
            save_file(current, str(tmp), metadata={"format": "pt"})
            shards.append({"tmp": tmp, "names": list(current)})
            current, size = {}, 0

    for name in names:
        if bar is not None:
            bar.update(1)
        if _is_dropped(name):
            counts["dropped"] += 1
            dropped.append(name)
            continue
        how = plan[name]
        t = _combine(name, how, base, delta, torch_dtype)
        counts[how] += 1
        if how == "copied":
            copied.append(name)
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[name] = t
        size += nbytes
        total += nbytes
    flush()
    if bar is not None:
        bar.close()

    # final names: transformers' own scheme (model.safetensors, or model-0000i-of-0000n.safetensors + index)
    weight_map = {}
    files = []
    for i, s in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(s["tmp"], out / fname)
        files.append(fname)
        weight_map.update({n: fname for n in s["names"]})
    if len(shards) > 1:
        write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})

    config = delta.config() or base.config()
    if not config:
        raise ZJError(f"neither {delta_dir} nor {base_dir} has a config.json")
    emb = next((n for n in names if n.endswith("embed_tokens.weight")), None)
    if emb is not None and config.get("vocab_size") not in (None, delta.shape(emb)[0]):
        raise ZJError(f"config.json says vocab_size={config['vocab_size']} but tensor {emb} has "
                      f"{delta.shape(emb)[0]} rows: the delta's config does not match its weights")
    if dtype:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    write_json(out / "config.json", config)
    tokenizer_from = {}
    for fname in TOKENIZER_FILES:
        for src in (Path(delta_dir), Path(base_dir)):  # the delta's tokenizer: it knows the enlarged vocabulary
            if (src / fname).is_file():
                shutil.copyfile(src / fname, out / fname)
                tokenizer_from[fname] = "delta" if src == Path(delta_dir) else "base"
                break
    record = {"base": str(Path(base_dir).resolve()), "delta": str(Path(delta_dir).resolve()),
              "embeddings": embeddings, "dtype": dtype or "as the delta", "tensors": counts,
              "copied_whole_from_delta": copied, "dropped": dropped, "files": files, "bytes": total,
              "config_from": "delta" if delta.config() else "base", "tokenizer_files": tokenizer_from,
              "convention": "target = base + delta per tensor (float32 sum, cast once); "
                            + ("embeddings and LM head taken whole from the delta (Ziya's apply_delta.py)"
                               if embeddings == "copy" else "embeddings and LM head added on the base's rows")}
    write_json(out / MARKER, record)
    return record


# --------------------------------------------------------------------------- is this model a delta?

def _cache_name(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _known(name: str) -> str | None:
    low = name.strip().rstrip("/").lower()
    for repo in KNOWN_DELTAS:
        if low == repo.lower() or _cache_name(repo).lower() in low:
            return repo
    return None


def _final_norm_mean(folder: Path) -> float | None:
    """Mean |w| of the final RMSNorm weight of a local LLaMA-family folder (read alone), or None."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if cfg.get("model_type") not in PLAIN_NORM_TYPES:
        return None
    try:
        w = Weights(folder, "model")
    except ZJError:
        return None
    name = next((n for n in ("model.norm.weight", "norm.weight", "transformer.norm.weight") if n in w), None)
    if name is None:
        return None
    return float(w.get(name).float().abs().mean())


def delta_reason(name_or_path: str) -> str | None:
    """Why `name_or_path` is (most likely) delta weights rather than a model, or None.

    - a hub id, or an HF-cache snapshot (models--ORG--NAME), of a known delta repository (KNOWN_DELTAS);
    - a local LLaMA-family folder (plain RMSNorm) whose final norm weights average |w| < 0.1: a model's start at
      1 and stay near it (above 0.5 in every LLaMA-family model we know), a delta's are fine-tuning's small
      changes. That is read from the weights, so it holds whatever the folder is called; above 0.5 the folder
      is a model, whatever else it says;
    - otherwise (another family, or in between), a model card (README.md) that gives an apply_delta step.
    A folder written by `zj delta apply` (it has zj_delta.json) is a rebuilt model, never a delta."""
    if not name_or_path or name_or_path == "tiny":
        return None
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / MARKER).is_file():
        return None
    repo = _known(str(name_or_path))
    if repo is not None:
        return f"{repo}, which is published as delta weights against {KNOWN_DELTAS[repo]['base']}"
    if not p.is_dir():
        return None
    mean = _final_norm_mean(p)
    if mean is not None and mean < 0.1:
        return f"a folder of delta weights, by its final norm weights (mean |w| {mean:.3f}; a model's are about 1)"
    if mean is not None and mean > 0.5:
        return None
    readme = p / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if re.search(r"apply_delta|delta weights", text, flags=re.IGNORECASE):
            return f"a folder whose model card ({readme.name}) says it holds delta weights"
    return None


def check_not_delta(model_cfg) -> None:
    """Stop a stage, in one line, when `model.name_or_path` is delta weights: training on a delta would run and
    mean nothing. Called by every stage but `world` (stages.run_stage) and by `reproduce` before it starts."""
    name = getattr(model_cfg, "name_or_path", "")
    reason = delta_reason(name)
    if reason is None:
        return
    raise ZJError(f"model.name_or_path={name} is {reason}, not a model to train. Rebuild the model once with "
                  f"`zj delta apply --base LLAMA13B_HF_DIR --delta DELTA_DIR --out TARGET_DIR` "
                  f"(DELTA_DIR: a download of the delta), then rerun with --set model.name_or_path=TARGET_DIR")


# --------------------------------------------------------------------------- the command

def add_parser(sub) -> None:
    p = sub.add_parser("delta", help="rebuild a model published as delta weights (Ziya-LLaMA-13B = LLaMA-13B + delta)",
                       description="Delta weights: `apply` writes target = base + delta (safetensors), as the "
                                   "delta's authors' apply_delta script does, streaming tensor by tensor.")
    dsub = p.add_subparsers(dest="delta_command", required=True)
    a = dsub.add_parser("apply", help="target = base + delta, tensor by tensor, into a new folder (safetensors)",
                        description="Rebuild e.g. Ziya-LLaMA-13B-v1 from LLaMA-13B (HF format) and Ziya's delta: "
                                    "every parameter base + delta; the embeddings and LM head (enlarged "
                                    "vocabulary) taken whole from the delta; the delta's config and tokenizer.")
    a.add_argument("--base", required=True, help="the base model's folder (LLaMA-13B in HF format)")
    a.add_argument("--delta", required=True, help="the delta's folder (e.g. a download of IDEA-CCNL/Ziya-LLaMA-13B-v1)")
    a.add_argument("--out", required=True, help="a new folder for the target model")
    a.add_argument("--embeddings", choices=("copy", "add"), default="copy",
                   help="copy: embeddings/LM head taken whole from the delta (Ziya, default); add: they are "
                        "differences too, added on the base's rows (older FastChat deltas)")
    a.add_argument("--dtype", choices=DTYPES, default=None, help="the target's dtype (default: the delta's)")
    a.add_argument("--shard-size-gb", type=float, default=5.0, help="largest safetensors shard (default 5 GB)")


def cli_main(args) -> int:
    if args.delta_command == "apply":
        rec = apply_delta(args.base, args.delta, args.out, args.embeddings, args.dtype,
                          int(args.shard_size_gb * 2**30), progress=True)
        t = rec["tensors"]
        print(f"wrote {args.out}: {t['added']} tensors base + delta, {t['copied']} taken whole from the delta "
              f"({', '.join(rec['copied_whole_from_delta']) or 'none'}), {t['dropped']} dropped; "
              f"{len(rec['files'])} safetensors file(s), {rec['bytes'] / 2**30:.2f} GiB")
        print(f"next: --set model.name_or_path={args.out}")
    return 0
