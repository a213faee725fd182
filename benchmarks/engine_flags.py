"""Write tests/engine_flags.py: every flag `zj export`'s launch scripts may name, read from the engines' own source.

    python benchmarks/engine_flags.py --openrlhf OPENRLHF_GIT_DIR --verl VERL_GIT_DIR [--out tests/engine_flags.py]

OpenRLHF: every `--flag` of `openrlhf/cli/train_ppo_ray.py`'s argparse (the f-string flags of its per-model loop
expanded for actor and critic). verl: every leaf key of `verl/trainer/config/_generated_ppo_trainer.yaml`, the
flattened `ppo_trainer.yaml` that `python -m verl.trainer.main_ppo key=value` overrides (Hydra refuses a key that
is not there, unless written `+key=`). Both are read at the repository's HEAD with `git show`, and the commit is
written next to the lists, so a test fails when an export names a flag that engine version does not have.
"""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

OPENRLHF_FILE = "openrlhf/cli/train_ppo_ray.py"
VERL_FILE = "verl/trainer/config/_generated_ppo_trainer.yaml"


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=True).stdout


def openrlhf_flags(src: str) -> list[str]:
    flags = set()
    for m in re.finditer(r'add_argument\(\s*(f?)"(--[A-Za-z0-9_.{}]+)"', src):
        flag = m.group(2)
        if m.group(1):  # the loop `for prefix in ("actor", "critic")`
            loop = re.search(r'for prefix in \(([^)]*)\)', src)
            prefixes = re.findall(r'"(\w+)"', loop.group(1))
            flags.update(flag.replace("{prefix}", p) for p in prefixes)
        else:
            flags.add(flag)
    return sorted(flags)


def verl_keys(src: str) -> list[str]:
    import yaml

    keys = set()

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            keys.add(prefix)

    walk(yaml.safe_load(src), "")
    return sorted(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openrlhf", required=True, help="OpenRLHF's git directory")
    ap.add_argument("--verl", required=True, help="verl's git directory")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "engine_flags.py"))
    args = ap.parse_args()
    o_commit = git(args.openrlhf, "rev-parse", "HEAD").strip()
    v_commit = git(args.verl, "rev-parse", "HEAD").strip()
    o_version = git(args.openrlhf, "show", "HEAD:version.txt").strip()
    v_version = git(args.verl, "show", "HEAD:verl/version/version").strip()
    o = openrlhf_flags(git(args.openrlhf, "show", f"HEAD:{OPENRLHF_FILE}"))
    v = verl_keys(git(args.verl, "show", f"HEAD:{VERL_FILE}"))

    def block(name, items):
        lines = [f"{name} = frozenset({{"]
        line = "   "
        for it in items:
            piece = f' "{it}",'
            if len(line) + len(piece) > 118:
                lines.append(line)
                line = "   "
            line += piece
        lines.append(line)
        lines.append("})")
        return "\n".join(lines)

    text = f'''"""The flags `zj export`'s launch scripts may name, read from the engines' source by benchmarks/engine_flags.py
(do not edit by hand; rerun it against a newer checkout to move to a newer engine version).

OpenRLHF {o_version}, commit {o_commit}: the argparse flags of {OPENRLHF_FILE}.
verl {v_version}, commit {v_commit}: the leaf keys of {VERL_FILE}.
"""

OPENRLHF_VERSION = "{o_version}"
OPENRLHF_COMMIT = "{o_commit}"
VERL_VERSION = "{v_version}"
VERL_COMMIT = "{v_commit}"

{block("OPENRLHF_FLAGS", o)}

{block("VERL_KEYS", v)}
'''
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(o)} OpenRLHF flags ({o_commit[:12]}), {len(v)} verl keys ({v_commit[:12]})")


if __name__ == "__main__":
    main()
