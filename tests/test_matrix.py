"""The feature matrix (issue 21): every job field has a row, docs/matrix.md is what its generator
writes from the validator and the tests' marks, and each refused pair is refused the way a user
meets it: one line, exit 2, before anything starts."""

import subprocess
import sys

import pytest

from .conftest import REPO
from .matrix import FIELD_ROWS, job_fields, value_pairs


def test_every_job_field_has_a_matrix_row():
    fields = job_fields()
    assert len(fields) > 90
    missing, gone = sorted(fields - set(FIELD_ROWS)), sorted(set(FIELD_ROWS) - fields)
    assert not missing, f"job fields without a row in tests/matrix.py FIELD_ROWS: {missing}"
    assert not gone, f"rows in tests/matrix.py FIELD_ROWS for fields the spec no longer has: {gone}"


def test_the_field_check_sees_a_new_field(monkeypatch):
    """The check above can fail: a field added to a nested section shows up."""
    from typing import Optional

    from raysweep.spec import TrainSpec

    monkeypatch.setitem(TrainSpec.model_fields, "new_knob", TrainSpec.model_fields["inline"].__class__(
        annotation=Optional[int], default=None))
    assert "train.new_knob" in job_fields() and "train.new_knob" not in FIELD_ROWS


def test_matrix_doc_is_current():
    res = subprocess.run([sys.executable, "docs/make_matrix.py", "--check"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_doc_has_a_verdict_for_every_pair():
    text = (REPO / "docs" / "matrix.md").read_text()
    for a, b in value_pairs():
        assert f"| {a[0]}={a[1]} × {b[0]}={b[1]} |" in text


def test_every_pair_that_applies_runs_in_the_default_suite():
    """Issue 21: no pair is untested, and none runs only under ``-m slow`` (docs/matrix.md, which
    the test above keeps current)."""
    text = (REPO / "docs" / "matrix.md").read_text()
    rows = [[c.strip() for c in line.split("|")[1:-1]]
            for line in text.split("\n## Pairs\n")[1].split("\n## ")[0].splitlines() if " × " in line]
    assert len(rows) == len(list(value_pairs()))
    assert not [r[0] for r in rows if r[1] == "**untested**"], "untested pairs"
    assert not [r[0] for r in rows if r[1] == "works" and not r[2]], "pairs only the slow suite runs"


@pytest.mark.parametrize("overrides, fragment", [
    (["train.workers=2", "train.strategy=fsdp", "model.lora.r=4"], "train.strategy: 'fsdp' is not allowed with model.lora"),
    (["sweep.scheduler.name=mo_asha", "eval.every=0"], "sweep.scheduler: mo_asha is not allowed without eval.every"),
])
def test_refused_pairs_are_one_line_before_anything_starts(tmp_path, tofu_dir, capsys, overrides, fragment):
    import ray
    import yaml

    from raysweep.cli import main

    sys.path.insert(0, str(REPO))
    from docs.make_matrix import validator_job

    job = validator_job(tmp_path)
    raw = yaml.safe_load(job.read_text())
    raw["sweep"]["storage_path"] = str(tmp_path / "runs")
    job.write_text(yaml.safe_dump(raw))
    args = ["launch", str(job), "--dry-run"] + [x for o in overrides for x in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
