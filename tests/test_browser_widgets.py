"""The widgets as a person uses them: JupyterLab on loopback, opened in headless Chromium (Debian's package,
driven by Playwright), a notebook run cell by cell with Shift+Enter, answers ranked with the dropdowns and the Save button,
a patient message typed and sent to two models; then the saved rankings file is checked on disk.
Screenshots of both widgets are taken; with ZJ_WIDGET_RUN set they are the README's figures/widget_ranking.png
and figures/widget_chat.png, otherwise they stay in the test's temporary folder (a random model's chat is no
picture for the README, and `make test` should not rewrite tracked files).

Needs /usr/bin/chromium (`apt-get install -y chromium`; .ci/run installs it): Playwright's own browser
download is not reachable here. Set ZJ_WIDGET_RUN=runs/tiny-seed0 to chat with that run's SFT and PPO models
(and its world's cases) instead of two small random models:
    ZJ_WIDGET_RUN=runs/tiny-seed0 .venv/bin/python -m pytest -q tests/test_browser_widgets.py"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_widgets import CASE, KG, TEXTS, char_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000  # generous: the kernel imports torch and transformers on a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read() or b"null")


def _prepare(root: Path, input_file: Path) -> str:
    """The notebook a person would write: the ranking widget on the tool's sample input, then the chat.
    Returns the patient's answer to the first case's key question, for the second turn."""
    run = os.environ.get("ZJ_WIDGET_RUN")
    reply = "是的，上周在湖里游过泳。"
    if run:
        out = (ROOT / run).resolve()
        from zj_utils.data import load_jsonl
        case = next(c for c in load_jsonl(out / "world" / "test_multiturn.jsonl") if c["kind"] == "multi_turn_open")
        kg = json.loads((out / "world" / "world.json").read_text(encoding="utf-8"))
        reply = next(d["key_question"]["yes"] for d in kg["diseases"] if d["name"] == case["expect"]["disease"])
        chat = (f"from zj_utils.presets import get_preset\nfrom zj_utils.data import load_jsonl\n"
                f"out = Path({str(out)!r})\nP = get_preset(json.loads((out / 'config.json').read_text())"
                f"['preset']['name'])\n"
                "models = [load_chat_model(n, out / n / 'merged', P) for n in ('sft', 'ppo')]\n"
                "kg = json.loads((out / 'world' / 'world.json').read_text(encoding='utf-8'))\n"
                "cases = [c for c in load_jsonl(out / 'world' / 'test_multiturn.jsonl') "
                "if c['kind'] == 'multi_turn_open'][:5]\n")
    else:
        tok = char_tokenizer(TEXTS)
        for name, seed in (("sft", 1), ("ppo", 2)):
            tiny_llama(tok, seed).save_pretrained(root / "models" / name, safe_serialization=True)
            tok.save_pretrained(root / "models" / name)
        (root / "world.json").write_text(json.dumps(KG, ensure_ascii=False), encoding="utf-8")
        chat = ("models = [load_chat_model(n, Path('models') / n) for n in ('sft', 'ppo')]\n"
                "kg = json.loads(Path('world.json').read_text(encoding='utf-8'))\n"
                f"cases = [{CASE!r}]\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import json\nfrom pathlib import Path\nfrom zj_utils.widgets import RankingWidget\n"
            f"ranker = RankingWidget.from_file({str(input_file)!r}, 'rankings.jsonl')\nranker"),
        nbformat.v4.new_code_cell(
            "from zj_utils.widgets import ChatSession, ChatWidget, load_chat_model\n" + chat +
            "chat = ChatWidget(ChatSession(models, kg=kg, max_new_tokens=40), cases=cases)\nchat"),
    ]
    nbformat.write(nb, root / "widgets.ipynb")
    # No news/update pop-ups over the widgets.
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return reply


@pytest.fixture()
def jupyterlab(tmp_path, data_dir):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium with `apt-get install -y chromium` "
                    "(Playwright's own browser download is not available here; .ci/run installs it).")
    root = tmp_path / "lab"
    root.mkdir()
    reply = _prepare(root, data_dir / "rlhf_label_tool" / "input_file.json")
    port, token = _free_port(), os.urandom(16).hex()
    env = os.environ | {"JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
                        "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
                        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI containers run as root
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"{base}/api/status?token={token}")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text())
                time.sleep(0.5)
        yield base, token, root, reply
    finally:
        try:  # kernels first (the server would leave them running if it has to be killed)
            for k in _get(f"{base}/api/kernels?token={token}") or []:
                req = urllib.request.Request(f"{base}/api/kernels/{k['id']}?token={token}", method="DELETE")
                urllib.request.urlopen(req, timeout=10).close()
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_rank_and_chat_in_jupyterlab(jupyterlab, tmp_path, data_dir):
    from playwright.sync_api import expect, sync_playwright

    from zj_utils.ranking_store import load_candidates, read_saved_rankings

    base, token, root, reply = jupyterlab
    candidates = load_candidates(data_dir / "rlhf_label_tool" / "input_file.json")
    figures = ROOT / "figures" if os.environ.get("ZJ_WIDGET_RUN") else tmp_path / "figures"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1400, "height": 1000}, locale="zh-CN")
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(f"{base}/lab/tree/widgets.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            # the kernel is connected and idle (before that, Shift+Enter moves on without running anything)
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle")
            page.locator(".jp-Cell").first.locator(".jp-InputPrompt").click()
            page.keyboard.press("Shift+Enter")  # runs the ranking cell and selects the chat cell
            page.keyboard.press("Shift+Enter")

            # --- rank two prompts, the second with a tie, like a person: dropdowns, then Save
            ranking = page.locator(".zj-ranking")
            expect(ranking.locator(".zj-rank-header")).to_contain_text(f"Ranked 0 of {len(candidates)}")
            expect(ranking).to_contain_text(candidates[0]["messages"][-1]["content"][:12])
            save = ranking.locator("button.zj-rank-save")
            expect(save).to_be_disabled()
            for i, r in enumerate(["2", "1", "4", "3"]):
                ranking.locator(f".zj-rank-{i} select").select_option(label=r)
            expect(save).to_be_enabled()
            save.click()
            expect(ranking.locator(".zj-rank-status")).to_contain_text(f"Saved {candidates[0]['id']}")
            expect(ranking.locator(".zj-rank-header")).to_contain_text(f"Ranked 1 of {len(candidates)}")
            expect(ranking).to_contain_text(candidates[1]["messages"][-1]["content"][:12])
            for i, r in enumerate(["1", "1", "2", "3"]):  # A = B > C > D
                ranking.locator(f".zj-rank-{i} select").select_option(label=r)
            save.click()
            expect(ranking.locator(".zj-rank-header")).to_contain_text(f"Ranked 2 of {len(candidates)}")

            # saved the moment Save was clicked: on disk now, with the tie
            saved = read_saved_rankings(root / "rankings.jsonl")
            assert [r["id"] for r in saved] == [f"human-{candidates[0]['id']}", f"human-{candidates[1]['id']}"]
            assert [r["ranks"] for r in saved] == [[2, 1, 4, 3], [1, 1, 3, 4]]
            assert saved[1]["responses"] == candidates[1]["responses"]

            for i, r in enumerate(["1", "2", "2", "4"]):  # the third prompt, ranked but not saved, for the picture
                ranking.locator(f".zj-rank-{i} select").select_option(label=r)
            figures.mkdir(exist_ok=True)
            ranking.screenshot(path=str(figures / "widget_ranking.png"))

            # --- the side-by-side chat: a case, two turns, the judge under each column
            chat = page.locator(".zj-chat")
            expect(chat.locator(".zj-chat-col-1")).to_contain_text("no messages yet")
            chat.locator(".zj-chat-case select").select_option(index=1)
            box = chat.locator(".zj-chat-input textarea")
            expect(box).to_have_value(re.compile("^［虚构］"))  # the case's first patient message, filled in
            chat.locator("button.zj-chat-send").click()
            expect(chat.locator(".zj-chat-status")).to_contain_text("Turn 1 answered")
            for i in (0, 1):
                expect(chat.locator(f".zj-chat-col-{i} .zj-assistant")).to_have_count(1)
                expect(chat.locator(f".zj-chat-verdict-{i}")).to_contain_text("judge")
            box.fill(reply)
            chat.locator("button.zj-chat-send").click()
            expect(chat.locator(".zj-chat-status")).to_contain_text("Turn 2 answered")
            for i in (0, 1):  # each column holds its own two answers after both patient turns
                expect(chat.locator(f".zj-chat-col-{i} .zj-user")).to_have_count(2)
                expect(chat.locator(f".zj-chat-col-{i} .zj-assistant")).to_have_count(2)
            chat.screenshot(path=str(figures / "widget_chat.png"))
            chat.locator("button.zj-chat-reset").click()
            expect(chat.locator(".zj-chat-col-0")).to_contain_text("no messages yet")

            # --- a fresh kernel session picks up where the person stopped
            page.locator(".jp-Cell").first.locator(".jp-InputPrompt").click()
            page.keyboard.press("Shift+Enter")
            expect(page.locator(".zj-ranking .zj-rank-header")).to_contain_text(f"Ranked 2 of {len(candidates)}")
            expect(page.locator(".zj-ranking")).to_contain_text(candidates[2]["messages"][-1]["content"][:12])
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"))  # what the browser showed, for the log
            print(f"browser at failure: {tmp_path / 'failure.png'}; JupyterLab log: {tmp_path / 'jupyterlab.log'}")
            raise
        finally:
            browser.close()
    for name in ("widget_ranking", "widget_chat"):
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
