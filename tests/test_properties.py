"""Property-based tests (hypothesis) for what every data step must do: the loaders give back exactly the dialogues
written in each format, a corrupted file is a DataError naming the file and the place (never another exception),
and a ranking turns into preference pairs by the rule (one pair per strictly ordered pair of answers, none for ties,
the chosen answer always ranked better), with every candidate pair accounted for."""
import json
import tempfile
from itertools import combinations
from pathlib import Path

from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from zj_utils.cleaning import clean
from zj_utils.data import DataError, load_dialogues, write_jsonl
from zj_utils.rankings import (load_ranking_input, load_ranking_output, ranked_texts_to_ranks, ranks_to_pairs,
                               to_preference_records, write_ranking_input, write_ranking_output)
from zj_utils.reward import pair_report, rankings_to_pairs

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Texts as they appear in the data: Chinese and ASCII, punctuation, tabs, newlines and quotes inside; the loaders
# strip the ends of texts, so generated texts have none to strip.
_chars = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00\ufeff")
text = st.text(_chars, min_size=1, max_size=30).map(str.strip).filter(bool)
ident = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
pairs = st.lists(st.tuples(text, text), max_size=4)


def _tmp(suffix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="zjprop")) / f"data{suffix}"


def _turns(history, last_user, last_assistant=None):
    msgs = []
    for u, a in history:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": last_user})
    if last_assistant is not None:
        msgs.append({"role": "assistant", "content": last_assistant})
    return msgs


def _write_records(records, container: str, suffix: str) -> Path:
    path = _tmp(suffix)
    if container == "array":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        write_jsonl(path, records)
    return path


# ---------------------------------------------------------------- round trips, every format

cmt_record = st.fixed_dictionaries({"id": ident, "cate1": text, "cate2": text, "instruction": text, "input": st.just(""),
                                    "output": text, "history": pairs.map(lambda ps: [list(p) for p in ps])})
safety_record = st.fixed_dictionaries({"instruct": text, "output": text})


@SETTINGS
@given(st.lists(st.one_of(cmt_record, safety_record), min_size=1, max_size=6))
def test_cmtmedqa_round_trip(records):
    path = _write_records(records, "array", ".json")
    got = load_dialogues(path, "cmtmedqa")
    assert len(got) == len(records)
    for rec, d in zip(records, got):
        if "instruct" in rec:
            assert d["kind"] == "safety" and d["messages"] == _turns([], rec["instruct"], rec["output"])
        else:
            assert d["kind"] == "multi_turn" and d["id"] == rec["id"]
            assert d["messages"] == _turns(rec["history"], rec["instruction"], rec["output"])
            assert (d["meta"]["cate1"], d["meta"]["cate2"]) == (rec["cate1"], rec["cate2"])


message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                 "content": st.text(_chars, max_size=30)})
messages_record = st.fixed_dictionaries({"id": ident, "kind": ident, "messages": st.lists(message, min_size=1, max_size=5)})


@SETTINGS
@given(st.lists(messages_record, min_size=1, max_size=6), st.sampled_from(["jsonl", "array"]))
def test_messages_round_trip(records, container):
    path = _write_records(records, container, ".jsonl" if container == "jsonl" else ".json")
    got = load_dialogues(path, "messages_jsonl")
    assert [(d["id"], d["kind"], d["messages"]) for d in got] == [(r["id"], r["kind"], r["messages"]) for r in records]


sharegpt_record = st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
    {"from": st.sampled_from(["human", "gpt", "system"]), "value": st.text(_chars, max_size=20)}), min_size=1, max_size=4)})


@SETTINGS
@given(st.lists(sharegpt_record, min_size=1, max_size=5))
def test_sharegpt_round_trip(records):
    path = _write_records(records, "jsonl", ".jsonl")
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    got = load_dialogues(path, "messages_jsonl")
    assert [d["messages"] for d in got] == [[{"role": role[m["from"]], "content": m["value"]} for m in r["conversations"]]
                                            for r in records]


