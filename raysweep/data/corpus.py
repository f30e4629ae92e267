"""Corpus unlearning (``data.benchmark: corpus``, WMDP-style): a forget and a retain text file,
JSON Lines ``{"text": ...}``, cut into context-sized chunks. The last ``heldout_fraction`` of each
file's documents is held out (never trained on) for the perplexity evaluation; knowledge is
measured with any MCQ benchmark (``eval.benchmarks: [wmdp_bio, mmlu, corpus]``).

Chunks are cut at word boundaries to at most ``chunk_chars`` characters (default 4 x
``data.max_length``: about one context of BPE tokens for English); the collator truncates the
rare chunk that still tokenises longer than the context.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from raysweep.data.tofu import DataError, UnlearnData, load_jsonl

CHARS_PER_TOKEN = 4
_WORD = re.compile(r"\S+\s*")


def chunk_words(text: str, max_chars: int) -> list[str]:
    """Greedy word-boundary chunks of at most ``max_chars`` (a longer single word is cut)."""
    chunks, cur = [], ""
    for word in _WORD.findall(text):
        while len(word) > max_chars:
            if cur:
                chunks.append(cur.rstrip())
                cur = ""
            chunks.append(word[:max_chars])
            word = word[max_chars:]
        if cur and len(cur) + len(word.rstrip()) > max_chars:
            chunks.append(cur.rstrip())
            cur = ""
        cur += word
    if cur.strip():
        chunks.append(cur.rstrip())
    return chunks


def _documents(path: Path, field: str, limit: Optional[int]) -> list[str]:
    rows = load_jsonl(path)
    for i, row in enumerate(rows):
        if not isinstance(row.get("text"), str):
            raise DataError(f"{field}: line {i + 1} of '{path}' has no string \"text\" (JSON Lines {{\"text\": ...}})")
    return [r["text"] for r in rows][:limit]


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held out): the last ``fraction`` of the documents, at least one when any is held."""
    n = int(round(len(docs) * fraction))
    if fraction > 0 and n == 0 and len(docs) > 1:
        n = 1
    return docs[: len(docs) - n], docs[len(docs) - n:]


def load_corpus(data_dir: str | Path, forget_file: str, retain_file: str, *, max_length: int,
                chunk_chars: Optional[int] = None, heldout_fraction: float = 0.1,
                n_forget_texts: Optional[int] = None, n_retain_texts: Optional[int] = None) -> UnlearnData:
    data_dir = Path(data_dir)
    chars = chunk_chars or CHARS_PER_TOKEN * max_length
    out = {}
    for name, file, limit in (("forget", forget_file, n_forget_texts), ("retain", retain_file, n_retain_texts)):
        docs = _documents(data_dir / file, f"data.{name}_file", limit)
        train, held = split_heldout(docs, heldout_fraction)
        if not train:
            raise DataError(f"data.{name}_file: '{file}' leaves no training text after holding out "
                            f"{heldout_fraction:g} of {len(docs)} documents")
        out[name] = [{"text": c} for d in train for c in chunk_words(d, chars)]
        out[f"{name}_heldout"] = [{"text": c} for d in held for c in chunk_words(d, chars)]
    data = UnlearnData(out["forget"], out["retain"], [], [], {}, data_dir)
    data.heldout = {"forget": out["forget_heldout"], "retain": out["retain_heldout"]}
    return data
