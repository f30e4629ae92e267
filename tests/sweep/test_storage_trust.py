"""Issue 23, finding 2: ``raysweep resume`` restores Tune state (pickles) from the folder its MLflow
parent run names. A forged ``raysweep.storage`` tag, or a pickle another user could have planted in
that folder, is refused in one line before anything is unpickled. Real sqlite MLflow, real
pickles whose unpickling would create a file."""

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysweep.sweep import storage_trust, tracking
from raysweep.sweep.storage_trust import MAC_TAG, STORAGE_TAG, UntrustedStorage

from ..conftest import tiny_job
from ..distributed.workers import Payload


def _tune_folder(root: Path, marker: Path) -> Path:
    """A folder that looks restorable to Tune, whose tuner.pkl runs code when unpickled."""
    root.mkdir(parents=True)
    (root / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (root / "experiment_state-2026-12-06.json").write_text("{}")
    return root


@pytest.fixture
def job(tmp_path, tofu_dir):
    """A real sweep job: what the parent run's job.json holds, so that without the check resume
    would go all the way to Tuner.restore."""
    from raysweep.spec import load_job

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"method": {"graddiff": {}}}))
    raw = yaml.safe_load(tiny_job(tmp_path, tofu_dir).read_text())
    raw["sweep"] = {"search_space": str(space), "objectives": {"forget_answer_loss": "max"}, "num_trials": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    return load_job(tmp_path / "job.yaml")


def _parent(tmp_path, job, sweep, tags):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "raysweep/forged")
    run = c.create_run(exp, run_name=sweep, tags={tracking.SWEEP_TAG: sweep, tracking.ROLE_TAG: "parent", **tags})
    tracking.log_job(c, run.info.run_id, job)
    c.log_text(run.info.run_id, yaml.safe_dump({"method": {"graddiff": {}}}), "search_space.yaml")
    return uri


def _resume(uri, sweep, *extra):
    return subprocess.run([sys.executable, "-m", "raysweep.cli", "resume", sweep, "--tracking-uri", uri, *extra],
                          capture_output=True, text=True, timeout=300)


def test_resume_refuses_a_storage_tag_this_user_did_not_sign(tmp_path, job):
    marker = tmp_path / "pwned"
    evil = _tune_folder(tmp_path / "elsewhere" / "s1", marker)
    uri = _parent(tmp_path, job, "s1", {STORAGE_TAG: str(evil)})
    done = _resume(uri, "s1")
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"raysweep: error: sweep 's1': storage '{evil}' (its raysweep.storage tag) is not allowed "
                           "(not signed by this user's key"), done.stderr[-2000:]
    assert not marker.exists()
    # a signature for another sweep or another path does not transfer
    uri = _parent(tmp_path, job, "s2", {STORAGE_TAG: str(evil), MAC_TAG: storage_trust.sign("s1", str(evil))})
    assert _resume(uri, "s2").returncode == 2 and not marker.exists()


def test_resume_refuses_a_signed_folder_holding_a_file_another_user_wrote(tmp_path, job):
    marker = tmp_path / "pwned"
    folder = _tune_folder(tmp_path / "runs" / "s3", marker)
    os.chown(folder / "tuner.pkl", 65534, 65534)
    uri = _parent(tmp_path, job, "s3", {STORAGE_TAG: str(folder), MAC_TAG: storage_trust.sign("s3", str(folder))})
    done = _resume(uri, "s3")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"raysweep: error: sweep 's3': '{folder / 'tuner.pkl'}' is owned by another user (uid 65534), which is not allowed "
        f"(Tune unpickles its state from '{folder}': only your own files, not writable by group or others)")
    assert not marker.exists()


def test_a_storage_root_the_user_names_is_trusted_without_a_signature(tmp_path):
    folder = tmp_path / "runs" / "s4"
    folder.mkdir(parents=True)
    tags = {STORAGE_TAG: str(folder)}
    with pytest.raises(UntrustedStorage):
        storage_trust.trusted_storage(tags, "s4")
    assert storage_trust.trusted_storage(tags, "s4", [str(tmp_path / "runs")]) == str(folder)
    with pytest.raises(UntrustedStorage):  # "runs/../elsewhere" is not under runs
        storage_trust.trusted_storage({STORAGE_TAG: str(tmp_path / "runs" / ".." / "x")}, "s4", [str(tmp_path / "runs")])


def test_the_key_is_private_and_a_readable_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(storage_trust.KEY_ENV, str(tmp_path / "k" / "storage.key"))
    mac = storage_trust.sign("s", "/p")
    key = tmp_path / "k" / "storage.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(mac) == 64
    assert storage_trust.sign("s", "/p") == mac and storage_trust.sign("s", "/q") != mac
    key.chmod(0o644)
    with pytest.raises(UntrustedStorage, match="mode 0600"):
        storage_trust.sign("s", "/p")


@pytest.mark.parametrize("forged,why", [
    ("{elsewhere}", "not inside the sweep's storage '{runs}'"),
    ("{runs}/t1/../../elsewhere", "not inside the sweep's storage '{runs}'"),
    ("runs:/{other}/checkpoint", "an artifact of the trial's own run"),
    ("runs:/{own}/../../x", "an artifact of the trial's own run"),
])
def test_export_refuses_a_checkpoint_tag_pointing_outside_the_sweep(tmp_path, tofu_dir, capsys, forged, why):
    """Issue 23, finding 4: the checkpoint an export reads comes from a trial's tag."""
    from raysweep.cli import main
    from raysweep.sweep.tracking import CHECKPOINT_AT

    from .made_sweep import make_sweep

    c, uri, parent = make_sweep(tmp_path, tofu_dir=tofu_dir)
    run = tracking.find_child(c, parent.info.run_id, parent.info.experiment_id, "t1")
    other = tracking.find_child(c, parent.info.run_id, parent.info.experiment_id, "t2")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    names = {"elsewhere": elsewhere, "runs": tmp_path / "runs", "other": other.info.run_id, "own": run.info.run_id}
    c.set_tag(run.info.run_id, f"{CHECKPOINT_AT}2", forged.format(**names))
    code = main(["export", "made", "t1@2", str(tmp_path / "out"), "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "is not allowed (" in err[0] and why.format(**names) in err[0], err[0]
    assert not (tmp_path / "out").exists()
