"""The back end of `zj judge` and `zj generate`: pairwise comparison of two answer files on a test set, with any
judge of zj_utils/judges.py (`make_judge` makes one by its name: rule, openai, local), and answer generation with a
local model.

Answer files are JSONL, one `{"id", "answer"}` per test item, so answers from systems we cannot run here can be
dropped in. Test files are any format `data.load_test_records` reads: the real CMtMedQA and Huatuo-26M test sets,
chat JSONL, the world's `test_*.jsonl` (`{"id", "messages", "expect", "reference"}`); items that carry a reference
answer also get BLEU-4, ROUGE-L and Distinct-1/2 for both files. The rule judge judges only the world's items (it
needs their `expect`); the real sets take an LLM judge.
"""
from __future__ import annotations

import json
from pathlib import Path

from .api_judge import OpenAIChatJudge
from .common import ZJError, read_json, write_json
from .judges import DIMS, Judge, LocalModelJudge, RuleJudge
from .stats import bootstrap_ci, win_tie_loss


def make_judge(kind: str, kg: dict | None = None, model: str | None = None, **kwargs) -> Judge:
    """`rule` (needs the world's kg), `openai` (needs a model name) or `local` (needs a model path)."""
    if kind == "rule":
        if kg is None:
            raise ZJError("The rule judge needs the synthetic world: pass --world OUT/world.")
        return RuleJudge(kg)
    if kind == "openai":
        if not model:
            raise ZJError("The openai judge needs --model (e.g. gpt-4o).")
        return OpenAIChatJudge(model, **kwargs)
    if kind == "local":
        if not model:
            raise ZJError("The local judge needs --model PATH (a causal LM folder).")
        return LocalModelJudge(model)
    raise ZJError(f"Unknown judge '{kind}'. Known: rule, openai, local.")


