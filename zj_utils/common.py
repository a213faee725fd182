"""Shared plumbing: seeding, run folders, config/metrics files, model loading, LoRA, merging."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

MARKER = "［虚构］"

# The repository's data/ folder: the real sample files that ship with the project (data/README.md) and, under
# data/raw/, what `zj data fetch` downloads. Resolved from the package's location, so it is the checkout's.
DATA_DIR = Path(__file__).resolve().parents[1] / "data"


class ZJError(RuntimeError):
    """An error a user can act on: printed by the CLI as one line, without a traceback."""


def data_file(*parts: str) -> Path:
    """A file shipped in the repository's data/ folder, e.g. ``data_file("cmtmedqa", "CMtMedQA_test.json")``.
    A missing one is a broken checkout: ZJError naming it, never a silent fallback."""
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        raise ZJError(f"{path} is missing: it ships with the repository in data/ (see data/README.md); "
                      f"restore it with `git checkout -- data/`, or work in a full clone of the repository")
    return path


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_threads() -> int:
    # Two threads per process is what a 2-core laptop/CI machine really has; more only thrash.
    return max(1, min(os.cpu_count() or 1, int(os.environ.get("ZJ_THREADS", os.cpu_count() or 1))))


# --------------------------------------------------------------------------- several processes

def _dist():
    """torch.distributed when a process group is up (torchrun / accelerate launch, once PartialState() or the
    Trainer joined it), else None. torch is looked up, not imported: no process group exists without it, and
    the CLI's light commands stay light."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


def is_main_process() -> bool:
    """True in the one process that writes files: global rank 0 of the process group; without one, the RANK
    torchrun / accelerate launch set (a process that has not joined yet); a plain single process."""
    dist = _dist()
    if dist is not None:
        return dist.get_rank() == 0
    return int(os.environ.get("RANK") or 0) == 0


