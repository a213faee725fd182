"""Loaders on the real sample files, rankings -> pairs, and every malformed-input case."""
import json
from pathlib import Path

import pytest

from zj_utils.common import DATA_DIR
from zj_utils.data import (FORMATS, DataError, load_cmtmedqa, load_dialogues, load_jsonl, load_messages_jsonl, validate,
                           write_jsonl)
from zj_utils.rankings import (load_ranking_input, load_ranking_output, ranked_texts_to_ranks, ranks_to_pairs,
                               to_preference_records, write_ranking_input, write_ranking_output)

CMT = DATA_DIR / "cmtmedqa" / "CMtMedQA_test.json"
RANK_IN = DATA_DIR / "rlhf_label_tool" / "input_file.json"
RANK_OUT = DATA_DIR / "rlhf_label_tool" / "output_result.tsv"

def real(test):
    """Tests on the real sample files in the repository's data/. A missing file is a broken checkout, so these
    fail with the path rather than skip."""
    return pytest.mark.usefixtures("data_dir")(test)

MT = {"id": "x1", "cate1": "内科", "cate2": "呼吸", "instruction": "现在呢？", "input": "",
      "output": "请来复诊。", "history": [["我咳嗽", "多久了？"], ["三天", "发烧吗？"]]}
SAFE = {"instruct": "  能喝漂白剂治病吗？ ", "output": " 不能。\n"}


