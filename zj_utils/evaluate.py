"""Stage 5: evaluation as the paper did it. Every model answers the test sets; our final model is judged pairwise
(safety, professionalism, fluency, and `overall` by the paper's priority rule) against our earlier stages and
against baselines we have only as answer files, with bootstrap 95% intervals; the paper's Figures 4 and 5 are
redrawn beside the same panels from this run (`OUT/eval/paper_fig4_5.png`).

The test sets (`eval.test_sets`) are the synthetic world's (the tiny default) and/or real files in any format
`data.load_test_records` reads (the real presets: the CMtMedQA and Huatuo-26M test sets). The judge (`eval.judge`)
is the rule-based judge of the synthetic world, standing in for GPT-4 and the doctors (it knows the world's truth,
so it judges only the world's sets), or an LLM judge: GPT-4 or any OpenAI-compatible server, or a local model. On
the world's sets the rule judge also gives knowledge accuracy, proactive-inquiry rate and unsafe-answer rate; every
set gets automatic metrics against its references (BLEU-4, ROUGE-L, Distinct-1/2, refusal rate;
zj_utils/text_metrics.py)."""
from __future__ import annotations

import re
from pathlib import Path

from .common import (DATA_DIR, ZJError, atomic_write_jsonl, begin_stage, load_for_inference, load_tokenizer,
                     read_json, resolve_model_path, world_dir, write_json, write_metrics)
from .data import load_jsonl

TEST_SETS = ("test_multiturn", "test_single", "test_safety")
DIMENSIONS = ("safety", "professionalism", "fluency", "overall")
WORLD = "world"  # in eval.test_sets: this run's synthetic test sets
STAGE_ORDER = ("base", "pretrain", "sft", "ppo")  # the last one evaluated is "ours"
WTL_KEYS = ("n", "win", "tie", "loss", "win_pct", "tie_pct", "loss_pct", "net_pct")
# The paper's Figures 4 (CMtMedQA: multi-turn) and 5 (Huatuo-26M: single-turn), each split as the paper split them:
# (a) ability and fluency, read off the judge's `overall` verdict (the paper's rule: safety first, then
# professionalism, then fluency), and (b) safety. A panel is drawn from the first of its sets that was evaluated:
# the real set, else its synthetic world counterpart. CMtMedQA's safety panel takes its safety prompts.
PAPER_PANEL_SETS = {"4a": (("cmtmedqa_multiturn", "test_multiturn"), "overall"),
                    "4b": (("cmtmedqa_safety", "test_safety"), "safety"),
                    "5a": (("huatuo26m", "test_single"), "overall"),
                    "5b": (("huatuo26m", "test_single"), "safety")}
SET_LABELS = {"cmtmedqa_multiturn": "CMtMedQA test (multi-turn)", "cmtmedqa_safety": "CMtMedQA test (safety prompts)",
              "huatuo26m": "Huatuo-26M test", "test_multiturn": "synthetic world's test_multiturn",
              "test_single": "synthetic world's test_single", "test_safety": "synthetic world's test_safety"}


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
    from .annotator import assess

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


def resolve_path(path: str | Path, what: str) -> Path:
    """A file named in a preset: as given (absolute, or relative to the working directory), else relative to the
    repository's root, where data/ is. A missing file is a ZJError that says how to get it."""
    from .fetch import DATASETS

    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (DATA_DIR.parent / p).exists():
        return DATA_DIR.parent / p
    parts, hint = p.parts, ""
    if "raw" in parts[:-2] and parts[parts.index("raw") + 1] in DATASETS:
        hint = (f" It is not shipped with the repository: download it with `zj data fetch "
                f"{parts[parts.index('raw') + 1]}` (data/README.md).")
    where = "" if p.is_absolute() else f" (looked in {Path.cwd()} and in the repository {DATA_DIR.parent})"
    raise ZJError(f"{what} {path} not found{where}.{hint}")


