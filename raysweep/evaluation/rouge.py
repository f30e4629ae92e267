"""ROUGE-L as ``rouge_score`` computes it (lowercase, alphanumeric tokens, Porter stemming of
tokens longer than 3 characters, LCS-based precision/recall/F1). Our own code so evaluation
needs no extra package; tests compare it with the ``rouge-score`` package."""

from __future__ import annotations

import re
from functools import lru_cache

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter

    return porter.PorterStemmer()


@lru_cache(maxsize=100_000)
def _stem(token: str) -> str:
    return _stemmer().stem(token) if len(token) > 3 else token


def rouge_tokens(text: str, stem: bool = True) -> list[str]:
    tokens = [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]
    return [_stem(t) for t in tokens] if stem else tokens


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, prediction: str, stem: bool = True) -> dict[str, float]:
    ref, pred = rouge_tokens(reference, stem), rouge_tokens(prediction, stem)
    lcs = lcs_length(ref, pred)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(pred), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}
