"""Loaders for every dialogue file the project reads, into one schema (docs/DESIGN.md).

Every dialogue is ``{"id", "source", "kind", "messages": [{"role", "content"}], "meta"}``.
Readers are strict: a malformed file raises :class:`DataError` naming ``PATH:LOCATION: problem``
at the first problem, while :func:`validate` runs the same checks and collects every problem.
Also here: turning a ranking of 4 answers (with ties) into preference pairs for the reward model.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

FORMATS = ("cmtmedqa", "ranking_input", "ranking_output", "messages_jsonl")
ROLES = ("system", "user", "assistant")
N_RESPONSES = 4  # the ranking tool always shows 4 answers


class DataError(ValueError):
    """A malformed data file; the message is ``PATH:LOCATION: problem``."""

    def __init__(self, path, location: str, problem: str):
        self.path, self.location, self.problem = str(path), location, problem
        super().__init__(f"{path}:{location}: {problem}")


class _Abort(Exception):
    """Raised after a problem that makes the rest of the file unreadable (collect mode)."""


class _Report:
    """Raises at the first problem (loaders) or collects them all (validate)."""

    def __init__(self, path, collect: bool = False):
        self.path = str(path)
        self.problems: list[str] | None = [] if collect else None

    def __call__(self, location: str, problem: str) -> None:
        err = DataError(self.path, location, problem)
        if self.problems is None:
            raise err
        self.problems.append(str(err))

    def fatal(self, location: str, problem: str):
        self(location, problem)
        raise _Abort


def _tname(x) -> str:
    return {dict: "object", list: "list", str: "str", type(None): "null"}.get(type(x), type(x).__name__)


# ---------------------------------------------------------------- reading text and JSON

def _read_text(path, report: _Report) -> str:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a BOM is common in files saved by Windows editors
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        hint = ""
        try:
            raw.decode("gbk")
            hint = "; it looks like GBK: re-save it as UTF-8"
        except UnicodeDecodeError:
            pass
        report.fatal(f"line {line}", f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}){hint}")
    if not text.strip():
        report.fatal("line 1", "file is empty")
    return text


def _parse_json(text: str, report: _Report):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (file truncated?)" if e.pos >= len(text.rstrip()) else ""
        report.fatal(f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}{hint}")


def _jsonl_rows(text: str, report: _Report):
    """Yield (line number, object) for each non-blank line."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report(f"line {n}", f"invalid JSON at column {e.colno}: {e.msg}")
            continue
        if not isinstance(obj, dict):
            report(f"line {n}", f"expected a JSON object, got {_tname(obj)}")
            continue
        yield n, obj


# ---------------------------------------------------------------- field checks

_MISSING = object()


def _field(rec: dict, key: str, report, loc: str, types=(str,), required=True, default=_MISSING):
    """The value of ``rec[key]`` if present and of the right type, else report and return None."""
    if key not in rec:
        if required:
            report(loc, f"field {key!r}: missing")
            return None
        return default
    value = rec[key]
    if not isinstance(value, types) or isinstance(value, bool):
        want = " or ".join("a string" if t is str else _tname(t()) for t in types)
        report(loc, f"field {key!r}: expected {want}, got {_tname(value)}")
        return None
    return value


def _text(rec, key, report, loc, required=True, allow_empty=False):
    value = _field(rec, key, report, loc, required=required, default="")
    if value is None:
        return None
    value = value.strip()
    if not value and not allow_empty:
        report(loc, f"field {key!r}: empty text")
        return None
    return value


def _history(value, report, loc: str, key: str = "history"):
    """``[[patient, doctor], ...]`` -> list of stripped pairs, or None after reporting."""
    if not isinstance(value, list):
        report(loc, f"field {key!r}: expected a list of [patient, doctor] pairs, got {_tname(value)}")
        return None
    pairs, ok = [], True
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            got = f"a list of {len(pair)} items" if isinstance(pair, (list, tuple)) else _tname(pair)
            report(loc, f"field '{key}[{i}]': expected a [patient, doctor] pair, got {got}")
            ok = False
        elif not all(isinstance(t, str) for t in pair):
            report(loc, f"field '{key}[{i}]': expected 2 strings, got "
                        f"{_tname(pair[0])} and {_tname(pair[1])}")
            ok = False
        else:
            pairs.append((pair[0].strip(), pair[1].strip()))
    return pairs if ok else None


