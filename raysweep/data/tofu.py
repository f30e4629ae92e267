"""TOFU-format QA data: splits by name from a data directory, and the author subset.

TOFU stores 20 QA per author, in author order. ``Subset(authors=K, forget_authors=F, offset=O)``
keeps authors O..O+K-1 of ``full`` and forgets the last F of them, so CPU jobs stay small. Only
authors 0-19 (``retain_perturbed``) and 180-199 (``forget10_perturbed``) have the paraphrased and
perturbed answers the truth ratio needs, so a subset evaluated with TOFU metrics must forget
authors in those ranges (offset 0, or 162-180 for 20 authors forgetting 2).

``prior_knowledge_rows``: the real-authors and world-facts QA (the knowledge TOFU's model utility
measures), for giving a model trained from scratch that knowledge before it is unlearned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

QA_PER_AUTHOR = 20
FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_FOR = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT_FOR = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}


class DataError(ValueError):
    """A data problem, phrased as one line naming the file or field."""


def load_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSON-lines file; every row a JSON object holding the ``required`` string fields.
    A bad row is a one-line error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    rows = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not allowed (not UTF-8 text; one JSON object per line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}:{err.colno}: {line.strip()[:40]!r} is not allowed "
                                f"(not valid JSON: {err.msg}; one JSON object per line)") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: a JSON {type(row).__name__} is not allowed (one JSON object per line)")
            for key in required:
                if not isinstance(row.get(key), str):
                    got = "missing" if key not in row else repr(row[key])[:40]
                    raise DataError(f"{path}:{n}: field {key!r} {got} is not allowed (a string; rows need "
                                    f"{', '.join(required)})")
            rows.append(row)
    if not rows:
        raise DataError(f"data file '{path}' is empty (allowed: one JSON object per line, at least one row)")
    return rows


QA_FIELDS = ("question", "answer")


@dataclass(frozen=True)
class Subset:
    authors: int
    forget_authors: int
    offset: int = 0  # index of the first author kept (0-based)

    def author_range(self) -> tuple[int, int]:
        """(first, last) author index kept, inclusive."""
        return self.offset, self.offset + self.authors - 1


PRIOR_KNOWLEDGE_FILES = ("real_authors_perturbed.jsonl", "world_facts_perturbed.jsonl")


def prior_knowledge_rows(data_dir: str | Path, per_file: Optional[int] = None) -> list[dict]:
    """Question/answer rows of TOFU's real-authors and world-facts splits (100 + 117 rows; the
    first ``per_file`` of each when given)."""
    rows = []
    for name in PRIOR_KNOWLEDGE_FILES:
        rows += [{"question": r["question"], "answer": r["answer"]}
                 for r in load_jsonl(Path(data_dir) / name, QA_FIELDS)[:per_file]]
    return rows


@dataclass
class UnlearnData:
    """Forget and retain rows (QA rows or raw ``{"text"}`` rows) plus evaluation side data."""

    forget: list[dict]
    retain: list[dict]
    holdout: list[dict] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # question -> row with paraphrased_answer / perturbed_answer (when available)
    perturbed: dict[str, dict] = field(default_factory=dict)
    data_dir: Optional[Path] = None
    # Corpus unlearning: held-out text per split ("forget", "retain") for perplexity.
    heldout: dict[str, list[dict]] = field(default_factory=dict)
    # TOFU evaluation rows with paraphrased/perturbed answers, matched to the QA by row (spec 9.1):
    # forget = the forget split's ``_perturbed`` rows; retain = ``retain_perturbed`` (400 rows; with
    # an author subset, those of the retain authors). None: not available for this data.
    forget_eval: Optional[list[dict]] = None
    retain_eval: Optional[list[dict]] = None

    def texts(self) -> list[str]:
        """Every string a tokenizer for this job should cover."""
        out = []
        for row in self.forget + self.retain + self.holdout + [r for rows in self.heldout.values() for r in rows]:
            out += [row["text"]] if "text" in row else [row["question"], row["answer"]]
        for row in self.perturbed.values():
            out += [row.get("paraphrased_answer", "")] + list(row.get("perturbed_answer", []))
        return out + self.refusals


def load_tofu(
    data_dir: str | Path,
    forget_split: str = "forget10",
    subset: Optional[Subset] = None,
) -> UnlearnData:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data.path: '{data_dir}' is not a directory (expected the TOFU jsonl files)")
    if subset is not None:
        if not 0 < subset.forget_authors < subset.authors:
            raise DataError(
                f"data.subset: forget_authors={subset.forget_authors} is not allowed "
                f"(1..authors-1 with authors={subset.authors})"
            )
        full = load_jsonl(data_dir / "full.jsonl", QA_FIELDS)
        total = len(full) // QA_PER_AUTHOR
        if subset.authors > total:
            raise DataError(f"data.subset.authors: {subset.authors} is not allowed (at most {total})")
        if not 0 <= subset.offset <= total - subset.authors:
            raise DataError(f"data.subset.offset: {subset.offset} is not allowed "
                            f"(0..{total - subset.authors} with authors={subset.authors}; {total} authors)")
        rows = full[subset.offset * QA_PER_AUTHOR:(subset.offset + subset.authors) * QA_PER_AUTHOR]
        cut = (subset.authors - subset.forget_authors) * QA_PER_AUTHOR
        forget, retain = rows[cut:], rows[:cut]
        holdout_file = data_dir / "holdout10.jsonl"
        holdout = load_jsonl(holdout_file, QA_FIELDS)[: len(forget)] if holdout_file.exists() else []
    else:
        if forget_split not in FORGET_SPLITS:
            raise DataError(f"data.forget_split: '{forget_split}' is not allowed ({', '.join(FORGET_SPLITS)})")
        forget = load_jsonl(data_dir / f"{forget_split}.jsonl", QA_FIELDS)
        retain = load_jsonl(data_dir / f"{RETAIN_FOR[forget_split]}.jsonl", QA_FIELDS)
        holdout_file = data_dir / f"{HOLDOUT_FOR[forget_split]}.jsonl"
        holdout = load_jsonl(holdout_file, QA_FIELDS) if holdout_file.exists() else []

    # Question -> perturbed row: only for the tokenizer's training text (``texts``); evaluation rows
    # are matched by row below, never by question (one question text belongs to two authors).
    perturbed: dict[str, dict] = {}
    files = {}
    for name in ("retain_perturbed", "forget10_perturbed", "forget05_perturbed", "forget01_perturbed"):
        f = data_dir / f"{name}.jsonl"
        if f.exists():
            files[name] = load_jsonl(f, ("question",))
            for row in files[name]:
                perturbed.setdefault(row["question"], row)
    if subset is not None:
        forget_eval, retain_eval = _subset_eval_rows(files, subset.offset * QA_PER_AUTHOR, forget, retain)
    else:
        forget_eval = _matched(files.get(f"{forget_split}_perturbed"), forget, f"{forget_split}_perturbed")
        retain_eval = files.get("retain_perturbed")
    refusal_file = data_dir / "idontknow.txt"
    refusals = [l.strip() for l in refusal_file.read_text().splitlines() if l.strip()] if refusal_file.exists() else []
    return UnlearnData(forget, retain, holdout, refusals, perturbed, data_dir, forget_eval=forget_eval,
                       retain_eval=retain_eval)


def _matched(perturbed_rows: Optional[list[dict]], qa_rows: list[dict], name: str) -> Optional[list[dict]]:
    """``perturbed_rows`` when row i holds QA row i's question (the TOFU files are row-aligned)."""
    if perturbed_rows is None:
        return None
    if len(perturbed_rows) != len(qa_rows) or any(p["question"] != q["question"] for p, q in zip(perturbed_rows, qa_rows)):
        raise DataError(f"{name}.jsonl: rows are not aligned with the forget split's rows (row i must hold question i)")
    return perturbed_rows


