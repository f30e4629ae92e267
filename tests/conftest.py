import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The key that signs a sweep's storage path (raysweep/sweep/storage_trust.py): one per test
# session, never the user's own in ~/.config.
if "RAYSWEEP_KEY_FILE" not in os.environ:
    import tempfile

    os.environ["RAYSWEEP_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="raysweep-key-"), "storage.key")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAYSWEEP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    path = SHARED_DATA / "tofu"
    if not (path / "full.jsonl").exists():
        pytest.fail(f"TOFU data not found at {path} (set RAYSWEEP_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One prepare for the whole session: every trial below starts from the same cached target."""
    return tmp_path_factory.mktemp("cache")


def tiny_job(tmp_path, tofu_dir, cache=None, **unlearn):
    job = {
        "name": "tiny-test",
        "data": {"path": str(tofu_dir), "subset": {"authors": 3, "forget_authors": 1}, "max_length": 96},
        "model": {"base": "tiny-llama", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                   "intermediate_size": 64, "vocab_size": 400}},
        "prepare": {"epochs": 2, "batch_size": 16, "lr": 3e-3},
        "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}, "method": {"name": "graddiff"},
                    "steps": 3, "batch_size": 4, "lr": 1e-3, **unlearn},
        "eval": {"max_new_tokens": 8, "max_questions": 6},
        "cache_dir": str(cache or tmp_path / "cache"),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(uri: str, proc, log, what: str = "mlflow server", timeout: float = 90):
    """Poll ``uri``/health until it answers; fail with the server's log if it exits or never does."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return
        except Exception:  # noqa: BLE001
            if proc.poll() is not None:
                pytest.fail(f"{what} exited: {Path(log).read_text()[-2000:]}")
            time.sleep(0.5)
    pytest.fail(f"{what} did not become ready in {timeout:.0f} s")


def start_mlflow_server(root: Path, port: int, log_mode: str = "w", backend_store_uri: str | None = None,
                        workers: int = 1):
    """A real `mlflow server` on loopback (a sqlite store in ``root`` unless ``backend_store_uri``
    names another, e.g. PostgreSQL; a local artifact folder), its own process group (stopped
    with os.killpg); returns once /health answers."""
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers),
         # uvicorn kills a worker that misses a 5 s health ping: a busy one on a loaded machine
         *(["--uvicorn-opts", "--timeout-worker-healthcheck 60"] if workers > 1 else [])],
        stdout=open(root / "server.log", log_mode), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_healthy(f"http://127.0.0.1:{port}", proc, root / "server.log")
    return proc


def stop_mlflow_server(proc, timeout: float = 30) -> None:
    """Stop a server :func:`start_mlflow_server` started: its whole process group (the workers)."""
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=timeout)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback; stopped by PID."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    proc = start_mlflow_server(root, port)
    yield f"http://127.0.0.1:{port}"
    stop_mlflow_server(proc)


# The longest files of the default suite (``--durations``, 2026-12-07), started first: `make test`
# runs the files on two xdist workers (``--dist loadfile``), and a long file started last would
# run alone at the end.
LONGEST_FIRST = ("sweep/test_matrix_ranks_sweep.py", "sweep/test_matrix_sweep.py", "test_gpu_check.py",
                 "distributed/test_inline.py", "sweep/test_trajectory.py", "distributed/test_data_parallel.py",
                 "distributed/test_ray_train.py", "sweep/test_export.py", "sweep/test_sweep.py",
                 "sweep/test_lm_eval_sweep.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first (above); and with RAYSWEEP_MATRIX_DUMP=FILE, write each test's
    feature-matrix cells (its ``matrix`` marks) and whether it is slow: what docs/make_matrix.py
    builds docs/matrix.md from."""
    rank = {str(Path(__file__).parent / name): i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # stable: the rest keep their order
    dump = os.environ.get("RAYSWEEP_MATRIX_DUMP")
    if not dump:
        return
    import json

    from .matrix import AXES

    rows = []
    for item in items:
        # A parameter named like an axis (``method``) fills that axis for its case.
        params = getattr(getattr(item, "callspec", None), "params", {})
        from_params = {k: v for k, v in params.items() if k in AXES and v in AXES[k]}
        for mark in item.iter_markers("matrix"):
            unknown = {k: v for k, v in mark.kwargs.items() if v not in AXES.get(k, {})}
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: matrix mark {unknown} is not a cell of tests/matrix.py AXES")
            rows.append({"test": item.nodeid, "slow": item.get_closest_marker("slow") is not None,
                         "cell": {**mark.kwargs, **from_params}})
    Path(dump).write_text(json.dumps(rows, indent=1))
