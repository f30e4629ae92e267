"""Every job file under jobs/ validates, and the GPU job asks for what its comments promise."""

from pathlib import Path

import pytest

from raysweep.spec import JobSpecError, load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_job_file_validates(path, tofu_dir):
    job = load_job(path)
    assert job.data.path.is_dir()


def test_llama1b_gpu_job_is_sharded_bf16_with_checkpointing():
    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "tofu_llama1b_fsdp.yaml")
    t = job.train
    assert (t.use_gpu, t.strategy, t.precision, t.gradient_checkpointing) == (True, "fsdp", "bf16", True)
    assert t.workers >= 2 and job.model.dtype == "float32" and job.model.lora is None
    assert job.unlearn.batch_size % (t.workers * job.unlearn.grad_accum) == 0
    assert job.data.forget_split == "forget10" and job.eval.benchmarks == ["tofu"]


def test_scale_fields_are_checked_with_one_line_errors(tmp_path):
    path = JOBS[0]
    with pytest.raises(JobSpecError, match=r"^train.precision: 'bf8' is not allowed"):
        load_job(path, {"train.precision": "bf8"})
    with pytest.raises(JobSpecError, match=r"^model.dtype: 'bfloat16' is not allowed with train.precision 'bf16'"):
        load_job(path, {"train.precision": "bf16", "model.dtype": "bfloat16"})
    with pytest.raises(JobSpecError, match=r"^train.strategy: 'fsdp' is not allowed with model.lora"):
        load_job(path, {"train.strategy": "fsdp", "model.lora": {"r": 4}})
    with pytest.raises(JobSpecError, match=r"^model.lora.target_module: unknown key .*did you mean 'target_modules'"):
        load_job(path, {"model.lora": {"target_module": ["q_proj"]}})
