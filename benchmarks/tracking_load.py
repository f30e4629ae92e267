"""Tracking under load (issue 28): N concurrent simulated trials against a real ``mlflow server``
on loopback, backed by SQLite and by PostgreSQL.

    python benchmarks/tracking_load.py [--n 8 32 64] [--backends sqlite postgres] [--steps 60]

Each trial is a process (forked, so it starts in milliseconds) that logs what a raysweep trial
logs, with raysweep's own code: ``get_or_create_child`` (search, create, params), per-step
``train/*`` metrics through ``MlflowStepLogger`` (the worker's batching: every 10 steps or 5 s,
off the training thread, retried), evaluations (``eval/*`` and ``eval/feasible``) every
``--eval-every`` steps with ``record_point`` (a small checkpoint uploaded as artifacts and its
tag), then ``finish_trial`` (objectives, final step, ``timings.json``, checkpoint URI, status).
The training step is a sleep (``--step-seconds``): the logging is the load, compressed in time
(a real trial spends minutes per evaluation). The driver's front-mark refresh
(``FrontRefresh``) runs as in a sweep, whenever a trial ends (at most every 30 s, on its thread).

Every HTTP request a trial makes is timed (MLflow's ``http_request``, retries included: a
request fails when it still fails after MLflow's retries). Afterwards every metric value written
is read back (its history) and counted; a missing one is lost. Printed per backend and N:
requests, requests/s, p50/p99 latency, failed requests, metric values written and lost, runs
not FINISHED, wall time. The server: ``--workers 2``, as cluster.yaml starts it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[k] = v

SWEEP = "load"
OBJECTIVES = {"forget_rougeL_recall": "min", "retain_rougeL_recall": "max"}


def _timed_requests(log: list) -> None:
    """Time every MLflow HTTP request of this process: (seconds, ok)."""
    import mlflow.store.artifact.http_artifact_repo as art
    import mlflow.utils.rest_utils as rest

    original = rest.http_request

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            resp = original(*a, **kw)
        except Exception:
            log.append((time.perf_counter() - t, False))
            raise
        log.append((time.perf_counter() - t, resp.status_code < 400))
        return resp

    rest.http_request = timed
    if hasattr(art, "http_request"):
        art.http_request = timed


def trial(i: int, uri: str, parent_id: str, exp_id: str, job_path: str, steps: int, eval_every: int,
          step_seconds: float, out: mp.Queue) -> None:
    import numpy as np

    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.mlflow_log import MlflowStepLogger
    from raysweep.sweep.trial import finish_trial, record_point

    log: list = []
    _timed_requests(log)
    written: dict[str, set] = {}
    error = None
    try:
        rng = np.random.default_rng(i)
        job = load_job(job_path)
        c = tracking.client(uri)
        trial_id = f"load_{i:05d}"
        run_id = tracking.get_or_create_child(
            c, parent_id, exp_id, trial_id, SWEEP, {"alpha": float(rng.uniform()), "lr": 1e-5},
            {"raysweep.method": "graddiff", "raysweep.forget": "ga", "raysweep.node": "node",
             "raysweep.model": "tiny-llama", tracking.CONFIG_TAG: '{"unlearn.lr": 1e-05}',
             **tracking.objective_tags(OBJECTIVES)})
        logger = MlflowStepLogger(uri, run_id, every_steps=10, every_seconds=5.0, tags={"raysweep.worker_node": "node"})
        ckpt = Path(tempfile.mkdtemp(prefix="load-ckpt-"))
        (ckpt / "model.safetensors").write_bytes(os.urandom(16 * 1024))  # a small checkpoint
        (ckpt / "meta.json").write_text('{"step": 0}')
        f = r = 0.0
        for step in range(1, steps + 1):
            time.sleep(step_seconds)
            m = {"loss_forget": float(rng.normal()), "loss_retain": float(rng.normal()), "lr": 1e-5,
                 "grad_norm": float(rng.uniform())}
            logger.step(step, {"step": step, **m})
            for k in m:
                written.setdefault(f"train/{k}", set()).add(step)
            if step % eval_every == 0 or step == steps:
                f, r = float(rng.uniform()), float(rng.uniform())
                ev = {"step": step, "eval/forget_rougeL_recall": f, "eval/retain_rougeL_recall": r, "eval/feasible": 1.0}
                logger.report(ev)
                for k in ev:
                    if k != "step":
                        written.setdefault(k, set()).add(step)
                if step < steps:
                    record_point(c, job, run_id, step, str(ckpt), ev)
        logger.close()
        final = {"step": steps, "final/forget_rougeL_recall": f, "final/retain_rougeL_recall": r,
                 "eval/forget_rougeL_recall": f, "eval/retain_rougeL_recall": r}
        finish_trial(c, job, run_id, final, str(ckpt), {}, time.time())
        for k in OBJECTIVES:
            written.setdefault(f"objective/{k}", set()).add(steps)
    except Exception as err:  # noqa: BLE001 - reported in the table, not hidden
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    out.put({"i": i, "requests": log, "written": {k: sorted(v) for k, v in written.items()}, "error": error,
             "run_id": locals().get("run_id")})


def one(backend: str, n: int, args) -> dict:
    from tests.conftest import start_mlflow_server, stop_mlflow_server
    from tests.postgres import Postgres

    from raysweep.sweep import tracking
    from raysweep.sweep.front_marks import FrontRefresh
    from raysweep.sweep.tracking import log_job

    root = Path(tempfile.mkdtemp(prefix=f"load-{backend}-{n}-"))
    pg = Postgres(fsync=True).start() if backend == "postgres" else None
    port = __import__("tests.postgres", fromlist=["free_port"]).free_port()
    server = start_mlflow_server(root, port, backend_store_uri=pg.uri if pg else None, workers=2)
    uri = f"http://127.0.0.1:{port}"
    try:
        from raysweep.spec import load_job

        job = load_job(args.job)
        c = tracking.client(uri)
        exp_id = tracking.experiment_id(c, f"raysweep/load-{n}")
        parent = c.create_run(exp_id, run_name=SWEEP, tags={
            tracking.SWEEP_TAG: SWEEP, tracking.ROLE_TAG: "parent", "raysweep.objectives": __import__("json").dumps(OBJECTIVES),
            "raysweep.constrained": "False", **tracking.objective_tags(OBJECTIVES)})
        log_job(c, parent.info.run_id, job)
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        refresh = FrontRefresh(uri, SWEEP, every_seconds=30.0)
        t0 = time.time()
        procs = [ctx.Process(target=trial, args=(i, uri, parent.info.run_id, exp_id, args.job, args.steps,
                                                  args.eval_every, args.step_seconds, out)) for i in range(n)]
        for p in procs:
            p.start()
        results = []
        while len(results) < n:
            results.append(out.get(timeout=1800))
            refresh.on_trial_complete(0, [], None)  # the driver's refresh, as Tune calls it
        for p in procs:
            p.join(timeout=60)
        refresh.wait()
        wall = time.time() - t0
        lat = sorted(d for r in results for d, _ in r["requests"])
        failed = sum(1 for r in results for _, ok in r["requests"] if not ok)
        written = lost = 0
        not_finished = 0
        for r in results:
            for key, steps in r["written"].items():
                written += len(steps)
                if r["run_id"]:
                    got = {m.step for m in c.get_metric_history(r["run_id"], key)}
                    lost += len(set(steps) - got)
            if not r["run_id"] or c.get_run(r["run_id"]).info.status != "FINISHED":
                not_finished += 1
        errors = sorted({r["error"] for r in results if r["error"]})
        q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
        return {"backend": backend, "n": n, "requests": len(lat), "rps": len(lat) / wall, "p50": q(0.5), "p99": q(0.99),
                "failed": failed, "written": written, "lost": lost, "not_finished": not_finished, "wall": wall,
                "errors": errors}
    finally:
        stop_mlflow_server(server, timeout=60)
        if pg:
            pg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--step-seconds", type=float, default=0.25)
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    args = ap.parse_args()
    import importlib

    for module in ("mlflow", "numpy", "raysweep.spec", "raysweep.sweep.trial"):  # once; the forked trials inherit them
        importlib.import_module(module)

    from tests.postgres import missing

    if "postgres" in args.backends and missing():
        print(f"postgres skipped: {missing()}", file=sys.stderr)
        args.backends.remove("postgres")
    print(f"{args.steps} steps a trial, {args.step_seconds} s a step, evaluated every {args.eval_every}; "
          f"mlflow server --workers 2 on loopback; {os.cpu_count()} CPUs", flush=True)
    head = f"{'backend':<9} {'N':>3} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'failed':>6} " \
           f"{'metrics':>8} {'lost':>5} {'unfinished':>10} {'wall s':>7}"
    print(head + "\n" + "-" * len(head), flush=True)
    ok = True
    for backend in args.backends:
        for n in args.n:
            r = one(backend, n, args)
            print(f"{r['backend']:<9} {r['n']:>3} {r['requests']:>8} {r['rps']:>7.1f} {r['p50']:>7.1f} {r['p99']:>8.1f} "
                  f"{r['failed']:>6} {r['written']:>8} {r['lost']:>5} {r['not_finished']:>10} {r['wall']:>7.1f}", flush=True)
            for e in r["errors"]:
                print(f"    trial error: {e}", flush=True)
            ok &= not (backend == "postgres" and n == 64 and (r["failed"] or r["lost"] or r["not_finished"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
