"""Stage 5: evaluation as the paper did it, with the rule-based judge of the synthetic world standing in for
GPT-4 and the doctors: pairwise win/tie/loss per dimension (safety, professionalism, fluency) of the final
model against the SFT-only model and the base, plus knowledge accuracy, proactive-inquiry rate and
unsafe-answer rate, and automatic metrics against the world's reference answers (BLEU-4, ROUGE-L, Distinct-1/2,
refusal rate; zj_utils/text_metrics.py)."""
from __future__ import annotations

from pathlib import Path

from .common import (ZJError, atomic_write_jsonl, begin_stage, load_for_inference, load_tokenizer, read_json,
                     resolve_model_path, world_dir, write_json, write_metrics)
from .data import load_jsonl

TEST_SETS = ("test_multiturn", "test_single", "test_safety")
DIMENSIONS = ("safety", "professionalism", "fluency", "overall")


def model_paths(preset, out: str | Path) -> dict[str, str]:
    """The models an evaluation can compare; those not trained yet in this run are left out."""
    out = Path(out)
    candidates = {"pretrain": out / "pretrain" / "merged", "sft": out / "sft" / "merged", "ppo": out / "ppo" / "merged"}
    paths = {}
    try:
        paths["base"] = resolve_model_path(preset.model.name_or_path, out)
    except ZJError:  # the base is optional for an evaluation of trained stages
        pass
    paths.update({k: str(v) for k, v in candidates.items() if v.exists()})
    return paths


def load_test_items(world: Path, max_items: int = -1, available: dict | None = None) -> list[dict]:
    """The test items, at most `max_items` per set; `available`, when given, receives each set's full size."""
    items = []
    for name in TEST_SETS:
        recs = load_jsonl(world / f"{name}.jsonl")
        if available is not None:
            available[name] = len(recs)
        items += [r | {"set": name} for r in (recs[:max_items] if max_items > 0 else recs)]
    return items


def judge_answers(items: list[dict], answers: list[str], kg: dict) -> list:
    from .judge import assess

    return [assess(a, it.get("expect", {}), kg) for it, a in zip(items, answers)]


def summarize_verdicts(items: list[dict], verdicts: list) -> dict:
    """Rates the paper's claims are about, each over the items where it is defined."""
    def rate(sel, attr):
        vals = [getattr(v, attr) for it, v in zip(items, verdicts) if sel(it)]
        return (round(sum(vals) / len(vals), 4) if vals else None), len(vals)

    proactive, n_pro = rate(lambda it: "should_ask" in it.get("expect", {}), "proactive")
    unsafe, n_safe = rate(lambda it: it["set"] == "test_safety", "unsafe")
    means = {dim: round(sum(getattr(v, dim) for v in verdicts) / len(verdicts), 4) for dim in DIMENSIONS[:3]}
    return {"proactive_inquiry_rate": proactive, "n_proactive_items": n_pro,
            "unsafe_rate": unsafe, "n_safety_items": n_safe, "mean_scores": means}


def with_references(world: Path, items: list[dict]) -> list[dict]:
    """Items with their `reference`; a world written before test items carried one falls back on gold.jsonl,
    which holds the same text (the world's ideal answer)."""
    if all(it.get("reference") for it in items) or not (world / "gold.jsonl").exists():
        return items
    gold = {(g["file"], g["id"]): g["gold"] for g in load_jsonl(world / "gold.jsonl")}
    return [it if it.get("reference") else it | {"reference": gold.get((f"{it['set']}.jsonl", it["id"]))}
            for it in items]


def auto_metrics(items: list[dict], answers: list[str], verdicts: list) -> dict:
    """BLEU-4 and ROUGE-L against the references and Distinct-1/2, per test set and over all; the refusal rate
    on test_safety (all of it, and its harmful requests alone, where refusing is right)."""
    from .text_metrics import auto_metrics as metrics

    out = {}
    for s in (*TEST_SETS, "all"):
        sel = [(a, it.get("reference")) for it, a in zip(items, answers) if s == "all" or it["set"] == s]
        refd = [(a, r) for a, r in sel if r]
        out[s] = (metrics([a for a, _ in refd], [r for _, r in refd]) if refd else {}) | {
            k: v for k, v in metrics([a for a, _ in sel]).items() if k != "n"} | {
            "n": len(sel), "n_without_reference": len(sel) - len(refd)}

    def refused(sel):
        vals = [v.refused for it, v in zip(items, verdicts) if sel(it)]
        return round(sum(vals) / len(vals), 4) if vals else None

    out["refusal_rate_safety"] = refused(lambda it: it["set"] == "test_safety")
    out["refusal_rate_harmful"] = refused(lambda it: it["set"] == "test_safety" and it.get("expect", {}).get("refuse"))
    return out


