"""Cleaning dialogues (the schema of :mod:`zj_utils.data`), every step counted.

    kept, report = clean(dialogues)
    print(report)            # in = kept + dropped by reason; how many records each step changed

Steps, in order: whitespace and full-width/half-width normalisation, a scrubber for personal data common in
Chinese medical text (mobile and landline numbers, ID-card numbers, e-mail addresses), length filters,
exact duplicates (after normalisation), near duplicates (MinHash LSH over character 5-grams, `datasketch`).
Chinese punctuation (，。？！：；) and full-width brackets such as the world's marker ［虚构］ are left alone:
only full-width letters, digits, spaces and the ASCII symbols that occur in numbers, units and addresses are
folded to half-width.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

# full-width letters, digits and the symbols of numbers, units, e-mail addresses -> half-width
_FOLD = "０１２３４５６７８９ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓｔｕｖｗｘｙｚ％＋－／＝＠＿＆＃＄＊＾｜～＜＞"
_WIDTH = {ord(c): ord(c) - 0xFEE0 for c in _FOLD} | {0x3000: 0x20}
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")

PII = {  # name -> (pattern, placeholder); applied in this order
    "email": (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "<EMAIL>"),
    "id_card": (re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                           r"\d{3}[\dXx](?![0-9A-Za-z])"), "<ID_CARD>"),
    "phone": (re.compile(r"(?<![\d.])(?:(?:\+|00)?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?![\d.])"
                         r"|(?<![\d.])0\d{2,3}-\d{7,8}(?![\d.])"), "<PHONE>"),
}


def normalize_text(text: str) -> str:
    """CRLF -> LF, invisible characters out, full-width letters/digits/space -> half-width, runs of spaces
    collapsed, at most one blank line, each line and the whole text stripped."""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).translate(_WIDTH)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def scrub_pii(text: str, counts: Counter | None = None) -> str:
    """Replace personal data with placeholders (<EMAIL>, <ID_CARD>, <PHONE>); count hits per kind."""
    for name, (pattern, placeholder) in PII.items():
        text, n = pattern.subn(placeholder, text)
        if counts is not None and n:
            counts[name] += n
    return text


@dataclass
class CleaningReport:
    n_in: int = 0
    n_kept: int = 0
    dropped: Counter = field(default_factory=Counter)   # reason -> records dropped
    changed: Counter = field(default_factory=Counter)   # step -> records it modified
    pii: Counter = field(default_factory=Counter)       # kind -> occurrences replaced

    def as_dict(self) -> dict:
        return {"in": self.n_in, "kept": self.n_kept, "dropped": dict(self.dropped),
                "changed": dict(self.changed), "pii_replaced": dict(self.pii)}

    def check(self) -> None:
        assert self.n_in == self.n_kept + sum(self.dropped.values()), self.as_dict()

    def __str__(self) -> str:
        lines = [f"in: {self.n_in}"]
        lines += [f"  dropped, {reason}: {n}" for reason, n in self.dropped.items()]
        lines += [f"kept: {self.n_kept}"]
        lines += [f"  changed by {step}: {n}" for step, n in self.changed.items()]
        lines += [f"  replaced {kind}: {n}" for kind, n in self.pii.items()]
        return "\n".join(lines)


def _shingles(text: str, k: int) -> set[bytes]:
    text = re.sub(r"\s+", "", text)
    return {text[i:i + k].encode("utf-8") for i in range(max(1, len(text) - k + 1))}


def clean(dialogues, *, min_chars: int = 2, max_chars: int = 20000, dedup: bool = True,
          near_dup_threshold: float | None = 0.85, num_perm: int = 128, shingle: int = 5,
          pii: bool = True) -> tuple[list[dict], CleaningReport]:
    """Clean dialogues; returns (kept, report). Lengths count the characters of all messages together.

    A near duplicate (estimated Jaccard similarity of character ``shingle``-grams >= ``near_dup_threshold``
    with an earlier kept dialogue) is dropped; the first of a group is kept. ``near_dup_threshold=None``
    skips that step.
    """
    report = CleaningReport()
    seen: set[bytes] = set()
    lsh = None
    if dedup and near_dup_threshold is not None:
        from datasketch import MinHash, MinHashLSH
        lsh = MinHashLSH(threshold=near_dup_threshold, num_perm=num_perm)
    kept = []
    for d in dialogues:
        report.n_in += 1
        messages = []
        norm_changed = pii_changed = False
        for m in d["messages"]:
            content = normalize_text(m["content"])
            norm_changed |= content != m["content"]
            if pii:
                scrubbed = scrub_pii(content, report.pii)
                pii_changed |= scrubbed != content
                content = scrubbed
            messages.append({"role": m["role"], "content": content})
        report.changed["normalisation"] += norm_changed
        report.changed["pii_scrubbing"] += pii_changed
        if any(not m["content"] for m in messages):
            report.dropped["empty_message"] += 1
            continue
        n_chars = sum(len(m["content"]) for m in messages)
        if n_chars < min_chars:
            report.dropped["too_short"] += 1
            continue
        if n_chars > max_chars:
            report.dropped["too_long"] += 1
            continue
        text = "\n".join(f"{m['role']}:{m['content']}" for m in messages)
        if dedup:
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                report.dropped["exact_duplicate"] += 1
                continue
            seen.add(digest)
        if lsh is not None:
            mh = MinHash(num_perm=num_perm)
            mh.update_batch(list(_shingles(text, shingle)))
            if lsh.query(mh):
                report.dropped["near_duplicate"] += 1
                continue
            lsh.insert(str(len(kept)), mh)
        kept.append({**d, "messages": messages})
    report.n_kept = len(kept)
    report.check()
    return kept, report
