"""benchmarks/rm_learning_curve.py's report on hand-made cells: each row carries its cell's numbers and the
knowledge (probe accuracy) of the model it started from, the base before pre-training and the pre-trained model
after it."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("rm_learning_curve", ROOT / "benchmarks" / "rm_learning_curve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def test_report_rows_table_and_figure(tmp_path):
    run, out = tmp_path / "run", tmp_path / "curve"
    _write(run / "pretrain" / "metrics.json", {"before": {"probes": {"all": 0.29}}, "after": {"probes": {"all": 0.65}}})
    for init, frac, acc in (("pretrain", 1.0, 0.73), ("base", 0.5, 0.61), ("pretrain", 0.5, 0.70)):
        cell = out / f"{init}-f{frac:g}"
        _write(cell / "cell.json", {"init": init, "train_fraction": frac, "overrides": []})
        _write(cell / "rm" / "metrics.json", {
            "train_prompts": int(700 * frac), "train_pairs": int(3000 * frac), "train_accuracy": 0.9,
            "dev_accuracy": acc + 0.01, "trainable_params": 1000,
            "test_report": {"overall": {"n": 600, "accuracy": acc, "ci": [acc - 0.04, acc + 0.04]},
                            "by_dimension": {"safety": {"n": 400, "accuracy": acc + 0.02, "ci": [acc - 0.03, acc + 0.07]}}}})
    rows = _load().report(run, out)
    assert [(r["init"], r["train_fraction"]) for r in rows] == [("base", 0.5), ("pretrain", 0.5), ("pretrain", 1.0)]
    assert [r["init_probe_accuracy"] for r in rows] == [0.29, 0.65, 0.65]
    assert [r["test"]["accuracy"] for r in rows] == [0.61, 0.70, 0.73] and rows[2]["train_prompts"] == 700
    table = (out / "curve.md").read_text(encoding="utf-8")
    assert "| pretrain | 0.650 | 700 | 3000 | 0.900 | 0.740 | 0.730 [0.690, 0.770] | 0.750 [0.700, 0.800] |" in table
    assert (out / "rm_learning_curve.png").stat().st_size > 1000
    assert json.loads((out / "curve.json").read_text())["rows"] == rows
