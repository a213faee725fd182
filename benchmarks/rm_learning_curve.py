"""What limits the reward model: its held-out accuracy against the amount of ranked data, the knowledge of the model
it starts from, and the model's size, on one finished run's own sampled rankings.

Every cell trains the `rm` stage again on RUN/rm/sampled_rankings.jsonl (the same answers, the same rankings, the
same dev and test prompts: the split is made before the training prompts are subsampled), changing one thing:

    --fractions 0.25 0.5 1.0   the share of the training prompts kept (rm.train_fraction)
    --inits pretrain base      the model the reward model starts from: after continued pre-training (the paper's
                               choice; knows RUN's probe accuracy after pre-training) or the base model before it
    --larger model.hidden_size=384 ...   optionally one more cell: a larger model, built and pre-trained in the cell
                               (zj base + zj pretrain with these overrides), all training prompts

    PYTHONPATH=. ZJ_THREADS=1 python benchmarks/rm_learning_curve.py runs/tiny-seed0 --out runs/rm-curve
    python benchmarks/rm_learning_curve.py runs/tiny-seed0 --out runs/rm-curve --report   # table + figure again

Writes OUT/curve.json, OUT/curve.md and OUT/rm_learning_curve.png. A finished cell is not trained again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zj_utils.common import link_dir, read_json, stage_done, write_json  # noqa: E402


def _probe_accuracy(run: Path, init: str) -> float | None:
    m = read_json(run / "pretrain" / "metrics.json")
    return m["after" if init == "pretrain" else "before"]["probes"]["all"]


def _cell(run: Path, cell: Path, init: str) -> None:
    for stage in ("world", "base", "sft") + (("pretrain",) if init == "pretrain" else ()):
        link_dir(run / stage, cell / stage)
    if init == "base":  # rm.init_from reads <stage>/merged; the base stage keeps its model in base/model
        (cell / "base_init").mkdir(parents=True, exist_ok=True)
        link = cell / "base_init" / "merged"
        if not link.exists():
            link.symlink_to((run / "base" / "model").resolve(), target_is_directory=True)
    _copy_rankings(run, cell)


def _copy_rankings(run: Path, cell: Path) -> None:
    """The run's sampled rankings into the cell's rm folder, where a resumed rm stage reads them back."""
    (cell / "rm").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "rm" / "sampled_rankings.jsonl", cell / "rm" / "sampled_rankings.jsonl")


def run_cells(run: Path, out: Path, fractions, inits, larger, seed: int, preset_name: str, overrides) -> None:
    from zj_utils.pipeline import run_stage
    from zj_utils.presets import get_preset

    cells = [(init, f, []) for init in inits for f in fractions]
    if larger:
        cells.append(("larger", 1.0, larger))
    for init, frac, extra in cells:
        name = f"{init}-f{frac:g}"
        cell = out / name
        if stage_done(cell / "rm"):
            continue
        sets = list(overrides) + [f"rm.train_fraction={frac}",
                                  f"rm.init_from={'base_init' if init == 'base' else 'pretrain'}"] + extra
        preset = get_preset(preset_name, sets)
        if init == "larger":  # its own base and pre-training, at the larger shape
            link_dir(run / "world", cell / "world")
            link_dir(run / "sft", cell / "sft")
            for stage in ("base", "pretrain"):
                if not stage_done(cell / stage):
                    print(f"[rm curve] {name}: {stage}", file=sys.stderr, flush=True)
                    run_stage(stage, preset, cell, seed)
            _copy_rankings(run, cell)
        else:
            _cell(run, cell, init)
        print(f"[rm curve] {name}: rm", file=sys.stderr, flush=True)
        run_stage("rm", preset, cell, seed, resume=True)  # resume: read the copied rankings back, sample nothing
        write_json(cell / "cell.json", {"init": init, "train_fraction": frac, "overrides": sets})


def report(run: Path, out: Path) -> list[dict]:
    rows = []
    for cell in sorted(p for p in out.iterdir() if (p / "cell.json").exists()):
        spec, m = read_json(cell / "cell.json"), read_json(cell / "rm" / "metrics.json")
        rep = m["test_report"]
        probes = (read_json(cell / "pretrain" / "metrics.json")["after"]["probes"]["all"] if spec["init"] == "larger"
                  else _probe_accuracy(run, spec["init"]))
        rows.append({"cell": cell.name, "init": spec["init"], "train_fraction": spec["train_fraction"],
                     "train_prompts": m.get("train_prompts"), "train_pairs": m["train_pairs"],
                     "init_probe_accuracy": probes, "train_accuracy": m["train_accuracy"],
                     "dev_accuracy": m["dev_accuracy"], "test": rep["overall"],
                     "safety": rep["by_dimension"].get("safety"), "trainable_params": m["trainable_params"]})
    # a cell that is the run's own rm stage (linked, made before train_prompts was recorded): the same split and
    # fraction as another cell, so the same number of training prompts
    for r in rows:
        if r["train_prompts"] is None:
            r["train_prompts"] = next((o["train_prompts"] for o in rows if o["train_fraction"] == r["train_fraction"]
                                       and o["train_prompts"] is not None), None)
    order = {"base": 0, "pretrain": 1, "larger": 2}
    rows.sort(key=lambda r: (order.get(r["init"], 3), r["train_fraction"]))
    write_json(out / "curve.json", {"run": str(run), "rows": rows})
    ci = lambda d: f"{d['accuracy']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]" if d else "-"  # noqa: E731
    lines = [f"Reward model on `{run}`'s sampled rankings; test pairs and their 95% prompt-clustered intervals as "
             "in the rm stage's report.", "",
             "| starts from | probe accuracy of that model | training prompts | training pairs | train acc | dev acc "
             "| test pairwise | safety-decided test pairs |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['init']} | {r['init_probe_accuracy']:.3f} | {r['train_prompts']} | {r['train_pairs']} | "
                     f"{r['train_accuracy']:.3f} | {r['dev_accuracy']:.3f} | {ci(r['test'])} | {ci(r['safety'])} |")
    (out / "curve.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _figure(rows, out / "rm_learning_curve.png")
    return rows


def _figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "test", "all test pairs"), (axes[1], "safety", "safety-decided test pairs")):
        for init, colour in (("base", "#999999"), ("pretrain", "#2f6db5"), ("larger", "#c0392b")):
            pts = [r for r in rows if r["init"] == init and r[key]]
            if not pts:
                continue
            x = [r["train_prompts"] for r in pts]
            y = [r[key]["accuracy"] for r in pts]
            err = [[v - r[key]["ci"][0] for v, r in zip(y, pts)], [r[key]["ci"][1] - v for v, r in zip(y, pts)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colour,
                        label=f"from {init} (probes {pts[0]['init_probe_accuracy']:.2f})")
        ax.axhline(0.85 if key == "test" else 0.90, ls="--", color="k", lw=0.8, label="issue target")
        ax.set_title(title)
        ax.set_xlabel("ranked training prompts")
    axes[0].set_ylabel("pairwise accuracy (95% interval)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--inits", nargs="+", default=["base", "pretrain"], choices=["base", "pretrain"])
    ap.add_argument("--larger", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                    help="overrides of one more cell with a larger model (its own base and pre-training)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--report", action="store_true", help="only the table and figure from finished cells")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run_cells(args.run.resolve(), args.out.resolve(), args.fractions, args.inits, args.larger, args.seed,
                  args.preset, args.overrides)
    report(args.run.resolve(), args.out)
    print((args.out / "curve.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