huatuo_record = st.fixed_dictionaries({"id": ident, "instruction": st.lists(text, min_size=1, max_size=2),
                                       "input": st.just(""), "output": st.lists(text, min_size=1, max_size=3)})


@SETTINGS
@given(st.lists(huatuo_record, min_size=1, max_size=6), st.sampled_from(["jsonl", "array"]))
def test_huatuo_round_trip(records, container):
    path = _write_records(records, container, ".jsonl" if container == "jsonl" else ".json")
    got = load_dialogues(path, "huatuo")
    assert len(got) == len(records)
    for rec, d in zip(records, got):
        assert d["id"] == rec["id"]
        assert d["messages"] == _turns([], "\n".join(rec["instruction"]), rec["output"][0])
        assert d["meta"].get("more_outputs", []) == rec["output"][1:]


alpaca_record = st.fixed_dictionaries({"id": ident, "instruction": text, "input": st.one_of(st.just(""), text),
                                       "output": text, "history": pairs.map(lambda ps: [list(p) for p in ps])})


@SETTINGS
@given(st.lists(alpaca_record, min_size=1, max_size=6), st.sampled_from(["jsonl", "array"]))
def test_alpaca_round_trip(records, container):
    path = _write_records(records, container, ".jsonl" if container == "jsonl" else ".json")
    got = load_dialogues(path, "alpaca")
    for rec, d in zip(records, got, strict=True):
        question = f"{rec['instruction']}\n{rec['input']}" if rec["input"] else rec["instruction"]
        assert d["messages"] == _turns(rec["history"], question, rec["output"])
        assert d["kind"] == ("multi_turn" if rec["history"] else "single_turn")


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"id": ident, "text": text}), min_size=1, max_size=6))
def test_text_jsonl_and_plain_text_round_trip(records):
    got = load_dialogues(_write_records(records, "jsonl", ".jsonl"), "text_jsonl")
    assert [(d["id"], d["messages"][0]["content"]) for d in got] == [(r["id"], r["text"]) for r in records]
    lines = [t for r in records for t in r["text"].splitlines() if t.strip()]
    path = _tmp(".txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [d["messages"][0]["content"] for d in load_dialogues(path, "text")] == [t.strip() for t in lines]


# the same alphabet as every other format, "\r" included: a lone "\r" inside a text must be quoted by
# rankings.write_ranking_output, or its reader ends the row there
_tsv_chars = _chars
tsv_text = st.text(_tsv_chars, min_size=1, max_size=30).map(str.strip).filter(bool)
ranking = st.fixed_dictionaries({"id": ident, "history": st.lists(st.tuples(tsv_text, tsv_text), max_size=4),
                                 "query": tsv_text,
                                 "responses": st.lists(st.text(_tsv_chars, max_size=20).map(str.strip), min_size=4,
                                                       max_size=4)})


@SETTINGS
@given(st.lists(ranking, min_size=1, max_size=5, unique_by=lambda r: r["id"]))
@example([{"id": "cr", "history": [("头\r痛", "多\r\n久")], "query": "a\rb", "responses": ["x\ry", "", "p\r\rq", "z"]}])
def test_ranking_tool_files_round_trip(records):
    recs = [{"id": r["id"], "messages": _turns(r["history"], r["query"]), "responses": r["responses"],
             "ranked": r["responses"]} for r in records]
    path = _tmp(".json")
    write_ranking_input(path, recs)
    assert [(d["id"], d["messages"], d["responses"]) for d in load_ranking_input(path)] == \
        [(r["id"], r["messages"], r["responses"]) for r in recs]
    path = _tmp(".tsv")
    write_ranking_output(path, recs)
    assert [(d["id"], d["messages"], d["ranked"]) for d in load_ranking_output(path)] == \
        [(r["id"], r["messages"], r["ranked"]) for r in recs]


# ---------------------------------------------------------------- corruptions: DataError naming the place, nothing else

FORMAT_FILES = {  # format -> (records strategy, container, suffix)
    "cmtmedqa": (st.lists(st.one_of(cmt_record, safety_record), min_size=1, max_size=4), "array", ".json"),
    "messages_jsonl": (st.lists(messages_record, min_size=1, max_size=4), "jsonl", ".jsonl"),
    "huatuo": (st.lists(huatuo_record, min_size=1, max_size=4), "jsonl", ".jsonl"),
    "alpaca": (st.lists(alpaca_record, min_size=1, max_size=4), "array", ".json"),
    "text_jsonl": (st.lists(st.fixed_dictionaries({"id": ident, "text": text}), min_size=1, max_size=4), "jsonl",
                   ".jsonl"),
}


@st.composite
def corrupted_file(draw):
    fmt = draw(st.sampled_from(sorted(FORMAT_FILES)))
    records_st, container, suffix = FORMAT_FILES[fmt]
    records = draw(records_st)
    data = (json.dumps(records, ensure_ascii=False, indent=1) if container == "array"
            else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)).encode("utf-8")
    how = draw(st.sampled_from(["truncate", "insert", "delete", "replace", "bad_utf8", "wrong_type", "drop_field"]))
    if how in ("wrong_type", "drop_field"):
        i = draw(st.integers(0, len(records) - 1))
        key = draw(st.sampled_from(sorted(records[i])))
        rec = dict(records[i])
        if how == "drop_field":
            del rec[key]
        else:
            rec[key] = draw(st.sampled_from([None, 3, 2.5, True, {"x": 1}, [1, 2]]))
        records = records[:i] + [rec] + records[i + 1:]
        data = (json.dumps(records, ensure_ascii=False) if container == "array"
                else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)).encode("utf-8")
    else:
        pos = draw(st.integers(0, len(data)))
        if how == "truncate":
            data = data[:pos]
        elif how == "insert":
            data = data[:pos] + draw(st.sampled_from([b"{", b"}", b"[", b"]", b",", b'"', b":", b"\n", b"x", b"\\"])) \
                + data[pos:]
        elif how == "delete":
            data = data[:pos] + data[pos + 1:]
        elif how == "replace":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=3)) + data[pos + 1:]
        else:
            data = data[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe4\xb8", b"\x80"])) + data[pos:]
    return fmt, suffix, data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_file(), st.booleans())
