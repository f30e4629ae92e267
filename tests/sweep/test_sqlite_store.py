"""A new sqlite MLflow store made from the migrated template (raysweep/sweep/sqlite_store.py) is
the store MLflow itself would have made: same tables, same schema revision, its own default
experiment; an existing store is never touched."""

import sqlite3

from mlflow.tracking import MlflowClient

from raysweep.sweep import tracking
from raysweep.sweep.sqlite_store import seed_new_store, sqlite_path, template_path


def tables(path) -> dict:
    db = sqlite3.connect(path)
    return {name: sorted(r[1] for r in db.execute(f'PRAGMA table_info("{name}")'))
            for (name,) in db.execute("select name from sqlite_master where type='table'")}


def test_seeded_store_matches_mlflows_own(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    native = tmp_path / "native.db"
    MlflowClient(tracking_uri=f"sqlite:///{native}").search_experiments()
    first = tmp_path / "first.db"
    c1 = tracking.client(f"sqlite:///{first}")  # builds the template, then copies it
    assert template_path().exists()
    c2 = tracking.client("sqlite:///second.db")  # relative URI: resolved like MLflow does
    assert (tmp_path / "second.db").exists()
    for c, path in ((c1, first), (c2, tmp_path / "second.db")):
        assert tables(path) == tables(native)
        version = sqlite3.connect(path).execute("select version_num from alembic_version").fetchall()
        assert version == sqlite3.connect(native).execute("select version_num from alembic_version").fetchall()
        default = c.get_experiment("0")  # made by MLflow on opening the copy, for this store
        assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
        exp = c.create_experiment("raysweep/x")
        run = c.create_run(exp)
        c.log_metric(run.info.run_id, "m", 1.5)
        c.log_text(run.info.run_id, "hello", "a.txt")
        assert c.get_run(run.info.run_id).data.metrics == {"m": 1.5}
        assert (tmp_path / "mlruns" / exp / run.info.run_id / "artifacts" / "a.txt").read_text() == "hello"


def test_existing_store_and_other_uris_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSWEEP_CACHE", str(tmp_path / "cache"))
    existing = tmp_path / "old.db"
    c = MlflowClient(tracking_uri=f"sqlite:///{existing}")
    c.create_experiment("kept")
    before = existing.read_bytes()
    assert seed_new_store(f"sqlite:///{existing}") is False
    assert existing.read_bytes() == before
    assert [e.name for e in tracking.client(f"sqlite:///{existing}").search_experiments()] == ["kept", "Default"]
    assert sqlite_path("http://127.0.0.1:5000") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:////a/b.db?timeout=5") is None
    assert seed_new_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}") is False  # MLflow's own error then
    assert not (tmp_path / "cache").exists()  # nothing was built for URIs it does not handle
