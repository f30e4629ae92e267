"""Benchmark data from the Hugging Face hub (or a local copy of a hub dataset repository), loaded
with ``datasets`` and written once as the JSON Lines files raysweep's loaders read.

``data.path`` may name a hub dataset (``locuslab/TOFU``, ``muse-bench/MUSE-News``) and
``eval.mcq_data`` ``cais/wmdp``; a local folder laid out like such a repository (a README whose
YAML header lists ``configs`` with their parquet/json ``data_files``) works the same way, offline.
Each raysweep file comes from one (config, split) of the repository; configs a repository lacks are
skipped, and the job's own file check then names what is missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

# raysweep file -> (config, split) of the hub repository.
_TOFU_CONFIGS = ["full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "holdout01",
                 "holdout05", "holdout10", "forget01_perturbed", "forget05_perturbed", "forget10_perturbed",
                 "retain_perturbed", "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed"]
LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    "tofu": {f"{c}.jsonl": (c, "train") for c in _TOFU_CONFIGS},
    "muse": {
        "raw_forget.jsonl": ("raw", "forget"),
        "privleak_forget.jsonl": ("privleak", "forget"),
        "privleak_retain2.jsonl": ("privleak", "retain"),
        "privleak_holdout.jsonl": ("privleak", "holdout"),
        "knowmem_forget_qa.jsonl": ("knowmem", "forget_qa"),
        "knowmem_forget_qa_icl.jsonl": ("knowmem", "forget_qa_icl"),
        "knowmem_retain2_qa.jsonl": ("knowmem", "retain_qa"),
        "knowmem_retain2_qa_icl.jsonl": ("knowmem", "retain_qa_icl"),
        "verbmem_forget.jsonl": ("verbmem", "forget"),
    },
    "wmdp": {f"wmdp/{c}.jsonl": (c, "test") for c in ("wmdp-bio", "wmdp-chem", "wmdp-cyber")},
}
DONE = ".raysweep-materialised"
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_name(value: str) -> bool:
    return bool(_HUB_NAME.fullmatch(value))


def is_dataset_repo(path: Path) -> bool:
    """A local folder laid out like a hub dataset repository (configs in its README header)."""
    readme = Path(path) / "README.md"
    return readme.is_file() and "configs:" in readme.read_text(encoding="utf-8", errors="replace")[:20000]


def materialise(source: str, layout: str, out_dir: Path) -> Path:
    """Write ``layout``'s files from ``source`` (hub name or local repository folder) into ``out_dir``
    once; later calls reuse it."""
    out_dir = Path(out_dir)
    if (out_dir / DONE).exists():
        return out_dir
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    written = []
    for file, (config, split) in LAYOUTS[layout].items():
        try:
            ds = load_dataset(source, config, split=split)
        except DatasetNotFoundError as err:
            raise ValueError(f"{source!r}: no such dataset, or the hub is unreachable ({str(err).splitlines()[0]})") from None
        except ValueError as err:  # a config or split this repository does not have
            if "not found" in str(err).lower() or "unknown split" in str(err).lower() or "bad split" in str(err).lower():
                continue
            raise
        target = tmp / file
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(target), lines=True, force_ascii=False)
        written.append(file)
    if not written:
        raise ValueError(f"{source!r}: none of the {layout.upper()} configs ({', '.join(sorted({c for c, _ in LAYOUTS[layout].values()}))}) found")
    (tmp / DONE).write_text("\n".join(written))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def local_copy_dir(source: str, cache_dir: Path) -> Path:
    key = re.sub(r"[^\w.-]+", "__", str(source).strip("/"))[-120:]
    return Path(cache_dir) / "datasets" / key


def resolve_data_source(value: str, layout: str, cache_dir: Path, base: Path) -> Optional[Path]:
    """The materialised folder when ``value`` is a hub name that is not a local path, or a local
    dataset repository; None when ``value`` is an ordinary data folder."""
    p = Path(os.path.expandvars(value)).expanduser()
    local = p if p.is_absolute() else (base / p).resolve()
    if local.is_dir():
        if not is_dataset_repo(local):
            return None
        return materialise(str(local), layout, local_copy_dir(str(local), cache_dir))
    if is_hub_name(value):
        return materialise(value, layout, local_copy_dir(value, cache_dir))
    return None
