"""Safe defaults, tested: no remote code unless a preset asks for it, weights as safetensors only, torch.load only
with weights_only=True, API keys in no file the project writes (configs, logs, caches, results, notebooks), and a
one-line error from `zj`, never a traceback, for a missing model, a wrong preset, a full disk and out-of-memory."""
import ast
import errno
import json
import re
from pathlib import Path

import nbformat
import pytest
import torch

from stub_chat_api import StubChatAPI, verdict_reply
from zj_utils import common
from zj_utils.cli import main
from zj_utils.common import ZJError, load_model, load_tokenizer
from zj_utils.config import ModelConfig
from zj_utils.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]
SENTINEL = "sk-SENTINEL-never-write-me-7f3a9c"


class _Stop(Exception):
    pass


def _recorder(calls: list):
    def from_pretrained(path, *args, **kwargs):
        calls.append(kwargs)
        raise _Stop  # the kwargs are what we check; loading is not needed
    return from_pretrained


@pytest.mark.parametrize("kind", ["causal", "seqcls"])
def test_no_remote_code_and_safetensors_unless_asked(monkeypatch, kind):
    import transformers

    calls = []
    cls = "AutoModelForCausalLM" if kind == "causal" else "AutoModelForSequenceClassification"
    monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", _recorder(calls))
    with pytest.raises(_Stop):
        load_model("some-org/some-model", ModelConfig(), kind=kind)
    assert calls[-1]["trust_remote_code"] is False and calls[-1]["use_safetensors"] is True
    with pytest.raises(_Stop):
        load_model("some-org/some-model", ModelConfig(trust_remote_code=True), kind=kind)
    assert calls[-1]["trust_remote_code"] is True and calls[-1]["use_safetensors"] is True


def test_tokenizer_no_remote_code_unless_asked(monkeypatch):
    import transformers

    calls = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _recorder(calls))
    for kwargs, want in (({}, False), ({"trust_remote_code": False}, False), ({"trust_remote_code": True}, True)):
        with pytest.raises(_Stop):
            load_tokenizer("some-org/some-model", **kwargs)
        assert calls[-1]["trust_remote_code"] is want


def test_no_preset_asks_for_remote_code():
    for name in PRESETS:
        assert get_preset(name).model.trust_remote_code is False, name