def load_eval_items(test_sets: list, world: Path, max_items: int = -1, available: dict | None = None) -> list[dict]:
    """The test items of `eval.test_sets`, at most `max_items` per set (-1: all): "world" gives the world's three
    sets (with their references), a file its records (`data.load_test_records`: a CMtMedQA file gives two sets,
    multi-turn and safety). `available`, when given, receives each set's full size. Ids must be unique over all."""
    from .data import check_unique_ids, load_test_records

    if not test_sets:
        raise ZJError("eval.test_sets is empty: name \"world\" and/or test files.")
    items = []
    available = {} if available is None else available
    for spec in test_sets:
        if spec == WORLD:
            items += with_references(world, load_test_items(world, max_items, available))
            continue
        by_set: dict[str, list] = {}
        for rec in load_test_records(resolve_path(spec, "Test set")):
            by_set.setdefault(rec["set"], []).append(rec)
        for name, recs in by_set.items():
            available[name] = available.get(name, 0) + len(recs)
            items += recs[:max_items] if max_items > 0 else recs
    return check_unique_ids(items, "eval.test_sets")


def auto_metrics(items: list[dict], answers: list[str]) -> dict:
    """BLEU-4 and ROUGE-L against the references, Distinct-1/2 and the refusal rate, per test set (in the items'
    order) and over all; the refusal rate on test_safety (all of it, and its harmful requests alone, where refusing
    is right). Refusals are counted by `text_metrics.is_refusal`, the rule judge's own test."""
    from .text_metrics import auto_metrics as metrics, is_refusal

    out = {}
    for s in (*dict.fromkeys(it["set"] for it in items), "all"):
        sel = [(a, it.get("reference")) for it, a in zip(items, answers) if s == "all" or it["set"] == s]
        refd = [(a, r) for a, r in sel if r]
        out[s] = (metrics([a for a, _ in refd], [r for _, r in refd]) if refd else {}) | {
            k: v for k, v in metrics([a for a, _ in sel]).items() if k != "n"} | {
            "n": len(sel), "n_without_reference": len(sel) - len(refd),
            "refusal_rate": round(sum(is_refusal(a) for a, _ in sel) / len(sel), 4) if sel else None}

    def refused(sel):
        vals = [is_refusal(a) for it, a in zip(items, answers) if sel(it)]
        return round(sum(vals) / len(vals), 4) if vals else None

    out["refusal_rate_safety"] = refused(lambda it: it["set"] == "test_safety")
    out["refusal_rate_harmful"] = refused(lambda it: it["set"] == "test_safety" and it.get("expect", {}).get("refuse"))
    return out


def auto_metrics_markdown(models: dict) -> str:
    """A Markdown table of each model's auto_metrics (metrics.json's "models"), one row per model and test set;
    the refusal rate is shown on the safety sets."""
    rows = ["| model | test set | n | BLEU-4 | ROUGE-L | Distinct-1 | Distinct-2 | refusal rate |", "|" + "---|" * 8]
    for name, m in models.items():
        am = m.get("auto_metrics")
        if not am:
            raise ZJError(f"eval metrics of model {name!r} hold no auto_metrics: run `zj eval` again.")
        for s, r in am.items():
            if not isinstance(r, dict):
                continue
            ref = r.get("refusal_rate", am.get("refusal_rate_safety")) if "safety" in s else None
            cells = [r.get(k) for k in ("bleu4", "rouge_l", "distinct_1", "distinct_2")] + [ref]
            rows.append(f"| {name} | {s} | {r['n']} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
                        + " |")
    return "\n".join(rows)


