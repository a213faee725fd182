"""The package's architecture, checked from its source: no import cycles, and no module imports from a layer above
its own. Every zj_utils module is parsed (never imported), and every import counts: at module level or inside a
function, `from .x import y`, `from . import x`, `from zj_utils.x import y`, `import zj_utils.x`.

LAYERS is the architecture as data. A module may import from its own layer or from one below it. A new module
fails `test_every_module_has_a_layer` until it is given a layer here: that is the moment to decide where it
belongs. When an import is flagged as upward, move the shared code down (as ranking_store.py, config.py,
stages.py and common.pad_id were moved), or, if the layering itself should change, change the table."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "zj_utils"

LAYER_NAMES = {
    0: "definitions and pure helpers",
    1: "shared helpers and the named presets",
    2: "files and standalone tools",
    3: "models",
    4: "the synthetic world, judging and metrics",
    5: "stages before RLHF",
    6: "RLHF",
    7: "one stage by name",
    8: "drivers",
    9: "interfaces",
}

LAYERS = {
    "config": 0, "rubric": 0, "stats": 0, "tokenizer": 0, "cleaning": 0,
    "common": 1, "presets": 1,
    "readers": 2, "rankings": 2, "data": 2, "ranking_store": 2, "fetch": 2, "plots": 2, "delta": 2, "estimate": 2,
    "export": 2, "notebook_html": 2,
    "inference": 3, "training": 3, "ppo_maths": 3,
    "world_kg": 4, "world_dialogue": 4, "world": 4, "annotator": 4, "judges": 4, "api_judge": 4, "compare": 4,
    "text_metrics": 4, "corpus_stats": 4, "reward_report": 4,
    "base_model": 5, "pretrain": 5, "sft": 5, "evaluate": 5, "lessons": 5,
    "reward": 6, "ppo": 6, "ppo_checkpoint": 6, "align": 6,
    "stages": 7,
    "ablations": 8, "align_sweep": 8, "kl_sweep": 8, "pipeline": 8,
    # __init__ is the package's front door: were it to re-export names, no module inside may import them from it
    "cli": 9, "widgets": 9, "__init__": 9,
}


def module_files(pkg: Path) -> dict[str, Path]:
    """Module name (dotted, relative to the package; the package itself is "__init__") -> its file."""
    mods = {}
    for f in sorted(pkg.rglob("*.py")):
        parts = f.relative_to(pkg).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)] = f
    return mods


def _targets(node, cur: str, mods: dict, pkg_name: str) -> list[str]:
    """The package modules an import statement in module `cur` loads."""
    def local(dotted: str):  # absolute dotted name -> module name in `mods`, or None outside the package
        if dotted == pkg_name:
            return "__init__"
        if dotted.startswith(pkg_name + "."):
            name = dotted[len(pkg_name) + 1:]
            while name and name not in mods:  # `from zj_utils.x.y import z` where only x exists: x
                name = name.rpartition(".")[0]
            return name or None
        return None

    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := local(a.name))]
    if node.level:
        here = [pkg_name] + ([] if cur == "__init__" else cur.split("."))
        is_pkg = cur == "__init__" or mods[cur].name == "__init__.py"
        base = here[:len(here) - node.level + (1 if is_pkg else 0)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    out = []
    for a in node.names:  # `from . import x`, `from zj_utils import x`: the submodule x if there is one
        sub = f"{stem}.{a.name}"[len(pkg_name) + 1:] if stem == pkg_name or stem.startswith(pkg_name + ".") else None
        out.append(sub if sub in mods else local(stem))
    return [t for t in out if t]


def import_graph(pkg: Path = PKG) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of its first import}, imports inside functions included."""
    mods = module_files(pkg)
    graph, lines = {}, {m: {} for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(node, m, mods, pkg.name):
                    if t != m:
                        lines[m].setdefault(t, []).append(node.lineno)
    for m, f in mods.items():  # the first import of each module by line (ast.walk is breadth-first)
        where = f.relative_to(pkg.parent).as_posix()
        graph[m] = {t: f"{where}:{min(n)}" for t, n in sorted(lines[m].items(), key=lambda kv: min(kv[1]))}
    return graph


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module, as [a, b, ..., a]; when the
    component is larger than its shortest cycle, describe_cycle names the rest."""
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def strong(v):  # Tarjan; the package is small, recursion depth is no issue
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = []
    for comp in sccs:  # the shortest way back to the component's first module: a readable cycle
        start = min(comp)
        paths, seen, found = [[start]], {start}, None
        while paths and not found:
            nxt = []
            for p in paths:
                for w in graph[p[-1]]:
                    if w == start:
                        found = p + [start]
                        break
                    if w in comp and w not in seen:
                        seen.add(w)
                        nxt.append(p + [w])
                if found:
                    break
            paths = nxt
        cycles.append(found)
    return cycles


def _reaches(graph, a: str) -> set[str]:
    seen, todo = set(), [a]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def describe_cycle(graph, cycle: list[str]) -> str:
    tied = sorted(m for m in _reaches(graph, cycle[0]) if cycle[0] in _reaches(graph, m))
    more = f" (all of {', '.join(tied)} are tied together)" if len(tied) > len(cycle) - 1 else ""
    return " -> ".join(cycle) + more + "\n" + "\n".join(f"    {a} imports {b} at {graph[a][b]}"
                                                        for a, b in zip(cycle, cycle[1:]))


def upward_imports(graph, layers: dict[str, int]) -> list[str]:
    return [f"{where}: {m} (layer {layers[m]}, {LAYER_NAMES.get(layers[m], '?')}) imports {t} "
            f"(layer {layers[t]}, {LAYER_NAMES.get(layers[t], '?')})"
            for m, targets in sorted(graph.items()) for t, where in targets.items()
            if m in layers and t in layers and layers[t] > layers[m]]


# --------------------------------------------------------------------------- the package


def test_every_module_has_a_layer():
    mods = set(module_files(PKG))
    missing, stale = sorted(mods - set(LAYERS)), sorted(set(LAYERS) - mods)
    assert not missing, (f"zj_utils modules with no layer in tests/test_layering.py's LAYERS: {missing}. Give each "
                         "a layer at or above those of the modules it imports, below those of its importers:\n"
                         + "\n".join(f"  {k}: {v}" for k, v in LAYER_NAMES.items()))
    assert not stale, f"LAYERS names modules that no longer exist: {stale}; remove them from the table."
    assert set(LAYERS.values()) <= set(LAYER_NAMES)


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, ("import cycles among zj_utils modules (in-function imports count: they tie the modules "
                        "together all the same). Move what both need into a module below both:\n"
                        + "\n".join(describe_cycle(graph, c) for c in cycles))


def test_no_upward_imports():
    up = upward_imports(import_graph(), LAYERS)
    assert not up, ("imports from a higher layer (a module may import only from its own layer or below; see LAYERS "
                    "in tests/test_layering.py):\n" + "\n".join(up))


def test_the_graph_sees_every_kind_of_import():
    """The checks above are only as good as the graph: imports inside functions and `from . import x` are in it."""
    graph = import_graph()
    assert "ppo" in graph["stages"]  # `from . import base_model, evaluate, ppo, ...` inside run_stage
    assert "rubric" in graph["annotator"]  # `from . import rubric as R`
    assert "ranking_store" in graph["reward"]  # inside human_rankings
    assert "common" in graph["ppo"] and "reward" in graph["ppo"]


# --------------------------------------------------------------------------- the checker itself


def _package(tmp_path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "zj_utils"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, src in files.items():
        (pkg / f"{name}.py").write_text(src)
    return pkg


def test_checker_finds_cycles_through_every_import_form(tmp_path):
    pkg = _package(tmp_path, {
        "low": "import json\n",
        "a": "def f():\n    from zj_utils.b import g\nfrom .low import x\nfrom .low import y\n",
        "b": "def g():\n    import zj_utils.c\n",
        "c": "from . import a\n",
        "d": "from .e import y\n",
        "e": "from zj_utils import d\n",
    })
    graph = import_graph(pkg)
    assert graph["a"] == {"b": "zj_utils/a.py:2", "low": "zj_utils/a.py:3"}  # the first import of each, by line
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    text = describe_cycle(graph, ["a", "b", "c", "a"])
    assert "a -> b -> c -> a" in text and "b imports c at zj_utils/b.py:2" in text


def test_checker_flags_an_upward_import_and_allows_same_layer_and_down(tmp_path):
    pkg = _package(tmp_path, {"low": "def f():\n    from .high import g\n", "mid": "from .low import f\n",
                              "mid2": "from .mid import x\n", "high": "import json\n"})
    graph = import_graph(pkg)
    assert not find_cycles(graph)
    up = upward_imports(graph, {"low": 0, "mid": 1, "mid2": 1, "high": 2, "__init__": 9})
    assert up == ["zj_utils/low.py:2: low (layer 0, definitions and pure helpers) imports high "
                  "(layer 2, files and standalone tools)"]


def test_package_root_and_submodule_imports_resolve(tmp_path):
    pkg = _package(tmp_path, {"a": "from . import b as B, NAME\nfrom zj_utils import b\nimport zj_utils\n",
                              "b": ""})
    (pkg / "__init__.py").write_text("NAME = 1\n")
    assert set(import_graph(pkg)["a"]) == {"b", "__init__"}


def test_the_readme_file_tree_lists_every_module_and_benchmark():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8").splitlines()
    listed = {line.split()[0] for line in readme if line and not line.startswith((" ", "#", "|", "`", ">"))}
    files = sorted(str(p.relative_to(root)) for d in ("zj_utils", "benchmarks") for p in (root / d).glob("*.py"))
    assert [f for f in files if f not in listed] == []
