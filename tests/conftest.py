import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (sqlite backend, local artifact folder); stopped by PID."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except Exception:  # noqa: BLE001
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not become ready in 90 s")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
