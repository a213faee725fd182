"""Mutation testing of the core functions, as a benchmark. NOT part of CI (`make test` never runs it).

What it does: for each module below it parses the named functions with `ast`, makes one small change at a time
(a "mutant"), writes the changed file into a shadow copy of the checkout, and runs that module's fast tests on it.
A mutant some test fails on is "killed"; one every test passes is a "survivor" (a change the tests cannot see:
either an equivalent mutant or a gap in the tests); one that runs past the time limit is a "timeout" (counted as
killed in the kill rate, as mutmut and cosmic-ray do: the tests noticed).

The mutations (a small, hand-written AST mutator; mutmut 3 and cosmic-ray mutate whole files and want to run or
map the whole test suite, which this project's shared machines must not do):
  * binary operators  + <-> -, * <-> /, // -> /, ** -> *, % -> //   (also in augmented assignments, x += ...)
  * comparisons       < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in
  * boolean operators and <-> or;  `not x` -> `x`;  `-x` -> `x`
  * constants         True <-> False; an int or float n -> n + 1 (so 0 -> 1, 1 -> 2, 1e-8 -> 1.00000001)
  * returns           `return x` -> `return None`
  * calls             argmax <-> argmin, max <-> min (builtins, methods and torch./np. functions alike)
Not mutated: docstrings, strings and f-strings, decorators, and the arguments of `raise`, warnings.warn(...),
print(...) and _log(...) (messages only).

Which code and which tests: MODULES below (function names; tests and a pytest -k filter per module). Each mutant
runs `pytest -x -q -p no:cacheprovider` on those tests only, in a shadow copy of the checkout (tests/conftest.py
checks that zj_utils is imported from the checkout it runs in), with PYTHONDONTWRITEBYTECODE=1 and
ZJ_THREADS=1, under a per-mutant timeout of max(--min-timeout, --timeout-factor x the unmutated run's time).

How to run (on a shared machine, keep it polite):
    PYTHONPATH=. nice -n 19 python benchmarks/mutation.py --module stats                  # one module
    PYTHONPATH=. nice -n 19 python benchmarks/mutation.py --module ppo_maths --sample 60    # a seeded sample
    PYTHONPATH=. nice -n 19 python benchmarks/mutation.py                                  # all, one after another
    python benchmarks/mutation.py --list [--module M]          # the mutants, no tests run
    python benchmarks/mutation.py --report [--out DIR]         # the table and survivors.json again
Results are appended, one JSON line per mutant, to runs/mutation/<module>.jsonl (--out DIR for another folder);
a rerun skips mutants already there (same id, same source file), so an interrupted run resumes, --budget SECONDS
stops a module early for a later resume, and a sample grows by raising --sample (same --seed). --fresh drops a
module's earlier results; --rerun-survived runs only the earlier survivors again (after adding tests). Every
run ends with the table (mutants, of how many, killed, survived, timeout, kill rate) over every module with
results, and writes runs/mutation/survivors.json (file, line, function, mutation).
"""
from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "mutation"

