"""Memory model check: predicted (zj_utils.estimate) vs measured peak memory of one QLoRA training step.

For each LLaMA-shaped model (randomly initialised, saved as a safetensors checkpoint, then loaded exactly as
the pipeline loads a model: common.load_model -> nf4 with double quantisation on CPU, training.prepare_qlora ->
LoRA as the tiny preset's SFT stage), a fresh subprocess measures its resident memory:

  M0  after imports and a warm-up step on a toy model (libraries, thread pools, allocator arenas)
  M1  after loading + LoRA                            -> weights        = M1 - M0
  M2  after AdamW creates its states (a step on zero gradients, as the Trainer's first step would)
                                                      -> optimizer      = M2 - M1
  HWM peak RSS during the first training step        -> step transient = HWM - M2, peak = HWM - M0

Peak RSS is the kernel's high-water mark (VmHWM), reset just before the training step through
/proc/self/clear_refs, so loading the checkpoint does not count. Freed heap is handed back with malloc_trim
before each reading M0-M2.

Two allocator settings. "live": MALLOC_MMAP_THRESHOLD_=65536, so glibc serves every tensor over 64 KiB with
its own mmap and unmaps it when freed: RSS is then the memory torch really holds, which is what the estimate
predicts (and what a GPU's allocator counts). "glibc": the default, whose mmap threshold rises to the largest
block freed so far (up to 32 MiB); later activations then come from the heap, and freed heap stays resident,
so the peak RSS of a CPU run is higher than the live tensors. Both are printed; the 15% target is on "live".

    .venv/bin/python benchmarks/bench_memory.py                 # three models, with and without checkpointing
    .venv/bin/python benchmarks/bench_memory.py --models llama-130m --no-gc --no-glibc
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 32000
# LLaMA-shaped models from ~130M to ~1B parameters (vocabulary of LLaMA's tokenizer).
MODELS = {
    "llama-130m": dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12),
    "llama-370m": dict(hidden_size=1024, intermediate_size=2816, num_layers=24, num_heads=16),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5504, num_layers=16, num_heads=16),
}
BATCH, SEQ = 2, 256


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) * 1024
    return out


def _settle() -> dict:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status()


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def make_checkpoint(name: str, path: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = MODELS[name]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
                      num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"],
                      num_key_value_heads=m["num_heads"], tie_word_embeddings=False, max_position_embeddings=2048)
    torch.set_default_dtype(torch.bfloat16)  # half the disk and RAM of the throw-away checkpoint
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)


def _qlora(path: str, lora, gradient_checkpointing: bool):
    from zj_utils.common import load_model
    from zj_utils.config import ModelConfig, QuantConfig
    from zj_utils.training import prepare_qlora

    model = prepare_qlora(load_model(path, ModelConfig(dtype="float32"), QuantConfig()), lora)
    if gradient_checkpointing:
        # what TrainingArguments(gradient_checkpointing=True) does: non-reentrant checkpoints per decoder layer
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _step(model, opt, ids) -> float:
    loss = model(input_ids=ids, labels=ids).loss  # the outputs (and logits) are dropped here, as in Trainer
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def measure(path: str, gradient_checkpointing: bool) -> dict:
    import torch
    import transformers

    from zj_utils.presets import get_preset

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ.get("ZJ_THREADS", "2")))
    lora = get_preset("tiny").sft.lora
    # warm-up on a toy model: kernels, thread pools and allocator arenas belong to the baseline
    with tempfile.TemporaryDirectory() as toy:
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2)).save_pretrained(toy)
        toy_model = _qlora(toy, lora, gradient_checkpointing)
        toy_opt = torch.optim.AdamW([p for p in toy_model.parameters() if p.requires_grad], lr=1e-4)
        _step(toy_model, toy_opt, torch.randint(0, 128, (BATCH, 16)))
        del toy_model, toy_opt
    m0 = _settle()
    model = _qlora(path, lora, gradient_checkpointing)
    m1 = _settle()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    vocab = model.get_base_model().config.vocab_size
    # AdamW allocates its two states at its first step; a step on zero gradients does that without a forward
    # pass (half the time of a real first step on a 1B model on 2 cores); the weights do not move (lr 0).
    for group in opt.param_groups:
        group["lr"] = 0.0
    for p in (p for p in model.parameters() if p.requires_grad):
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for group in opt.param_groups:
        group["lr"] = 1e-4
    m2 = _settle()
    _reset_peak()
    t0 = time.perf_counter()
    _step(model, opt, torch.randint(0, vocab, (BATCH, SEQ), generator=g))
    t1 = time.perf_counter()
    peak = _status()["VmHWM"]
    return {"m0": m0["VmRSS"], "m1": m1["VmRSS"], "m2": m2["VmRSS"], "hwm": peak,
            "file_rss_m0": m0["RssFile"], "file_rss_m2": m2["RssFile"], "step_seconds": round(t1 - t0, 2)}


def predict(name: str, gradient_checkpointing: bool):
    from zj_utils.estimate import ModelShape, estimate
    from zj_utils.presets import get_preset

    m = MODELS[name]
    shape = ModelShape(name, VOCAB, m["hidden_size"], m["intermediate_size"], m["num_layers"], m["num_heads"],
                       m["num_heads"])
    preset = get_preset("tiny", [f"sft.batch_size={BATCH}", f"sft.max_length={SEQ}"])
    return estimate(preset, "sft", device="cpu", gradient_checkpointing=gradient_checkpointing, shape=shape)


def _group(est) -> dict:
    """The estimate's parts in the groups the measurement can separate."""
    parts = {n: v for n, v, _ in est.parts}
    weights = sum(v for n, v in parts.items() if "weights" in n and "workspace" not in n)
    weights += parts.get("modules_to_save copies", 0)
    opt = parts["AdamW states"]
    return {"weights": weights, "optimizer": opt, "step": est.total - weights - opt, "total": est.total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--no-gc", action="store_true", help="skip the gradient-checkpointing runs")
    ap.add_argument("--no-glibc", action="store_true", help="skip the runs with glibc's default allocator settings")
    ap.add_argument("--only-live-for", nargs="*", default=["llama-1b"], metavar="MODEL",
                    help="models measured only once: live allocator, no checkpointing (default: llama-1b, whose "
                         "steps take ~10 minutes each on 2 shared cores)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--_make", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._make:
        make_checkpoint(*args._make)
        return 0
    if args._measure:
        print("RESULT " + json.dumps(measure(args._measure[0], args._measure[1] == "1")))
        return 0

    from zj_utils.estimate import GIB

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    allocators = {"live": dict(env, MALLOC_MMAP_THRESHOLD_="65536"), "glibc": env}
    runs = [(False, "live")] + ([] if args.no_gc else [(True, "live")]) + ([] if args.no_glibc else [(False, "glibc")])
    rows, results = [], []
    print(f"QLoRA training step, batch {BATCH} x {SEQ} tokens, nf4 + double quantisation, fp32 compute, "
          f"LoRA as the tiny preset's SFT (r=32, all-linear, dropout 0.05), AdamW; CPU RSS in GiB")
    print(f"{'model':<11} {'params':>7} {'gc':>3}  {'alloc':<5}  {'part':<9} {'predicted':>9} {'measured':>9} {'ratio':>7}",
          flush=True)
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"zj-{name}-") as ckpt:
            subprocess.run([sys.executable, __file__, "--_make", name, ckpt], check=True, env=env)
            for gc_on, alloc in (runs[:1] if name in args.only_live_for else runs):
                run = subprocess.run([sys.executable, __file__, "--_measure", ckpt, str(int(gc_on))],
                                     env=allocators[alloc], capture_output=True, text=True)
                line = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
                if run.returncode or not line:
                    print(run.stdout[-2000:], run.stderr[-4000:], file=sys.stderr)
                    return 1
                m = json.loads(line[0][7:])
                est = predict(name, gc_on)
                pred = _group(est)
                meas = {"weights": m["m1"] - m["m0"], "optimizer": m["m2"] - m["m1"], "step": m["hwm"] - m["m2"],
                        "total": m["hwm"] - m["m0"]}
                results.append({"model": name, "params": est.shape.params(), "gradient_checkpointing": gc_on,
                                "allocator": alloc,
                                "batch": BATCH, "seq": SEQ, "predicted": pred, "measured": meas, "raw": m,
                                "parts": {n: v for n, v, _ in est.parts}})
                for part in ("weights", "optimizer", "step", "total"):
                    ratio = meas[part] / pred[part] if pred[part] else float("nan")
                    rows.append(f"{name:<11} {est.shape.params() / 1e6:6.0f}M {'on' if gc_on else 'off':>3}  {alloc:<5}  "
                                f"{part:<9} {pred[part] / GIB:9.3f} {meas[part] / GIB:9.3f} {ratio:7.3f}")
                print("\n".join(rows[-4:]) + f"   (step: {m['step_seconds']} s)", flush=True)
    for alloc in ("live", "glibc"):
        errs = [r["measured"]["total"] / r["predicted"]["total"] - 1 for r in results if r["allocator"] == alloc]
        if errs:
            worst = max(errs, key=abs)
            print(f"{alloc}: worst error of the total: {worst * 100:+.1f}%"
                  + (" (target: within 15%)" if alloc == "live" else " (glibc keeps freed heap resident)"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
