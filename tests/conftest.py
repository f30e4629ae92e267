import os
from pathlib import Path

import pytest

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