# module -> the file, the functions to mutate (Class.method for methods) and the fast tests that cover them
MODULES: dict[str, dict] = {
    "stats": {
        "file": "zj_utils/stats.py",
        "functions": ["_signs", "win_tie_loss", "_interval", "bootstrap_ci", "mean_ci"],
        "tests": ["tests/test_stats.py", "tests/test_stats_level.py", "tests/test_mutation_gaps.py"],
    },
    "ablations_bootstrap": {
        "file": "zj_utils/ablations.py",
        "functions": ["two_level_bootstrap"],
        "tests": ["tests/test_stats_level.py", "tests/test_ablations.py", "tests/test_mutation_gaps.py"],
        "k": "bootstrap or level or interval",
    },
    "judges_merge": {
        "file": "zj_utils/judges.py",
        "functions": ["overall", "_sign", "parse_verdict", "combine_orders"],
        # test_judge_merge.py's two tests fail on the unmutated code (they predate info["overall_flipped"]), so
        # they cannot judge a mutant; test_judges.py's HTTP, concurrency and local-model tests are left out
        "tests": ["tests/test_judges.py", "tests/test_mutation_gaps.py"],
        "k": "prompt_is_built or rule_judge_wraps or zj_judge_cli_with_the_rule or longer_answer or mutation_gaps",
    },
    "judge_annotator": {
        "file": "zj_utils/annotator.py",
        "functions": ["Verdict.key", "recommends", "refers_to_emergency", "_states_content", "_fluency", "assess",
                      "compare", "rank_answers"],
        "tests": ["tests/test_judge.py", "tests/test_judge_adversarial.py", "tests/test_judge_abilities.py",
                  "tests/test_mutation_gaps.py"],
    },
    "data_pairs": {
        "file": "zj_utils/rankings.py",
        "functions": ["ranks_to_pairs", "ranked_texts_to_ranks", "to_preference_records"],
        "tests": ["tests/test_data.py", "tests/test_properties.py", "tests/test_mutation_gaps.py"],
        "k": "rank or pair or preference",
    },
    "data_validate": {
        "file": "zj_utils/data.py",
        "functions": ["_text_list", "_rec_cmtmedqa", "_rec_messages", "check", "validate"],
        "tests": ["tests/test_data.py", "tests/test_data_values.py", "tests/test_validate_cli.py",
                  "tests/test_properties.py", "tests/test_mutation_gaps.py"],
        # not the chunked JSON-array reader, the datasets cache or the cleaning properties (no validation there)
        "k": "not streaming_reader and not to_dataset and not cleaning",
    },
    "data_fields": {  # the field checks data_validate's functions call, in the readers under data.py
        "file": "zj_utils/readers.py",
        "functions": ["_field", "_text", "_history"],
        "tests": ["tests/test_data.py", "tests/test_data_values.py", "tests/test_validate_cli.py",
                  "tests/test_properties.py", "tests/test_mutation_gaps.py"],
        "k": "not streaming_reader and not to_dataset and not cleaning",
    },
    "ppo_maths": {
        "file": "zj_utils/ppo_maths.py",
        "functions": ["_keep", "masked_mean", "masked_var", "masked_whiten", "kl_penalty", "compute_gae",
                      "policy_loss", "value_loss", "entropy_from_logits", "explained_variance", "fit_reward_norm",
                      "shape_scores", "compute_rewards", "compute_logprobs"],
        "tests": ["tests/test_ppo_internals.py", "tests/test_ppo.py", "tests/test_mutation_gaps.py"],
        # not the smoke_rl stage (a minute); nor the held-out subset, the plot and the CUDA RNG (no maths there)
        "k": "not smoke_rl and not stage and not heldout_subset and not rm_vs_judge and not cuda_rng",
    },
    "probes": {
        "file": "zj_utils/inference.py",
        "functions": ["choice_logprobs", "probe_hits", "probe_accuracy"],
        "tests": ["tests/test_headline_values.py", "tests/test_mutation_gaps.py"],
        "k": "choice_logprobs or probe_accuracy",
    },
}

SKIP_CALLS = {"warn", "print", "_log"}  # their arguments are messages
BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SYM = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**", ast.Mod: "%",
       ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
       ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}
SWAP_NAMES = {"argmax": "argmin", "argmin": "argmax", "max": "min", "min": "max"}


# --------------------------------------------------------------------------- finding mutants

def _functions(tree: ast.Module, names: list[str]) -> dict[str, ast.AST]:
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            found[node.name] = node
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                q = f"{node.name}.{getattr(sub, 'name', '')}"
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and q in names:
                    found[q] = sub
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"functions not found: {sorted(missing)}")
    return found


def _skipped(node: ast.AST) -> bool:
    if isinstance(node, (ast.JoinedStr, ast.Raise)):
        return True
    if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        return name in SKIP_CALLS
    return False