def test_corrupted_files_raise_a_located_data_error_or_load(case, detect):
    fmt, suffix, data = case
    path = _tmp(suffix)
    path.write_bytes(data)
    try:
        got = load_dialogues(path, None if detect else fmt)
    except DataError as e:
        assert str(e).startswith(f"{path}:") and e.location and e.problem, str(e)
        assert "\n" not in e.location
        return
    # a corruption may leave a valid file (a cut at a line end, a changed letter): then it loads as dialogues
    assert all(isinstance(d["messages"], list) and d["messages"] for d in got)


# ---------------------------------------------------------------- rankings -> preference pairs

@st.composite
def ranked_answers(draw):
    n = draw(st.integers(2, 6))
    pool = draw(st.lists(text, min_size=1, max_size=n))  # fewer distinct texts than answers: repeated answers
    responses = [draw(st.sampled_from(pool)) for _ in range(n)]
    ranks = [draw(st.integers(1, n)) for _ in range(n)]
    return responses, ranks


@SETTINGS
@given(ranked_answers())
def test_pairs_are_exactly_the_strictly_ordered_pairs(case):
    responses, ranks = case
    got = ranks_to_pairs(responses, ranks)
    want = {(responses[i], responses[j]) for i in range(len(ranks)) for j in range(len(ranks))
            if ranks[i] < ranks[j] and responses[i] != responses[j]}
    assert len(got) == len(set(got)) and set(got) == want
    for chosen, rejected in got:  # the chosen answer is ranked strictly better than the rejected one somewhere
        assert chosen != rejected
        assert any(ranks[i] < ranks[j] for i in range(len(ranks)) for j in range(len(ranks))
                   if responses[i] == chosen and responses[j] == rejected)


