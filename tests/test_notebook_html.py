"""`zj render-notebooks`: an executed notebook becomes an HTML page with its outputs and figures in it; a run
that stopped on an error is refused."""
import base64
import json

import nbformat
import pytest

from zj_utils.cli import main
from zj_utils.common import ZJError
from zj_utils.notebook_html import render_notebooks

PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                                     "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"))


def _run(tmp_path, error=False):
    run = tmp_path / "tiny-seed0"
    (run / "notebooks").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": {"name": "tiny"}, "seed": 0}))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 04 · Reward model"),
                nbformat.v4.new_code_cell("print(acc)", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="held-out accuracy 0.7301\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": PNG.decode(), "text/plain": "<Figure>"})])]
    if error:
        nb.cells.append(nbformat.v4.new_code_cell("1/0", outputs=[nbformat.v4.new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])]))
    nbformat.write(nb, run / "notebooks" / "04_reward_model.ipynb")
    return run


def test_an_executed_notebook_becomes_a_page_with_its_outputs_and_figures(tmp_path):
    run = _run(tmp_path)
    assert main(["render-notebooks", str(run), "--to", str(tmp_path / "html")]) == 0
    page = (tmp_path / "html" / "04_reward_model.html").read_text(encoding="utf-8")
    assert "held-out accuracy 0.7301" in page and "04 · Reward model" in page
    assert f"data:image/png;base64,{PNG.decode()}" in page  # embedded, the page stands alone
    index = (tmp_path / "html" / "README.md").read_text(encoding="utf-8")
    assert "[04_reward_model](04_reward_model.html)" in index and "preset `tiny`, seed 0" in index
    # a second run (the ablations) rendered into the same folder joins the index; the first's line stays
    abl = tmp_path / "tiny-ablations"
    (abl / "notebooks").mkdir(parents=True)
    (abl / "config.json").write_text(json.dumps({"preset": "tiny", "seeds": [0, 1, 2]}))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 07")]),
                   abl / "notebooks" / "07_ablations.ipynb")
    render_notebooks(abl, tmp_path / "html", commit="abc1234")
    index = (tmp_path / "html" / "README.md").read_text(encoding="utf-8").splitlines()
    assert [line.split("]")[0] for line in index if line.startswith("- [")] == ["- [04_reward_model", "- [07_ablations"]
    assert index[-1].endswith("preset `tiny`, seed [0, 1, 2], rendered at commit `abc1234`")


def test_a_run_that_stopped_on_an_error_is_not_published(tmp_path):
    with pytest.raises(ZJError, match="cell 2 stopped with ZeroDivisionError"):
        render_notebooks(_run(tmp_path, error=True), tmp_path / "html")
    assert not (tmp_path / "html" / "README.md").exists()
    with pytest.raises(ZJError, match="no executed notebooks"):
        render_notebooks(tmp_path / "empty", tmp_path / "html")
