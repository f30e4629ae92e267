"""Queries that stay fast on large sweeps (issue 28), over HTTP from a real `mlflow server` on a
synthetic finished sweep of 150 trials with evaluations along each run: the trajectories come in
bulk (a few requests, not three per trial) and match the per-run histories; the front-mark
refresh never holds up Tune's event loop; marks that stand cost no request.
(benchmarks/tracking_queries.py times 500 and 5,000 trials.)"""

from __future__ import annotations

import time

import pytest

from raysweep.sweep import tracking

from ..conftest import _free_port, start_mlflow_server, stop_mlflow_server
from ..synthetic_sweep import OBJECTIVES, synthetic_sweep

N = 150


@pytest.fixture(scope="module")
def big_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("big_sweep")
    synthetic_sweep(f"sqlite:///{root / 'mlflow.db'}", "big", N)
    port = _free_port()
    proc = start_mlflow_server(root, port)
    yield f"http://127.0.0.1:{port}"
    stop_mlflow_server(proc)


class Requests:
    """Counts the MLflow HTTP requests made while it is on (the real ones: it only counts)."""

    def __init__(self, monkeypatch):
        import mlflow.utils.rest_utils as rest

        import threading

        self.paths: list[str] = []
        self.in_flight = self.peak = 0  # requests under way at once, and the most there were
        lock = threading.Lock()
        original = rest.http_request

        def counted(host_creds, endpoint, method, *a, **kw):
            with lock:
                self.paths.append(endpoint)
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            try:
                return original(host_creds, endpoint, method, *a, **kw)
            finally:
                with lock:
                    self.in_flight -= 1

        monkeypatch.setattr(rest, "http_request", counted)


def test_pareto_reads_every_trajectory_in_bulk_and_it_matches_the_per_run_histories(big_sweep, monkeypatch):
    from raysweep.sweep.report import collect

    c = tracking.client(big_sweep)
    parent = tracking.find_parent(c, "big", big_sweep)
    requests = Requests(monkeypatch)
    rows, objectives = collect(c, parent)
    print(f"{N} trials: {len(requests.paths)} requests")
    # 1 page of runs + 3 metrics x ceil(150 / 100) bulk reads; one request per run per metric before
    assert len(requests.paths) <= 1 + 3 * 2, sorted(set(requests.paths))
    assert len({r["run_id"] for r in rows}) == N and len(rows) == 4 * N  # 4 evaluated steps each
    # the reference: each run's own histories, one request per run and metric (a sample of runs)
    for run_id in sorted({r["run_id"] for r in rows})[:12]:
        hist = {k: {m.step: m.value for m in c.get_metric_history(run_id, f"eval/{k}")} for k in OBJECTIVES}
        mine = {r["step"]: r["objectives"] for r in rows if r["run_id"] == run_id}
        assert mine == {s: {k: hist[k][s] for k in OBJECTIVES} for s in hist["forget_answer_loss"]}


def test_the_front_refresh_never_holds_up_the_sweep_and_marks_that_stand_cost_nothing(big_sweep, monkeypatch):
    from raysweep.sweep.front_marks import FRONT_FILTER, FrontRefresh, mark_children
    from raysweep.sweep.report import pareto_report

    refresh = FrontRefresh(big_sweep, "big", every_seconds=0)
    t = time.perf_counter()
    refresh.on_trial_complete(0, [], None)  # what Tune calls on its event loop when a trial ends
    held = time.perf_counter() - t
    refresh.wait()
    took = time.perf_counter() - t
    print(f"refresh of {N} trials: callback {held * 1000:.1f} ms, refresh {took:.1f} s")
    assert held < 0.25 < took, (held, took)
    c = tracking.client(big_sweep)
    parent = tracking.find_parent(c, "big", big_sweep)
    assert c.search_runs([parent.info.experiment_id], filter_string=FRONT_FILTER), "the refresh marked the front"
    report = pareto_report(c, big_sweep, "big")
    requests = Requests(monkeypatch)
    mark_children(c, report)  # every mark already stands: only the saved view is written
    assert [p for p in requests.paths if "log-batch" in p] == []