def _pairs_to_messages(pairs, last_user: str | None = None, last_assistant: str | None = None):
    msgs = []
    for user, assistant in pairs:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    if last_user is not None:
        msgs.append({"role": "user", "content": last_user})
    if last_assistant is not None:
        msgs.append({"role": "assistant", "content": last_assistant})
    return msgs


def _messages_to_history(messages) -> tuple[list[list[str]], str]:
    """Alternating user/assistant messages ending with the user -> (history pairs, query).

    System messages are dropped: the ranking tool's format has no place for them.
    """
    turns = [m for m in messages if m["role"] != "system"]
    roles = [m["role"] for m in turns]
    if not turns or roles != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        raise ValueError(f"messages must alternate user/assistant and end with user, got roles {roles}")
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]
    return history, turns[-1]["content"]


# ---------------------------------------------------------------- CMtMedQA (both record shapes)

def _cmtmedqa(data, path, report: _Report, source: str | None = None) -> list[dict]:
    source = source or Path(path).stem
    if not isinstance(data, list):
        report.fatal("top level", f"expected a JSON array of records, got {_tname(data)}")
    if not data:
        report.fatal("top level", "no records")
    out = []
    for i, rec in enumerate(data):
        loc = f"record {i}"
        if not isinstance(rec, dict):
            report(loc, f"expected an object, got {_tname(rec)}")
            continue
        if "instruct" in rec and "instruction" not in rec:  # the safety shape {instruct, output}
            prompt, answer = _text(rec, "instruct", report, loc), _text(rec, "output", report, loc)
            if prompt is not None and answer is not None:
                out.append({"id": f"safety-{i}", "source": source, "kind": "safety",
                            "messages": _pairs_to_messages([(prompt, answer)]), "meta": {"index": i}})
            continue
        if not any(k in rec for k in ("instruction", "history", "output")):
            report(loc, "field 'instruction': missing (neither a multi-turn record {id, cate1, cate2, "
                        "instruction, input, output, history} nor a safety record {instruct, output}; "
                        f"keys: {sorted(rec)})")
            continue
        rid = _field(rec, "id", report, loc, types=(str, int))
        instruction = _text(rec, "instruction", report, loc)
        extra = _text(rec, "input", report, loc, required=False, allow_empty=True)
        answer = _text(rec, "output", report, loc)
        cate1 = _field(rec, "cate1", report, loc, required=False, default="")
        cate2 = _field(rec, "cate2", report, loc, required=False, default="")
        history = _history(rec["history"], report, loc) if "history" in rec else report(loc, "field 'history': missing")
        if None in (rid, instruction, extra, answer, cate1, cate2, history):
            continue
        if extra:
            instruction = f"{instruction}\n{extra}"
        if not all(t for pair in history for t in pair):
            report(loc, "field 'history': empty text in a pair")
            continue
        out.append({"id": str(rid), "source": source, "kind": "multi_turn",
                    "messages": _pairs_to_messages(history, instruction, answer),
                    "meta": {"cate1": cate1, "cate2": cate2, "index": i}})
    return out


def load_cmtmedqa(path, source: str | None = None) -> list[dict]:
    """A CMtMedQA-shaped JSON array (multi-turn and safety records mixed) -> dialogues."""
    report = _Report(path)
    return _cmtmedqa(_parse_json(_read_text(path, report), report), path, report, source)


# ---------------------------------------------------------------- ranking tool (JSON in, TSV out)

def _ranking_input(data, path, report: _Report) -> list[dict]:
    if not isinstance(data, dict):
        report.fatal("top level", f"expected an object {{id: {{query, history, response_0..3}}}}, "
                                  f"got {_tname(data)}")
    if not data:
        report.fatal("top level", "no records")
    out = []
    for i, (rid, rec) in enumerate(data.items()):
        loc = f"record {i} (id {rid!r})"
        if not isinstance(rec, dict):
            report(loc, f"expected an object, got {_tname(rec)}")
            continue
        query = _text(rec, "query", report, loc)
        history = _history(rec["history"], report, loc) if "history" in rec else report(loc, "field 'history': missing")
        responses = [_text(rec, f"response_{k}", report, loc, allow_empty=True) for k in range(N_RESPONSES)]
        if query is None or history is None or None in responses:
            continue
        out.append({"id": rid, "source": Path(path).stem, "kind": "ranking",
                    "messages": _pairs_to_messages(history, query), "responses": responses,
                    "meta": {"index": i}})
    return out


