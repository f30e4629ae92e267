"""Safe defaults (issue 12, item 4): the documented MLflow server is never open to the network
without authentication, Ray's dashboard stays on loopback, and the basic-auth server that
cluster.yaml starts really refuses anonymous clients and accepts the nodes' credentials."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from ..conftest import REPO, _free_port, stop_mlflow_server, wait_healthy

CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
HEAD = CLUSTER["head_start_ray_commands"]


def _code_lines() -> list[str]:
    return [line for line in (REPO / "cluster.yaml").read_text().splitlines() if not line.lstrip().startswith("#")]


def test_cluster_yaml_binds_nothing_to_every_interface():
    assert not [line for line in _code_lines() if "0.0.0.0" in line]
    ray_start = next(c for c in HEAD if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in ray_start or "--include-dashboard=false" in ray_start
    server = next(c for c in HEAD if "mlflow server" in c)
    assert "--app-name basic-auth" in server and "MLFLOW_AUTH_CONFIG_PATH=" in server
    assert '--host "$(hostname -I | cut -d\' \' -f1)"' in server  # the head's private address


def test_readme_and_job_files_document_loopback_or_authenticated_servers():
    for path in [REPO / "README.md", *sorted((REPO / "jobs").glob("*.yaml"))]:
        text = path.read_text()
        assert "--host 0.0.0.0" not in text and "dashboard-host=0.0.0.0" not in text, path


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """cluster.yaml's own commands (auth.ini and `mlflow server --app-name basic-auth`), with the
    shared folder moved to a temporary one and the host to loopback."""
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF (the test extra)")
    root = tmp_path_factory.mktemp("auth_server")
    password = "pw-" + os.urandom(6).hex()
    port = _free_port()
    script = []
    for cmd in HEAD:
        if "auth.ini" in cmd or "mlflow server" in cmd:
            cmd = cmd.replace("/shared/raysweep/mlflow", str(root)).replace(f"$(cat {root}/password)", password)
            cmd = cmd.replace("$(hostname -I | cut -d' ' -f1)", "127.0.0.1").replace("--port 5000", f"--port {port}")
            cmd = cmd.replace("~/venv/bin/mlflow", f"{sys.executable} -m mlflow").replace("--workers 2", "--workers 1")
            cmd = cmd.replace("nohup", "exec").strip("()& ").rstrip(" &")
            # the store is PostgreSQL's on the cluster (tests/slow/test_cluster_postgres.py); auth is this test's
            cmd = re.sub(r"--backend-store-uri \S+", f"--backend-store-uri sqlite:///{root}/mlflow.db", cmd)
            script.append(cmd.rstrip(" &"))
    assert len(script) == 2 and "basic-auth" in script[1]
    subprocess.run(["bash", "-c", script[0]], check=True)
    server = script[1]
    if server.endswith(")"):
        server = server[:-1]
    proc = subprocess.Popen(["bash", "-c", server.replace("> ", "> ", 1)], start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_healthy(uri, proc, root / "server.log", what="basic-auth server", timeout=120)
    yield uri, password
    stop_mlflow_server(proc)


@pytest.mark.slow  # starts a real basic-auth MLflow server (~30 s here)
def test_basic_auth_server_refuses_anonymous_and_accepts_the_nodes_credentials(auth_server, monkeypatch):
    from raysweep.preflight import check_tracking
    from raysweep.validation import InputError

    uri, password = auth_server
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(InputError, match=r"refused the credentials, HTTP 401"):
        check_tracking(uri, must_exist=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "raysweep")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(InputError, match="HTTP 401"):
        check_tracking(uri, must_exist=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    check_tracking(uri, must_exist=False)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)  # what the driver and every trial do with the nodes' environment
    run = c.create_run(c.create_experiment("auth-check"))
    c.log_metric(run.info.run_id, "x", 1.0)
    assert c.get_run(run.info.run_id).data.metrics["x"] == 1.0


@pytest.mark.slow  # the basic-auth MLflow server of the test above (~30 s here)
def test_trials_log_in_as_a_user_that_reaches_only_its_sweeps_experiment(auth_server, monkeypatch):
    """Issue 23, finding 6: cluster.yaml's nodes log in as a non-admin user (its own password on
    the shared volume) whom the driver, as the admin, grants EDIT on the sweep's experiment only."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    from raysweep.sweep import tracking

    uri, password = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "raysweep")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    admin = MlflowClient(uri)
    users = get_app_client("basic-auth", tracking_uri=uri)
    trial_password = "tp-" + os.urandom(6).hex()
    users.create_user("raysweep-trials", trial_password)  # what cluster.yaml's head does at start
    sweep_exp = admin.create_experiment("raysweep/granted")
    other_exp = admin.create_experiment("raysweep/someone-elses")
    monkeypatch.setenv(tracking.TRIAL_USER_ENV, "raysweep-trials")
    assert tracking.grant_trials(uri, sweep_exp) == "raysweep-trials"
    assert tracking.grant_trials(uri, sweep_exp) == "raysweep-trials"  # a resumed sweep grants again
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "raysweep-trials")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", trial_password)
    trials = MlflowClient(uri)
    run = trials.create_run(sweep_exp)  # what every trial does
    trials.log_metric(run.info.run_id, "train/loss", 1.0)
    assert trials.get_run(run.info.run_id).data.metrics["train/loss"] == 1.0
    for denied in (lambda: trials.create_run(other_exp), lambda: trials.get_experiment(other_exp),
                   lambda: get_app_client("basic-auth", tracking_uri=uri).create_user("mallory", "x" * 12)):
        with pytest.raises(MlflowException, match="Permission denied|PERMISSION_DENIED|403"):
            denied()
