"""The ``custom_dataset`` of the local tasks (lm-eval imports this file by its path): the task's
JSON Lines files under the data root, as a ``datasets.DatasetDict``, rows as lm-eval's hub
datasets give them (``question``, ``choices``, ``answer``, ``subject``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def load(data_root: Optional[str] = None, files: Optional[dict] = None, **_):
    from datasets import Dataset, DatasetDict

    from raysweep.data.tofu import load_jsonl
    from raysweep.evaluation.mcq import normalise_row

    if not data_root:
        raise ValueError("data_root: None is not allowed (lm-eval metadata {'data_root': FOLDER with wmdp/, mmlu/})")
    out = {}
    for split, name in (files or {}).items():
        rows = [normalise_row(r) for r in load_jsonl(Path(data_root) / name)]
        out[split] = Dataset.from_list([{"question": r["question"], "choices": r["choices"], "answer": r["answer"],
                                         "subject": r["subject"] or ""} for r in rows])
    return DatasetDict(out)