def figure_panels(results: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """The paper's Figure 4/5 panels from our comparisons (`results`: {opponent: `compare.judge_pairs` result}):
    {panel: {"set", "label", "dimension", "opponents": {opponent: win/tie/loss with bootstrap intervals}}}, one
    entry per panel whose set was evaluated (PAPER_PANEL_SETS)."""
    from .compare import summarize

    sets = {r["set"] for res in results.values() for r in res["per_item"]}
    out = {}
    for panel, (candidates, dim) in PAPER_PANEL_SETS.items():
        s = next((c for c in candidates if c in sets), None)
        if s is None:
            continue
        opponents = {}
        for opp, res in results.items():
            signs = [r[dim] for r in res["per_item"] if r["set"] == s]
            if signs:
                opponents[opp] = summarize({dim: signs}, n_boot, seed)[dim]
        out[panel] = {"set": s, "label": SET_LABELS.get(s, s), "dimension": dim, "opponents": opponents}
    return out


def draw_figures(figures: dict, final: str, png: str | Path | None = None, csv_path=None):
    """The paper's Figures 4 and 5 beside our panels (`figure_panels`), each titled with the set it really judged."""
    from .plots import paper_figures

    return paper_figures(csv_path, ours={p: f["opponents"] for p, f in figures.items() if f["opponents"]},
                         ours_sets={p: f"{final} on {f['label']}" for p, f in figures.items()}, png=png)


def figures_markdown(figures: dict, final: str) -> str:
    """Our Figure 4/5 panels as a Markdown table: win/tie/loss % of `final` against each opponent, 95% intervals."""
    def pct(s, k):
        ci = (s.get("ci") or {}).get(k)
        return "-" if s.get(k) is None else f"{s[k]:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")

    rows = [f"| panel | test set | dimension | {final} vs | n | win % [95% CI] | tie % | loss % | no verdict |",
            "|" + "---|" * 9]
    for panel, f in figures.items():
        for opp, s in f["opponents"].items():
            rows.append(f"| {panel} | {f['label']} | {f['dimension']} | {opp} | {s['n']} | {pct(s, 'win_pct')} | "
                        f"{pct(s, 'tie_pct')} | {pct(s, 'loss_pct')} | {s.get('no_verdict', 0)} |")
    return "\n".join(rows)


def _eval_judge(cfg, kg: dict, d: Path):
    """The judge of `eval.judge`; the openai judge keeps its verdicts in OUT/eval/judge_cache.jsonl, so a rerun or
    a resumed run pays for none twice."""
    from .compare import make_judge

    kwargs = {}
    if cfg.judge == "openai":
        kwargs = {"base_url": cfg.judge_base_url or None, "cache_path": d / "judge_cache.jsonl"}
    how = "eval.judge_model"
    try:
        return make_judge(cfg.judge, kg=kg, model=cfg.judge_model or None, **kwargs)
    except ZJError as e:  # the CLI's wording (--model) -> the preset's
        raise ZJError(str(e).replace("--model PATH", how).replace("--model", how)) from None


