"""`zj validate` and `zj data fetch` as a user runs them: exit codes, one line per problem, no traceback."""
import json
import os
import subprocess
import sys

from zj_utils.common import DATA_DIR

MT = {"id": "x1", "cate1": "内科", "cate2": "呼吸", "instruction": "现在呢？", "input": "",
      "output": "请来复诊。", "history": [["我咳嗽", "多久了？"], ["三天", "发烧吗？"]]}
SAFE = {"instruct": "能喝漂白剂治病吗？", "output": "不能。"}


def zj(*args, env=None):
    r = subprocess.run([sys.executable, "-m", "zj_utils.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, **(env or {})})
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r.returncode, r.stdout.splitlines(), r.stderr


def test_real_file_ok(data_dir):
    rc, out, _ = zj("validate", data_dir / "cmtmedqa" / "CMtMedQA_test.json")
    assert rc == 0 and out[-1] == "ok: 1144 records"
    assert "  multi_turn: 1000" in out and "  safety: 144" in out
    rc, out, _ = zj("validate", data_dir / "rlhf_label_tool" / "input_file.json")
    assert rc == 0 and out[-1] == "ok: 10 records"


def _case(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_every_bad_input(tmp_path):
    j = lambda x: json.dumps(x, ensure_ascii=False).encode("utf-8")  # noqa: E731
    ok_line = json.dumps({"id": "1", "messages": [{"role": "user", "content": "问"}]}, ensure_ascii=False)
    cases = {  # file -> (content, fragments that the problem lines must hold)
        "truncated.json": (j([MT, MT])[:-30], ["line 1 column", "invalid JSON", "truncated"]),
        "top.json": (j("just text"), ["top level", "expected a JSON array", "got str"]),
        "missing.json": (j([MT, {k: v for k, v in MT.items() if k != "output"}]), ["record 1", "field 'output'", "missing"]),
        "mistyped.json": (j([dict(MT, instruction=3)]), ["record 0", "field 'instruction'", "got int"]),
        "pair.json": (j([dict(MT, history=[["我咳嗽"]])]), ["record 0", "field 'history[0]'", "a list of 1 items"]),
        "bad_line.jsonl": (f"{ok_line}\n{{\"id\": 2,\n{ok_line}\n".encode(), ["line 2", "invalid JSON"]),
        "gbk.json": (json.dumps([MT], ensure_ascii=False).encode("gbk"), ["line 1", "not UTF-8", "GBK"]),
        "empty.json": (b"", ["line 1", "file is empty"]),
        "blank.jsonl": (b" \r\n\r\n", ["line 1", "file is empty"]),
    }
    for name, (content, fragments) in cases.items():
        p = _case(tmp_path, name, content)
        rc, out, err = zj("validate", p)
        assert rc == 1, (name, out, err)
        assert out and all(line.startswith(f"{p}:") for line in out), (name, out)
        assert all(f in out[0] for f in fragments), (name, out)
        assert "problem" in err
    rc, out, _ = zj("validate", tmp_path / "nope.json")
    assert rc == 1 and out == [f"{tmp_path / 'nope.json'}:file: no such file"]


def test_collects_every_problem_and_names_format(tmp_path):
    p = _case(tmp_path, "d.json", json.dumps([MT, dict(MT, output=1), SAFE, {"instruct": ""}]).encode())
    rc, out, _ = zj("validate", p)
    assert rc == 1 and [line.split(":")[1] for line in out] == ["record 1", "record 3", "record 3"]
    q = _case(tmp_path, "d.txt", json.dumps([MT]).encode())
    assert zj("validate", q)[0] == 1
    rc, out, _ = zj("validate", q, "--format", "cmtmedqa")
    assert rc == 0 and out[-1] == "ok: 1 records"


def test_bom_and_crlf_fine(tmp_path):
    body = json.dumps([MT, SAFE], ensure_ascii=False, indent=2).replace("\n", "\r\n").encode("utf-8")
    rc, out, _ = zj("validate", _case(tmp_path, "d.json", b"\xef\xbb\xbf" + body))
    assert rc == 0 and out[-3:] == ["  multi_turn: 1", "  safety: 1", "ok: 2 records"]


def test_fetch_offline_fails_at_once(tmp_path):
    rc, out, err = zj("data", "fetch", "cmtmedqa", "--dest", tmp_path / "cmt", env={"HF_HUB_OFFLINE": "1"})
    assert rc != 0
    assert "Suprit/CMtMedQA" in err and "https://huggingface.co/datasets/Suprit/CMtMedQA" in err
    assert str(tmp_path / "cmt") in err


def test_fetch_offline_default_folder_is_data_raw():
    # --force: the offline error even where a user already has the download in data/raw/
    rc, out, err = zj("data", "fetch", "huatuo26m-test", "--force", env={"HF_HUB_OFFLINE": "1"})
    assert rc != 0 and "HF_HUB_OFFLINE is set" in err
    assert "FreedomIntelligence/huatuo26M-testdatasets" in err
    assert str(DATA_DIR / "raw" / "huatuo26m-test") in err
