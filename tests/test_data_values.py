"""Data checks with known answers: a history pair with an empty text is reported by `zj validate` (and refused by
the loader), and a text holding a lone carriage return survives the ranking tool's TSV both ways."""
import json

import pytest

from zj_utils.data import DataError, load_cmtmedqa, validate
from zj_utils.rankings import load_ranking_output, write_ranking_output


def _cmt(history):
    return {"id": 1, "cate1": "内科", "cate2": "呼吸", "instruction": "现在还咳嗽", "input": "", "output": "多喝水",
            "history": history}


@pytest.mark.parametrize("pair", [["", "请问发热几天了？"], ["发热", ""], ["  ", "请问"], ["发热", "\n\t"]])
def test_validate_reports_an_empty_text_in_a_history_pair(tmp_path, pair):
    path = tmp_path / "cmt.json"
    path.write_text(json.dumps([_cmt([["咳嗽", "多久了？"], pair])], ensure_ascii=False), encoding="utf-8")
    problems = validate(path, "cmtmedqa")
    assert problems == [f"{path}:record 0: field 'history': empty text in a pair"], problems
    with pytest.raises(DataError, match="empty text in a pair"):
        load_cmtmedqa(path)


def test_a_full_history_is_accepted(tmp_path):
    path = tmp_path / "cmt.json"
    path.write_text(json.dumps([_cmt([["咳嗽", "多久了？"], ["三天", "发热吗？"]])], ensure_ascii=False),
                    encoding="utf-8")
    assert validate(path, "cmtmedqa") == []
    (d,) = load_cmtmedqa(path)
    assert [m["content"] for m in d["messages"]] == ["咳嗽", "多久了？", "三天", "发热吗？", "现在还咳嗽", "多喝水"]


def test_ranking_output_round_trips_a_lone_carriage_return(tmp_path):
    """A "\\r" inside the query, an answer or the history (old Mac line ends, pasted text) comes back as written:
    the writer quotes it, so the reader does not end the row there."""
    msgs = [{"role": "user", "content": "头\r痛"}, {"role": "assistant", "content": "多\r久\r\n了"},
            {"role": "user", "content": "两天\r夜里更重"}]
    recs = [{"id": "a", "messages": msgs, "ranked": ["好\r好", "中\r等", "差", "x\ry\tz"]},
            {"id": "b", "messages": msgs[-1:], "ranked": ["1", "2", "3", "4"]}]
    path = tmp_path / "out.tsv"
    write_ranking_output(path, recs)
    back = load_ranking_output(path)
    assert [(x["id"], x["messages"], x["ranked"]) for x in back] == [(r["id"], r["messages"], r["ranked"])
                                                                     for r in recs]
    # rows still end with "\n" alone (as pandas' to_csv writes them); the "\r"s are inside quoted cells
    raw = path.read_bytes()
    assert raw.count(b"\n") - raw.count(b"\r\n") == 3 and raw.startswith(b"id\tquery\thistory\trank1")
