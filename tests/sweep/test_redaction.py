"""Credentials in tracking URIs and secret-looking job fields are redacted before anything is
logged (MLflow artifacts) or printed (errors, plans) - issue 12, item 4."""

import json
from pathlib import Path

import pytest
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


# Issue 23, finding 7: every way a secret reached a log or a tag before; each row is
# (text, what must be gone, what must stay).
LEAKS = [
    ("an '@' inside the password", "http://u:p@ss@h:5000/x", ["p@ss", "ss@"], ["http://***@h:5000/x"]),
    ("an '@' inside the user", "https://me@corp:pw@mlflow.example", ["me@corp", "pw"], ["https://***@mlflow.example"]),
    ("a token in a query string", f"http://h:5000/api?x=1&token={SECRET}&y=2", [SECRET], ["x=1", "y=2"]),
    ("an access key in a query string", f"s3://b/p?AWSAccessKeyId=AK&Signature={SECRET}", [], ["s3://b/p"]),
    ("a YAML literal block", f"password: |\n  {SECRET}\n  more-{SECRET}\nname: job\n", [SECRET], ["name: job"]),
    ("a YAML folded block", f"db:\n  token: >-\n    {SECRET}\n  host: h\n", [SECRET], ["host: h"]),
    ("a secret at the end of a sentence", f"failed with api_key={SECRET}.", [SECRET], ["failed with"]),
]


@pytest.mark.parametrize("why,text,gone,kept", LEAKS, ids=[row[0] for row in LEAKS])
def test_redact_text_closes_every_known_leak(why, text, gone, kept):
    out = tracking.redact_text(text)
    for secret in gone:
        assert secret not in out, f"{why}: {out!r}"
    for visible in kept:
        assert visible in out, f"{why}: {out!r}"


def test_a_uri_alone_loses_its_query_secrets_too():
    assert tracking.redact(f"http://h:5000/?token={SECRET}&a=1") == "http://h:5000/?token=***&a=1"
    assert tracking.redact("http://u:p@ss@h") == "http://***@h"


def test_a_failed_trials_reason_tag_is_redacted():
    from raysweep.sweep.trial import failure_reason

    err = ConnectionError(f"POST http://alice:{SECRET}@10.0.0.5:5000/api?token={SECRET} failed\ntraceback ...")
    reason = failure_reason(err)
    assert SECRET not in reason and "alice" not in reason
    assert reason.startswith("error: POST http://***@10.0.0.5:5000/api?token=***") and "traceback" not in reason
    assert failure_reason(KeyError()) == "error: KeyError"


def test_check_tracking_never_sends_credentials_to_a_host_it_is_redirected_to():
    """A tracking URL that answers with a redirect to another host: refused in one line, and the
    other host never sees the Authorization header (urllib would forward it)."""
    import http.server
    import threading

    from raysweep.preflight import check_tracking
    from raysweep.validation import InputError

    seen = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Elsewhere)

    class Redirect(Elsewhere):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{other.server_port}{self.path}")
            self.end_headers()

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for server in (first, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(InputError) as err:
            check_tracking(f"http://alice:{SECRET}@127.0.0.1:{first.server_port}", must_exist=False, timeout=5)
    finally:
        first.shutdown()
        other.shutdown()
    line = str(err.value)
    assert "\n" not in line and SECRET not in line and "redirects to another host" in line
    assert seen == [], "the redirected request reached the other host"
