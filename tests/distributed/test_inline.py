"""One-worker trials inside their Tune trial (no Ray Train worker group): checkpoints through
tune.report, and a process that dies hard is restarted by Tune from its last checkpoint."""

import pytest

from raysweep.distributed.checkpoint import load_weights
from raysweep.distributed.local import run_ranks
from raysweep.spec import load_job

from ..conftest import tiny_job
from . import workers


def inline_trial(config):
    from raysweep.distributed.inline import run_inline
    from raysweep.distributed.worker import WorkerOptions

    job = load_job(config["job_path"], {"train.checkpoint_every": 2})
    run_inline(job, WorkerOptions(evaluate=False, fail_at_step=config["fail_at_step"],
                                  fail_marker=config["fail_marker"]))


def inline_trial_damaging_its_latest_checkpoint(config):
    """On the restart after the crash, truncate the latest checkpoint Tune kept (as a full disk or a
    half-copied file would) before the trial restores it."""
    from pathlib import Path

    from ray import tune

    restored = tune.get_checkpoint()
    if restored is not None:
        weights = Path(restored.path) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        Path(config["fail_marker"] + ".damaged").write_text(restored.path)
    inline_trial(config)


@pytest.fixture(scope="module")
def job_path(tmp_path_factory, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare

    path = tiny_job(tmp_path_factory.mktemp("inline"), tofu_dir, shared_cache, steps=6, batch_size=4, lr=1e-3,
                    optimizer="adamw", method={"name": "gru"})
    prepare(load_job(path))
    return path


def fit_with_one_crash(trainable, job_path, tmp_path, fail_at_step, **checkpoint):
    """One Tune trial of ``trainable`` on a real local Ray, allowed one failure: the trial kills its
    own process at ``fail_at_step`` once (``fail_marker`` records it). Returns (result, marker)."""
    import ray
    from ray import tune

    marker = tmp_path / "failed_once"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        extra = {"checkpoint_config": tune.CheckpointConfig(**checkpoint)} if checkpoint else {}
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"job_path": str(job_path), "fail_at_step": fail_at_step, "fail_marker": str(marker)},
            run_config=tune.RunConfig(storage_path=str(tmp_path / "storage"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1), **extra))
        return tuner.fit()[0], marker
    finally:
        ray.shutdown()


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="off", event="worker_killed", export="none")
def test_a_killed_inline_trial_resumes_from_its_checkpoint(job_path, tmp_path):
    result, marker = fit_with_one_crash(inline_trial, job_path, tmp_path, fail_at_step=4)
    assert result.error is None, result.error
    assert marker.exists(), "the trial's process must really have died"
    assert result.metrics["step"] == 6.0
    # Restarted from a checkpoint (step 4, or step 2 when the crash beat the copy), not from scratch.
    assert result.metrics["start_step"] in (2.0, 4.0)
    uninterrupted = run_ranks(workers.unlearn, 1, str(job_path), {"train.checkpoint_every": 2},
                              {"evaluate": False}, str(tmp_path / "local"))[0]
    expected = load_weights([c for _, c in uninterrupted if c][-1])
    got = load_weights(result.checkpoint.path)
    assert max(float((got[k] - expected[k]).abs().max()) for k in expected) == 0.0  # bitwise on CPU


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(job_path, tmp_path):
    result, _ = fit_with_one_crash(inline_trial_damaging_its_latest_checkpoint, job_path, tmp_path,
                                   fail_at_step=5, num_to_keep=2)
    assert result.error is None, result.error
    damaged = (tmp_path / "failed_once.damaged").read_text()
    assert result.metrics["step"] == 6.0
    # Checkpoints at steps 2 and 4 before the crash at 5; step 4's was truncated: resumed from 2.
    assert result.metrics["start_step"] == 2.0, (damaged, result.metrics["start_step"])
    uninterrupted = run_ranks(workers.unlearn, 1, str(job_path), {"train.checkpoint_every": 2},
                              {"evaluate": False}, str(tmp_path / "local"))[0]
    expected = load_weights([c for _, c in uninterrupted if c][-1])
    got = load_weights(result.checkpoint.path)
    assert max(float((got[k] - expected[k]).abs().max()) for k in expected) == 0.0  # same end, bitwise