def _walk(fn: ast.AST):
    """Nodes of a function worth mutating: its argument defaults and body, minus docstring and skipped subtrees."""
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    stack = list(fn.args.defaults) + [d for d in fn.args.kw_defaults if d is not None] + body
    while stack:
        node = stack.pop(0)
        if _skipped(node):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _variants(node: ast.AST):
    """(description, replacement node) for every mutation of this node."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        new = copy.deepcopy(node)
        new.op = BINOPS[type(node.op)]()
        yield f"{SYM[type(node.op)]} -> {SYM[type(new.op)]}", new
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOPS:
        new = copy.deepcopy(node)
        new.op = BINOPS[type(node.op)]()
        yield f"{SYM[type(node.op)]}= -> {SYM[type(new.op)]}=", new
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in CMPOPS:
                new = copy.deepcopy(node)
                new.ops[i] = CMPOPS[type(op)]()
                yield f"{SYM[type(op)]} -> {SYM[type(new.ops[i])]}", new
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"{SYM[type(node.op)]} -> {SYM[type(new.op)]}", new
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not x -> x", copy.deepcopy(node.operand)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and not isinstance(node.operand, ast.Constant):
        yield "-x -> x", copy.deepcopy(node.operand)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
        v = -node.operand.value  # a negative literal: nudged like any other number
        yield f"{v!r} -> {v + 1!r}", ast.Constant(v + 1)
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield f"{node.value} -> {not node.value}", ast.Constant(not node.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        yield f"{node.value!r} -> {node.value + 1!r}", ast.Constant(node.value + 1)
    elif isinstance(node, ast.Return) and node.value is not None \
            and not (isinstance(node.value, ast.Constant) and node.value.value is None):
        yield "return x -> return None", ast.Return(ast.Constant(None))
    elif isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name in SWAP_NAMES:
            new = copy.deepcopy(node)
            if isinstance(f, ast.Attribute):
                new.func.attr = SWAP_NAMES[name]
            else:
                new.func.id = SWAP_NAMES[name]
            yield f"{name}(...) -> {SWAP_NAMES[name]}(...)", new


def _negated_constant(node: ast.AST, parent_of: dict) -> bool:
    p = parent_of.get(node)
    return isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.USub)


def find_mutants(module: str) -> list[dict]:
    spec = MODULES[module]
    path = ROOT / spec["file"]
    src = path.read_bytes()
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))
    mutants, keys = [], set()
    for qname, fn in _functions(tree, spec["functions"]).items():
        parent_of = {c: p for p in ast.walk(fn) for c in ast.iter_child_nodes(p)}
        for node in _walk(fn):
            if isinstance(node, ast.Constant) and _negated_constant(node, parent_of):
                continue  # -c is mutated as a whole (see _variants)
            for j, (desc, new) in enumerate(_variants(node)):
                # splice the replacement over the node's own span (col offsets are UTF-8 byte offsets)
                a = starts[node.lineno - 1] + node.col_offset
                b = starts[node.end_lineno - 1] + node.end_col_offset
                text = ast.unparse(ast.fix_missing_locations(new))
                if not isinstance(node, ast.stmt):
                    text = f"({text})"
                mutated = src[:a] + text.encode() + src[b:]
                try:
                    ast.parse(mutated)
                except SyntaxError:
                    continue
                original = src[a:b].decode()
                # j tells apart two identical operators in one chained comparison (a < b < c)
                # and the end, two nested operators that start at the same place (a * b * c)
                key = f"{spec['file']}:{qname}:{node.lineno}:{node.col_offset}:{desc}" + (f":{j}" if j else "")
                if key in keys:
                    key += f":{node.end_lineno}:{node.end_col_offset}"
                keys.add(key)
                mutants.append({"id": hashlib.sha1(key.encode()).hexdigest()[:12], "module": module,
                                "file": spec["file"], "function": qname, "line": node.lineno, "col": node.col_offset,
                                "mutation": desc,
                                "original": original if len(original) < 160 else original[:157] + "...",
                                "replacement": text if len(text) < 160 else text[:157] + "...",
                                "_src": mutated})
    mutants.sort(key=lambda m: (m["line"], m["col"], m["mutation"]))
    src_hash = hashlib.sha1(src).hexdigest()[:12]
    for m in mutants:
        m["source"] = src_hash
    return mutants


# --------------------------------------------------------------------------- running them

def _shadow() -> Path:
    """A copy of the checkout's tracked and untracked-but-not-ignored files (no .venv, runs, caches)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    tmp = Path(tempfile.mkdtemp(prefix="zj-mutation-"))
    for f in files:
        if not f or not (ROOT / f).is_file():
            continue
        dst = tmp / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst)
    return tmp