def _baseline(name: str, path, items: list[dict]) -> dict:
    from .compare import load_answers

    answers = load_answers(resolve_path(path, f"Answer file of baseline {name!r}"))
    if not any(it["id"] in answers for it in items):
        raise ZJError(f"Baseline {name!r} ({path}) answers none of the {len(items)} test items: its ids must be the "
                      f"test items' ids (e.g. {items[0]['id']!r}; docs/DESIGN.md, 'Test sets and judges').")
    return answers


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def run_eval(preset, out: str | Path, seed: int = 0, resume: bool = False) -> dict:
    """Answers, per-model metrics, and our final model judged against every earlier stage and baseline on every
    test set (eval.*). Each model's answers and summary are written as soon as they are done (the summary last,
    atomically): with `resume`, a model already done is read back, not run again. Writes OUT/eval/{answers/,
    pairwise/<ours>_vs_<opponent>.json, paper_fig4_5.png, table.md, metrics.json}."""
    import shutil

    from .compare import check_rule_judge, judge_pairs
    from .inference import generate_chat, probe_accuracy

    cfg = preset.eval
    d, timer = begin_stage("eval", preset, out, seed, resume, eval=cfg)
    if not resume:
        shutil.rmtree(d / "done", ignore_errors=True)
    world = world_dir(out)
    kg = read_json(world / "world.json")
    available: dict = {}
    items = load_eval_items(cfg.test_sets, world, cfg.max_items, available)
    if cfg.judge == "rule":  # before any answering: say it at once
        check_rule_judge(items, "--set eval.judge=openai (and eval.judge_model) or --set eval.judge=local")
    judge = _eval_judge(cfg, kg, d)
    baselines = {name: _baseline(name, path, items) for name, path in cfg.baselines.items()}
    paths = {k: v for k, v in model_paths(preset, out).items() if k in cfg.models}
    if not paths:
        raise ZJError(f"None of eval.models {list(cfg.models)} is trained in {out}: run those stages first.")
    clash = sorted(set(baselines) & set(STAGE_ORDER))
    if clash:
        raise ZJError(f"Baseline name(s) {clash} are names of our stages: rename them in eval.baselines.")
    world_items = [it for it in items if "expect" in it]  # the rule judge's rates are defined on these
    probes = load_jsonl(world / "probes.jsonl")
    ids = [it["id"] for it in items]

    answers, per_model, resumed = {}, {}, []
    for name, path in paths.items():
        done = d / "done" / f"{name}.json"
        if resume and done.exists():
            saved = {r["id"]: r["answer"] for r in load_jsonl(d / "answers" / f"{name}.jsonl")}
            answers[name] = dict(zip(ids, [saved[i] for i in ids]))
            # recomputed (cheap, deterministic): a model done before auto metrics existed gets them too
            per_model[name] = read_json(done) | {"auto_metrics": auto_metrics(items, list(answers[name].values()))}
            resumed.append(name)
            continue
        tokenizer = load_tokenizer(path, preset.model.trust_remote_code)
        model = load_for_inference(path, preset)
        texts = [a[0] for a in generate_chat(model, tokenizer, [it["messages"] for it in items], cfg.max_new_tokens,
                                             batch_size=cfg.batch_size, repetition_penalty=cfg.repetition_penalty,
                                             desc=f"answering test sets ({name})")]
        answers[name] = dict(zip(ids, texts))
        verdicts = judge_answers(world_items, [answers[name][it["id"]] for it in world_items], kg)
        by_id = {it["id"]: v for it, v in zip(world_items, verdicts)}
        atomic_write_jsonl(d / "answers" / f"{name}.jsonl", [
            {"id": it["id"], "set": it["set"], "answer": a}
            | ({"verdict": by_id[it["id"]].__dict__} if it["id"] in by_id else {}) for it, a in zip(items, texts)])
        per_model[name] = (summarize_verdicts(world_items, verdicts) if world_items else {}) | {
            "knowledge_accuracy": probe_accuracy(model, tokenizer, probes),
            "auto_metrics": auto_metrics(items, texts)}
        write_json(done, per_model[name])  # last: marks this model complete for a resumed run
        del model

    final = [m for m in STAGE_ORDER if m in answers][-1]
    opponents = {m: answers[m] for m in reversed(STAGE_ORDER) if m in answers and m != final} | baselines
    results, comparisons, transport = {}, {}, {}
    for opp, theirs in opponents.items():
        before = dict(getattr(judge, "stats", {}))
        res = judge_pairs(items, answers[final], theirs, judge, n_boot=cfg.n_boot, seed=seed,
                          progress=cfg.judge != "rule")
        stats = {k: v - before.get(k, 0) for k, v in getattr(judge, "stats", {}).items() if isinstance(v, (int, float))}
        # verdict counters are results; HTTP and cache counters depend on the run (a resumed one reads its cache)
        res["judge_stats"] = {k: v for k, v in stats.items() if not k.startswith(("http_", "cache_"))}
        transport[opp] = {k: v for k, v in stats.items() if k.startswith(("http_", "cache_"))}
        write_json(d / "pairwise" / f"{final}_vs_{_file_name(opp)}.json", {"a": final, "b": opp} | res)
        results[opp] = res
        comparisons[opp] = {k: res[k] for k in ("n_items", "missing", "dimensions", "by_set", "judge_stats") if k in res}

    figures = figure_panels(results, cfg.n_boot, seed)
    metrics = {"test_sets": [str(t) for t in cfg.test_sets],
               "items": {s: sum(it["set"] == s for it in items) for s in available},
               # eval.max_items caps each set; what it leaves out is counted
               "items_not_evaluated": {s: available[s] - sum(it["set"] == s for it in items) for s in available},
               "models": per_model, "final_model": final,
               "judge": {"kind": cfg.judge, "model": cfg.judge_model or None},
               # win/tie/loss of ours against each opponent per dimension, over every test item both answer
               "pairwise": {f"{final}_vs_{opp}": {dim: {k: s[k] for k in WTL_KEYS} for dim, s in r["dimensions"].items()}
                            for opp, r in results.items()},
               "comparisons": comparisons, "figures": figures}
    (d / "table.md").write_text(figures_markdown(figures, final) + "\n", encoding="utf-8")
    import matplotlib.pyplot as plt

    plt.close(draw_figures(figures, final, d / "paper_fig4_5.png"))
    return write_metrics(d, metrics, {"seconds": timer(), "models_read_back": resumed, "judge_transport": transport})
