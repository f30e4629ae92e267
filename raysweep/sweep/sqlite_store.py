"""A new MLflow sqlite store, created from a migrated template instead of by migrations.

MLflow builds a new sqlite store by running its whole Alembic history (about 9 s of CPU here,
on the critical path of every first sweep in a new ``mlflow.db`` and of every test with its own
store). The result depends only on the MLflow/SQLAlchemy versions, so it is built once per
machine under the raysweep cache, with MLflow's default experiment removed; a new store is a copy
of it, and MLflow, opening the copy, finds its tables at the current revision (``_verify_schema``)
and creates the default experiment itself with the artifact location of this store. Anything
unexpected falls back to MLflow's own creation.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Optional

PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str) -> Optional[Path]:
    """The database file of a local ``sqlite:///`` URI (no query string), else None."""
    if not tracking_uri.startswith(PREFIX) or "?" in tracking_uri:
        return None
    rest = tracking_uri[len(PREFIX):]
    if not rest or rest == ":memory:":
        return None
    return Path(rest if rest.startswith("/") else os.path.abspath(rest))


def template_path() -> Path:
    import mlflow
    import sqlalchemy

    from raysweep.spec import default_cache_dir

    return default_cache_dir() / "mlflow-store" / f"empty-mlflow{mlflow.__version__}-sqlalchemy{sqlalchemy.__version__}.db"


def _build_template(path: Path) -> None:
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".db", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    MlflowClient(tracking_uri=PREFIX + tmp).search_experiments()  # MLflow's own creation
    with sqlite3.connect(tmp) as db:
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    os.replace(tmp, path)  # atomic: a concurrent builder's copy is equally good


def seed_new_store(tracking_uri: str) -> bool:
    """Create the store of a local sqlite URI from the template when its file does not exist yet.
    True when a copy was made."""
    target = sqlite_path(tracking_uri)
    if target is None or target.exists() or not target.parent.is_dir():
        return False
    try:
        template = template_path()
        if not template.exists():
            _build_template(template)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        shutil.copyfile(template, tmp)
        try:
            os.link(tmp, target)  # no clobber: a store created meanwhile by someone else wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return True
    except Exception:  # noqa: BLE001 - only a shortcut: MLflow creates the store as usual
        return False
