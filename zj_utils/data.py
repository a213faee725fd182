"""Loaders for every dialogue file the project reads, into one schema (docs/DESIGN.md).

Every dialogue is ``{"id", "source", "kind", "messages": [{"role", "content"}], "meta"}``; a pre-training
document is one too, with kind ``text`` and its text as a single assistant message.
Formats (detected from the extension and the content, or named):

- ``cmtmedqa``: JSON array of multi-turn records ``{id, cate1, cate2, instruction, input, output, history}``
  mixed with safety records ``{instruct, output}``;
- ``huatuo``: Huatuo-26M ``{id, instruction: [str], input, output: [str]}`` (``id`` may be empty), or the hub's
  copy of its test split ``{questions: [str], answers: [str]}``;
- ``alpaca``: ``{instruction, input, output}`` (optional ``system``, ``history``, ``id``);
- ``messages_jsonl``: chat records with ``messages: [{role, content}]`` (OpenAI) or
  ``conversations: [{from, value}]`` (ShareGPT);
- ``text_jsonl``: pre-training records ``{text, ...}``; ``text``: plain text, one document per line;
- ``ranking_input`` / ``ranking_output``: the ranking tool's JSON ``{id: {query, history, response_0..3}}``
  and TSV ``id, query, history, rank1..rank4``.

Record formats read either a JSON array or JSON Lines, both streamed: a large file is never held in memory
whole. Readers are strict: a malformed file raises :class:`DataError` naming ``PATH:LOCATION: problem``
at the first problem, while :func:`validate` runs the same checks and collects every problem. The streaming
readers and the field checks themselves are in :mod:`zj_utils.readers`; the ranking tool's two files are read
by :mod:`zj_utils.rankings`, which also writes them and turns rankings into preference pairs.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from .rankings import _ranking_input, _ranking_output
from .readers import (DataError, _Abort, _ArrayReader, _field, _history, _jsonl_rows, _lines, _open,
                      _pairs_to_messages, _parse_json, _read_text, _Report, _text, _tname)

FORMATS = ("cmtmedqa", "ranking_input", "ranking_output", "messages_jsonl", "huatuo", "alpaca", "text",
           "text_jsonl")
RECORD_FORMATS = ("cmtmedqa", "messages_jsonl", "huatuo", "alpaca", "text_jsonl")  # JSON array or JSONL
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "chatgpt": "assistant", "system": "system"}


# ---------------------------------------------------------------- record shapes (one function per format)
# Each takes (record, index, location, report, source) and returns a dialogue, or None after reporting.

def _rec_cmtmedqa(rec: dict, i: int, loc: str, report, source: str):
    if "instruct" in rec and "instruction" not in rec:  # the safety shape {instruct, output}
        prompt, answer = _text(rec, "instruct", report, loc), _text(rec, "output", report, loc)
        if prompt is None or answer is None:
            return None
        return {"id": f"safety-{i}", "source": source, "kind": "safety",
                "messages": _pairs_to_messages([(prompt, answer)]), "meta": {"index": i}}
    if not any(k in rec for k in ("instruction", "history", "output")):
        report(loc, "field 'instruction': missing (neither a multi-turn record {id, cate1, cate2, "
                    "instruction, input, output, history} nor a safety record {instruct, output}; "
                    f"keys: {sorted(rec)})")
        return None
    rid = _field(rec, "id", report, loc, types=(str, int))
    instruction = _text(rec, "instruction", report, loc)
    extra = _text(rec, "input", report, loc, required=False, allow_empty=True)
    answer = _text(rec, "output", report, loc)
    cate1 = _field(rec, "cate1", report, loc, required=False, default="")
    cate2 = _field(rec, "cate2", report, loc, required=False, default="")
    history = _history(rec["history"], report, loc) if "history" in rec else report(loc, "field 'history': missing")
    if None in (rid, instruction, extra, answer, cate1, cate2, history):
        return None
    if extra:
        instruction = f"{instruction}\n{extra}"
    if not all(t for pair in history for t in pair):
        report(loc, "field 'history': empty text in a pair")
        return None
    return {"id": str(rid), "source": source, "kind": "multi_turn",
            "messages": _pairs_to_messages(history, instruction, answer),
            "meta": {"cate1": cate1, "cate2": cate2, "index": i}}


def _text_list(rec, key, report, loc):
    """Huatuo's ``[str, ...]`` (a bare string is accepted too) -> stripped non-empty texts, or None."""
    value = _field(rec, key, report, loc, types=(list, str))
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    bad = [k for k, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        report(loc, f"field '{key}[{bad[0]}]': expected a string, got {_tname(items[bad[0]])}")
        return None
    items = [t.strip() for t in items if t.strip()]
    if not items:
        report(loc, f"field {key!r}: empty text")
        return None
    return items


def _rec_huatuo(rec: dict, i: int, loc: str, report, source: str):
    rid = _field(rec, "id", report, loc, types=(str, int), required=False, default="")
    # the paper's repository names the fields instruction/output; the hub's copy questions/answers
    hub = "instruction" not in rec and "output" not in rec and ("questions" in rec or "answers" in rec)
    questions = _text_list(rec, "questions" if hub else "instruction", report, loc)
    answers = _text_list(rec, "answers" if hub else "output", report, loc)
    extra = _text(rec, "input", report, loc, required=False, allow_empty=True)
    if None in (rid, questions, answers, extra):
        return None
    question = "\n".join(questions + ([extra] if extra else []))
    meta = {"index": i} | ({"more_outputs": answers[1:]} if len(answers) > 1 else {})
    return {"id": str(rid) if str(rid).strip() else f"{source}-{i}", "source": source, "kind": "single_turn",
            "messages": _pairs_to_messages([], question, answers[0]), "meta": meta}


def _rec_alpaca(rec: dict, i: int, loc: str, report, source: str):
    rid = _field(rec, "id", report, loc, types=(str, int), required=False, default=f"{source}-{i}")
    instruction = _text(rec, "instruction", report, loc)
    extra = _text(rec, "input", report, loc, required=False, allow_empty=True)
    answer = _text(rec, "output", report, loc)
    system = _text(rec, "system", report, loc, required=False, allow_empty=True)
    history = _history(rec["history"], report, loc) if "history" in rec else []
    if None in (rid, instruction, extra, answer, system, history):
        return None
    question = f"{instruction}\n{extra}" if extra else instruction
    msgs = ([{"role": "system", "content": system}] if system else []) + _pairs_to_messages(history, question, answer)
    meta = {k: v for k, v in rec.items() if k not in ("id", "instruction", "input", "output", "system", "history")}
    return {"id": str(rid), "source": source, "kind": "multi_turn" if history else "single_turn",
            "messages": msgs, "meta": meta | {"index": i}}


def _rec_messages(rec: dict, i: int, loc: str, report, source: str):
    key = "conversations" if "conversations" in rec and "messages" not in rec else "messages"
    msgs = _field(rec, key, report, loc, types=(list,))
    rid = _field(rec, "id", report, loc, types=(str, int), required=False, default=f"{source}-{i}")
    if msgs is None or rid is None:
        return None
    ok = bool(msgs)
    if not ok:
        report(loc, f"field {key!r}: empty list")
    out = []
    for k, m in enumerate(msgs):
        if key == "conversations" and isinstance(m, dict):  # ShareGPT: {from: human|gpt|system, value}
            role, content = SHAREGPT_ROLES.get(m.get("from")), m.get("value")
            names = (f"conversations[{k}].from", f"conversations[{k}].value", list(SHAREGPT_ROLES), m.get("from"))
        elif isinstance(m, dict):
            role, content = (m.get("role") if m.get("role") in ROLES else None), m.get("content")
            names = (f"messages[{k}].role", f"messages[{k}].content", list(ROLES), m.get("role"))
        else:
            report(loc, f"field '{key}[{k}]': expected an object, got {_tname(m)}")
            ok = False
            continue
        if role is None:
            report(loc, f"field '{names[0]}': expected one of {names[2]}, got {names[3]!r}")
            ok = False
        elif not isinstance(content, str):
            report(loc, f"field '{names[1]}': expected a string, got {_tname(content)}")
            ok = False
        else:
            out.append({"role": role, "content": content})
    if not ok:
        return None
    # our files carry the dialogue fields at top level; anything else (disease_id, expect) is meta
    meta = dict(rec.get("meta") or {})
    meta.update({k: v for k, v in rec.items() if k not in ("id", "source", "kind", key, "meta")})
    return {"id": str(rid), "source": rec.get("source") or source, "kind": rec.get("kind") or "dialogue",
            "messages": out, "meta": meta}


def _text_doc(text: str, rid: str, source: str, meta: dict):
    return {"id": rid, "source": source, "kind": "text", "messages": [{"role": "assistant", "content": text}],
            "meta": meta}


def _rec_text(rec: dict, i: int, loc: str, report, source: str):
    text = _text(rec, "text", report, loc)
    rid = _field(rec, "id", report, loc, types=(str, int), required=False, default=f"{source}-{i}")
    if text is None or rid is None:
        return None
    return _text_doc(text, str(rid), source, {k: v for k, v in rec.items() if k not in ("id", "text")})


_RECORD = {"cmtmedqa": _rec_cmtmedqa, "huatuo": _rec_huatuo, "alpaca": _rec_alpaca,
           "messages_jsonl": _rec_messages, "text_jsonl": _rec_text}


def _shape(rec) -> str:
    """The record format a (first) record looks like."""
    if not isinstance(rec, dict):
        return "cmtmedqa"
    if "messages" in rec or "conversations" in rec:
        return "messages_jsonl"
    if any(k in rec for k in ("instruct", "cate1", "cate2")) or ("history" in rec and "id" in rec):
        return "cmtmedqa"
    if isinstance(rec.get("instruction"), list) or isinstance(rec.get("questions"), (list, str)):
        return "huatuo"
    if isinstance(rec.get("instruction"), str):
        return "alpaca"
    if "text" in rec:
        return "text_jsonl"
    return "cmtmedqa"


# ---------------------------------------------------------------- format detection, reading, validation

def _head(path, report: _Report, n: int = 1 << 16) -> str:
    with _open(path, report) as f:
        raw = f.read(n)
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")


def _first_line_object(path, report: _Report):
    """The first non-blank line parsed as JSON if it is a complete object, else None."""
    with _open(path, report) as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw.decode("utf-8", errors="replace").lstrip("\ufeff"))
                except (json.JSONDecodeError, RecursionError):
                    return None
                return obj if isinstance(obj, dict) else None
    return None