def load_ranking_input(path) -> list[dict]:
    """Ranking-tool input ``{id: {query, history, response_0..3}}`` -> ``{id, messages, responses}``."""
    report = _Report(path)
    return _ranking_input(_parse_json(_read_text(path, report), report), path, report)


def write_ranking_input(path, records) -> None:
    """Records ``{id, messages (ending with user), responses: [4 str]}`` -> the tool's input JSON."""
    data = {}
    for r in records:
        history, query = _messages_to_history(r["messages"])
        if len(r["responses"]) != N_RESPONSES:
            raise ValueError(f"record {r['id']!r}: expected {N_RESPONSES} responses, got {len(r['responses'])}")
        data[str(r["id"])] = {"query": query, "history": history,
                              **{f"response_{k}": t for k, t in enumerate(r["responses"])}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=4) + "\n", encoding="utf-8")


def _ranking_output(text: str, path, report: _Report) -> list[dict]:
    # csv's quoting rules match pandas' to_csv(sep="\t"), so texts holding tabs or newlines survive
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = next(reader)
    n_ranks = len(header) - 3
    if header[:3] != ["id", "query", "history"] or n_ranks < 2 or \
            header[3:] != [f"rank{k}" for k in range(1, n_ranks + 1)]:
        report.fatal("line 1", f"expected header id, query, history, rank1..rank{N_RESPONSES}; got {header}")
    out = []
    for row in reader:
        loc = f"line {reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            report(loc, f"expected {len(header)} tab-separated cells, got {len(row)}")
            continue
        try:
            history = json.loads(row[2])
        except json.JSONDecodeError:
            try:  # a Python repr of the list, as str(list) would write it
                history = ast.literal_eval(row[2])
            except (ValueError, SyntaxError):
                report(loc, f"field 'history': not a JSON list: {row[2][:60]!r}")
                continue
        history = _history(history, report, loc)
        if history is None:
            continue
        if not row[1].strip():
            report(loc, "field 'query': empty text")
            continue
        out.append({"id": row[0], "source": Path(path).stem, "kind": "ranking",
                    "messages": _pairs_to_messages(history, row[1].strip()),
                    "ranked": [c.strip() for c in row[3:]], "meta": {"line": reader.line_num}})
    if not out and not report.problems:
        report.fatal("line 2", "no rows after the header")
    return out


def load_ranking_output(path) -> list[dict]:
    """Ranking-tool TSV ``id, query, history, rank1..rank4`` -> ``{id, messages, ranked: [best..worst]}``.

    The format cannot express ties; identical texts are ties (see :func:`ranked_texts_to_ranks`).
    """
    report = _Report(path)
    return _ranking_output(_read_text(path, report), path, report)


def write_ranking_output(path, records) -> None:
    """Records ``{id, messages (ending with user), ranked: [best..worst]}`` -> the tool's TSV."""
    records = list(records)
    n = len(records[0]["ranked"]) if records else N_RESPONSES
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["id", "query", "history"] + [f"rank{k}" for k in range(1, n + 1)])
        for r in records:
            if len(r["ranked"]) != n:
                raise ValueError(f"record {r['id']!r}: expected {n} ranked texts, got {len(r['ranked'])}")
            history, query = _messages_to_history(r["messages"])
            w.writerow([r["id"], query, json.dumps(history, ensure_ascii=False), *r["ranked"]])


# ---------------------------------------------------------------- JSONL

def load_jsonl(path) -> list[dict]:
    """UTF-8 JSON Lines -> list of objects; blank lines are skipped."""
    report = _Report(path)
    return [obj for _, obj in _jsonl_rows(_read_text(path, report), report)]


