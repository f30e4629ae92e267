"""Queries at scale (issue 28): ``raysweep status``, ``pareto``, ``report`` and the front-mark
refresh on finished sweeps of 500 and 5,000 trials, over HTTP from a real ``mlflow server``.

    python benchmarks/tracking_queries.py [--n 500 5000] [--store sqlite|postgres]

The trials are synthetic (tests/synthetic_sweep.py: what a trial with eval.every leaves - 4
evaluated steps, 20 steps of train/* metrics, its tags and params), written straight into the
store. Each command is timed as a person runs it (a new process, Python's start-up included).
``pareto`` is timed three ways: ``--no-log`` (the read and the computation), the first
``pareto`` that marks every run (a request per run whose marks change; up to
``--first-marks-up-to`` trials, beyond which the marks are written in-process first), and again
once the marks stand (as after a sweep whose refresh kept them current), and ``--no-log`` again
from the snapshot of the sweep's points that the refresh and ``pareto`` leave on the parent run
(the state after a finished sweep: only the runs ended since, less a clock-skew margin, RUNNING
or deleted are listed). The refresh: how long Tune's callback
holds the driver's event loop (it should not), and how long the refresh itself takes on its thread.
Each figure comes with the requests the server logged for it (``req``) and, for ``pareto --no-log``,
the CPU seconds the server's workers spent on it (listing full runs is most of the work). ``import
mlflow``: a new process importing ``mlflow.tracking`` alone (what every command pays first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"})


class Server:
    """What the tracking server did meanwhile: requests (its access log) and its workers' CPU."""

    def __init__(self, proc, log: Path):
        self.proc, self.log = proc, log

    def requests(self) -> int:
        return sum(' HTTP/1.1" ' in line for line in self.log.read_text(errors="replace").splitlines())

    def cpu(self) -> float:
        import psutil

        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    def measure(self, fn) -> tuple[float, int, float]:
        """(wall seconds, requests, server CPU seconds) of ``fn()``."""
        n, cpu, t = self.requests(), self.cpu(), time.perf_counter()
        fn()
        took = time.perf_counter() - t
        time.sleep(0.5)  # the access log's last lines
        return took, self.requests() - n, self.cpu() - cpu


def _cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "raysweep.cli", *args], capture_output=True, text=True,
                          cwd=tempfile.mkdtemp(prefix="queries-"), env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(f"raysweep {' '.join(args)}: {done.stderr[-1500:]}")


def one(n: int, store: str, first_marks_up_to: int) -> dict:
    from tests.conftest import start_mlflow_server, stop_mlflow_server
    from tests.postgres import Postgres, free_port
    from tests.synthetic_sweep import synthetic_sweep

    from raysweep.sweep.front_marks import FrontRefresh

    root = Path(tempfile.mkdtemp(prefix=f"queries-{n}-"))
    pg = Postgres(fsync=True).start() if store == "postgres" else None
    store_uri = pg.uri if pg else f"sqlite:///{root / 'mlflow.db'}"
    sweep = f"syn{n}"
    t = time.perf_counter()
    synthetic_sweep(store_uri, sweep, n)
    built = time.perf_counter() - t
    port = free_port()
    server = start_mlflow_server(root, port, backend_store_uri=store_uri, workers=2)
    uri = f"http://127.0.0.1:{port}"
    srv = Server(server, root / "server.log")
    try:
        out = {"n": n, "built": built, "status": srv.measure(lambda: _cli("status", sweep, "--tracking-uri", uri)),
               "pareto_nolog": srv.measure(lambda: _cli("pareto", sweep, "--no-log", "--tracking-uri", uri))}
        if n <= first_marks_up_to:
            out["pareto_first"] = srv.measure(lambda: _cli("pareto", sweep, "--tracking-uri", uri))
        else:  # the marks as the sweep's refresh leaves them, written in-process (a request per run over HTTP)
            from raysweep.sweep import tracking
            from raysweep.sweep.front_marks import publish
            from raysweep.sweep.report import pareto_report

            c = tracking.client(store_uri)
            publish(c, pareto_report(c, store_uri, sweep), full=False)  # the marks and the snapshot
            out["pareto_first"] = (float("nan"), 0, float("nan"))
        out |= {"pareto": srv.measure(lambda: _cli("pareto", sweep, "--tracking-uri", uri)),
                "pareto_snapshot": srv.measure(lambda: _cli("pareto", sweep, "--no-log", "--tracking-uri", uri)),
                "report": srv.measure(lambda: _cli("report", sweep, "--no-log", "--tracking-uri", uri,
                                                   "--out", str(root / "report")))}
        refresh = FrontRefresh(uri, sweep, every_seconds=0)
        held = []

        def refreshed():
            t = time.perf_counter()
            refresh.on_trial_complete(0, [], None)
            held.append(time.perf_counter() - t)
            refresh.wait()

        out["refresh"] = srv.measure(refreshed)
        out["refresh_callback"] = held[0]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mlflow.tracking"], check=True)
        out["import_mlflow"] = time.perf_counter() - t
        return out
    finally:
        stop_mlflow_server(server, timeout=60)
        if pg:
            pg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--first-marks-up-to", type=int, default=500,
                    help="time the first `pareto`, which marks every run over HTTP, up to this many trials")
    args = ap.parse_args()
    print(f"store {args.store}; mlflow server --workers 2 on loopback; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    cols = [("status", "status"), ("pareto_nolog", "pareto --no-log"), ("pareto_first", "pareto 1st"),
            ("pareto", "pareto"), ("pareto_snapshot", "pareto --no-log, snapshot"), ("report", "report --no-log"),
            ("refresh", "refresh")]
    head = f"{'trials':>6} {'build s':>8} " + " ".join(f"{name + ' s (req)':>{len(name) + 12}}" for _, name in cols) \
        + f" {'server CPU s, pareto --no-log / snapshot':>41} {'refresh callback ms':>20} {'import mlflow s':>16}" \
        + f" {'load avg':>9}"
    print(head + "\n" + "-" * len(head), flush=True)
    for n in args.n:
        r = one(n, args.store, args.first_marks_up_to)
        cells = " ".join(f"{f'{r[k][0]:.1f} ({r[k][1]})':>{len(name) + 12}}" for k, name in cols)
        cpu = f"{r['pareto_nolog'][2]:.1f} / {r['pareto_snapshot'][2]:.1f}"
        print(f"{r['n']:>6} {r['built']:>8.1f} {cells} {cpu:>41} {r['refresh_callback'] * 1000:>20.1f}"
              f" {r['import_mlflow']:>16.1f} {os.getloadavg()[0]:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
