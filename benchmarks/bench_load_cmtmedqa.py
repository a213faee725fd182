"""Load and validate a generated ~150 MB file in CMtMedQA's shape: time and peak memory.

    .venv/bin/python benchmarks/bench_load_cmtmedqa.py [--mb 150] [--keep DIR]

Each measurement runs in a fresh process so that its peak RSS is its own:
  validate  `zj validate`'s check(): streams the file, keeps nothing
  load      load_cmtmedqa(): every dialogue as Python objects in a list
  dataset   to_dataset(): streamed into an Arrow file (datasets.Dataset)
Target: peak memory under 3x the file size.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEPTS = ["内科", "外科", "儿科", "妇产科", "肿瘤科", "皮肤科", "眼科", "口腔科", "神经科", "心血管科",
         "消化科", "呼吸科", "内分泌科", "泌尿科", "骨科", "精神科", "中医科"]


def generate(path: Path, mb: float, seed: int = 0) -> int:
    """Write a JSON array of ~mb MB (indent 4, as the published file): 93% multi-turn, 7% safety records."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    sentences = ["".join(rng.choices(chars, k=rng.randint(8, 30))) + rng.choice("，。？！") for _ in range(5000)]
    turn = lambda lo, hi: "".join(rng.choices(sentences, k=rng.randint(lo, hi)))  # noqa: E731
    target, n = int(mb * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        while f.tell() < target:
            if rng.random() < 0.07:
                rec = {"instruct": " " + turn(1, 3), "output": turn(2, 6)}
            else:
                rec = {"id": f"j{n}", "cate1": rng.choice(DEPTS), "cate2": rng.choice(DEPTS),
                       "instruction": turn(1, 3), "input": "", "output": turn(2, 6),
                       "history": [[turn(1, 4), turn(2, 6)] for _ in range(rng.randint(0, 9))]}
            f.write((",\n" if n else "") + "    " + json.dumps(rec, ensure_ascii=False, indent=4).replace("\n", "\n    "))
            n += 1
        f.write("\n]\n")
    return n


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(phase: str, path: str, tmp: str) -> dict:
    from zj_utils import data
    if phase == "dataset":
        import datasets  # noqa: F401  (its import is part of the baseline, not of the load)
    base = _peak_mb()
    t = time.perf_counter()
    if phase == "validate":
        result = data.check(path)
        assert not result["problems"], result["problems"][:3]
        n = result["records"]
    elif phase == "load":
        n = len(data.load_cmtmedqa(path))
    else:
        n = data.to_dataset(path, cache_dir=Path(tmp) / "cache").num_rows
    return {"phase": phase, "records": n, "seconds": time.perf_counter() - t, "baseline_mb": base,
            "peak_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=150)
    ap.add_argument("--keep", default=None, help="generate into (and keep) this folder")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(measure(args.phase, args.path, args.tmp)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "CMtMedQA_like.json"
        t = time.perf_counter()
        n = generate(path, args.mb)
        size_mb = path.stat().st_size / 2**20
        print(f"generated {path.name}: {n:,} records, {size_mb:.1f} MiB in {time.perf_counter() - t:.1f} s")
        for phase in ("validate", "load", "dataset"):
            r = subprocess.run([sys.executable, __file__, "--phase", phase, "--path", str(path), "--tmp", tmp],
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(f"{phase}: failed\n{r.stderr[-2000:]}")
                continue
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{phase:9s} {m['records']:,} records in {m['seconds']:.1f} s ({m['records'] / m['seconds']:,.0f} "
                  f"records/s, {size_mb / m['seconds']:.1f} MiB/s); peak RSS {m['peak_mb']:.0f} MiB "
                  f"= {m['peak_mb'] / size_mb:.2f}x the file (process baseline before loading "
                  f"{m['baseline_mb']:.0f} MiB; growth {(m['peak_mb'] - m['baseline_mb']) / size_mb:.2f}x)")


if __name__ == "__main__":
    main()
