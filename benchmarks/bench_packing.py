"""SFT throughput with padding vs TRL packing (best-fit decreasing, padding-free), on CMtMedQA's length distribution.

The dialogues are the CMtMedQA test set (data/cmtmedqa/CMtMedQA_test.json in the repository, read with
zj_utils.data.load_cmtmedqa), tokenised by the tiny pipeline's tokenizer and trained on exactly as `zj sft`
trains (nf4 base + LoRA, TRL SFTTrainer, loss on doctor turns only), one epoch over the same dialogues in each
mode: random padded batches (what `zj sft` does), padded batches grouped by length (transformers'
`train_sampling_strategy="group_by_length"`), and TRL packing (`sft.packing=true`). Real tokens are the non-pad tokens of the examples after truncation to max_length (the same count in both
modes: bfd packing truncates as the padded path does), so tokens/s compares like with like.

The fraction of the machine's matmul throughput uses the usual 6 x params x tokens for a training step's FLOPs
(with a frozen base, LoRA skips the weight gradients, so ~4N would be fairer; 6N is the convention) and a large
fp32 torch.matmul timed on the same threads. Attention FLOPs are left out of the model count, as in the 6N rule.

    .venv/bin/python benchmarks/bench_packing.py                       # tiny base model from runs/tiny-seed0
    .venv/bin/python benchmarks/bench_packing.py --dialogues 64 --max-length 1024 --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_flops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def train_once(model_path: str, records: list, mode: str, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from zj_utils.common import load_model, load_tokenizer, set_seed
    from zj_utils.presets import get_preset
    from zj_utils.training import prepare_qlora, restore_adapter_dtype, training_args

    packing = mode == "packed"
    preset = get_preset("tiny", [f"sft.batch_size={args.batch_size}", f"sft.max_length={args.max_length}",
                                 "sft.epochs=1", "sft.save_every=0", f"sft.packing={json.dumps(packing)}"])
    cfg = preset.sft
    set_seed(0)
    tokenizer = load_tokenizer(model_path)
    model = prepare_qlora(load_model(model_path, preset.model, preset.quant), cfg.lora)
    with tempfile.TemporaryDirectory() as d:
        targs = training_args(SFTConfig, cfg, Path(d), 0, preset, max_length=cfg.max_length,
                              assistant_only_loss=True, packing=cfg.packing, packing_strategy="bfd",
                              dataset_num_proc=None)
        targs.logging_steps = 10 ** 6
        targs.disable_tqdm = True
        if mode == "grouped":
            targs.train_sampling_strategy = "group_by_length"
        trainer = SFTTrainer(model=model, args=targs, train_dataset=Dataset.from_list(records),
                             processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        restore_adapter_dtype(trainer.model, preset)
        ds = trainer.train_dataset
        rows = len(ds)
        real = sum(len(x) for x in ds["input_ids"])
        result = trainer.train()
    secs = result.metrics["train_runtime"]
    params = sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1) for p in model.parameters())
    padded = trainer.state.num_input_tokens_seen or real
    names = {"padded": "padded (random batches)", "grouped": "padded, grouped by length",
             "packed": "packed (bfd, padding-free)"}
    return {"mode": names[mode], "rows": rows,
            "steps": result.global_step, "real_tokens": real, "tokens_in_batches": int(padded),
            "seconds": round(secs, 2), "tokens_per_s": real / secs, "params": params,
            "train_loss": round(result.training_loss, 4), "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs" / "tiny-seed0" / "base" / "model"),
                    help="a LLaMA checkpoint with its tokenizer (default: the tiny pipeline's base model)")
    ap.add_argument("--data", default=None,
                    help="a CMtMedQA-format JSON (default: the repository's data/cmtmedqa/CMtMedQA_test.json)")
    ap.add_argument("--dialogues", type=int, default=96, help="how many test dialogues (seeded sample)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import random

    import numpy as np
    import torch
    import transformers

    from zj_utils.common import ZJError, cpu_threads, data_file, load_tokenizer
    from zj_utils.data import load_cmtmedqa

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(cpu_threads())
    if not (Path(args.model) / "config.json").exists():
        raise ZJError(f"{args.model}: no model there. Run `zj base --preset tiny --out runs/tiny-seed0` or pass --model.")
    data = args.data or data_file("cmtmedqa", "CMtMedQA_test.json")
    dialogues = [d for d in load_cmtmedqa(data) if d["kind"] == "multi_turn"]
    records = [{"messages": [{"role": m["role"], "content": m["content"]} for m in d["messages"]]}
               for d in random.Random(0).sample(dialogues, min(args.dialogues, len(dialogues)))]
    tok = load_tokenizer(args.model)
    lengths = np.array([len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                        for r in records])
    peak = matmul_flops()
    print(f"data: {len(records)} CMtMedQA test dialogues; tokens per dialogue: median {np.median(lengths):.0f}, "
          f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}; max_length {args.max_length}, "
          f"batch {args.batch_size}")
    print(f"machine: fp32 matmul 2048^3 on {torch.get_num_threads()} threads: {peak / 1e9:.1f} GFLOP/s")
    results = [train_once(args.model, records, mode, args) for mode in ("padded", "grouped", "packed")]
    print(f"{'mode':<28} {'steps':>5} {'real tok':>9} {'in batches':>10} {'pad %':>6} {'s':>7} {'tok/s':>8} "
          f"{'6N*tok/s':>9} {'of matmul':>9}")
    for r in results:
        r["model_flops_per_s"] = 6 * r["params"] * r["tokens_per_s"]
        r["fraction_of_matmul"] = r["model_flops_per_s"] / peak
        pad = 1 - r["real_tokens"] / r["tokens_in_batches"] if r["tokens_in_batches"] else 0.0
        print(f"{r['mode']:<28} {r['steps']:>5} {r['real_tokens']:>9} {r['tokens_in_batches']:>10} {pad * 100:6.1f} "
              f"{r['seconds']:7.1f} {r['tokens_per_s']:8.0f} {r['model_flops_per_s'] / 1e9:8.2f}G "
              f"{r['fraction_of_matmul'] * 100:8.2f}%")
    print(f"speed-up over random padded batches (real tokens/s): grouped by length "
          f"{results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x, packed "
          f"{results[2]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x; "
          f"model {results[0]['params'] / 1e6:.2f}M params")
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_flops": peak, "lengths": lengths.tolist(), "runs": results},
                                              indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