def _tiny_folder(path: Path, safetensors: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from zj_utils.tokenizer import train_tokenizer

    tok = train_tokenizer(["［虚构］发热咳嗽", "hello world", "请问最近是否接触过湖水"] * 5, 120)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    tok.save_pretrained(path)
    if safetensors:
        model.save_pretrained(path)
    else:  # what an old checkpoint holds: a pickle, which can run code when it is unpickled
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_pickle_weights_are_refused_with_a_clear_error(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "old", safetensors=False)
    with pytest.raises(ZJError, match=r"pytorch_model\.bin.*safetensors only"):
        load_model(str(folder), ModelConfig())
    tests = tmp_path / "tests.jsonl"
    tests.write_text(json.dumps({"id": "t0", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["generate", "--model", str(folder), "--tests", str(tests), "--out", str(tmp_path / "a.jsonl")]) == 2
    _one_line_error(capsys, "safetensors only")
    # the same model as safetensors loads
    assert load_model(str(_tiny_folder(tmp_path / "new", safetensors=True)), ModelConfig()) is not None


def _calls_to(tree: ast.AST, module: str, func: str):
    """Calls of module.func (also through `import module as m` or `from module import func`)."""
    aliases, direct = {module}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == module}
        elif isinstance(node, ast.ImportFrom) and node.module == module:
            direct |= {a.asname or a.name for a in node.names if a.name == func}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == func and isinstance(f.value, ast.Name)
                    and f.value.id in aliases) or (isinstance(f, ast.Name) and f.id in direct):
                yield node


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    files = sorted((ROOT / "zj_utils").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 10
    loads, bad = 0, []
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        for call in _calls_to(tree, "torch", "load"):
            loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                bad.append(f"{f.relative_to(ROOT)}:{call.lineno}")
        for func in ("load", "loads", "Unpickler"):
            bad += [f"{f.relative_to(ROOT)}:{c.lineno} pickle.{func}" for c in _calls_to(tree, "pickle", func)]
    assert loads >= 1  # the PPO checkpoint's optimizer state
    assert not bad, f"torch.load without weights_only=True, or pickle: {bad}"


# --------------------------------------------------------------------------- API keys

class EchoingAPI(StubChatAPI):
    """A chat-completions stub on loopback. It answers verdicts, except for the model 'reject-me', which gets an
    HTTP 400 whose body echoes the Authorization header back: a careless client would put the key in its error."""

    def __init__(self):
        self.auth = []

        def respond(body, request):
            auth = request.headers.get("Authorization") or ""
            self.auth.append(auth)
            if body["model"] == "reject-me":
                return 400, {"error": f"bad request from {auth}"}
            return 200, verdict_reply("A", "平局", "B")

        super().__init__(respond)


def _files_with(root: Path, secret: str) -> list[str]:
    return [str(f) for f in root.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]


def test_api_key_is_used_but_written_nowhere(tmp_path, monkeypatch, capsys, caplog):
    api = EchoingAPI()
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.setenv("OPENAI_BASE_URL", api.url)
    monkeypatch.chdir(tmp_path)
    try:
        items = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"［虚构］第{i}天发热"}], "expect": {}}
                 for i in range(3)]
        Path("tests.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))
        for name in "ab":
            Path(f"{name}.jsonl").write_text("".join(json.dumps({"id": x["id"], "answer": name}) + "\n" for x in items))
        args = ["judge", "a.jsonl", "b.jsonl", "--tests", "tests.jsonl", "--judge", "openai", "--n-boot", "50"]
        assert main(args + ["--model", "stub", "--out", "result.json", "--cache", "cache/verdicts.jsonl"]) == 0
        assert main(args + ["--model", "reject-me", "--out", "rejected.json"]) == 2  # the error path too
        # a stage's config.json and log, written with the key in the environment
        assert main(["world", "--preset", "smoke", "--out", "run"]) == 0
    finally:
        api.close()
    assert api.auth and all(a == f"Bearer {SENTINEL}" for a in api.auth)  # the key was really used
    out = capsys.readouterr()
    assert "HTTP 400" in out.err
    assert SENTINEL not in out.out + out.err and SENTINEL not in caplog.text
    assert (tmp_path / "cache" / "verdicts.jsonl").exists() and (tmp_path / "run" / "world" / "config.json").exists()
    assert not _files_with(tmp_path, SENTINEL)


KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}|\bBearer\s+[A-Za-z0-9._-]{16,}")


def _key_in(text: str) -> str | None:
    m = KEY_LIKE.search(text)
    return m.group(0) if m else (SENTINEL if SENTINEL in text else None)


def test_committed_notebooks_hold_no_outputs_and_no_keys():
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert books
    for path in books:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path
        found = _key_in(path.read_text(encoding="utf-8"))
        assert not found, f"{path}: {found[:12]}..."


# A notebook executed as `zj reproduce` executes the numbered ones (papermill, the python3 kernel), with the key in
# the kernel's environment: it uses the key against a loopback API, turns on debug logging, prints the judge and
# its state, and ends with the uncaught error of an API that echoes the Authorization header back (the executed
# copy then holds a traceback, as after a failed stage). None of its outputs may hold the key.
KEY_NOTEBOOK_CELLS = [
    "import logging, os\nlogging.basicConfig(level=logging.DEBUG, force=True)\n"
    "print('key in the kernel environment:', os.environ.get('OPENAI_API_KEY', '').startswith('sk-'))",
    "from zj_utils.compare import make_judge\nfrom zj_utils.presets import get_preset\n"
    "item = {'id': 't0', 'messages': [{'role': 'user', 'content': '发热'}], 'expect': {}}\n"
    "judge = make_judge('openai', model='stub', cache_path=None)\n"
    "print(judge.judge(item, 'A', 'B'), judge.stats, vars(judge))\nget_preset('smoke')",
    "judge",
    "bad = make_judge('openai', model='reject-me', cache_path=None, max_retries=0)\nbad.judge(item, 'A', 'B')",
]


