"""The strict, streaming readers under every loader (:mod:`zj_utils.data`, :mod:`zj_utils.rankings`).

Bytes are read as UTF-8 a chunk at a time (a bad byte is reported with its line and offset, and a hint when the
file looks like UTF-16 or GBK); a top-level JSON array is read item by item and a JSON Lines file line by line,
so a large file is never held in memory whole. The field checks take a record apart the same way for every
format. Every problem goes to a :class:`_Report`, which raises :class:`DataError` (``PATH:LOCATION: problem``) at
the first one (the loaders) or collects them all (``data.validate``).
"""
from __future__ import annotations

import json
import re
from typing import Iterator

CHUNK = 1 << 20  # bytes read at a time by the streaming readers


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
    return {dict: "object", list: "list", str: "str", type(None): "null", bool: "bool"}.get(type(x), type(x).__name__)


# ---------------------------------------------------------------- reading bytes as UTF-8, streamed

def _open(path, report: _Report):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        report.fatal("file", "no such file")
    except IsADirectoryError:
        report.fatal("file", "is a directory, not a data file")
    except OSError as e:
        report.fatal("file", f"cannot read it: {e.strerror}")


def _looks_gbk(b: bytes) -> bool:
    for cut in (0, 1):  # the window may end inside a two-byte character
        try:
            b[: len(b) - cut].decode("gbk")
            return True
        except UnicodeDecodeError:
            pass
    return False


class _Utf8:
    """Incremental strict UTF-8 decoding that knows the line and byte offset of a bad byte."""

    def __init__(self, report: _Report):
        self.report, self.pending, self.offset, self.lines, self.started = report, b"", 0, 1, False

    def feed(self, data: bytes, final: bool = False) -> str:
        data = self.pending + data
        self.pending = b""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            if final or e.end != len(data) or e.reason != "unexpected end of data":
                self._fail(data, e.start)
            text, self.pending, data = data[: e.start].decode("utf-8"), data[e.start:], data[: e.start]
        if not self.started and text:
            self.started = True
            text = text[1:] if text[0] == "\ufeff" else text  # a BOM, as Windows editors write it
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return text

    def _fail(self, data: bytes, start: int):
        line = self.lines + data.count(b"\n", 0, start)
        hint = ""
        if self.offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "; it looks like UTF-16: re-save it as UTF-8"
        elif _looks_gbk(data[data.rfind(b"\n", 0, start) + 1: start + 4096]):
            hint = "; it looks like GBK: re-save it as UTF-8"
        self.report.fatal(f"line {line}", f"not UTF-8 (byte 0x{data[start]:02x} at offset "
                                          f"{self.offset + start}){hint}")


def _read_text(path, report: _Report) -> str:
    """The whole file as text (small formats: ranking tool files)."""
    with _open(path, report) as f:
        text = _Utf8(report).feed(f.read(), final=True)
    if not text.strip():
        report.fatal("line 1", "file is empty")
    return text


def _lines(path, report: _Report) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line, streamed; an empty file is a problem."""
    dec, seen = _Utf8(report), False
    with _open(path, report) as f:
        for n, raw in enumerate(f, 1):
            line = dec.feed(raw, final=True)
            if line.strip():
                seen = True
                yield n, line
    if not seen:
        report.fatal("line 1", "file is empty")


def _parse_json(text: str, report: _Report):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (file truncated?)" if e.pos >= len(text.rstrip()) else ""
        report.fatal(f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}{hint}")
    except RecursionError:
        report.fatal("top level", "invalid JSON: nested too deeply")


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _ArrayReader:
    """Yields the items of a top-level JSON array one at a time, reading the file in chunks.

    Each item is parsed by the C JSON scanner (``raw_decode``); only the current chunk and item are held.
    """

    def __init__(self, path, report: _Report):
        self.path, self.report = path, report
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.col = 1, 0  # line and 0-based column of buf[0]

    def _fill(self) -> bool:
        """Drop what was consumed, append the next chunk; False at end of file."""
        done = self.buf[: self.pos]
        nl = done.rfind("\n")
        if nl >= 0:
            self.line += done.count("\n")
            self.col = len(done) - nl - 1
        else:
            self.col += len(done)
        self.buf, self.pos = self.buf[self.pos:], 0
        if self.eof:
            return False
        data = self.f.read(CHUNK)
        self.buf += self.dec.feed(data, final=not data)
        self.eof = not data
        return True

    def _where(self, p: int) -> str:
        nl = self.buf.rfind("\n", 0, p)
        line = self.line + self.buf.count("\n", 0, p)
        col = p - nl if nl >= 0 else self.col + p + 1
        return f"line {line} column {col}"

    def _skip_ws(self) -> str:
        """The next non-blank character ('' at end of file), without consuming it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def _bad(self, problem: str, truncated: bool = False):
        self.report.fatal(self._where(self.pos), f"invalid JSON: {problem}" + (" (file truncated?)" if truncated else ""))

    def __iter__(self):
        self.dec = _Utf8(self.report)
        with _open(self.path, self.report) as self.f:
            first = self._skip_ws()
            if not first:
                self.report.fatal("line 1", "file is empty")
            if first != "[":  # not an array: parse it whole to say what it is (or where it breaks)
                while self._fill():
                    pass
                data = _parse_json(self.buf, self.report)
                self.report.fatal("top level", f"expected a JSON array of records, got {_tname(data)}")
            self.pos += 1
            if self._skip_ws() == "]":
                self.report.fatal("top level", "no records")
            i = 0
            while True:
                if not self.buf[self.pos:]:
                    self._bad("the file ends inside the array", truncated=True)
                item = self._item()
                yield i, item
                i += 1
                c = self._skip_ws()
                if c == "]":
                    self.pos += 1
                    break
                if c != ",":
                    self._bad("the file ends inside the array" if not c else "expecting ',' or ']' after an item",
                              truncated=not c)
                self.pos += 1
                c = self._skip_ws()
                if c == "]":
                    self._bad("a trailing comma before ']'")
                if not c:
                    self._bad("the file ends inside the array", truncated=True)
            if self._skip_ws():
                self._bad("extra data after the array")

    def _item(self):
        while True:
            try:
                item, end = _DECODER.raw_decode(self.buf, self.pos)
                self.pos = end
                return item
            except json.JSONDecodeError as e:
                # an item cut by the chunk boundary fails at (or, for a string, from) the end: read on
                if not self.eof and (e.msg.startswith("Unterminated string") or len(self.buf) - e.pos < 64):
                    self._fill()
                    continue
                truncated = self.eof and e.pos >= len(self.buf.rstrip()) - 1 or e.msg.startswith("Unterminated")
                self.report.fatal(self._where(e.pos), f"invalid JSON: {e.msg}"
                                                      + (" (file truncated?)" if truncated and self.eof else ""))
            except RecursionError:
                self.report.fatal(self._where(self.pos), "invalid JSON: nested too deeply")


def _jsonl_rows(path, report: _Report) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file, streamed."""
    for n, line in _lines(path, report):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report(f"line {n}", f"invalid JSON at column {e.colno}: {e.msg}")
            continue
        except RecursionError:
            report(f"line {n}", "invalid JSON: nested too deeply")
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
