"""The ranking widget's files, without ipywidgets: the candidates it shows and the save file it appends to.

Rankings are saved the moment they are made: one JSON line per ranking, appended, flushed and fsync'ed, so a
dying kernel loses at most the ranking being written. A prompt ranked twice keeps its latest ranking. The
save file has the shape of ``OUT/rm/rankings.jsonl`` (``{id, messages, responses, ranks, annotator}``, ranks
1 = best with ties) and ``zj rm --rankings FILE.jsonl`` reads it as it is (:func:`read_saved_rankings`, called by
the reward stage), so the reward stage never imports the widgets.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .common import ZJError
from .data import DataError
from .rankings import N_RESPONSES, load_ranking_input

# --------------------------------------------------------------------------------------------- ranks


def normalize_ranks(ranks, n: int = N_RESPONSES) -> list[int]:
    """Ranks as a person gives them (any ints 1..n, ties = equal numbers, e.g. [1, 1, 2, 3]) -> competition
    ranks as the rule annotator writes them ([1, 1, 3, 4]): 1 + the number of answers strictly better.
    Only the order matters for the reward model, so this keeps every preference and loses nothing."""
    ranks = list(ranks)
    if len(ranks) != n:
        raise ZJError(f"A ranking needs {n} ranks, got {len(ranks)}: {ranks}")
    for i, r in enumerate(ranks):
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= n:
            raise ZJError(f"Answer {i + 1} has no valid rank ({r!r}): give every answer a rank from 1 to {n}.")
    return [1 + sum(o < r for o in ranks) for r in ranks]


# --------------------------------------------------------------------------------------------- records


def _check_messages(messages, path, loc: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(path, loc, "field 'messages': expected a non-empty list of {role, content}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise DataError(path, loc, f"field 'messages'[{k}]: expected {{role: system|user|assistant, "
                                       f"content: str}}, got {str(m)[:60]!r}")
    if messages[-1]["role"] != "user":
        raise DataError(path, loc, "field 'messages': must end with the patient's (user) turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_responses(responses, path, loc: str) -> list[str]:
    if not isinstance(responses, list) or len(responses) != N_RESPONSES or \
            not all(isinstance(t, str) for t in responses):
        raise DataError(path, loc, f"field 'responses': expected a list of {N_RESPONSES} strings")
    return list(responses)


def _jsonl_objects(path):
    """(line number, object, raw line) per non-blank line; a line that is not a JSON object is an error."""
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {no}", f"not valid JSON ({e.msg})"
                                + ("" if line.endswith("\n") else "; the line is incomplete (the kernel died "
                                   "while saving?): delete it or open the file in the ranking widget")) from None
            if not isinstance(obj, dict):
                raise DataError(path, f"line {no}", f"expected a JSON object, got {type(obj).__name__}")
            yield no, obj


def load_candidates(path) -> list[dict]:
    """Prompts with 4 answers to rank: ``{id, messages, responses, rule_ranks (or None)}``.

    Reads the reward stage's ``OUT/rm/rankings.jsonl`` (or any JSONL of ``{id, messages, responses}``, such
    as :func:`prepare_candidates` writes; the rule annotator's ``ranks`` are kept to compare with, never
    shown before the person has ranked) or the ranking tool's input JSON ``{id: {query, history,
    response_0..3}}`` (``OUT/rm/ranking_input.json``, ``data/rlhf_label_tool/input_file.json``)."""
    path = Path(path)
    if not path.is_file():
        raise ZJError(f"No candidates file at {path}: run `zj rm` (it writes OUT/rm/rankings.jsonl) or "
                      "`prepare_candidates(out, preset)` first.")
    if path.suffix == ".json":
        return [{"id": r["id"], "messages": r["messages"], "responses": r["responses"], "rule_ranks": None}
                for r in load_ranking_input(path)]
    if path.suffix != ".jsonl":
        raise ZJError(f"{path}: candidates are read from a .jsonl (the reward stage's rankings) or a .json "
                      "(the ranking tool's input); the tool's TSV output holds answers already ranked.")
    out, seen = [], set()
    for no, obj in _jsonl_objects(path):
        loc = f"line {no}"
        if not isinstance(obj.get("id"), (str, int)):
            raise DataError(path, loc, "field 'id': missing or not a string")
        rid = str(obj["id"])
        if rid in seen:
            raise DataError(path, loc, f"field 'id': {rid!r} appears twice")
        seen.add(rid)
        rule = obj.get("ranks")
        if rule is not None:
            try:
                rule = normalize_ranks(rule)
            except ZJError as e:
                raise DataError(path, loc, f"field 'ranks': {e}") from None
        out.append({"id": rid, "messages": _check_messages(obj.get("messages"), path, loc),
                    "responses": _check_responses(obj.get("responses"), path, loc), "rule_ranks": rule})
    if not out:
        raise DataError(path, "line 1", "no candidates in the file")
    return out


def read_saved_rankings(path) -> list[dict]:
    """The ranking widget's save file -> rankings in the reward stage's shape (latest ranking per prompt,
    ids prefixed ``human-`` so they never collide with the rule annotator's). Strict: a bad line is a
    DataError naming the line and field."""
    latest: dict[str, dict] = {}
    for no, obj in _jsonl_objects(path):
        rec = _saved_record(obj, path, f"line {no}")
        latest.pop(rec["id"], None)  # re-ranked: the latest ranking counts, at its latest position
        latest[rec["id"]] = rec | {"id": f"human-{rec['id']}", "annotator": "human"}
    if not latest:
        raise DataError(path, "line 1", "no rankings in the file")
    return list(latest.values())


def _saved_record(obj: dict, path, loc: str) -> dict:
    if not isinstance(obj.get("id"), str):
        raise DataError(path, loc, "field 'id': missing or not a string")
    try:
        ranks = normalize_ranks(obj.get("ranks") if isinstance(obj.get("ranks"), list) else [])
    except ZJError as e:
        raise DataError(path, loc, f"field 'ranks': {e}") from None
    return obj | {"messages": _check_messages(obj.get("messages"), path, loc),
                  "responses": _check_responses(obj.get("responses"), path, loc), "ranks": ranks}


class RankingStore:
    """Append-only JSONL of rankings; every ranking is on disk (fsync'ed) before ``save`` returns."""

    def __init__(self, path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}  # id -> latest saved ranking
        if self.path.exists():
            self._repair_tail()
            for no, obj in _jsonl_objects(self.path):
                rec = _saved_record(obj, self.path, f"line {no}")
                self.records.pop(rec["id"], None)
                self.records[rec["id"]] = rec

    def _repair_tail(self) -> None:
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:].decode("utf-8"))
            complete = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        with open(self.path, "r+b") as f:
            if complete:  # a whole record whose newline never made it: keep it
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            else:
                f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        if not complete:
            line = data.count(b"\n") + 1
            warnings.warn(f"{self.path}:line {line}: an incomplete ranking (the kernel died while saving it) was "
                          "removed; rank that prompt again.", stacklevel=3)

    def save(self, record: dict) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new:  # the new directory entry must survive a crash too
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.records.pop(record["id"], None)
        self.records[record["id"]] = record