def _peek_array(path):
    """The first item of a JSON array file, or None (the real read reports any problem)."""
    items = iter(_ArrayReader(path, _Report(path)))
    try:
        return next(items)[1]
    except (DataError, StopIteration):
        return None
    finally:
        items.close()


def _container(path, report: _Report) -> str:
    """How a named record format is stored: 'array' (a JSON array) or 'jsonl'."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "array"  # anything else there is reported as the wrong top-level type
    head = _head(path, report)
    return "array" if not head or head[0] == "[" else "jsonl"


def _detect(path, report: _Report) -> tuple[str, str]:
    """(format, container): container is 'array', 'jsonl' or 'file' (formats read whole or by line)."""
    path = Path(path)
    suffix = path.suffix.lower()
    head = _head(path, report)
    if suffix == ".tsv" or head.startswith("id\tquery\t"):
        return "ranking_output", "file"
    if suffix in (".txt", ".text"):
        if head[:1] in ("[", "{"):
            report.fatal("format", f"cannot tell the format: the extension {suffix!r} says plain text but the "
                                   f"content looks like JSON; pass format= one of {', '.join(FORMATS)}")
        return "text", "file"
    if not head:
        return "cmtmedqa", "array"  # the reader reports the file empty
    if head[0] == "[" and suffix not in (".jsonl", ".ndjson"):
        return _shape(_peek_array(path)), "array"
    if head[0] == "{" or suffix in (".jsonl", ".ndjson"):
        first = _first_line_object(path, report)
        if first and all(isinstance(v, dict) for v in first.values()):
            return "ranking_input", "file"  # one-line {id: {query, ...}}
        if first is None and suffix == ".json":
            return "ranking_input", "file"
        return _shape(first), "jsonl"
    if suffix == ".json":
        return "cmtmedqa", "array"  # the reader says what the top level is instead
    report.fatal("format", f"cannot tell the format from the extension {suffix!r}; "
                           f"pass format= one of {', '.join(FORMATS)}")


def detect_format(path) -> str:
    """The format :func:`iter_dialogues` would read ``path`` as (one of FORMATS); DataError if it cannot tell."""
    return _detect(path, _Report(path))[0]


def _iter(path, format, report: _Report) -> Iterator[dict]:
    path = Path(path)
    if format is not None and format not in FORMATS:
        report.fatal("format", f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    if format is None:
        format, container = _detect(path, report)
    elif format in RECORD_FORMATS:
        container = _container(path, report)
    else:
        container = "file"
    source = path.stem
    if format == "ranking_output":
        yield from _ranking_output(_read_text(path, report), path, report)
    elif format == "ranking_input":
        yield from _ranking_input(_parse_json(_read_text(path, report), report), path, report)
    elif format == "text":
        for n, line in _lines(path, report):
            yield _text_doc(line.strip(), f"{source}-{n}", source, {"line": n})
    else:
        handle = _RECORD[format]
        for i, loc, rec in _records(path, container, report):
            d = handle(rec, i, loc, report, source)
            if d is not None:
                yield d


def _records(path, container: str, report: _Report) -> Iterator[tuple[int, str, dict]]:
    """(index, location, object) for each record of a JSON array ('array') or JSON Lines ('jsonl') file; the
    index counts records (non-blank lines of a JSONL file) from 0; a record that is not an object is reported."""
    if container == "jsonl":
        for i, (n, rec) in enumerate(_jsonl_rows(path, report)):
            yield i, f"line {n}", rec
        return
    for i, rec in _ArrayReader(path, report):
        loc = f"record {i}"
        if not isinstance(rec, dict):
            report(loc, f"expected an object, got {_tname(rec)}")
            continue
        yield i, loc, rec


def iter_dialogues(path, format: str | None = None) -> Iterator[dict]:
    """Stream the dialogues of any known file; raises DataError at the first problem."""
    return _iter(path, format, _Report(path))


def load_dialogues(path, format: str | None = None) -> list[dict]:
    """Any known file -> dialogues; ``format`` is one of FORMATS, or None to detect it."""
    return list(iter_dialogues(path, format))


def check(path, format: str | None = None) -> dict:
    """Read the whole file once, keeping nothing: ``{"format", "counts": {kind: n}, "records", "problems"}``.

    ``problems`` lists every problem as ``PATH:LOCATION: problem``; a problem that makes the rest of the file
    unreadable (bad encoding, broken JSON) ends the list.
    """
    report = _Report(path, collect=True)
    counts, fmt = Counter(), format
    try:
        if fmt is None:
            fmt = _detect(path, report)[0]
        for d in _iter(path, fmt, report):
            counts[d["kind"]] += 1
    except _Abort:
        pass
    return {"format": fmt, "counts": dict(counts), "records": sum(counts.values()), "problems": report.problems}


def validate(path, format: str | None = None) -> list[str]:
    """Every problem in the file as ``PATH:LOCATION: problem`` strings; [] when it loads cleanly."""
    return check(path, format)["problems"]


def load_cmtmedqa(path, source: str | None = None) -> list[dict]:
    """A CMtMedQA-shaped JSON array (multi-turn and safety records mixed) -> dialogues, streamed."""
    out = load_dialogues(path, "cmtmedqa")
    if source:
        for d in out:
            d["source"] = source
    return out


def load_huatuo(path) -> list[dict]:
    """Huatuo-26M ``{id, instruction: [str], input, output: [str]}`` (JSONL or JSON array) -> dialogues."""
    return load_dialogues(path, "huatuo")


def load_alpaca(path) -> list[dict]:
    """Alpaca-style ``{instruction, input, output}`` (JSON array or JSONL) -> dialogues."""
    return load_dialogues(path, "alpaca")


def load_text(path) -> list[dict]:
    """Plain text, one document per non-blank line -> documents of kind ``text``."""
    return load_dialogues(path, "text")


def load_messages_jsonl(path) -> list[dict]:
    """JSONL records with a ``messages`` (or ShareGPT ``conversations``) field -> dialogues."""
    return load_dialogues(path, "messages_jsonl")


# ---------------------------------------------------------------- test sets: what `zj generate`, `zj judge`, `zj eval` read

TEST_FORMATS = ("cmtmedqa", "huatuo", "messages_jsonl", "alpaca")
# the `set` of each test record: CMtMedQA's two record shapes are two sets, Huatuo-26M is one; other files: the stem
CMTMEDQA_SETS = {"multi_turn": "cmtmedqa_multiturn", "safety": "cmtmedqa_safety"}
HUATUO_SET = "huatuo26m"


def _test_record(d: dict, rec: dict, fmt: str, i: int, loc: str, report, stem: str):
    """A loaded dialogue -> a test record, or None after reporting (see :func:`load_test_records`)."""
    msgs, reference = list(d["messages"]), None
    if rec.get("reference") is not None and fmt == "messages_jsonl":
        reference = _field(rec, "reference", report, loc)
        if reference is None:
            return None
        if not reference.strip():
            report(loc, "field 'reference': empty text")
            return None
    elif msgs and msgs[-1]["role"] == "assistant":
        reference, msgs = msgs[-1]["content"], msgs[:-1]
    if not msgs or msgs[-1]["role"] != "user":
        roles = [m["role"] for m in d["messages"]]
        report(loc, f"field 'messages': a test item must end with the patient's (user) turn, or with the reference "
                    f"doctor (assistant) turn after it; got roles {roles}")
        return None
    if fmt == "cmtmedqa":
        set_ = CMTMEDQA_SETS[d["kind"]]
        rid = d["id"] if d["kind"] == "multi_turn" else f"{stem}-{i}"  # safety records carry no id
    elif fmt == "huatuo":
        set_, rid = HUATUO_SET, d["id"]
    else:
        own = rec.get("set")
        set_, rid = (own.strip() if isinstance(own, str) and own.strip() else stem), d["id"]
    out = {"id": rid, "set": set_, "messages": msgs, "reference": reference, "source": d["source"],
           "kind": d["kind"], "meta": {k: v for k, v in (d.get("meta") or {}).items() if k not in ("expect", "reference")}}
    if "expect" in rec:  # the synthetic world's gold knowledge: what the rule judge checks
        expect = _field(rec, "expect", report, loc, types=(dict,))
        if expect is None:
            return None
        out["expect"] = expect
    return out


def iter_test_records(path, format: str | None = None) -> Iterator[dict]:
    """Stream :func:`load_test_records`; raises DataError at the first problem."""
    report, path = _Report(path), Path(path)
    if format is not None and format not in FORMATS:
        report.fatal("format", f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    fmt, container = _detect(path, report) if format is None else (format, _container(path, report))
    if fmt not in TEST_FORMATS:
        report.fatal("format", f"a {fmt} file is not a test set; test sets are {', '.join(TEST_FORMATS)} "
                               "(`zj validate FILE` says how a file reads)")
    seen: dict[str, str] = {}
    for i, loc, rec in _records(path, container, report):
        d = _RECORD[fmt](rec, i, loc, report, path.stem)
        t = _test_record(d, rec, fmt, i, loc, report, path.stem) if d is not None else None
        if t is None:
            continue
        if t["id"] in seen:
            report(loc, f"field 'id': {t['id']!r} is the id of {seen[t['id']]} too; test ids must be unique")
            continue
        seen[t["id"]] = loc
        yield t


def check_unique_ids(items: list[dict], where: str) -> list[dict]:
    """`items` as they are, after checking that no id stands in two records (answers and verdicts are keyed by
    id); `where` names what was read, for the error."""
    from .common import ZJError

    seen: dict = {}
    for it in items:
        if it["id"] in seen:
            raise ZJError(f"Test item id {it['id']!r} is in both set {seen[it['id']]!r} and set {it['set']!r}: ids "
                          f"must be unique over {where}.")
        seen[it["id"]] = it["set"]
    return items


def load_test_records(path, format: str | None = None) -> list[dict]:
    """A test set in any format a loader reads -> ``[{"id", "set", "messages", "reference", ...}]``.

    ``messages`` is the conversation up to and including the patient's last turn (what a model answers);
    ``reference`` is the doctor's answer to it, or None. The format is detected as ``zj validate`` detects it:

    - CMtMedQA (a JSON array): a multi-turn record gives its ``history`` pairs and ``instruction`` (+ ``input``) as
      the last patient turn, ``output`` as the reference, set ``cmtmedqa_multiturn``; a safety record
      ``{instruct, output}`` gives one patient turn, set ``cmtmedqa_safety``;
    - Huatuo-26M (``{id, instruction: [str], output: [str]}`` or the hub's ``{questions, answers}``): one patient
      turn, the first answer as the reference, set ``huatuo26m``;
    - chat JSONL (``messages`` or ShareGPT ``conversations``), the synthetic world's ``test_*.jsonl`` among them:
      a final assistant turn is the reference, else the record's ``reference`` field (if any); ``expect`` (the
      world's gold knowledge, which only the rule judge reads) is kept; set: the record's ``set``, else the stem;
    - Alpaca ``{instruction, input, output}``: like a CMtMedQA multi-turn record, set: the file's stem.

    Records without an id (CMtMedQA's safety records, Huatuo-26M's empty ids, chat or Alpaca records without one)
    get ``<file stem>-<index>``, the index counting records from 0 in file order (the array position of a JSON
    array, the non-blank line of a JSONL file): ``CMtMedQA_test-1000`` is the file's first safety record. The same
    file always gives the same ids, so answer files written for it (``{"id", "answer"}``) can be judged later.
    Also kept: ``source`` (the stem), ``kind`` and ``meta`` of the dialogue. A malformed record raises
    :class:`DataError` ``PATH:LOCATION: field ...: problem``, as ``zj validate`` reports it; so does an id that
    repeats, and a file in a format that holds no test items (plain text, the ranking tool's files).
    """
    return list(iter_test_records(path, format))


def load_jsonl(path) -> list[dict]:
    """UTF-8 JSON Lines -> list of objects; blank lines are skipped."""
    return [obj for _, obj in _jsonl_rows(path, _Report(path))]


def write_jsonl(path, records) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- as a Hugging Face dataset

_CORE = ("id", "source", "kind", "messages", "meta")


def _rows(dialogues):
    for d in dialogues:
        meta = dict(d.get("meta") or {})
        meta.update({k: v for k, v in d.items() if k not in _CORE})  # e.g. ranking records' responses
        yield {"id": d["id"], "source": d["source"], "kind": d["kind"],
               "messages": [{"role": m["role"], "content": m["content"]} for m in d["messages"]],
               "meta": json.dumps(meta, ensure_ascii=False)}


def _gen(path, format, stamp):
    yield from _rows(iter_dialogues(path, format))


def dataset_features():
    import datasets
    return datasets.Features({
        "id": datasets.Value("string"), "source": datasets.Value("string"), "kind": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "meta": datasets.Value("string")})


def to_dataset(source, format: str | None = None, cache_dir=None):
    """A file (streamed into an Arrow cache on disk) or an iterable of dialogues -> ``datasets.Dataset``.

    Columns: id, source, kind, messages ([{role, content}]) and meta (a JSON string: meta differs by source,
    and any extra field such as a ranking record's ``responses`` goes in it). A bad file raises DataError.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    if not isinstance(source, (str, Path)):
        return datasets.Dataset.from_list(list(_rows(source)), features=dataset_features())
    path = Path(source)
    if format is None:
        format = detect_format(path)
    st = path.stat()
    try:
        return datasets.Dataset.from_generator(
            _gen, features=dataset_features(), cache_dir=str(cache_dir) if cache_dir else None,
            gen_kwargs={"path": str(path.resolve()), "format": format, "stamp": (st.st_size, st.st_mtime_ns)})
    except DatasetGenerationError as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
