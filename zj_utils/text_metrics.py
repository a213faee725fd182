"""Automatic text metrics for Chinese medical answers: BLEU-4, ROUGE-L, Distinct-1/2 and the refusal rate.

Written by hand rather than taken from sacrebleu / rouge-score: each metric is a few lines, the project needs
one tokenisation for all of them (sacrebleu's "zh" tokeniser keeps punctuation as tokens and rouge-score drops
every non-ASCII character unless given a tokeniser), and neither is otherwise a dependency. The definitions
follow the usual ones: on CMtMedQA's test answers, each scored against another record's, sacrebleu 2.6.0
(tokenize="none" on these tokens, smooth_method="floor", 0.1) gives the same corpus BLEU (12.917) and the same
sentence BLEU (effective order, first 200 pairs) to 1e-15, rouge-score 0.1.2 (rougeL, same tokens) the same
ROUGE-L (0.3289);
these tokens equal sacrebleu's "zh" ones without punctuation on 1143 of its 1144 answers (it keeps "PET-CT" whole).
tests/test_text_metrics.py checks hand-computed values.

- tokens: NFKC-normalised text; each CJK character (Han, kana, Hangul) is a token, each run of other letters
  or digits is a word token, punctuation and spaces are dropped. Case is kept, as sacrebleu does.
- BLEU (Papineni et al. 2002): clipped n-gram precisions for n = 1..4 summed over the corpus, geometric mean,
  brevity penalty exp(1 - r/c) when the hypotheses are shorter than the closest references. A zero match count
  becomes epsilon / total (Chen & Cherry 2014, method 1; epsilon = 0.1, sacrebleu's "floor"). An order with no
  n-gram at all in the hypotheses (all shorter than n tokens) is left out of the mean ("effective order"),
  so that a short answer identical to its reference scores 1 and not an arbitrary value.
- ROUGE-L (Lin 2004): F1 (beta = 1) of LCS precision and recall per pair, the best over a pair's references,
  averaged over pairs.
- Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over a set of answers.
Scores are fractions in [0, 1] like the project's other rates (multiply by 100 for sacrebleu's scale).
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

from . import rubric as R

_CJK = ("\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff"
        "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f")
_TOKEN = re.compile(f"[{_CJK}]|(?:(?![{_CJK}])[^\\W_])+")


def tokenize(text: str) -> list[str]:
    """Metric tokens: CJK characters one by one, runs of other letters/digits as words, no punctuation."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text))


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _refs(references, n_hyp: int) -> list[list[str]]:
    if len(references) != n_hyp:
        raise ValueError(f"{n_hyp} hypotheses but {len(references)} references (one entry, str or list, each).")
    out = []
    for i, r in enumerate(references):
        rs = [r] if isinstance(r, str) else list(r)
        if not rs or not all(isinstance(x, str) for x in rs):
            raise ValueError(f"reference {i}: expected a string or a non-empty list of strings, got {r!r}.")
        out.append(rs)
    return out


def bleu_stats(hypotheses: Sequence[str], references, max_n: int = 4) -> dict:
    """The sufficient statistics of corpus BLEU: clipped matches and totals per order, lengths."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, _refs(references, len(hypotheses))):
        h = tokenize(hyp)
        rt = [tokenize(r) for r in refs]
        hyp_len += len(h)
        # the closest reference length, the shorter one on a tie (as sacrebleu and NLTK)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rt)[1]
        for n in range(1, max_n + 1):
            hc = ngrams(h, n)
            best: Counter = Counter()
            for r in rt:
                best |= ngrams(r, n)  # element-wise max: a hypothesis n-gram is clipped by its most generous ref
            matches[n - 1] += sum(min(c, best[g]) for g, c in hc.items())
            totals[n - 1] += sum(hc.values())
    return {"matches": matches, "totals": totals, "hyp_len": hyp_len, "ref_len": ref_len}


def bleu_from_stats(st: dict, epsilon: float = 0.1) -> dict:
    precisions = [None if t == 0 else (m if m > 0 else epsilon) / t for m, t in zip(st["matches"], st["totals"])]
    used = [p for p in precisions if p is not None]
    c, r = st["hyp_len"], st["ref_len"]
    bp = 0.0 if c == 0 else 1.0 if c > r else math.exp(1 - r / c)
    score = bp * math.exp(sum(math.log(p) for p in used) / len(used)) if used else 0.0
    return {"bleu": score, "precisions": precisions, "brevity_penalty": bp, "hyp_len": c, "ref_len": r}


def corpus_bleu(hypotheses: Sequence[str], references, max_n: int = 4, epsilon: float = 0.1) -> dict:
    """Corpus BLEU-`max_n`; `references[i]` is the reference (str) or references (list) of hypothesis i.
    Returns {bleu, precisions (None for an order with no n-gram), brevity_penalty, hyp_len, ref_len}."""
    return bleu_from_stats(bleu_stats(hypotheses, references, max_n), epsilon)


def sentence_bleu(hypothesis: str, references, max_n: int = 4, epsilon: float = 0.1) -> float:
    refs = [references] if isinstance(references, str) else list(references)
    return corpus_bleu([hypothesis], [refs], max_n, epsilon)["bleu"]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison & Dix 1986; Hyyro 2004): one big-integer
    step per element of `b`, so that ROUGE-L over a thousand long answers takes a moment, not minutes."""
    if not a or not b:
        return 0
    masks: dict = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(hypothesis: str, references) -> float:
    """ROUGE-L F1 (beta = 1) of one hypothesis, the best over its references; 0 when nothing is in common."""
    h = tokenize(hypothesis)
    best = 0.0
    for ref in [references] if isinstance(references, str) else references:
        r = tokenize(ref)
        lcs = lcs_length(h, r)
        if lcs:
            p, rec = lcs / len(h), lcs / len(r)
            best = max(best, 2 * p * rec / (p + rec))
    return best


def corpus_rouge_l(hypotheses: Sequence[str], references) -> float:
    refs = _refs(references, len(hypotheses))
    return sum(rouge_l(h, r) for h, r in zip(hypotheses, refs)) / len(refs) if refs else 0.0


def distinct_n(answers: Iterable[str], n: int) -> float:
    """Distinct n-grams over all n-grams of a set of answers (0 when the answers hold no n-gram)."""
    seen: set = set()
    total = 0
    for a in answers:
        g = ngrams(tokenize(a), n)
        seen |= g.keys()
        total += sum(g.values())
    return len(seen) / total if total else 0.0


def is_refusal(answer: str) -> bool:
    """The rule judge's test (zj_utils.annotator.assess: Verdict.refused), so both count the same answers."""
    return bool(answer) and any(m in answer for m in R.REFUSAL_MARKERS)


def refusal_rate(answers: Sequence[str]) -> float | None:
    return sum(map(is_refusal, answers)) / len(answers) if answers else None


def auto_metrics(hypotheses: Sequence[str], references=None, digits: int = 4) -> dict:
    """BLEU-4 and ROUGE-L against `references` (when given) and Distinct-1/2 of the hypotheses, rounded."""
    out = {"n": len(hypotheses)}
    if references is not None:
        b = corpus_bleu(hypotheses, references)
        out |= {"bleu4": round(b["bleu"], digits), "brevity_penalty": round(b["brevity_penalty"], digits),
                "rouge_l": round(corpus_rouge_l(hypotheses, references), digits)}
    return out | {"distinct_1": round(distinct_n(hypotheses, 1), digits),
                  "distinct_2": round(distinct_n(hypotheses, 2), digits)}