def auto_metrics_markdown(models: dict) -> str:
    """A Markdown table of each model's auto_metrics (metrics.json's "models"), one row per model and test set."""
    rows = ["| model | test set | n | BLEU-4 | ROUGE-L | Distinct-1 | Distinct-2 | refusal rate |", "|" + "---|" * 8]
    for name, m in models.items():
        am = m.get("auto_metrics")
        if not am:
            raise ZJError(f"eval metrics of model {name!r} hold no auto_metrics: run `zj eval` again.")
        for s in (*TEST_SETS, "all"):
            r, ref = am[s], am["refusal_rate_safety"] if s == "test_safety" else None
            cells = [r.get(k) for k in ("bleu4", "rouge_l", "distinct_1", "distinct_2")] + [ref]
            rows.append(f"| {name} | {s} | {r['n']} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
                        + " |")
    return "\n".join(rows)


def pairwise(verdicts_a: list, verdicts_b: list) -> dict:
    """Win/tie/loss of A against B per dimension, from A's side, as counts and percentages."""
    from .judge import compare
    from .stats import win_tie_loss

    signs = [compare(a, b) for a, b in zip(verdicts_a, verdicts_b)]
    return {dim: win_tie_loss([s[dim] for s in signs]) for dim in DIMENSIONS}


def run_eval(preset, out: str | Path, seed: int = 0, resume: bool = False) -> dict:
    """Answers, verdicts and rates per model. Each model's answers and summary are written as soon as they are
    done (the summary last, atomically): with `resume`, a model already done is read back, not run again."""
    import shutil

    from .inference import generate_chat, probe_accuracy

    cfg = preset.eval
    d, timer = begin_stage("eval", preset, out, seed, resume, eval=cfg)
    if not resume:
        shutil.rmtree(d / "done", ignore_errors=True)
    world = world_dir(out)
    kg = read_json(world / "world.json")
    available: dict = {}
    items = with_references(world, load_test_items(world, cfg.max_items, available))
    probes = load_jsonl(world / "probes.jsonl")
    paths = {k: v for k, v in model_paths(preset, out).items() if k in cfg.models}

    per_model, verdicts, resumed = {}, {}, []
    for name, path in paths.items():
        done = d / "done" / f"{name}.json"
        if resume and done.exists():
            answers = [r["answer"] for r in load_jsonl(d / "answers" / f"{name}.jsonl")]
            verdicts[name] = judge_answers(items, answers, kg)
            # recomputed (cheap, deterministic): a model done before auto metrics existed gets them too
            per_model[name] = read_json(done) | {"auto_metrics": auto_metrics(items, answers, verdicts[name])}
            resumed.append(name)
            continue
        tokenizer = load_tokenizer(path, preset.model.trust_remote_code)
        model = load_for_inference(path, preset)
        answers = [a[0] for a in generate_chat(model, tokenizer, [it["messages"] for it in items], cfg.max_new_tokens,
                                               batch_size=cfg.batch_size, repetition_penalty=cfg.repetition_penalty,
                                               desc=f"answering test sets ({name})")]
        verdicts[name] = judge_answers(items, answers, kg)
        atomic_write_jsonl(d / "answers" / f"{name}.jsonl", [
            {"id": it["id"], "set": it["set"], "answer": a, "verdict": v.__dict__ if hasattr(v, "__dict__") else v}
            for it, a, v in zip(items, answers, verdicts[name])])
        per_model[name] = summarize_verdicts(items, verdicts[name]) | {
            "knowledge_accuracy": probe_accuracy(model, tokenizer, probes),
            "auto_metrics": auto_metrics(items, answers, verdicts[name])}
        write_json(done, per_model[name])  # last: marks this model complete for a resumed run
        del model

    final = "ppo" if "ppo" in verdicts else "sft"
    comparisons = {f"{final}_vs_{other}": pairwise(verdicts[final], verdicts[other])
                   for other in ("sft", "base") if other in verdicts and other != final}
    metrics = {"items": {s: sum(it["set"] == s for it in items) for s in TEST_SETS},
               # eval.max_items caps each set; what it leaves out is counted
               "items_not_evaluated": {s: available[s] - sum(it["set"] == s for it in items) for s in TEST_SETS},
               "models": per_model, "final_model": final, "pairwise": comparisons}
    return write_metrics(d, metrics, {"seconds": timer(), "models_read_back": resumed})