def wait_for_everyone() -> None:
    """A barrier across the process group (nothing without one): ranks that read what the main process wrote
    wait here until it is written."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def local_rank() -> int | None:
    """This process's index among those on its machine, as torchrun and accelerate launch set it (LOCAL_RANK);
    None in a plain single process."""
    v = os.environ.get("LOCAL_RANK", "").strip()
    return int(v) if v else None


def weight_sharding() -> str | None:
    """"fsdp" or "zero3" when accelerate launch runs FSDP or DeepSpeed ZeRO-3, which shard the model's parameters
    over the processes; None otherwise (one process, DDP, ZeRO-1/2: a whole copy per process). Read from the
    environment accelerate launch sets: ACCELERATE_USE_FSDP; ACCELERATE_USE_DEEPSPEED with
    ACCELERATE_DEEPSPEED_ZERO_STAGE, or else the zero stage of the JSON named by ACCELERATE_DEEPSPEED_CONFIG_FILE."""
    env = os.environ
    on = lambda name: env.get(name, "").strip().lower() in ("1", "true", "yes", "y", "on")
    if on("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if not on("ACCELERATE_USE_DEEPSPEED"):
        return None
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
    if not stage and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        path = env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]
        try:
            stage = str(read_json(path).get("zero_optimization", {}).get("stage", ""))
        except (OSError, ValueError) as e:
            raise ZJError(f"ACCELERATE_DEEPSPEED_CONFIG_FILE={path}: cannot read its zero_optimization.stage "
                          f"({type(e).__name__}: {e})") from e
    return "zero3" if stage == "3" else None


def stage_dir(out: str | Path, stage: str) -> Path:
    d = Path(out) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write atomically (tmp file + rename) so a killed run never leaves a half-written JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name is per process: under DDP several ranks may write the same file at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), ensure_ascii=False, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def require(path: str | Path, what: str, hint: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ZJError(f"{what} not found at {p}. {hint}")
    return p


def world_dir(out: str | Path) -> Path:
    """The synthetic world of this run, which every stage after `zj world` reads."""
    require(Path(out) / "world" / "world.json", "The synthetic world", "Run `zj world` first, with the same --out.")
    return Path(out) / "world"


def begin_stage(stage: str, preset, out: str | Path, seed: int, resume: bool = False, **config) -> tuple[Path, "Timer"]:
    """Every stage starts the same way: seed everything, use the machine's cores, and write OUT/<stage>/config.json
    (the preset name, the seed and the stage's settings) before any work, so a run is reproducible from its folder.
    With `resume`, the settings must be those of the interrupted run: resuming under others would mix two runs."""
    import torch

    timer = Timer()
    set_seed(seed)
    torch.set_num_threads(cpu_threads())
    d = stage_dir(out, stage)
    cfg = to_jsonable({"stage": stage, "preset": preset.name, "seed": seed, **config})
    if resume and (d / "config.json").exists():
        old = read_json(d / "config.json")
        if old != cfg:
            changed = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            raise ZJError(f"Cannot resume {d}: its config.json differs from this run's in {', '.join(changed)}. "
                          "Resume with the same preset, seed and --set overrides, or run without --resume.")
    if is_main_process():  # under torchrun / accelerate launch the other ranks would write the same bytes
        if not resume:
            # A fresh start over a finished stage: its results no longer describe the folder once the new
            # config.json is written, so the stage is marked unfinished until the new run writes its own (stage_done
            # reads them).
            for name in ("metrics.json", "timings.json"):
                (d / name).unlink(missing_ok=True)
        write_json(d / "config.json", cfg)
    return d, timer


def write_metrics(d: str | Path, metrics: dict, timings: dict) -> dict:
    """OUT/<stage>/metrics.json holds results only, so that the same preset and seed give the same bytes;
    everything that depends on the wall clock (seconds, tokens/s) goes to OUT/<stage>/timings.json.
    Every stage ends here: under several processes the main one writes, and all wait for it (`wait_for_everyone`),
    so that whatever runs next, in any process, finds the stage's files complete."""
    if is_main_process():
        write_json(Path(d) / "timings.json", timings)
        write_json(Path(d) / "metrics.json", metrics)
    wait_for_everyone()
    return metrics


def stage_done(stage_dir: str | Path) -> bool:
    """A stage is complete when its metrics.json exists: every stage writes it last, atomically, so a run that
    skips finished stages continues where a killed one stopped."""
    return (Path(stage_dir) / "metrics.json").exists()


def link_dir(target: str | Path, link: str | Path) -> None:
    """`link` -> `target` as a relative symlink (kept if `link` exists): a run folder that shares another's
    stages without copying them."""
    link = Path(link)
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def read_timings(out: str | Path, stage: str) -> dict:
    """OUT/<stage>/timings.json, or {} for a stage that has not run (or ran before timings had their own file)."""
    p = Path(out) / stage / "timings.json"
    return read_json(p) if p.exists() else {}


def atomic_write_jsonl(path: str | Path, records) -> Path:
    """JSON Lines written to a temporary file and renamed into place: a killed run leaves the old file or none,
    never a half-written one that a resumed run would take as its cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process, as in write_json
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 2)


# --------------------------------------------------------------------------- models

def resolve_model_path(name_or_path: str, out: str | Path) -> str:
    """'tiny' means the stand-in base model built by `zj base` inside the run folder."""
    if name_or_path == "tiny":
        return str(require(Path(out) / "base" / "model", "The tiny base model",
                           "Run `zj base` (or notebook 02) first, with the same --out."))
    return name_or_path


def _hub_error(name: str, err: Exception) -> ZJError:
    return ZJError(
        f"Could not load model '{name}': {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
        "If this is a hub id, this machine needs internet access (or the model in the HF cache; "
        "set HF_HUB_OFFLINE=1 to use the cache only). If it is a folder, check the path.")


def bnb_config(quant) -> Any:
    """nf4 + double quantisation. Under FSDP or ZeRO-3 (`weight_sharding`) the packed 4-bit weights are stored in
    the compute dtype instead of uint8 (`bnb_4bit_quant_storage`): those engines shard float parameters only, and
    flatten parameters of one dtype (so model.dtype should then equal quant.compute_dtype, as in the GPU presets)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, quant.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute if weight_sharding() else None,  # None: bitsandbytes' uint8
    )