def write_jsonl(path, records) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _messages_jsonl(text: str, path, report: _Report) -> list[dict]:
    out = []
    for n, rec in _jsonl_rows(text, report):
        loc = f"line {n}"
        msgs = _field(rec, "messages", report, loc, types=(list,))
        rid = _field(rec, "id", report, loc, types=(str, int), required=False, default=f"{Path(path).stem}-{n}")
        if msgs is None or rid is None:
            continue
        ok = bool(msgs)
        if not ok:
            report(loc, "field 'messages': empty list")
        for k, m in enumerate(msgs):
            if not isinstance(m, dict):
                report(loc, f"field 'messages[{k}]': expected an object {{role, content}}, got {_tname(m)}")
                ok = False
            elif m.get("role") not in ROLES:
                report(loc, f"field 'messages[{k}].role': expected one of {list(ROLES)}, got {m.get('role')!r}")
                ok = False
            elif not isinstance(m.get("content"), str):
                report(loc, f"field 'messages[{k}].content': expected a string, got {_tname(m.get('content'))}")
                ok = False
        if not ok:
            continue
        # our files carry the dialogue fields at top level; anything else (disease_id, expect) is meta
        meta = dict(rec.get("meta") or {})
        meta.update({k: v for k, v in rec.items() if k not in ("id", "source", "kind", "messages", "meta")})
        out.append({"id": str(rid), "source": rec.get("source") or Path(path).stem,
                    "kind": rec.get("kind") or "dialogue",
                    "messages": [{"role": m["role"], "content": m["content"]} for m in msgs], "meta": meta})
    return out


def load_messages_jsonl(path) -> list[dict]:
    """JSONL records with a ``messages`` field -> dialogues (other fields go to ``meta``)."""
    report = _Report(path)
    return _messages_jsonl(_read_text(path, report), path, report)


# ---------------------------------------------------------------- format detection, validation

def _load(path, format, report: _Report) -> list[dict]:
    path = Path(path)
    if format is not None and format not in FORMATS:
        report.fatal("format", f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    text = _read_text(path, report)
    if format is None:
        suffix = path.suffix.lower()
        if suffix == ".tsv":
            format = "ranking_output"
        elif suffix == ".jsonl":
            format = "messages_jsonl"
        elif suffix == ".json":
            data = _parse_json(text, report)
            if isinstance(data, list):
                return _cmtmedqa(data, path, report)
            if isinstance(data, dict):
                return _ranking_input(data, path, report)
            report.fatal("top level", f"expected a JSON array (cmtmedqa) or object (ranking_input), "
                                      f"got {_tname(data)}")
        else:
            report.fatal("format", f"cannot tell the format from the extension {suffix!r}; "
                                   f"pass format= one of {', '.join(FORMATS)}")
    if format == "ranking_output":
        return _ranking_output(text, path, report)
    if format == "messages_jsonl":
        return _messages_jsonl(text, path, report)
    data = _parse_json(text, report)
    return _cmtmedqa(data, path, report) if format == "cmtmedqa" else _ranking_input(data, path, report)


def load_dialogues(path, format: str | None = None) -> list[dict]:
    """Any known file -> dialogues; ``format`` is one of FORMATS, or None to detect it."""
    return _load(path, format, _Report(path))


def validate(path, format: str | None = None) -> list[str]:
    """Every problem in the file as ``PATH:LOCATION: problem`` strings; [] when it loads cleanly."""
    report = _Report(path, collect=True)
    try:
        _load(path, format, report)
    except _Abort:
        pass
    return report.problems


# ---------------------------------------------------------------- rankings -> preference pairs

def ranks_to_pairs(responses: list[str], ranks: list[int]) -> list[tuple[str, str]]:
    """Every (chosen, rejected) pair with chosen ranked strictly better (lower rank; 1 = best).

    Tied answers give no pair, nor do two answers with the same text; duplicate pairs are dropped.
    """
    if len(responses) != len(ranks):
        raise ValueError(f"{len(responses)} responses but {len(ranks)} ranks")
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    pairs = []
    for a in order:
        for b in order:
            pair = (responses[a], responses[b])
            if ranks[a] < ranks[b] and pair[0] != pair[1] and pair not in pairs:
                pairs.append(pair)
    return pairs


def ranked_texts_to_ranks(ranked: list[str]) -> tuple[list[str], list[int]]:
    """Best-to-worst texts (the TSV's rank1..rankN) -> (responses, ranks).

    An identical text shares the rank of its best position: the annotator could not tell them apart.
    """
    first = {}
    for pos, text in enumerate(ranked, 1):
        first.setdefault(text, pos)
    return list(ranked), [first[t] for t in ranked]


def to_preference_records(prompt_messages: list[dict], responses: list[str], ranks: list[int]) -> list[dict]:
    """TRL RewardTrainer conversational records ``{prompt, chosen, rejected}``, one per pair."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in prompt_messages]
    return [{"prompt": [dict(m) for m in prompt],
             "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]}
            for c, r in ranks_to_pairs(responses, ranks)]
