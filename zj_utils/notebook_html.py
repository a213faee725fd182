"""Executed notebooks -> static HTML pages a reader opens in a browser (docs/notebooks/), so every result of the
tiny run can be seen without running anything. The source notebooks stay without outputs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .common import ZJError


def _commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_notebooks(run_dir, dest, commit: str | None = None) -> list[Path]:
    """Render RUN/notebooks/*.ipynb (as `zj reproduce` executed them) to DEST/<name>.html, images embedded, and
    write DEST/README.md: one line per page (of this run and of any run rendered there before) with its run folder,
    preset, seed and commit. Returns the pages written. A notebook that stopped on an error is refused: a page must
    show a finished run."""
    import nbformat
    from nbconvert import HTMLExporter

    run_dir, dest = Path(run_dir), Path(dest)
    books = sorted((run_dir / "notebooks").glob("*.ipynb"))
    if not books:
        raise ZJError(f"no executed notebooks in {run_dir / 'notebooks'}: run `zj reproduce` (with notebooks) first")
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    dest.mkdir(parents=True, exist_ok=True)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8")) if (
        run_dir / "config.json").exists() else {}
    preset = config.get("preset")
    preset = preset.get("name", "?") if isinstance(preset, dict) else preset or "?"  # the ablations store the name
    seed = config.get("seed", config.get("seeds", "?"))
    read = {path: nbformat.read(path, as_version=4) for path in books}
    for path, book in read.items():  # all checked before any page is written
        for i, cell in enumerate(book.cells):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                raise ZJError(f"{path}: cell {i} stopped with {errors[0].get('ename')}: "
                              f"{errors[0].get('evalue')}; fix the run before publishing it")
    pages = []
    for path, book in read.items():
        html, _ = exporter.from_notebook_node(book, resources={"metadata": {"name": path.stem}})
        page = dest / f"{path.stem}.html"
        page.write_text(html, encoding="utf-8")
        pages.append(page)
    # DEST/sources.json: where each page came from, so that pages from several runs (the seed run, the ablations)
    # share one index
    sources_path = dest / "sources.json"
    sources = json.loads(sources_path.read_text(encoding="utf-8")) if sources_path.exists() else {}
    made = {"run": str(run_dir), "preset": preset, "seed": seed,
            "commit": commit or _commit(Path(__file__).resolve().parents[1])}
    sources.update({p.name: made for p in pages})
    sources = {name: src for name, src in sorted(sources.items()) if (dest / name).exists()}
    sources_path.write_text(json.dumps(sources, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["# Executed notebooks", "",
             "Rendered by `zj render-notebooks` from runs of `zj reproduce`: every output and figure as the run made it. "
             "Open a page in a browser; the sources in `notebooks/` are stored without outputs. The commit is the "
             "one the pages were rendered at; the README says which code made each run.", ""]
    lines += [f"- [{Path(name).stem}]({name}): `{src['run']}`, preset `{src['preset']}`, seed {src['seed']}, "
              f"rendered at commit `{src['commit']}`" for name, src in sources.items()]
    (dest / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pages
