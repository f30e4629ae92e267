"""Fault matrix (issue 12, item 2), real Ray Tune + Optuna + MLflow: a trial whose loss turns
non-finite, and the MLflow server stopped and restarted mid-sweep. (Driver SIGKILL at several
moments: test_sweep_resilience.py; a killed training worker: tests/distributed; a full disk:
tests/distributed/test_checkpoint.py with an injected ENOSPC.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from ..conftest import _free_port, start_mlflow_server
from .test_sweep_resilience import child_runs, sweep_job

pytestmark = pytest.mark.slow


def test_a_non_finite_trial_ends_as_diverged_off_the_front_and_the_sweep_goes_on(tmp_path, tofu_dir, shared_cache):
    import ray

    from raysweep.spec import load_job
    from raysweep.sweep.driver import launch

    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=4, steps=6)
    # lr 1e30: the first AdamW step moves every weight by ~1e30, the next forward overflows.
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"unlearn": {"lr": {"choice": [1e-3, 1e30]}}}))
    try:
        report = launch(load_job(path), name="nan")
    finally:
        ray.shutdown()
    runs = child_runs(job["sweep"]["tracking_uri"])
    assert len(runs) == 4, "the sweep reached its budget"
    diverged = [r for r in runs if float(r.data.params["lr"]) > 1]
    healthy = [r for r in runs if float(r.data.params["lr"]) < 1]
    assert diverged and healthy, "the seeded sampler must draw both learning rates"
    for r in diverged:
        assert r.info.status == "FAILED"
        assert r.data.tags["raysweep.status_reason"].startswith("early stop: diverged: non-finite"), r.data.tags
        assert not any(k.startswith("objective/") for k in r.data.metrics)
    for r in healthy:
        assert r.info.status == "FINISHED" and "objective/forget_answer_loss" in r.data.metrics
    front = {t["trial_id"] for t in report["front"]}
    assert front and not front & {r.data.tags["raysweep.trial_id"] for r in diverged}
    assert report["n_finished"] == len(healthy)


@pytest.fixture
def store(request):
    """The tracking server's store: its sqlite file, or a PostgreSQL of the test's own (issue 28)."""
    if request.param == "sqlite":
        yield None
        return
    from .. import postgres

    if postgres.missing():
        pytest.skip(postgres.missing())
    pg = postgres.Postgres().start()
    yield pg.uri
    pg.stop()


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
def test_mlflow_server_stopped_and_restarted_mid_sweep(store, tmp_path, tofu_dir, shared_cache):
    """The server goes away for 20 s while trials run: per-step metrics are buffered and retried,
    client calls retry, and every trial ends FINISHED with all its metrics - none dropped. On
    either store: the server restarts on the same sqlite file or the same PostgreSQL database."""
    import ray

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep.driver import launch

    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"

    def _serve(root, port):  # appended log: the restarted server's log follows
        return start_mlflow_server(root, port, log_mode="a", backend_store_uri=store)

    server = {"proc": _serve(root, port)}
    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=4, steps=20, tracking_uri=uri)
    prepare(load_job(path))
    outage = {}

    def outage_mid_sweep():
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if any(r.info.status == "RUNNING" for r in child_runs(uri)):
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(1)
        time.sleep(2)
        os.killpg(server["proc"].pid, signal.SIGTERM)
        server["proc"].wait(timeout=30)
        outage["down"] = time.time()
        time.sleep(20)
        server["proc"] = _serve(root, port)
        outage["up"] = time.time()

    chaos = threading.Thread(target=outage_mid_sweep, daemon=True)
    chaos.start()
    try:
        report = launch(load_job(path), name="outage")
    finally:
        ray.shutdown()
        chaos.join(timeout=120)
    try:
        assert "down" in outage and "up" in outage, "the outage happened during the sweep"
        runs = child_runs(uri)
        ids = [r.data.tags["raysweep.trial_id"] for r in runs]
        assert len(ids) == len(set(ids)) == 4 and report["n_finished"] == 4
        from mlflow.tracking import MlflowClient

        c = MlflowClient(uri)
        for r in runs:
            assert r.info.status == "FINISHED", (r.info.status, r.data.tags.get("raysweep.status_reason"))
            assert "objective/forget_answer_loss" in r.data.metrics
            history = c.get_metric_history(r.info.run_id, "train/loss_forget")
            steps = sorted({m.step for m in history})
            assert steps == list(range(1, 21)), f"per-step metrics dropped: {steps}"
    finally:
        os.killpg(server["proc"].pid, signal.SIGTERM)
        server["proc"].wait(timeout=30)


def test_the_non_head_node_killed_mid_sweep(tmp_path, tofu_dir, shared_cache):
    """A two-node local cluster (a worker asks for 2 of a node's 3 CPUs, so two concurrent trials
    need both nodes); the second node is removed while its trial runs. Tune retries that trial on
    the head from its last checkpoint, in the same child run: every trial FINISHED exactly once."""
    import ray
    from ray.cluster_utils import Cluster

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep.driver import launch

    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=3, steps=30, cpus_per_worker=2)
    prepare(load_job(path))
    uri = job["sweep"]["tracking_uri"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    second = cluster.add_node(num_cpus=3)
    killed = {}

    def kill_second_node_mid_trial():
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                on_second = [r for r in child_runs(uri) if r.info.status == "RUNNING"
                             and r.data.tags.get("raysweep.node") == second.node_id
                             and any(k.startswith("train/") for k in r.data.metrics)]
            except Exception:  # noqa: BLE001 - MLflow not up yet
                on_second = []
            if on_second:
                killed["trial"] = on_second[0].data.tags["raysweep.trial_id"]
                cluster.remove_node(second, allow_graceful=False)
                return
            time.sleep(0.5)

    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        chaos = threading.Thread(target=kill_second_node_mid_trial, daemon=True)
        chaos.start()
        report = launch(load_job(path), address=cluster.address, name="nodeloss")
        chaos.join(timeout=60)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "trial" in killed, "the second node ran a trial and was removed mid-trial"
    runs = child_runs(uri)
    ids = [r.data.tags["raysweep.trial_id"] for r in runs if r.info.status == "FINISHED"]
    assert len(ids) == len(set(ids)) == 3 and report["n_finished"] == 3, [(r.info.status, r.data.tags) for r in runs]
    victim = next(r for r in runs if r.data.tags["raysweep.trial_id"] == killed["trial"])
    assert victim.data.tags.get("raysweep.restarts") == "1" and "objective/forget_answer_loss" in victim.data.metrics