@SETTINGS
@given(st.lists(text, min_size=2, max_size=6, unique=True), st.data())
def test_distinct_answers_give_one_pair_per_strictly_ordered_pair_and_none_for_ties(responses, data):
    ranks = data.draw(st.lists(st.integers(1, 4), min_size=len(responses), max_size=len(responses)))
    got = ranks_to_pairs(responses, ranks)
    strictly_ordered = sum(ranks[i] != ranks[j] for i, j in combinations(range(len(ranks)), 2))
    assert len(got) == strictly_ordered
    rank_of = dict(zip(responses, ranks))
    assert all(rank_of[c] < rank_of[r] for c, r in got)
    if len(set(ranks)) == 1:
        assert got == []


@SETTINGS
@given(st.lists(text, min_size=2, max_size=6))
def test_ranked_texts_to_ranks(ranked):
    responses, ranks = ranked_texts_to_ranks(ranked)
    assert responses == ranked and ranks[0] == 1
    assert all(a <= b or ranked[j] in ranked[:j] for j, (a, b) in enumerate(zip(ranks, ranks[1:]), 1))
    for i, j in combinations(range(len(ranked)), 2):
        assert (ranks[i] == ranks[j]) == (ranked[i] == ranked[j])  # ties are exactly the identical texts
    if len(set(ranked)) == len(ranked):
        n = len(ranked)
        assert len(to_preference_records([{"role": "user", "content": "q"}], responses, ranks)) == n * (n - 1) // 2


@SETTINGS
@given(st.lists(ranked_answers(), min_size=1, max_size=4), st.lists(text, min_size=1, max_size=3))
def test_preference_records_and_the_pair_report_account_for_every_answer_pair(cases, prompt_texts):
    prompt = [{"role": "user", "content": t} for t in prompt_texts]
    rankings = [{"id": f"p{k}", "messages": prompt, "responses": r, "ranks": k_} for k, (r, k_) in enumerate(cases)]
    pairs_ = rankings_to_pairs(rankings)
    report = pair_report(rankings, len(pairs_))
    assert report["in"] == sum(len(r) * (len(r) - 1) // 2 for r, _ in cases)
    assert report["in"] == report["kept"] + sum(report["dropped"].values())
    assert min(report["dropped"].values()) >= 0
    assert report["dropped"]["tied"] == sum(k[i] == k[j] for _, k in cases for i, j in combinations(range(len(k)), 2))
    for p in pairs_:
        assert p["prompt"] == prompt and p["prompt"] is not prompt
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        r = rankings[int(p["prompt_id"][1:])]
        best = {t: min(k for x, k in zip(r["responses"], r["ranks"]) if x == t) for t in r["responses"]}
        worst = {t: max(k for x, k in zip(r["responses"], r["ranks"]) if x == t) for t in r["responses"]}
        assert best[p["chosen"][0]["content"]] < worst[p["rejected"][0]["content"]]


# ---------------------------------------------------------------- cleaning: in = kept + dropped by reason

dialogue = st.fixed_dictionaries({"id": ident, "messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": st.text(_chars, max_size=40)}), min_size=1, max_size=3)})


@SETTINGS
@given(st.lists(dialogue, max_size=12).flatmap(lambda ds: st.just(ds + ds[: len(ds) // 2])))
def test_cleaning_counts_every_record(dialogues):
    assume(dialogues)
    kept, report = clean(dialogues, min_chars=3, max_chars=60, near_dup_threshold=0.9, num_perm=32)
    r = report.as_dict()
    assert r["in"] == len(dialogues) == r["kept"] + sum(r["dropped"].values())
    assert r["kept"] == len(kept)
    assert all(3 <= sum(len(m["content"]) for m in d["messages"]) <= 60 for d in kept)