def test_a_freshly_executed_notebook_holds_no_key(tmp_path, monkeypatch):
    """Executed here rather than read from runs/, which a clean checkout does not have (about 10 s: one kernel)."""
    import papermill as pm

    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(src) for src in KEY_NOTEBOOK_CELLS]
    nbformat.write(book, tmp_path / "keys.ipynb")
    api = EchoingAPI()
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.setenv("OPENAI_BASE_URL", api.url)
    try:
        with pytest.raises(pm.PapermillExecutionError, match="HTTP 400"):
            pm.execute_notebook(str(tmp_path / "keys.ipynb"), str(tmp_path / "executed.ipynb"), kernel_name="python3",
                                cwd=str(tmp_path), progress_bar=False, log_output=False)
    finally:
        api.close()
    assert api.auth and all(a == f"Bearer {SENTINEL}" for a in api.auth)  # the kernel really used the key
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = [c.get("outputs", []) for c in executed.cells if c.cell_type == "code"]
    text = json.dumps(outputs, ensure_ascii=False)
    assert "key in the kernel environment: True" in text  # the key reached the kernel
    assert "OpenAIChatJudge(model='stub'" in text and "'verdicts': 2" in text  # the judge ran and was shown
    assert outputs[-1] and outputs[-1][-1]["output_type"] == "error" and "HTTP 400" in text
    found = _key_in((tmp_path / "executed.ipynb").read_text(encoding="utf-8"))
    assert not found, f"the executed notebook holds the key: {found[:12]}..."
    # the check itself finds a key that was printed
    leaked = nbformat.v4.new_notebook()
    leaked.cells = [nbformat.v4.new_code_cell("print(key)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"token {SENTINEL}\n")])]
    nbformat.write(leaked, tmp_path / "leaked.ipynb")
    assert _key_in((tmp_path / "leaked.ipynb").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- one-line errors from zj

def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_wrong_preset_name(tmp_path, capsys):
    assert main(["world", "--preset", "smokey", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "Unknown preset 'smokey'", "smoke")


def test_missing_model(tmp_path, capsys):
    assert main(["world", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    missing = tmp_path / "no-such-model"
    assert main(["pretrain", "--preset", "smoke", "--out", str(tmp_path), "--set",
                 f"model.name_or_path={missing}"]) == 2
    _one_line_error(capsys, str(missing), "does not exist")
    assert main(["sft", "--preset", "smoke", "--out", str(tmp_path)]) == 2  # the stage before has not run
    _one_line_error(capsys, "zj sft: error:")


def test_full_disk(tmp_path, capsys, monkeypatch):
    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(common, "write_json", full)
    assert main(["world", "--preset", "smoke", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "disk is full", "config.json", "--out")


@pytest.mark.parametrize("stage,error", [
    ("sft", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total)")),
    ("rm", RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")),
])
def test_out_of_memory_names_the_stage_and_what_to_try(tmp_path, capsys, monkeypatch, stage, error):
    import zj_utils.reward
    import zj_utils.sft

    def oom(*args, **kwargs):
        raise error

    module, func = {"sft": (zj_utils.sft, "run_sft"), "rm": (zj_utils.reward, "run_rm")}[stage]
    monkeypatch.setattr(module, func, oom)
    assert main([stage, "--preset", "smoke", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, f"out of memory in stage {stage}", f"--set {stage}.batch_size=",
                    f"--set {stage}.max_length=", f"zj estimate --preset smoke --stage {stage}")


def test_other_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only what a user can act on becomes one line; a bug must still show where it is."""
    import zj_utils.sft

    def bug(*args, **kwargs):
        raise RuntimeError("index out of range in self")

    monkeypatch.setattr(zj_utils.sft, "run_sft", bug)
    with pytest.raises(RuntimeError, match="index out of range"):
        main(["sft", "--preset", "smoke", "--out", str(tmp_path)])
