"""Credentials in tracking URIs and secret-looking job fields are redacted before anything is
logged (MLflow artifacts) or printed (errors, plans) - issue 12, item 4."""

import json
from pathlib import Path

import yaml

from raysweep.sweep import tracking

SECRET = "s3cr3t-value"


def test_redact_text_hides_uri_credentials_and_secret_fields_only():
    text = (f"sweep:\n  tracking_uri: http://alice:{SECRET}@10.0.0.5:5000  # shared server\n"
            f"  api_key: {SECRET}\n  db_password: \"{SECRET}\"\nenv: MLFLOW_TRACKING_TOKEN={SECRET}\n"
            "data:\n  subset: {authors: 20, forget_authors: 2}\nmodel: {base: tiny-llama}\n"
            "tokenizer_path: /x\n")
    out = tracking.redact_text(text)
    assert SECRET not in out and "alice" not in out
    assert "http://***@10.0.0.5:5000  # shared server" in out and "api_key: '***'" in out
    assert "authors: 20, forget_authors: 2" in out and "tokenizer_path: /x" in out  # not secrets


def test_redact_mapping_keeps_structure():
    raw = {"sweep": {"tracking_uri": f"https://bob:{SECRET}@mlflow.example:443", "storage_path": "/s"},
           "hooks": [{"Authorization": f"Bearer {SECRET}"}, {"aws_secret_access_key": SECRET}],
           "data": {"subset": {"authors": 3}}}
    out = tracking.redact_mapping(raw)
    assert SECRET not in json.dumps(out)
    assert out["sweep"]["tracking_uri"] == "https://***@mlflow.example:443"
    assert out["data"] == raw["data"] and out["sweep"]["storage_path"] == "/s"
    assert not tracking.is_secret_key("authors") and tracking.is_secret_key("MLFLOW_TRACKING_TOKEN")


def test_job_logged_to_mlflow_is_redacted(tmp_path, tofu_dir):
    from mlflow.tracking import MlflowClient

    from raysweep.spec import load_job

    from ..conftest import tiny_job

    path = tiny_job(tmp_path, tofu_dir)
    raw = yaml.safe_load(path.read_text())
    space = tmp_path / "space.yaml"
    space.write_text("unlearn: {lr: {loguniform: [1.0e-4, 1.0e-3]}}\n")
    raw["eval"] = {"benchmarks": ["qa"]}
    raw["sweep"] = {"search_space": str(space), "objectives": {"forget_answer_loss": "max"},
                    "tracking_uri": f"http://alice:{SECRET}@127.0.0.1:5000"}
    path.write_text(yaml.safe_dump(raw) + f"# token: {SECRET}\n")
    job = load_job(path)
    c = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = c.create_run(c.create_experiment("e"))
    tracking.log_job(c, run.info.run_id, job)
    logged = Path(c.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    files = sorted(p.name for p in logged.iterdir())
    assert files == ["job.json", "job.yaml"]
    for p in logged.iterdir():
        assert SECRET not in p.read_text(), p.name
    from raysweep.spec import JobSpec

    back = JobSpec.model_validate_json((logged / "job.json").read_text())  # resume still reads it
    assert back.sweep.tracking_uri == "http://***@127.0.0.1:5000" and back.data.subset.authors == 3


def test_printed_plan_and_errors_are_redacted(tmp_path, tofu_dir, capsys):
    from raysweep.cli import main

    from ..conftest import tiny_job

    path = tiny_job(tmp_path, tofu_dir)
    code = main(["status", "s", "--tracking-uri", f"http://alice:{SECRET}@127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and SECRET not in err and "http://***@127.0.0.1:9" in err
    code = main(["run", str(path), "--dry-run", "--set", f"unlearn.lr={SECRET}"])
    assert code == 2  # a bad value is echoed - but never a URI's credentials
    code = main(["run", str(path), "--dry-run", "--set", f"data.path=http://alice:{SECRET}@host/x"])
    err = capsys.readouterr().err
    assert code == 2 and "alice" not in err.split("unlearn.lr")[-1]