def _alternates(messages):
    roles = [m["role"] for m in messages]
    return roles == ["user", "assistant"] * (len(roles) // 2) and roles


def _write_json(tmp_path, data, name="d.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return p


def _raises(path, *fragments, loader=load_dialogues, format=None):
    with pytest.raises(DataError) as e:
        loader(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:"), msg
    for frag in fragments:
        assert frag in msg, msg
    assert msg in validate(path, format), "validate must report the same problem"
    return msg


# ---------------------------------------------------------------- real files

@real
def test_real_cmtmedqa():
    d = load_cmtmedqa(CMT)
    assert len(d) == 1144
    multi = [x for x in d if x["kind"] == "multi_turn"]
    safety = [x for x in d if x["kind"] == "safety"]
    assert (len(multi), len(safety)) == (1000, 144)
    assert d[0]["id"] == "j4219" and d[0]["meta"]["cate1"] == "肿瘤科"
    assert len({x["id"] for x in d}) == 1144
    assert len({x["meta"]["cate1"] for x in multi}) == 17
    assert {x["id"] for x in safety} == {f"safety-{i}" for i in range(1000, 1144)}
    assert len({x["messages"][0]["content"] for x in safety}) == 138
    for x in safety:
        assert len(x["messages"]) == 2
        assert all(m["content"] == m["content"].strip() for m in x["messages"])
    for x in d:
        assert _alternates(x["messages"]) and x["messages"][-1]["role"] == "assistant"
    assert d[0]["messages"][-1]["content"].startswith("不客气")
    first = json.loads(CMT.read_text(encoding="utf-8"))[0]
    assert len(d[0]["messages"]) == 2 * len(first["history"]) + 2
    assert load_dialogues(CMT) == d and validate(CMT) == []


@real
def test_real_ranking_files():
    r = load_ranking_input(RANK_IN)
    assert len(r) == 10 and [x["id"] for x in r] == [str(i) for i in range(10)]
    assert all(len(x["responses"]) == 4 for x in r)
    for x in r:
        roles = [m["role"] for m in x["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert len(r[5]["messages"]) == 2 * 3 + 1
    o = load_ranking_output(RANK_OUT)
    assert [x["id"] for x in o] == ["0", "2"] and all(len(x["ranked"]) == 4 for x in o)
    # row 0 ranks the same text first and last: a tie, so it never becomes a pair against itself
    responses, ranks = ranked_texts_to_ranks(o[0]["ranked"])
    assert ranks == [1, 2, 3, 1]
    assert all(c != r for c, r in ranks_to_pairs(responses, ranks))
    # the TSV's rank1 is one of the input's responses for the same id
    assert o[1]["ranked"][0] in r[2]["responses"]
    assert validate(RANK_IN) == [] and validate(RANK_OUT) == []


def test_repo_data_files_or_a_loud_error(tmp_path, monkeypatch):
    """The sample files are read from the repository's data/; without them the error names the file, never a
    skip or a silent fallback."""
    from zj_utils import common
    from zj_utils.plots import read_paper_wtl

    assert common.data_file("cmtmedqa", "CMtMedQA_test.json") == CMT
    assert len(read_paper_wtl()["4a"]) == 5
    monkeypatch.setattr(common, "DATA_DIR", tmp_path / "data")
    for parts, call in [(("cmtmedqa", "CMtMedQA_test.json"), common.data_file),
                        (("paper", "zhongjing_reported_win_tie_loss.csv"), lambda *_: read_paper_wtl())]:
        with pytest.raises(common.ZJError) as e:
            call(*parts)
        assert str(tmp_path.joinpath("data", *parts)) in str(e.value) and "data/README.md" in str(e.value)


# ---------------------------------------------------------------- both shapes, round trips

def test_both_shapes_and_input_field(tmp_path):
    extra = dict(MT, id=7, input="补充：无过敏", unknown_key=1)
    d = load_cmtmedqa(_write_json(tmp_path, [MT, SAFE, extra], "sft_multiturn.json"))
    assert [x["kind"] for x in d] == ["multi_turn", "safety", "multi_turn"]
    assert d[0]["messages"] == [
        {"role": "user", "content": "我咳嗽"}, {"role": "assistant", "content": "多久了？"},
        {"role": "user", "content": "三天"}, {"role": "assistant", "content": "发烧吗？"},
        {"role": "user", "content": "现在呢？"}, {"role": "assistant", "content": "请来复诊。"}]
    assert d[0]["meta"]["cate2"] == "呼吸" and d[0]["source"] == "sft_multiturn"
    assert d[1]["id"] == "safety-1" and [m["content"] for m in d[1]["messages"]] == ["能喝漂白剂治病吗？", "不能。"]
    assert d[2]["id"] == "7" and d[2]["messages"][-2]["content"] == "现在呢？\n补充：无过敏"


def test_ranking_round_trip(tmp_path):
    msgs = [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "多久了？"},
            {"role": "user", "content": "两天\t，夜里更重"}]
    recs = [{"id": "a", "messages": msgs, "ranked": ["好", "中\n等", "差 \"引号\"", "好"]},
            {"id": "b", "messages": msgs[-1:], "ranked": ["1", "2", "3", "4"]}]
    p = tmp_path / "out.tsv"
    write_ranking_output(p, recs)
    back = load_ranking_output(p)
    assert [(x["id"], x["messages"], x["ranked"]) for x in back] == [(r["id"], r["messages"], r["ranked"]) for r in recs]
    q = tmp_path / "in.json"
    write_ranking_input(q, [{"id": "a", "messages": msgs, "responses": ["w", "x", "y", "z"]}])
    (x,) = load_ranking_input(q)
    assert x["messages"] == msgs and x["responses"] == ["w", "x", "y", "z"]


def test_jsonl_round_trip_and_messages(tmp_path):
    recs = [{"id": "s1", "kind": "safety", "messages": [{"role": "system", "content": "你是医生"},
                                                         {"role": "user", "content": "［虚构］问"}],
             "disease_id": "D00", "expect": {"refuse": True}}]
    p = tmp_path / "t.jsonl"
    write_jsonl(p, recs)
    assert load_jsonl(p) == recs
    (d,) = load_dialogues(p)
    assert d == {"id": "s1", "source": "t", "kind": "safety", "messages": recs[0]["messages"],
                 "meta": {"disease_id": "D00", "expect": {"refuse": True}}}
    assert load_messages_jsonl(p) == [d]


# ---------------------------------------------------------------- rankings -> pairs

def test_ranks_to_pairs_with_ties():
    a, b, c, d = "A", "B", "C", "D"
    expected = {(d, b), (d, a), (d, c), (b, c), (a, c)}  # D > B = A > C
    for ranks in ([2, 2, 4, 1], [2, 2, 3, 1]):
        pairs = ranks_to_pairs([a, b, c, d], ranks)
        assert len(pairs) == 5 and set(pairs) == expected
    assert ranks_to_pairs([a, b], [1, 1]) == []
    assert ranks_to_pairs([a, a, b], [1, 2, 3]) == [(a, b)]  # same text: no self pair, no duplicate
    with pytest.raises(ValueError):
        ranks_to_pairs([a, b], [1])


def test_ranked_texts_and_preference_records():
    responses, ranks = ranked_texts_to_ranks(["x", "y", "x", "z"])
    assert ranks == [1, 2, 1, 4]
    assert set(ranks_to_pairs(responses, ranks)) == {("x", "y"), ("x", "z"), ("y", "z")}
    prompt = [{"role": "user", "content": "问"}]
    recs = to_preference_records(prompt, ["好", "差"], [1, 2])
    assert recs == [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "好"}],
                     "rejected": [{"role": "assistant", "content": "差"}]}]


# ---------------------------------------------------------------- malformed inputs

def test_truncated_json(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([MT, MT], ensure_ascii=False, indent=2)[:-40], encoding="utf-8")
    _raises(p, "line ", "column", "invalid JSON")


def test_wrong_top_level_type(tmp_path):
    _raises(_write_json(tmp_path, {"a": 1}), "top level", "object", loader=load_cmtmedqa,
            format="cmtmedqa")
    _raises(_write_json(tmp_path, "text", "s.json"), "top level", "got str")
    _raises(_write_json(tmp_path, [MT], "r.json"), "top level", loader=load_ranking_input,
            format="ranking_input")
    _raises(_write_json(tmp_path, [], "e.json"), "top level", "no records")


def test_missing_and_mistyped_fields(tmp_path):
    bad = dict(MT)
    del bad["output"]
    _raises(_write_json(tmp_path, [MT, MT, bad]), "record 2", "field 'output'", "missing")
    _raises(_write_json(tmp_path, [MT, dict(MT, instruction=3)]), "record 1", "field 'instruction'", "int")
    _raises(_write_json(tmp_path, [dict(MT, history="我咳嗽")]), "record 0", "field 'history'",
            "expected a list of [patient, doctor] pairs, got str")
    _raises(_write_json(tmp_path, [SAFE, {"instruct": 5, "output": "x"}]), "record 1", "field 'instruct'")
    _raises(_write_json(tmp_path, [MT, "text"]), "record 1", "expected an object")
    _raises(_write_json(tmp_path, [{"question": "?"}]), "record 0", "field 'instruction'", "missing")
    rin = {"0": {"query": "q", "history": [], "response_0": "a", "response_1": "b", "response_2": "c"}}
    _raises(_write_json(tmp_path, rin, "r.json"), "record 0", "field 'response_3'", "missing")


def test_history_pair_of_wrong_length(tmp_path):
    bad = dict(MT, history=[["我咳嗽", "多久了？"], ["只有病人"]])
    _raises(_write_json(tmp_path, [MT, bad]), "record 1", "field 'history[1]'", "pair", "a list of 1 items")
    bad = dict(MT, history=[["我咳嗽", 2]])
    _raises(_write_json(tmp_path, [bad]), "record 0", "field 'history[0]'", "int")


def test_validate_collects_every_problem(tmp_path):
    bad1, bad2 = dict(MT, output=None), dict(MT, history=[["a"]])
    p = _write_json(tmp_path, [MT, bad1, SAFE, bad2, {"instruct": ""}])
    problems = validate(p)
    assert len(problems) == 4, problems
    assert [s.split(":")[1] for s in problems] == ["record 1", "record 3", "record 4", "record 4"]
    assert all(s.startswith(f"{p}:") for s in problems)
    assert validate(_write_json(tmp_path, [MT, SAFE], "ok.json")) == []


def test_bad_jsonl_line(tmp_path):
    p = tmp_path / "t.jsonl"
    good = json.dumps({"id": "1", "messages": [{"role": "user", "content": "问"}]}, ensure_ascii=False)
    p.write_text(f"{good}\n{good}\n{{\"id\": \"3\", \"messa\n", encoding="utf-8")
    _raises(p, "line 3", "invalid JSON", loader=load_jsonl)
    p.write_text(f"{good}\n[1, 2]\n", encoding="utf-8")
    _raises(p, "line 2", "expected a JSON object", loader=load_jsonl)
    p.write_text(f"{good}\n" + json.dumps({"id": "2", "messages": [{"role": "doctor", "content": "x"}]}) + "\n")
    _raises(p, "line 2", "field 'messages[0].role'", "doctor")
    p.write_text(json.dumps({"id": "2", "messages": [{"role": "user", "content": 1}]}) + "\n")
    _raises(p, "line 1", "field 'messages[0].content'")
    p.write_text(json.dumps({"id": "2", "text": "x"}) + "\n")  # auto-detected as a pre-training corpus
    _raises(p, "line 1", "field 'messages'", "missing", loader=load_messages_jsonl, format="messages_jsonl")


def test_bad_tsv(tmp_path):
    p = tmp_path / "o.tsv"
    p.write_text("id\tquery\thistory\trank1\trank2\trank3\trank4\n0\tq\t[]\ta\tb\n", encoding="utf-8")
    _raises(p, "line 2", "7 tab-separated cells")
    p.write_text("id\tquery\thistory\trank1\trank2\trank3\trank4\n0\tq\t[[\"a\"]]\ta\tb\tc\td\n",
                 encoding="utf-8")
    _raises(p, "line 2", "field 'history[0]'")
    p.write_text("id\tquestion\n0\tq\n", encoding="utf-8")
    _raises(p, "line 1", "header")


def test_gbk_file(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(json.dumps([MT], ensure_ascii=False).encode("gbk"))
    _raises(p, "line 1", "not UTF-8", "GBK")
    q = tmp_path / "t.jsonl"
    q.write_bytes(b'{"id": "1"}\n' + '{"id": "医生"}\n'.encode("gbk"))
    _raises(q, "line 2", "not UTF-8", "GBK", loader=load_jsonl)


def test_empty_file(tmp_path):
    for name in ("d.json", "t.jsonl", "o.tsv"):
        p = tmp_path / name
        p.write_text("  \n", encoding="utf-8")
        _raises(p, "empty")


def test_bom_and_crlf_accepted(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([MT, SAFE], ensure_ascii=False, indent=1)
                  .replace("\n", "\r\n").encode("utf-8"))
    assert [x["kind"] for x in load_cmtmedqa(p)] == ["multi_turn", "safety"]
    q = tmp_path / "t.jsonl"
    line = json.dumps({"id": "1", "messages": [{"role": "user", "content": "问"}]}, ensure_ascii=False)
    q.write_bytes(b"\xef\xbb\xbf" + f"{line}\r\n{line}\r\n".encode("utf-8"))
    assert len(load_messages_jsonl(q)) == 2
    t = tmp_path / "o.tsv"
    write_ranking_output(t, [{"id": "0", "messages": [{"role": "user", "content": "q"}], "ranked": list("abcd")}])
    t.write_bytes(b"\xef\xbb\xbf" + t.read_bytes().replace(b"\n", b"\r\n"))
    assert load_ranking_output(t)[0]["ranked"] == list("abcd")


def test_format_selection(tmp_path):
    p = _write_json(tmp_path, [MT], "d.txt")
    _raises(p, "format", "cmtmedqa, ranking_input, ranking_output, messages_jsonl")
    assert len(load_dialogues(p, format="cmtmedqa")) == 1
    with pytest.raises(DataError, match="known formats"):
        load_dialogues(p, format="parquet")
    assert validate(p, format="nope")[0].endswith("known formats: " + ", ".join(FORMATS))


# ---------------------------------------------------------------- streaming, more formats, detection, datasets

@real
def test_streaming_reader_matches_json_at_any_chunk_size(monkeypatch):
    import zj_utils.data as data
    import zj_utils.readers as readers
    whole = load_cmtmedqa(CMT)
    for chunk in (7, 1000, 65536):  # items and multi-byte characters cut at every kind of boundary
        monkeypatch.setattr(readers, "CHUNK", chunk)
        assert load_cmtmedqa(CMT) == whole
    check = data.check(CMT)
    assert check == {"format": "cmtmedqa", "counts": {"multi_turn": 1000, "safety": 144}, "records": 1144,
                     "problems": []}


def test_streaming_errors_at_chunk_boundaries(tmp_path, monkeypatch):
    import zj_utils.readers as readers
    text = json.dumps([MT, SAFE, MT], ensure_ascii=False, indent=2)
    p = tmp_path / "d.json"
    for chunk in (5, 64, 1 << 20):
        monkeypatch.setattr(readers, "CHUNK", chunk)
        for cut in (1, 40, len(text) // 2, len(text) - 3):
            p.write_text(text[:cut], encoding="utf-8")
            msg = _raises(p, "invalid JSON")
            assert "line " in msg and "column" in msg
        bad = text.replace('"output": "请来复诊。"', '"output": "请来复诊。",,', 2)
        p.write_text(bad, encoding="utf-8")
        with pytest.raises(json.JSONDecodeError) as e:
            json.loads(bad)
        _raises(p, f"line {e.value.lineno} column {e.value.colno}: invalid JSON: {e.value.msg}")
        p.write_text(text[:-1] + ",]", encoding="utf-8")
        _raises(p, "trailing comma")
        p.write_text(text + "\n[]", encoding="utf-8")
        _raises(p, "extra data")


def test_huatuo_alpaca_sharegpt_text(tmp_path):
    hua = [{"id": "", "instruction": ["头痛怎么办？"], "input": "", "output": ["多休息。", "看医生。"]},
           {"id": "", "instruction": ["发烧"], "input": "三天", "output": ["请就医"]}]
    p = tmp_path / "test_datasets.jsonl"
    write_jsonl(p, hua)
    d = load_dialogues(p)
    assert [x["id"] for x in d] == ["test_datasets-0", "test_datasets-1"] and d[0]["kind"] == "single_turn"
    assert d[0]["messages"][1]["content"] == "多休息。" and d[0]["meta"]["more_outputs"] == ["看医生。"]
    assert d[1]["messages"][0]["content"] == "发烧\n三天"
    assert load_dialogues(_write_json(tmp_path, hua, "h.json")) == [dict(x, source="h", id=f"h-{i}")
                                                                     for i, x in enumerate(d)]
    _raises(_write_json(tmp_path, [dict(hua[0], instruction=[1])], "h.json"), "record 0", "field 'instruction[0]'")

    alp = [{"instruction": "解释高血压", "input": "", "output": "血压持续升高。"},
           {"instruction": "翻译", "input": "fever", "output": "发热", "system": "你是医生", "history": [["你好", "你好"]]}]
    d = load_dialogues(_write_json(tmp_path, alp, "alpaca.json"))
    assert [x["kind"] for x in d] == ["single_turn", "multi_turn"]
    assert [m["role"] for m in d[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert d[1]["messages"][3]["content"] == "翻译\nfever"
    _raises(_write_json(tmp_path, [alp[0], {"instruction": "x"}], "a.json"), "record 1", "field 'output'", "missing")

    q = tmp_path / "sharegpt.jsonl"
    write_jsonl(q, [{"id": "c1", "conversations": [{"from": "human", "value": "嗨"}, {"from": "gpt", "value": "您好"}]}])
    assert load_dialogues(q)[0]["messages"] == [{"role": "user", "content": "嗨"}, {"role": "assistant", "content": "您好"}]
    write_jsonl(q, [{"conversations": [{"from": "doctor", "value": "嗨"}]}])
    _raises(q, "line 1", "conversations[0].from", "doctor")

    t = tmp_path / "corpus.txt"
    t.write_bytes("\ufeff第一篇。\r\n\r\n  第二篇。 \r\n".encode("utf-8"))
    d = load_dialogues(t)
    assert [x["messages"][0]["content"] for x in d] == ["第一篇。", "第二篇。"] and d[1]["id"] == "corpus-3"
    j = tmp_path / "pretrain.jsonl"
    write_jsonl(j, [{"text": "文本一", "kind": "passage"}, {"text": ""}])
    _raises(j, "line 2", "field 'text'", "empty")


def test_detect_format(tmp_path):
    from zj_utils.data import detect_format
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    write_jsonl(tmp_path / "m.jsonl", [{"messages": []}])
    write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "h.jsonl", [{"id": "", "instruction": ["x"], "output": ["y"]}])
    (tmp_path / "r.json").write_text(json.dumps({"0": {"query": "q"}}), encoding="utf-8")
    (tmp_path / "c.data").write_text(json.dumps([SAFE]), encoding="utf-8")
    got = {p.name: detect_format(p) for p in sorted(tmp_path.iterdir())}
    assert got == {"a.jsonl": "alpaca", "c.data": "cmtmedqa", "h.jsonl": "huatuo", "m.jsonl": "messages_jsonl",
                   "r.json": "ranking_input", "t.jsonl": "text_jsonl"}
    _raises(tmp_path / "missing.json", "file", "no such file")


def test_to_dataset(tmp_path):
    from zj_utils.data import to_dataset
    p = _write_json(tmp_path, [MT, SAFE], "d.json")
    ds = to_dataset(p, cache_dir=tmp_path / "cache")
    assert ds.num_rows == 2 and ds.column_names == ["id", "source", "kind", "messages", "meta"]
    assert ds[0]["messages"] == load_cmtmedqa(p)[0]["messages"] and json.loads(ds[0]["meta"])["cate1"] == "内科"
    p.write_text(json.dumps([MT, SAFE, SAFE], ensure_ascii=False), encoding="utf-8")  # a changed file is re-read
    assert to_dataset(p, cache_dir=tmp_path / "cache").num_rows == 3
    q = _write_json(tmp_path, [MT, {"instruct": 1}], "bad.json")
    with pytest.raises(DataError, match="record 1"):
        to_dataset(q, cache_dir=tmp_path / "cache")
    r = to_dataset([{"id": "a", "source": "s", "kind": "ranking", "messages": [{"role": "user", "content": "q"}],
                     "responses": ["1", "2", "3", "4"], "meta": {}}])
    assert json.loads(r[0]["meta"]) == {"responses": ["1", "2", "3", "4"]}


# ---------------------------------------------------------------- test sets (`zj generate`, `zj judge`, `zj eval`)

@real
def test_real_cmtmedqa_as_test_records():
    from zj_utils.data import load_test_records

    recs = load_test_records(CMT)
    dialogues = load_cmtmedqa(CMT)
    assert [r["set"] for r in recs] == ["cmtmedqa_multiturn"] * 1000 + ["cmtmedqa_safety"] * 144
    # the conversation up to the patient's last turn; the doctor's last answer is the reference
    for r, d in zip(recs, dialogues):
        assert r["messages"] == d["messages"][:-1] and r["reference"] == d["messages"][-1]["content"]
        assert r["messages"][-1]["role"] == "user" and "expect" not in r
    assert recs[0]["id"] == "j4219" and recs[0]["meta"]["cate1"] == "肿瘤科"
    first = json.loads(CMT.read_text(encoding="utf-8"))[0]
    assert recs[0]["messages"][-1]["content"] == first["instruction"].strip()
    assert len(recs[0]["messages"]) == 2 * len(first["history"]) + 1
    # safety records carry no id: file stem + their index in the array, stable from one read to the next
    assert [r["id"] for r in recs[1000:]] == [f"CMtMedQA_test-{i}" for i in range(1000, 1144)]
    assert recs[1000]["messages"] == [{"role": "user", "content": json.loads(CMT.read_text())[1000]["instruct"].strip()}]
    assert len({r["id"] for r in recs}) == 1144 and load_test_records(CMT) == recs


def test_test_records_of_every_format(tmp_path):
    from zj_utils.data import load_test_records

    # Huatuo-26M as the paper's repository has it (one-item lists, empty ids) and as the hub's copy names it
    hua = [{"id": "", "instruction": ["头痛怎么办？"], "input": "", "output": ["多休息。", "看医生。"]},
           {"id": "h7", "instruction": ["发烧"], "input": "三天", "output": ["请就医"]}]
    p = tmp_path / "huatuo26M_test.json"
    p.write_text(json.dumps(hua, ensure_ascii=False), encoding="utf-8")
    recs = load_test_records(p)
    assert [(r["id"], r["set"]) for r in recs] == [("huatuo26M_test-0", "huatuo26m"), ("h7", "huatuo26m")]
    assert recs[0]["messages"] == [{"role": "user", "content": "头痛怎么办？"}] and recs[0]["reference"] == "多休息。"
    assert recs[1]["messages"][0]["content"] == "发烧\n三天"
    hub = tmp_path / "test_datasets.jsonl"
    write_jsonl(hub, [{"questions": ["头痛怎么办？"], "answers": ["多休息。"]}, {"questions": "咳嗽", "answers": ["喝水"]}])
    recs = load_test_records(hub)
    assert [(r["id"], r["set"], r["reference"]) for r in recs] == [
        ("test_datasets-0", "huatuo26m", "多休息。"), ("test_datasets-1", "huatuo26m", "喝水")]
    assert validate(hub) == [] and load_dialogues(hub)[1]["messages"][0]["content"] == "咳嗽"
    # chat JSONL: a final assistant turn is the reference; without one, the `reference` field (or none)
    chat = tmp_path / "chat.jsonl"
    write_jsonl(chat, [
        {"messages": [{"role": "user", "content": "问1"}, {"role": "assistant", "content": "答1"}]},
        {"id": "c2", "set": "mine", "conversations": [{"from": "human", "value": "问2"}]},
        {"id": "c3", "messages": [{"role": "system", "content": "你是医生"}, {"role": "user", "content": "问3"}],
         "reference": "答3", "expect": {"refuse": True}}])
    recs = load_test_records(chat)
    assert [(r["id"], r["set"], r["reference"]) for r in recs] == [("chat-0", "chat", "答1"), ("c2", "mine", None),
                                                                  ("c3", "chat", "答3")]
    assert recs[0]["messages"] == [{"role": "user", "content": "问1"}] and "expect" not in recs[0]
    assert recs[2]["expect"] == {"refuse": True} and [m["role"] for m in recs[2]["messages"]] == ["system", "user"]
    # Alpaca, with history
    alp = _write_json(tmp_path, [{"instruction": "翻译", "input": "fever", "output": "发热", "history": [["你好", "你好"]]}],
                      "alpaca.json")
    (r,) = load_test_records(alp)
    assert (r["id"], r["set"], r["reference"], len(r["messages"])) == ("alpaca-0", "alpaca", "发热", 3)


def test_test_record_errors_name_file_record_and_field(tmp_path):
    from zj_utils.data import load_test_records

    _raises(_write_json(tmp_path, [MT, dict(MT, id="x2", output=None)]), "record 1", "field 'output'",
            loader=load_test_records)
    with pytest.raises(DataError, match=r"d\.json:record 2: field 'id': 'x1' is the id of record 0 too"):
        load_test_records(_write_json(tmp_path, [MT, SAFE, dict(MT)]))  # a test set's ids must be unique
    p = tmp_path / "t.jsonl"
    write_jsonl(p, [{"id": "a", "messages": [{"role": "user", "content": "问"}], "reference": ""}])
    with pytest.raises(DataError, match=r"t\.jsonl:line 1: field 'reference': empty text"):
        load_test_records(p)
    write_jsonl(p, [{"id": "a", "messages": [{"role": "assistant", "content": "答"}]}])
    with pytest.raises(DataError, match=r"line 1: field 'messages': a test item must end with the patient's"):
        load_test_records(p)
    write_jsonl(p, [{"id": "a", "messages": [{"role": "user", "content": "问"}], "expect": "refuse"}])
    with pytest.raises(DataError, match=r"line 1: field 'expect': expected object, got str"):
        load_test_records(p)
    with pytest.raises(DataError, match="is not a test set"):
        load_test_records(RANK_OUT if RANK_OUT.exists() else p, format="ranking_output")
    txt = tmp_path / "notes.txt"
    txt.write_text("一行文字\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes\.txt:format: a text file is not a test set"):
        load_test_records(txt)