def _pytest(shadow: Path, spec: dict, timeout: float) -> tuple[str, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           *spec["tests"]]
    if spec.get("k"):
        cmd += ["-k", spec["k"]]
    env = dict(os.environ, PYTHONPATH=str(shadow), PYTHONDONTWRITEBYTECODE="1", ZJ_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=shadow, env=env, capture_output=True, text=True, timeout=timeout,
                           start_new_session=True)
    except subprocess.TimeoutExpired as e:
        return "timeout", time.perf_counter() - t0, (e.stdout or b"")[-300:].decode(errors="replace") \
            if isinstance(e.stdout, bytes) else str(e.stdout or "")[-300:]
    secs = time.perf_counter() - t0
    tail = (p.stdout + p.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    if p.returncode == 0:
        return "survived", secs, last
    if p.returncode == 1:
        return "killed", secs, last
    if p.returncode == 5:  # no tests collected: the -k filter or the file list is wrong
        raise SystemExit(f"no tests collected for {spec['tests']} -k {spec.get('k')!r}")
    return "killed", secs, f"rc={p.returncode} {last}"  # errors in collection (an import broke) also count


def _results(module: str) -> dict[str, dict]:
    f = OUT / f"{module}.jsonl"
    if not f.exists():
        return {}
    out = {}
    for line in f.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["id"]] = r
    return out


def run_module(module: str, sample: int | None, seed: int, factor: float, min_timeout: float, fresh: bool,
               budget: float | None, rerun_survived: bool = False, only: set | None = None) -> None:
    spec = MODULES[module]
    mutants = find_mutants(module)
    if sample is not None and sample < len(mutants):
        order = list(range(len(mutants)))
        random.Random(seed).shuffle(order)  # growing --sample with the same seed keeps the earlier mutants
        mutants = [mutants[i] for i in sorted(order[:sample])]
    OUT.mkdir(parents=True, exist_ok=True)
    res_file = OUT / f"{module}.jsonl"
    if fresh and res_file.exists():
        res_file.unlink()
    done = _results(module)
    todo = [m for m in mutants if not (m["id"] in done and done[m["id"]]["source"] == m["source"])]
    if rerun_survived:  # after adding tests: only the survivors run again; a later line for an id replaces it
        todo = [m for m in mutants if done.get(m["id"], {}).get("status") == "survived"
                and done[m["id"]]["source"] == m["source"]]
    if only:
        todo = [m for m in todo if m["id"] in only]
    print(f"[{module}] {len(mutants)} mutants{' (sample, seed %d)' % seed if sample else ''}, "
          f"{len(mutants) - len(todo)} already done, {len(todo)} to run", flush=True)
    if not todo:
        return
    shadow = _shadow()
    target = shadow / spec["file"]
    original = target.read_bytes()
    t_start = time.perf_counter()
    try:
        status, base, last = _pytest(shadow, spec, timeout=1800)
        if status != "survived":
            raise SystemExit(f"[{module}] the unmutated tests do not pass ({status}): {last}")
        timeout = max(min_timeout, factor * base)
        print(f"[{module}] unmutated: {last} in {base:.1f}s; per-mutant timeout {timeout:.0f}s", flush=True)
        with res_file.open("a") as fh:
            for i, m in enumerate(todo, 1):
                if budget is not None and time.perf_counter() - t_start > budget:
                    print(f"[{module}] time budget spent; {len(todo) - i + 1} mutants left (rerun to resume)")
                    break
                target.write_bytes(m["_src"])
                try:
                    status, secs, last = _pytest(shadow, spec, timeout)
                finally:
                    target.write_bytes(original)
                rec = {k: v for k, v in m.items() if k != "_src"} | {"status": status, "seconds": round(secs, 1),
                                                                     "sample": sample, "seed": seed,
                                                                     "pytest": last[-200:]}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                print(f"[{module}] {i}/{len(todo)} {status:8s} {secs:5.1f}s {m['function']}:{m['line']} "
                      f"{m['mutation']}", flush=True)
    finally:
        shutil.rmtree(shadow, ignore_errors=True)


