"""FSDP2 through Ray Train: every rank reports its own checkpoint folder (its DCP shard files and
its train state), Ray merges them into one checkpoint, and a run resumed from it reaches the
uninterrupted run's parameters exactly."""

import pytest

from raysweep.distributed.checkpoint import load_weights
from raysweep.distributed.ray_train import build_trainer
from raysweep.distributed.worker import WorkerOptions
from raysweep.spec import load_job

from .test_ray_train import diff, job_path, ray_local  # noqa: F401 - fixtures


def fit(job_path, tmp_path, name, **options):
    job = load_job(job_path, {"train.workers": 2, "train.checkpoint_every": 3, "train.max_failures": 0,
                              "train.strategy": "fsdp"})
    result = build_trainer(job, WorkerOptions(**{"evaluate": False, **options}), name=name,
                           storage_path=str(tmp_path / "storage")).fit()
    assert result.error is None, result.error
    return result


@pytest.mark.slow
def test_fsdp_on_ray_train_merges_rank_checkpoints_and_resumes(ray_local, job_path, tmp_path):  # noqa: F811
    from pathlib import Path

    full = fit(job_path, tmp_path, "fsdp-full")
    files = sorted(p.name for p in Path(full.checkpoint.path).iterdir())
    assert {"model.safetensors", "meta.json", "sharded", "train_state_rank0.safetensors",
            "train_state_rank1.safetensors", "train_state_rank0.json", "train_state_rank1.json"} <= set(files)
    shards = sorted(p.name for p in (Path(full.checkpoint.path) / "sharded").iterdir())
    assert ".metadata" in shards and sum(n.endswith(".distcp") for n in shards) == 2

    stopped = fit(job_path, tmp_path, "fsdp-stopped", stop_at_step=3)
    assert stopped.metrics["step"] == 3.0
    resumed = fit(job_path, tmp_path, "fsdp-resumed", resume_from=stopped.checkpoint.path)
    assert resumed.metrics["step"] == 6.0 and resumed.metrics["start_step"] == 3.0
    assert diff(load_weights(resumed.checkpoint.path), load_weights(full.checkpoint.path)) == 0.0