def test_pages_of_runs_and_histories_are_read_as_many_at_once_as_the_server_has_workers(big_sweep, monkeypatch):
    """A server builds a page of full runs in ~1.5 ms of CPU a run: at 5,000 runs the pages come
    two at a time (cluster.yaml's two workers), every run once, in the server's order."""
    from raysweep.sweep.report import collect

    c = tracking.client(big_sweep)
    parent = tracking.find_parent(c, "big", big_sweep)
    one_by_one = [r.info.run_id for r in tracking.search_all_runs(c, [parent.info.experiment_id],
                                                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")]
    monkeypatch.setattr(tracking, "SEARCH_PAGE", 20)  # 150 runs: 8 pages
    monkeypatch.setattr(tracking, "HISTORY_RUNS_PER_CALL", 30)  # 5 bulk reads per metric
    requests = Requests(monkeypatch)
    runs = tracking.child_runs(c, parent)
    assert [r.info.run_id for r in runs] == one_by_one and len(one_by_one) == N
    assert requests.peak == tracking.IN_FLIGHT == 2, requests.peak
    assert requests.paths.count("/api/2.0/mlflow/runs/search") <= 8 + tracking.IN_FLIGHT  # the last pair may overrun
    requests.peak = 0
    rows, _ = collect(c, parent)
    assert len(rows) == 4 * N and requests.peak == 2


def test_resume_rebuilds_the_rungs_from_bulk_histories(big_sweep, monkeypatch, tmp_path, tofu_dir):
    """``raysweep resume`` replays every evaluation into MO-ASHA's rungs: a few bulk reads, not three
    requests per trial (150 trials: 451 requests before), and the same events as the per-run reads."""
    from raysweep.sweep.schedulers.mo_asha import MOASHARungs
    from raysweep.sweep.schedulers.restore import restore_rungs

    from .test_feasibility import _sweep_job

    job = _sweep_job(tmp_path, tofu_dir, constraint=False)
    c = tracking.client(big_sweep)
    parent = tracking.find_parent(c, "big", big_sweep)
    rungs = MOASHARungs(objectives=OBJECTIVES, max_steps=20, grace_period=5)
    requests = Requests(monkeypatch)
    replayed = restore_rungs(rungs, c, parent, job)
    print(f"resume of {N} trials: {len(requests.paths)} requests")
    assert len(requests.paths) <= 1 + 3 * 2, sorted(set(requests.paths))
    assert replayed == 4 * N
    # the reference: each run's own histories (a sample), at the rung steps 5 and 10
    for run in tracking.child_runs(c, parent)[:6]:
        trial = run.data.tags[tracking.TRIAL_TAG]
        hist = {k: {m.step: m.value for m in c.get_metric_history(run.info.run_id, f"eval/{k}")} for k in OBJECTIVES}
        for step in (5, 10):
            (entry,) = [e for e in rungs.rungs[step] if e.trial == trial]
            assert entry.values == tuple(hist[k][step] for k in OBJECTIVES) and entry.feasible


def test_refreshing_the_front_models_costs_no_request_per_run(big_sweep, monkeypatch):
    """``raysweep pareto`` re-tags the front's logged models from the model tags the report read
    with the runs: no ``runs/get`` per trial (5,000 at 5,000 trials before). Real logged models,
    one per front point, as a sweep's end leaves them."""
    from raysweep.sweep.front_models import MODEL_TAG, log_front_models
    from raysweep.sweep.report import pareto_report

    c = tracking.client(big_sweep)
    report = pareto_report(c, big_sweep, "big")
    made = set()
    for r in report["front"]:
        model = c.create_logged_model(report["experiment_id"], name=f"m-{r['trial_id']}-{r['step']}",
                                      source_run_id=r["run_id"])
        c.set_tag(r["run_id"], f"{MODEL_TAG}{int(r['step'])}", model.model_id)
        made.add(model.model_id)
    report = pareto_report(c, big_sweep, "big")
    requests = Requests(monkeypatch)
    ids = log_front_models(c, report)
    assert set(ids) == made
    assert [p for p in requests.paths if p.endswith("/runs/get")] == []
    assert len(requests.paths) <= 2 * len(made)  # a re-tag per model (MLflow reads the model first)
    assert all(c.get_logged_model(m).tags["raysweep.pareto"] == "front" for m in made)