def _read_jsonl(path: str | Path, what: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise ZJError(f"{what} not found at {p}.")
    recs = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZJError(f"{p}:{i}: not valid JSON ({e.msg}).") from None
        if not isinstance(rec, dict):
            raise ZJError(f"{p}:{i}: expected a JSON object per line.")
        recs.append(rec)
    return recs


def load_tests(paths) -> list[dict]:
    """Test items from one or more test files in any format `data.load_test_records` reads (CMtMedQA, Huatuo-26M,
    chat JSONL, the world's test_*.jsonl): `{id, set, messages, reference, ...}`; ids must be unique over all."""
    from .data import check_unique_ids, load_test_records

    items = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        items += load_test_records(path)
    return check_unique_ids(items, "the test files")


def without_gold(items: list[dict]) -> dict[str, int]:
    """{set: items} of the test items without the world's gold knowledge (`expect`): the rule judge cannot judge
    them, it knows only the synthetic world."""
    out: dict[str, int] = {}
    for it in items:
        if "expect" not in it:
            out[it.get("set")] = out.get(it.get("set"), 0) + 1
    return out


def check_rule_judge(items: list[dict], how: str = "--judge openai or --judge local") -> None:
    """ZJError when the rule judge is asked to judge test items it has no gold knowledge for."""
    real = without_gold(items)
    if real:
        sets = ", ".join(f"{s} ({n})" for s, n in real.items())
        raise ZJError(f"The rule judge knows only the synthetic world: it judges against the world's gold knowledge "
                      f"('expect'), which these test items do not have: {sets}. Judge them with {how} "
                      f"(docs/DESIGN.md, 'Test sets and judges').")


def load_answers(path: str | Path) -> dict[str, str]:
    out = {}
    for i, rec in enumerate(_read_jsonl(path, "Answer file")):
        if "id" not in rec or not isinstance(rec.get("answer"), str):
            raise ZJError(f"{path}: line {i + 1} needs 'id' and a string 'answer'.")
        if rec["id"] in out:
            raise ZJError(f"{path}: duplicate id {rec['id']!r}.")
        out[rec["id"]] = rec["answer"]
    return out


def summarize(signs_by_dim: dict[str, list], n_boot: int = 1000, seed: int = 0) -> dict:
    """win/tie/loss (counts, %) and bootstrap 95% intervals per dimension; None signs are left out."""
    out = {}
    for d, signs in signs_by_dim.items():
        out[d] = win_tie_loss(signs) | {"ci": bootstrap_ci(signs, n_boot=n_boot, seed=seed),
                                        "no_verdict": sum(s is None for s in signs)}
    return out


def answered_in_both(items: list[dict], answers_a: dict, answers_b: dict, max_items: int | None = None) -> list:
    """(item, answer A, answer B) for the test items both files answer, in test-file order; the first `max_items`
    of them when given (a pilot)."""
    both = [(it, answers_a[it["id"]], answers_b[it["id"]]) for it in items
            if it["id"] in answers_a and it["id"] in answers_b]
    if not both:
        raise ZJError("No test item is answered in both answer files (ids must match the test file's).")
    if max_items is not None:
        if max_items < 1:
            raise ZJError(f"--max-items must be at least 1, got {max_items}.")
        both = both[:max_items]
    return both


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def judge_bias(triples: list, per_item: list[dict], stats: dict) -> dict:
    """How the judge leans, with counts. `longer_answer_wins`: among items with a decided overall verdict (not a
    tie, not missing) whose two answers differ in length (characters), how often the longer one won.
    `order_flips` (LLM judges, which see each pair in both orders): among pairs with a parseable verdict in both
    orders, how many changed with the order on some dimension (counted as ties there), and how many changed their
    overall verdict."""
    decided = [(len(a), len(b), r["overall"]) for (_, a, b), r in zip(triples, per_item) if r["overall"] in (1, -1)]
    differ = [(la, lb, v) for la, lb, v in decided if la != lb]
    longer = sum((v == 1) == (la > lb) for la, lb, v in differ)
    out = {"longer_answer_wins": {"decided": len(decided), "equal_length": len(decided) - len(differ),
                                  "n": len(differ), "longer_wins": longer, "rate": _rate(longer, len(differ))}}
    if "order_dependent_pairs" in stats:
        n = stats["pairs"] - stats["unparsed_pairs"] - stats["single_order_pairs"]
        out["order_flips"] = {"n": n, "pairs": stats["order_dependent_pairs"],
                              "rate": _rate(stats["order_dependent_pairs"], n),
                              "dims": stats["order_dependent_dims"],
                              "overall": stats.get("order_dependent_overall", 0),
                              "overall_rate": _rate(stats.get("order_dependent_overall", 0), n)}
    return out


def judge_pairs(items: list[dict], answers_a: dict, answers_b: dict, judge: Judge, n_boot: int = 1000,
                seed: int = 0, progress: bool = False, concurrency: int = 1, max_items: int | None = None) -> dict:
    """Judge every test item both files answer (the first `max_items` of them when given); returns per-dimension
    summaries, per-set ones (when there is more than one set), per-item signs, the judge's bias figures and its
    counters. `concurrency` > 1 keeps that many judge calls in flight (judges with `concurrent`, the openai one);
    the result is the same as one at a time."""
    if concurrency < 1:
        raise ZJError(f"--concurrency must be at least 1, got {concurrency}.")
    if concurrency > 1 and not getattr(judge, "concurrent", False):
        raise ZJError(f"--concurrency is for the openai judge; the {getattr(judge, 'name', 'given')} judge makes "
                      f"one call at a time.")
    triples = answered_in_both(items, answers_a, answers_b, max_items)
    if hasattr(judge, "judge_many"):
        verdicts = judge.judge_many(triples, concurrency=concurrency, progress=progress)
    else:
        it_ = triples
        if progress:
            from tqdm.auto import tqdm
            it_ = tqdm(triples, desc=f"judging ({getattr(judge, 'name', 'judge')})")
        verdicts = [judge.judge(it, a, b) for it, a, b in it_]
    per_item = [{"id": it["id"], "set": it.get("set")} | {d: v.get(d) for d in DIMS}
                for (it, _, _), v in zip(triples, verdicts)]
    result = {
        "judge": repr(judge), "n_items": len(triples),
        "missing": {"a": sum(it["id"] not in answers_a for it in items),
                    "b": sum(it["id"] not in answers_b for it in items)},
        "dimensions": summarize({d: [r[d] for r in per_item] for d in DIMS}, n_boot, seed),
    }
    if max_items is not None:
        result["max_items"] = max_items
    sets = sorted({r["set"] for r in per_item if r["set"]})
    if len(sets) > 1:
        result["by_set"] = {s: summarize({d: [r[d] for r in per_item if r["set"] == s] for d in DIMS}, n_boot, seed)
                            for s in sets}
    result["judge_stats"] = dict(getattr(judge, "stats", {}))
    result["bias"] = judge_bias(triples, per_item, result["judge_stats"])
    result["per_item"] = per_item
    return result


def item_reference(item: dict) -> str | None:
    """The reference answer of a test item (`reference`, or CMtMedQA's doctor answer `output`); None when it has
    none."""
    for key in ("reference", "output"):
        if item.get(key) is not None:
            ref = item[key]
            if not isinstance(ref, str) or not ref.strip():
                raise ZJError(f"Test item {item.get('id')!r} ({item.get('set')}): field {key!r} must be a non-empty "
                              f"string, got {ref!r}.")
            return ref
    return None


def reference_metrics(items: list[dict], answers_a: dict, answers_b: dict) -> dict | None:
    """BLEU-4, ROUGE-L and Distinct-1/2 of both answer files on the items both answer and that carry a
    reference (None when none does); Distinct is over those same answers, so the two sides are comparable."""
    from .text_metrics import auto_metrics

    refd = [(it, r) for it in items if it["id"] in answers_a and it["id"] in answers_b
            for r in [item_reference(it)] if r is not None]
    if not refd:
        return None
    refs = [r for _, r in refd]
    return {"n_items": len(refd), "a": auto_metrics([answers_a[it["id"]] for it, _ in refd], refs),
            "b": auto_metrics([answers_b[it["id"]] for it, _ in refd], refs)}


def _fmt(x, ci) -> str:
    if x is None:
        return f"{'-':>20s}"
    return f"{x:5.1f} [{ci[0]:5.1f},{ci[1]:6.1f}]"


def _pct(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def format_plan(plan: dict) -> str:
    """The dry run's report: what judging would send, before anything is spent."""
    lines = [f"dry run: nothing sent. {plan['items']} items x 2 orders = {plan['calls']} judge calls: "
             f"{plan['cached']} answered by the cache, {plan['repeated']} repeat a prompt already counted, "
             f"{plan['to_send']} to send",
             f"prompt tokens to send: ~{plan['prompt_tokens_estimate']:,} ({plan['prompt_chars']:,} characters; "
             f"{plan['token_heuristic']})"]
    if plan.get("max_completion_tokens") is not None:
        lines.append(f"completion tokens: at most {plan['max_completion_tokens']:,} (max_tokens per call)")
    return "\n".join(lines)


def format_table(result: dict, a_name: str = "A", b_name: str = "B") -> str:
    lines = [f"{a_name} vs {b_name}: {result['n_items']} items, judge {result['judge']}",
             f"{'dimension':16s} {'n':>4s}  {'win% [95% CI]':>20s}  {'tie% [95% CI]':>20s}  {'loss% [95% CI]':>20s}"
             f"  {'win-loss [95% CI]':>20s}"]
    for d, s in result["dimensions"].items():
        ci = s["ci"]
        lines.append(f"{d:16s} {s['n']:4d}  {_fmt(s['win_pct'], ci['win_pct'])}  {_fmt(s['tie_pct'], ci['tie_pct'])}  "
                     f"{_fmt(s['loss_pct'], ci['loss_pct'])}  {_fmt(s['net_pct'], ci['net_pct'])}")
    st = result.get("judge_stats", {})
    if "unparsed_verdicts" in st:
        lines.append(f"verdicts {st['verdicts']} (unparseable {st['unparsed_verdicts']}), pairs with no verdict "
                     f"{st['unparsed_pairs']}, one order only {st['single_order_pairs']}, order-dependent pairs "
                     f"{st['order_dependent_pairs']} (counted as ties)")
    bias = result.get("bias")
    if bias:
        parts = []
        fl = bias.get("order_flips")
        if fl:
            parts.append(f"the verdict changes with the order in {fl['pairs']} of {fl['n']} pairs judged in both "
                         f"orders ({_pct(fl['rate'])}; the overall verdict in {fl['overall']}, "
                         f"{_pct(fl['overall_rate'])})")
        lw = bias["longer_answer_wins"]
        parts.append(f"the longer answer wins {lw['longer_wins']} of {lw['n']} decided items with answers of "
                     f"different length ({_pct(lw['rate'])})")
        lines.append("judge bias: " + "; ".join(parts))
    am = result.get("auto_metrics")
    if am:
        lines.append(f"automatic metrics on {am['n_items']} items with a reference (A / B):  " + "  ".join(
            f"{k} {am['a'][k]:.4f} / {am['b'][k]:.4f}" for k in ("bleu4", "rouge_l", "distinct_1", "distinct_2")))
    if result["missing"]["a"] or result["missing"]["b"]:
        lines.append(f"not judged: {result['missing']['a']} items without an answer in A, "
                     f"{result['missing']['b']} in B")
    return "\n".join(lines)


def _kg(world: str | Path | None) -> dict | None:
    if world is None:
        return None
    p = Path(world)
    p = p / "world.json" if p.is_dir() else p
    if not p.exists():
        raise ZJError(f"The synthetic world not found at {p}. Pass --world OUT/world (run `zj world` first).")
    return read_json(p)


def judge_files(a_path, b_path, tests, judge: str = "rule", world=None, model: str | None = None,
                out: str | Path | None = None, n_boot: int = 1000, seed: int = 0, judge_kwargs: dict | None = None,
                progress: bool = False, concurrency: int = 1, max_items: int | None = None,
                dry_run: bool = False) -> dict:
    """`zj judge`: load the files, build the judge, judge, write the JSON (when `out`), return the result. With
    `dry_run`, return {"dry_run": the judge's plan} (calls, cached, prompt-token estimate) and send nothing."""
    if dry_run and judge == "rule":
        raise ZJError("--dry-run is for the LLM judges (openai, local); the rule judge calls no model.")
    items = load_tests(tests)
    if judge == "rule":
        check_rule_judge(items)
    answers_a, answers_b = load_answers(a_path), load_answers(b_path)
    j = make_judge(judge, kg=_kg(world), model=model, **(judge_kwargs or {}))
    if dry_run:
        return {"dry_run": j.plan(answered_in_both(items, answers_a, answers_b, max_items))}
    result = {"a": str(a_path), "b": str(b_path), "tests": [str(t) for t in ([tests] if isinstance(
        tests, (str, Path)) else tests)]} | judge_pairs(items, answers_a, answers_b, j, n_boot, seed, progress,
                                                        concurrency, max_items)
    if max_items is not None:  # the automatic metrics on the same items as the verdicts
        judged = {r["id"] for r in result["per_item"]}
        items = [it for it in items if it["id"] in judged]
    am = reference_metrics(items, answers_a, answers_b)
    if am:
        result["auto_metrics"] = am
    if out:
        write_json(out, result)
    return result


def generate_answers(model_path: str, tests, out: str | Path, max_new_tokens: int = 256, batch_size: int = 8,
                     repetition_penalty: float = 1.0, dtype: str | None = None) -> int:
    """`zj generate`: greedy answers of a local model to every test item, written as {"id", "answer"} JSONL."""
    from .data import write_jsonl
    from .inference import generate_chat, load_causal_lm

    items = load_tests(tests)
    model, tok = load_causal_lm(model_path, dtype)
    answers = generate_chat(model, tok, [it["messages"] for it in items], max_new_tokens, batch_size=batch_size,
                            repetition_penalty=repetition_penalty, desc="answering")
    write_jsonl(out, [{"id": it["id"], "answer": a[0]} for it, a in zip(items, answers)])
    return len(items)
