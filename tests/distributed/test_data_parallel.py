"""Data-parallel correctness without Ray: real processes, a gloo group, the real worker loop.

Equivalence: 2 workers with per-worker batch b end with the same parameters as 1 worker with
batch 2b on the same samples (SGD, 5 steps). Tolerance: 2e-6 absolute on parameters of size ~0.1,
the float32 reordering of the all-reduce. Synthesising per rank and then averaging must fail it."""

import numpy as np
import pytest
import torch

from raysweep.distributed.checkpoint import load_weights
from raysweep.synthesis import SYNTHESIS, build_synthesis

from ..conftest import tiny_job
from ..synthesis.test_methods import SHAPES, random_grads
from . import workers
from raysweep.distributed.local import run_ranks

TOL = 2e-6
METHOD_PARAMS = {"graddiff": {}, "pcgrad_r": {"alpha": 0.5}, "sago": {"alpha": 0.5}, "sago_prefer_retain": {},
                 "ngdiff": {}, "gru": {}, "mgda": {}}


@pytest.fixture(scope="module")
def job_path(tmp_path_factory, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    path = tiny_job(tmp_path_factory.mktemp("dp"), tofu_dir, shared_cache, steps=5, batch_size=4, lr=0.5,
                    optimizer="sgd")
    prepare(load_job(path))  # once, before any rank starts
    return path


def final_weights(reports):
    ckpt = [c for _, c in reports if c][-1]
    return load_weights(ckpt)


_ONE_WORKER: dict = {}


def one_worker(job_path, tmp_path, method):
    """The 1-worker reference, run once per method and shared by the positive and negative tests."""
    if method not in _ONE_WORKER:
        _ONE_WORKER[method] = run(job_path, tmp_path, 1, method)
    return _ONE_WORKER[method]


def run(job_path, tmp_path, world, method, forget="ga", **opts):
    overrides = {"unlearn.method": {"name": method, **METHOD_PARAMS[method]}, "unlearn.forget": {"name": forget}}
    options = {"evaluate": False, "check_sync": world > 1, **opts}
    return run_ranks(workers.unlearn, world, str(job_path), overrides, options, str(tmp_path / f"w{world}"))


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# The default suite runs the methods whose per-task reduction matters most (a projection, a
# per-tensor projection, a stateful EMA); `make test-slow` runs every method (~50 s each here).
DEFAULT_DP_METHODS = {"sago", "pcgrad_r", "gru"}


@pytest.mark.parametrize("method", [m if m in DEFAULT_DP_METHODS else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(METHOD_PARAMS)])
@pytest.mark.matrix(strategy="ddp", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="off", event="uninterrupted", export="none")
def test_two_workers_equal_one_worker_with_the_double_batch(job_path, tmp_path, method):
    assert set(METHOD_PARAMS) == set(SYNTHESIS.names())
    one = one_worker(job_path, tmp_path, method)
    two = run(job_path, tmp_path, 2, method)
    w1, w2 = final_weights(one[0]), final_weights(two[0])
    start = load_weights_of_target(job_path)
    assert max_diff(w1, start) > 1e-3, "the run must actually move the parameters"
    assert max_diff(w1, w2) < TOL
    # After every step all ranks hold identical parameters (hash all-gather inside the loop).
    for rank_reports in two:
        assert [m["params_in_sync"] for m, _ in rank_reports] == [1.0] * 5
    # Every rank logs the global losses and synthesis scalars of the one big batch, every step. Under
    # DDP each rank holds the whole reduced gradient: summing scalars over ranks would double them.
    scalars = [k for k in one[0][0][0] if k.startswith(("loss_", "norm_", "cos_", "mgda_lambda", "gru_", "ngdiff_"))]
    assert {"loss_forget", "norm_forget", "norm_retain", "cos_forget_retain", "norm_update"} <= set(scalars)
    for rank_reports in two:
        for (m2, _), (m1, _) in zip(rank_reports, one[0]):
            for key in scalars:
                # A cosine is bounded by 1: near 0 it is a cancellation of fp32 sums whose order
                # differs between 1 and 2 ranks, so it gets an absolute tolerance of a few ulps of 1.
                tol = 1e-6 if key.startswith("cos_") else 1e-7
                assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=tol), key


@pytest.mark.parametrize("method", ["sago", "pcgrad_r"])
def test_synthesise_then_average_breaks_equivalence(job_path, tmp_path, method):
    """The negative case: the order the field's frameworks get wrong must fail the same check."""
    one = one_worker(job_path, tmp_path, method)
    wrong = run(job_path, tmp_path, 2, method, reduce_after_synthesis=True)
    assert max_diff(final_weights(one[0]), final_weights(wrong[0])) > 100 * TOL


def load_weights_of_target(job_path):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from safetensors.torch import load_file

    target = prepare(load_job(job_path)).target
    return load_file(str(next(target.glob("*.safetensors"))))


@pytest.mark.parametrize("name", sorted(METHOD_PARAMS))
def test_sharded_scalars_give_the_unsharded_update(name):
    """Parameters split across two ranks: same coefficients (logged info) and the same update."""
    params = METHOD_PARAMS[name]
    results = run_ranks(workers.sharded_synthesis, 2, name, params, 11, 3)
    method = build_synthesis(name, params)
    for step in range(3):
        tasks = random_grads(11 + step, n_tasks=3 if name == "mgda" else 2)
        full = method(tasks)
        for k, t in enumerate(full):
            if t is None:
                assert all(r[step][0][k] is None for r in results)
                continue
            gathered = torch.cat([r[step][0][k] for r in results]).reshape(SHAPES[k])
            torch.testing.assert_close(gathered, t, rtol=1e-5, atol=1e-6)
        for key, value in method.last_info.items():
            assert results[0][step][1][key] == pytest.approx(value, rel=1e-5, abs=1e-7)
            assert results[1][step][1][key] == pytest.approx(value, rel=1e-5, abs=1e-7)


def test_task_gradients_are_reduced_in_few_coalesced_calls():
    results = run_ranks(_count_calls, 2)
    calls, tensors = results[0]
    assert tensors == 40 and calls <= 1 + 2 * 2  # presence flags + about one bucket per task


def _count_calls(rank, world):
    from raysweep.distributed.collectives import TaskGradReducer

    params = [torch.nn.Parameter(torch.zeros(50)) for _ in range(40)]
    grads = [[torch.full((50,), float(rank + 1)) for _ in params] for _ in range(2)]
    reducer = TaskGradReducer(params)
    out = reducer(grads)
    assert all(float(t[0]) == 1.5 for task in out for t in task)
    return reducer.calls, len(params)
