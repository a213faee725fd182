"""The ranking tool's files and rankings -> preference pairs for the reward model.

The ranking tool (the paper's annotation tool, data/rlhf_label_tool/) reads a JSON file
``{id: {query, history, response_0..3}}`` and writes a TSV ``id, query, history, rank1..rank4`` (best to worst).
Here: reading both (:mod:`zj_utils.data` reads them too, as the formats ``ranking_input`` and ``ranking_output``),
writing both, and turning a ranking of 4 answers (with ties) into the (chosen, rejected) pairs the reward model
trains on. The ranking widget's own files (candidates and the JSONL it saves) are :mod:`zj_utils.ranking_store`.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

from .readers import _history, _pairs_to_messages, _parse_json, _read_text, _Report, _text, _tname

N_RESPONSES = 4  # the ranking tool always shows 4 answers


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
    # csv quotes a cell holding the delimiter, the quote or a character of the line terminator. With "\n" alone a
    # lone "\r" would stay unquoted and the reader would end the row there: each row is written with "\r\n" (so
    # both are quoted) and then ends with "\n", as pandas' to_csv writes it; rows without "\r" are unchanged.
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\r\n")

    def row(cells) -> str:
        buf.seek(0)
        buf.truncate()
        w.writerow(cells)
        return buf.getvalue()[:-2] + "\n"

    lines = [row(["id", "query", "history"] + [f"rank{k}" for k in range(1, n + 1)])]
    for r in records:
        if len(r["ranked"]) != n:
            raise ValueError(f"record {r['id']!r}: expected {n} ranked texts, got {len(r['ranked'])}")
        history, query = _messages_to_history(r["messages"])
        lines.append(row([r["id"], query, json.dumps(history, ensure_ascii=False), *r["ranked"]]))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(lines))


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


def answer_letters(n: int) -> list[str]:
    """A, B, C, ... for the answers of one ranking, in their order in the record."""
    return [chr(ord("A") + i) for i in range(n)]


def ranking_string(ranks: list[int]) -> str:
    """A ranking as the paper writes it, best first, ties joined by "=": ranks [2, 2, 4, 1] -> "D > A = B > C"."""
    letters = answer_letters(len(ranks))
    groups: dict[int, list[str]] = {}
    for letter, rank in sorted(zip(letters, ranks), key=lambda x: (x[1], x[0])):
        groups.setdefault(rank, []).append(letter)
    return " > ".join(" = ".join(g) for _, g in sorted(groups.items()))


def pair_outcomes(responses: list[str], ranks: list[int]) -> list[dict]:
    """What becomes of every unordered pair of answers of one ranking, in the order `ranks_to_pairs` walks them:
    {"a", "b" (answer indices), "outcome", "chosen", "rejected"} with outcome "pair" (chosen = the better ranked,
    rejected = the other: a training pair of `ranks_to_pairs`), "tie" (same rank: dropped, a tie says nothing
    about which answer is better), "identical_text" (dropped) or "duplicate" (the same texts as an earlier pair:
    dropped). The "pair" rows are exactly `ranks_to_pairs(responses, ranks)`, by index."""
    if len(responses) != len(ranks):
        raise ValueError(f"{len(responses)} responses but {len(ranks)} ranks")
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    rows, seen = [], set()
    for x, a in enumerate(order):
        for b in order[x + 1:]:
            row = {"a": min(a, b), "b": max(a, b), "chosen": None, "rejected": None}
            if ranks[a] == ranks[b]:
                rows.append(row | {"outcome": "tie"})
            elif responses[a] == responses[b]:
                rows.append(row | {"outcome": "identical_text"})
            elif (responses[a], responses[b]) in seen:
                rows.append(row | {"outcome": "duplicate"})
            else:
                seen.add((responses[a], responses[b]))
                rows.append(row | {"outcome": "pair", "chosen": a, "rejected": b})
    return rows
