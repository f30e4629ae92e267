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
N_SMALL = 30  # "small" and "edits": sweeps beside "big" in the same store


@pytest.fixture(scope="module")
def big_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("big_sweep")
    for sweep, n in (("big", N), ("small", N_SMALL), ("edits", N_SMALL)):
        synthetic_sweep(f"sqlite:///{root / 'mlflow.db'}", sweep, n)
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
    rows, objectives = collect(c, parent, cached=False)
    print(f"{N} trials: {len(requests.paths)} requests")
    # 1 page of runs + the deleted ones + 3 metrics x ceil(150 / 100) bulk reads; one request per
    # run per metric before
    assert len(requests.paths) <= 2 + 3 * 2, sorted(set(requests.paths))
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
    rows, _ = collect(c, parent, cached=False)
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
    from raysweep.sweep.points import runs_changing
    from raysweep.sweep.report import pareto_report

    c = tracking.client(big_sweep)
    report = pareto_report(c, big_sweep, "big")
    runs_changing(c, report)  # as sweep/front_models.py does before its tags: the snapshot is dropped
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


class Listed:
    """Counts the child runs the search requests bring back while it is on (real requests)."""

    def __init__(self, c, monkeypatch):
        self.runs = 0
        original = c.search_runs

        def counted(*a, **kw):
            page = original(*a, **kw)
            if "mlflow.parentRunId" in (kw.get("filter_string") or ""):
                self.runs += len(page)
            return page

        monkeypatch.setattr(c, "search_runs", counted)


def _refresh(uri: str, sweep: str) -> None:
    """The sweep's front refresh, as Tune calls it when a trial ends: marks, then the snapshot."""
    from raysweep.sweep.front_marks import FrontRefresh

    refresh = FrontRefresh(uri, sweep, every_seconds=0)
    refresh.on_trial_complete(0, [], None)
    refresh.wait()


def _same(a: dict, b: dict) -> None:
    """Two reports alike in everything but when and how they listed the runs."""
    import json

    def text(r):
        return json.dumps({k: v for k, v in r.items() if k != "listing"}, default=str, sort_keys=False)

    assert text(a) == text(b)


def test_pareto_from_a_snapshot_lists_the_same_few_runs_at_30_and_at_150_trials(big_sweep, monkeypatch):
    """After the front refresh has left its snapshot on the parent, a read lists only the runs
    that could differ from it (here those ended within the clock-skew margin of the snapshot:
    the synthetic trials end a minute apart, the last ones just before the test), so the
    requests and runs listed do not grow with the trials; the report is the full listing's.
    A sweep without a snapshot (as before it existed) is read by listing every run."""
    from raysweep.sweep.report import pareto_report

    c = tracking.client(big_sweep)
    seen = {}
    for sweep, n in (("small", N_SMALL), ("big", N)):
        parent = tracking.find_parent(c, sweep, big_sweep)
        if sweep == "small":  # no snapshot yet: every run is listed, as for a sweep of an older version
            assert not parent.data.tags.get(tracking.POINTS_TAG)
            listed = Listed(c, monkeypatch)
            _same(pareto_report(c, big_sweep, sweep), pareto_report(c, big_sweep, sweep, cached=False))
            assert listed.runs == 2 * n
            monkeypatch.undo()
        _refresh(big_sweep, sweep)
        assert tracking.find_parent(c, sweep, big_sweep).data.tags.get(tracking.POINTS_TAG)
        requests, listed = Requests(monkeypatch), Listed(c, monkeypatch)
        cached = pareto_report(c, big_sweep, sweep)
        seen[sweep] = (len(requests.paths), listed.runs)
        monkeypatch.undo()
        _same(cached, pareto_report(c, big_sweep, sweep, cached=False))
    print(f"pareto from the snapshot: (requests, runs listed) {seen}")
    assert seen["small"][0] == seen["big"][0], seen
    assert seen["small"][1] <= 6 and seen["big"][1] <= 6, seen  # the last 5 trials end in the margin


def test_pareto_from_a_snapshot_equals_the_full_listing_after_runs_end_are_deleted_reopened_or_restored(
        big_sweep, monkeypatch):
    """Each change that can reach a sweep after its snapshot, made with the calls raysweep's own
    code makes: a new trial ending (or densify's interpolated run), a run deleted, a run reopened
    by ``resume`` (RUNNING, then ended again with new values), a run deleted before the snapshot
    and restored after it (that one cannot be told from the snapshot: every run is listed)."""
    from raysweep.sweep.report import pareto_report

    c = tracking.client(big_sweep)
    parent = tracking.find_parent(c, "edits", big_sweep)
    exp, pid = parent.info.experiment_id, parent.info.run_id
    _refresh(big_sweep, "edits")

    def check(full_listing: bool = False) -> dict:
        listed = Listed(c, monkeypatch)
        cached = pareto_report(c, big_sweep, "edits")
        runs = listed.runs
        monkeypatch.undo()
        full = pareto_report(c, big_sweep, "edits", cached=False)
        _same(cached, full)
        assert (runs == len(tracking.child_runs(c, parent))) if full_listing else runs <= 8, runs
        return cached

    def end(trial: str, forget: float, retain: float) -> str:
        run_id = tracking.get_or_create_child(c, pid, exp, trial, "edits", {"alpha": 1.0},
                                              {"raysweep.method": "npo", "raysweep.forget": "npo"})
        for step, f, r in ((10, forget / 2, retain), (20, forget, retain)):
            tracking.log_metrics(c, run_id, {"eval/forget_answer_loss": f, "eval/retain_answer_loss": r,
                                             "eval/feasible": 1.0}, step=step)
        tracking.log_metrics(c, run_id, {"objective/forget_answer_loss": forget,
                                         "objective/retain_answer_loss": retain}, step=20)
        c.set_tag(run_id, "raysweep.final_step", "20")
        c.set_terminated(run_id, status="FINISHED")
        return run_id

    before = check()
    best = end("new_00001", forget=100.0, retain=0.0)  # dominates every synthetic point
    after = check()
    assert [r["run_id"] for r in after["front"]] == [best] and after["front"] != before["front"]
    c.delete_run(best)
    assert check()["front"] == before["front"]
    reopened = before["front"][0]["trial_id"]
    run_id = tracking.get_or_create_child(c, pid, exp, reopened, "edits", {}, {})  # what resume does
    assert reopened not in {r["trial_id"] for r in check()["trials"]}  # RUNNING: no candidate
    end(reopened, forget=50.0, retain=0.0)
    assert [r["run_id"] for r in check()["front"]] == [run_id]
    _refresh(big_sweep, "edits")  # a snapshot that knows the deleted run
    c.restore_run(best)
    assert [r["run_id"] for r in check(full_listing=True)["front"]] == [best]
