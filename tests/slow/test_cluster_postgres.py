"""cluster.yaml's tracking store for real (issue 28): its own commands (parsed from the file) set up
PostgreSQL in a temporary home and start it, then the head's `mlflow server` (basic auth) on it;
a 4-trial sweep logs through it, its driver is killed mid-sweep and `raysweep resume` finishes it
from what PostgreSQL holds, and `raysweep pareto` reads the front back. The runs are rows in
PostgreSQL, and nothing was written to an SQLite file on the shared volume.

Skips, saying why, where PostgreSQL cannot run (``make postgres`` installs it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from .. import postgres
from ..cluster_yaml import (BIN, CLUSTER, as_postgres_user, exports, here, mlflow_server_command, postgres_commands,
                            postgres_home)
from ..conftest import wait_healthy
from .test_sweep_resilience import assert_resume_invariants, kill_and_resume, sweep_job

pytestmark = pytest.mark.slow
PG_PORT_IN_FILE = "5433"


def _local(cmd: str, shared, pg_port: int, port: int) -> str:
    """On this machine: the shared volume moved, loopback for the head's address, free ports."""
    cmd = here(cmd, shared).replace("$(hostname -I | cut -d' ' -f1)", "127.0.0.1")
    return cmd.replace(PG_PORT_IN_FILE, str(pg_port)).replace(":5000", f":{port}").replace("--port 5000", f"--port {port}")


@pytest.fixture(scope="module")
def cluster_store(tmp_path_factory):
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    if shutil.which("curl") is None:
        pytest.skip("cluster.yaml's head commands use curl")
    tmp = tmp_path_factory.mktemp("pgcluster")
    shared = tmp / "shared"
    shared.mkdir()
    home = postgres_home()
    pg_port, port = postgres.free_port(), postgres.free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(home), "RAY_ADDRESS": ""}
    server = None

    def run(cmd, as_pg=False):
        argv = as_postgres_user(cmd, home) if as_pg else ["bash", "-c", cmd]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd[:300]}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    try:
        for cmd in CLUSTER["setup_commands"]:  # the shared secrets
            if "secrets" in cmd:
                run(_local(cmd, shared, pg_port, port))
        for cmd in postgres_commands():  # PostgreSQL: install (present here), password, initdb, start, database
            run(_local(cmd, shared, pg_port, port), as_pg=True)
        for cmd in CLUSTER["head_start_ray_commands"]:
            if "auth.ini" in cmd and "printf" in cmd:
                run(_local(cmd, shared, pg_port, port))
        script = _local(mlflow_server_command(), shared, pg_port, port)
        server = subprocess.Popen(["bash", "-c", script], env=env, stdout=open(tmp / "mlflow.log", "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        wait_healthy(uri, server, tmp / "mlflow.log", what="cluster.yaml's mlflow server on PostgreSQL", timeout=180)
        for cmd in CLUSTER["head_start_ray_commands"]:
            if "users/create" in cmd:  # the trials' user
                run(_local(cmd, shared, pg_port, port))
        creds = exports(CLUSTER["head_setup_commands"], shared)
        yield {"uri": uri, "creds": creds, "shared": shared, "home": home, "pg_port": pg_port}
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        if (home / "raysweep-pg" / "data" / "postmaster.pid").exists():
            pg_ctl = postgres.pg_bin() / "pg_ctl"
            subprocess.run(as_postgres_user(f"{pg_ctl} -D {home}/raysweep-pg/data -m fast -w stop", home),
                           capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def test_a_sweep_logs_resumes_and_reads_back_through_the_clusters_postgresql(cluster_store, tmp_path, tofu_dir,
                                                                               shared_cache, monkeypatch):
    import psycopg2

    uri, creds, shared = cluster_store["uri"], cluster_store["creds"], cluster_store["shared"]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAYSWEEP_TRIAL_USER"):
        monkeypatch.setenv(key, creds[key])  # the driver on the head: MLflow's admin
    path, _ = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=4, steps=10, tracking_uri=uri)
    before, after = kill_and_resume(tmp_path, path, uri, "pgsweep", n_trials=4)
    assert_resume_invariants(before, after, 4)
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", "pareto", "pgsweep", "--tracking-uri", uri],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Pareto front of sweep pgsweep" in res.stdout and "from 4 finished trials" in res.stdout, res.stdout
    # the rows are PostgreSQL's (read with the generated password the commands wrote), no SQLite file
    password = (cluster_store["home"] / "raysweep-pg" / "password").read_text().strip()
    with psycopg2.connect(host="127.0.0.1", port=cluster_store["pg_port"], user="mlflow", password=password,
                          dbname="mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                    "WHERE t.key = 'raysweep.trial_id' GROUP BY status")
        assert dict(cur.fetchall()) == {"FINISHED": 4}
        cur.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss_forget'")
        assert cur.fetchone()[0] >= 4 * 10
    assert not list(shared.rglob("mlflow.db")), "the tracking store is PostgreSQL, not SQLite on the shared volume"