def _subset_eval_rows(files: dict[str, list[dict]], first: int, forget: list[dict],
                      retain: list[dict]) -> tuple[Optional[list[dict]], Optional[list[dict]]]:
    """Evaluation rows for an author subset (spec 9.1). The subset is rows [first, first + len) of
    ``full.jsonl`` (authors in order); ``retain_perturbed`` is full rows 0..399 and
    ``forget10_perturbed`` full rows 3600..3999, so full row j's perturbed row is found by position.
    Forget evaluation needs every forget row; retain evaluation uses the retain authors' rows that
    have one (authors 0-19 and 180-199), matched by position, never by question text."""
    by_row: dict[int, dict] = {}
    for name, start in (("retain_perturbed", 0), ("forget10_perturbed", 4000 - 20 * QA_PER_AUTHOR)):
        for i, row in enumerate(files.get(name, [])):
            by_row[start + i] = row
    rows = retain + forget  # full rows [first, first + len(rows))
    for j, row in enumerate(rows, start=first):
        if j in by_row and by_row[j]["question"] != row["question"]:
            raise DataError(f"perturbed rows are not aligned with full.jsonl (row {j}: {row['question'][:40]!r})")
    cut = first + len(retain)
    forget_rows = range(cut, cut + len(forget))
    forget_eval = [by_row[j] for j in forget_rows] if all(j in by_row for j in forget_rows) else None
    retain_eval = [by_row[j] for j in range(first, cut) if j in by_row] or None
    return forget_eval, retain_eval


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split a long article at paragraph boundaries into pieces of at most ~max_chars."""
    pieces, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) + 2 > max_chars:
            pieces.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        pieces.append(cur)
    return pieces


def load_muse(data_dir: str | Path, n_forget_texts: Optional[int] = None, chunk_chars: int = 1200) -> UnlearnData:
    """MUSE-News as raw text: forget = the forget corpus (``raw_forget``), retain = the retain
    texts shipped for privleak (``privleak_retain2``), holdout = ``privleak_holdout``. Long
    articles are chunked at paragraph boundaries so they fit a small model's context."""
    data_dir = Path(data_dir)
    forget_texts = [r["text"] for r in load_jsonl(data_dir / "raw_forget.jsonl", ("text",))][:n_forget_texts]
    retain_texts = [r["text"] for r in load_jsonl(data_dir / "privleak_retain2.jsonl", ("text",))]
    forget = [{"text": c} for t in forget_texts for c in chunk_text(t, chunk_chars)]
    retain = [{"text": c} for t in retain_texts for c in chunk_text(t, chunk_chars)]
    holdout = [{"text": r["text"]} for r in load_jsonl(data_dir / "privleak_holdout.jsonl", ("text",))]
    return UnlearnData(forget, retain, holdout, [], {}, data_dir)