# --------------------------------------------------------------------------- report

def report(modules: list[str]) -> None:
    rows, survivors = [], []
    for module in modules:
        res = _results(module)
        if not res:
            continue
        n = len(res)
        c = {s: sum(r["status"] == s for r in res.values()) for s in ("killed", "survived", "timeout")}
        total = len(find_mutants(module))
        rows.append((module, n, total, c["killed"], c["survived"], c["timeout"],
                     100 * (c["killed"] + c["timeout"]) / n, n < total))
        survivors += sorted((r for r in res.values() if r["status"] == "survived"),
                            key=lambda r: (r["file"], r["line"], r["col"]))
    print(f"\n{'module':22s} {'mutants':>8s} {'of':>5s} {'killed':>7s} {'survived':>9s} {'timeout':>8s} "
          f"{'kill rate':>10s}")
    for module, n, total, k, s, t, rate, sampled in rows:
        print(f"{module:22s} {n:8d} {total:5d} {k:7d} {s:9d} {t:8d} {rate:9.1f}%{'  (sample)' if sampled else ''}")
    OUT.mkdir(parents=True, exist_ok=True)
    keep = ("id", "module", "file", "line", "col", "function", "mutation", "original", "replacement")
    (OUT / "survivors.json").write_text(json.dumps([{k: r[k] for k in keep} for r in survivors], indent=1,
                                                   ensure_ascii=False) + "\n")
    print(f"\n{len(survivors)} survivors -> {OUT / 'survivors.json'}")
    for r in survivors:
        print(f"  {r['id']} {r['file']}:{r['line']} {r['function']}: {r['mutation']}   "
              f"{r['original']}  =>  {r['replacement']}")


def main(argv=None) -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", action="append", choices=sorted(MODULES),
                    help="module(s) to run (repeatable); default all, in the order of MODULES")
    ap.add_argument("--sample", type=int, help="a seeded random sample of this many mutants per module")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-factor", type=float, default=3.0)
    ap.add_argument("--min-timeout", type=float, default=30.0)
    ap.add_argument("--budget", type=float, help="stop a module after this many seconds (resume later)")
    ap.add_argument("--fresh", action="store_true", help="drop the module's earlier results first")
    ap.add_argument("--rerun-survived", action="store_true",
                    help="run the earlier survivors again (after adding tests; the killed stay killed)")
    ap.add_argument("--only", help="comma-separated mutant ids: run just these (with --rerun-survived: again)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--report", action="store_true", help="only print the table and write survivors.json")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results folder (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    OUT = args.out.resolve()
    modules = args.module or list(MODULES)
    if args.list:
        for module in modules:
            ms = find_mutants(module)
            print(f"[{module}] {len(ms)} mutants")
            for m in ms:
                print(f"  {m['id']} {m['function']}:{m['line']} {m['mutation']}   {m['original']} => "
                      f"{m['replacement']}")
        return
    if not args.report:
        for module in modules:
            run_module(module, args.sample, args.seed, args.timeout_factor, args.min_timeout, args.fresh,
                       args.budget, args.rerun_survived, set(args.only.split(",")) if args.only else None)
    report(list(MODULES))  # every module with results in OUT, so survivors.json covers them all


if __name__ == "__main__":
    main()