def _check_local(path: str, what: str = "model") -> None:
    """A path that names a folder (absolute, ./, ~/, or existing) must exist and, for weights, hold safetensors:
    a pickle checkpoint (pytorch_model.bin) can run code when it is loaded, so it is refused with a way out."""
    p = Path(path).expanduser()
    if not (p.is_absolute() or str(path).startswith((".", "~")) or p.exists()):
        return  # a hub id
    if not p.exists():
        raise ZJError(f"The {what} folder {path} does not exist. Check the path (or run the stage that writes it).")
    if what == "model" and p.is_dir() and not any(p.glob("*.safetensors")):
        pickles = sorted(x.name for x in p.iterdir() if x.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f"only {', '.join(pickles)} (pickle)" if pickles else "no weights"
        raise ZJError(f"{path} has {found}: this project loads weights as safetensors only. Convert a trusted "
                      "checkpoint once with `model.save_pretrained(dir)` (transformers writes safetensors).")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _check_local(path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(path, e) from e
    except ValueError as e:  # transformers 5: a folder without tokenizer files
        raise ZJError(f"Could not load a tokenizer from {path}: {str(e).splitlines()[0]}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the pad token's, else EOS's."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_model(path: str, model_cfg, quant=None, kind: str = "causal", num_labels: int = 1):
    """Load a causal LM (or a 1-output sequence classifier for the reward model), nf4-quantised when
    `quant` says so. Weights are read as safetensors only; no remote code unless the preset asks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    kwargs: dict[str, Any] = dict(
        dtype=getattr(torch, model_cfg.dtype),
        trust_remote_code=model_cfg.trust_remote_code,
        use_safetensors=True,
    )
    if kind != "causal":
        kwargs["num_labels"] = num_labels
    if quant is not None and quant.load_in_4bit:
        kwargs["quantization_config"] = bnb_config(quant)
        if not torch.cuda.is_available():
            kwargs["device_map"] = "cpu"
        elif weight_sharding() == "zero3":
            # transformers refuses a device_map under ZeRO-3; bitsandbytes then quantises onto the current device
            torch.cuda.set_device(device())
        else:
            kwargs["device_map"] = {"": device().index or 0}  # this process's GPU, not cuda:0 on every rank
    _check_local(path)
    try:
        model = cls.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _hub_error(path, e) from e
    if quant is None or not quant.load_in_4bit:
        model.to(device())
    else:
        keep_4bit_trainable(model)
    return model


def keep_4bit_trainable(model) -> None:
    """bitsandbytes (0.50) repacks a CPU nf4 layer into an inference-only layout the first time it runs in eval
    mode without grad (on CPUs with AVX512-BF16), and from then on its matmul has no autograd: training after an
    evaluation silently sends no gradient to the layers below. We evaluate before training (knowledge probes,
    PPO rollouts), so switch that repacking off."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_for_inference(path: str, preset, kind: str = "causal"):
    """Full precision on a CPU (nf4 only saves memory and costs time there); nf4 on a GPU when the preset says so."""
    import torch

    quant = preset.quant if (preset.quant.load_in_4bit and torch.cuda.is_available()) else None
    return load_model(path, preset.model, quant, kind=kind)


def device():
    """This process's device: its own GPU, cuda:LOCAL_RANK, under torchrun / accelerate launch (one GPU per
    process); cuda (the current one) in a single process; the CPU without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank = local_rank()
    return torch.device("cuda", rank) if rank is not None else torch.device("cuda")


def lora_config(spec, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=spec.target_modules, modules_to_save=list(spec.modules_to_save) or None,
        task_type=task_type,
    )


def merge_adapter(base_path: str, adapter_path: str | Path, out_path: str | Path, model_cfg, kind: str = "causal",
                  tokenizer=None) -> Path:
    """Merge a LoRA adapter into the full-precision base and save a plain HF checkpoint (safetensors),
    so that the next stage loads it exactly as it would load a hub model (and can quantise it again)."""
    from peft import PeftModel

    base = load_model(base_path, model_cfg, quant=None, kind=kind)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    if tokenizer is not None and merged.config.pad_token_id is None:
        merged.config.pad_token_id = tokenizer.pad_token_id  # a reward model reads its score at the last non-pad token
    out_path = Path(out_path)
    merged.save_pretrained(out_path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_path)
    return out_path


def count_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
