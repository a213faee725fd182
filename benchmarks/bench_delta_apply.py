"""Peak memory and time of `zj delta apply` on random LLaMA-shaped fp16 weights (base vocab 32000, delta 36000 as an
enlarged vocabulary), safetensors or pickle (.bin) deltas, against the size of the model.

    python benchmarks/bench_delta_apply.py --dir /tmp/bench_delta [--hidden 2048 --layers 16] [--shard-gb 0.5]

Each step runs in its own process, the models are written by one too: a child forked from a process holding the
weights would inherit their pages in its peak RSS. The peak includes Python and torch (printed as the baseline);
the rest is one output shard plus the tensors in flight, whatever the model's size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def write_model(d: Path, vocab: int, hidden: int, inter: int, layers: int, seed: int, fmt: str) -> int:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{n}_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    t = {k: (torch.randn(s, generator=g) * 0.02).half() for k, s in shapes.items()}
    d.mkdir(parents=True, exist_ok=True)
    keys = sorted(t)
    for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
        if fmt == "safetensors":
            save_file({k: t[k] for k in part}, str(d / f"model-{i + 1:05d}-of-00002.safetensors"))
        else:
            torch.save({k: t[k] for k in part}, d / f"pytorch_model-{i + 1:05d}-of-00002.bin")
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": hidden // 128,
        "num_key_value_heads": hidden // 128, "tie_word_embeddings": False}))
    return sum(v.numel() for v in t.values())


def child_peak(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (GiB) of `cmd` alone: RUSAGE_CHILDREN is the largest over the children so far, so each
    measurement runs under a fresh intermediate process that reports its only child's."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True)
    return int(res.stdout.split()[-1]) / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=5504)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--shard-gb", type=float, default=0.5)
    args = ap.parse_args()
    root = Path(args.dir)
    shape = f"{args.hidden}, {args.inter}, {args.layers}"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from bench_delta_apply import write_model; "
            f"from pathlib import Path; r = Path({str(root)!r}); "
            f"n = write_model(r / 'base', 32000, {shape}, 0, 'safetensors'); "
            f"write_model(r / 'delta', 36000, {shape}, 1, 'safetensors'); "
            f"write_model(r / 'delta_bin', 36000, {shape}, 1, 'bin'); print(n)")
    n = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1])
    base, _ = child_peak([sys.executable, "-c", "import torch, safetensors, zj_utils.delta"])
    print(f"model: {n / 1e9:.2f} B params, {2 * n / 2**30:.2f} GiB fp16; shards of {args.shard_gb} GiB; "
          f"baseline (python + torch) {base:.2f} GiB")
    for name in ("delta", "delta_bin"):
        out = root / f"out_{name}"
        peak, secs = child_peak([sys.executable, "-m", "zj_utils.cli", "delta", "apply", "--base", str(root / "base"),
                                 "--delta", str(root / name), "--out", str(out), "--shard-size-gb", str(args.shard_gb)])
        print(f"{name:10s} peak RSS {peak:.2f} GiB, {secs:.1f} s")


if __name__ == "__main__":
    main()
