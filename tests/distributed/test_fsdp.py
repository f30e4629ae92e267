"""FSDP2 (``train.strategy: fsdp``) on CPU/gloo with real shards: 2 FSDP ranks x batch b end with
the same parameters as 1 process x batch 2b after 5 steps, for every synthesis method, with SGD and
AdamW, within the DDP test's tolerance (2e-6 absolute; the float32 reordering of the reductions).
Every tensor is split across the two ranks, so PCGrad-R's module scope reduces per-tensor partial
dots of split tensors. A run stopped at step 3 and resumed from its sharded checkpoint equals the
uninterrupted run."""

import pytest
import torch

from raysweep.distributed.local import run_ranks
from raysweep.synthesis import SYNTHESIS

from . import workers
from .test_data_parallel import METHOD_PARAMS, TOL, final_weights, load_weights_of_target, max_diff
from ..conftest import tiny_job

OPTIMIZERS = {"sgd": 0.5, "adamw": 1e-3}
# (method, optimizer, forget objective). NPO runs its reference model sharded too; at SGD lr 0.5
# NPO amplifies float reordering past the tolerance under DDP as well, so it is paired with AdamW.
FAST = [("pcgrad_r", "sgd", "ga"), ("sago", "adamw", "npo"), ("ngdiff_autolr", "sgd", "ga")]
PARAMS = {**METHOD_PARAMS, "ngdiff_autolr": {"autolr": True, "autolr_interval": 2}}  # AutoLR probes sharded
ALL = [(m, o, "ga") for m in sorted(METHOD_PARAMS) for o in OPTIMIZERS]


@pytest.fixture(scope="module")
def job_path(tmp_path_factory, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    path = tiny_job(tmp_path_factory.mktemp("fsdp"), tofu_dir, shared_cache, steps=5, batch_size=4)
    prepare(load_job(path))
    return path


def overrides(method, optimizer, strategy, forget="ga"):
    name = method.removesuffix("_autolr")
    return {"unlearn.method": {"name": name, **PARAMS[method]}, "unlearn.forget": {"name": forget},
            "unlearn.optimizer": optimizer, "unlearn.lr": OPTIMIZERS[optimizer], "train.strategy": strategy}


def check_equivalence(job_path, tmp_path, cases):
    runs = [(f"{m}-{o}-{f}", overrides(m, o, "ddp", f), {"evaluate": False}) for m, o, f in cases]
    one = run_ranks(workers.unlearn_many, 1, str(job_path), runs, str(tmp_path / "one"))[0]
    runs = [(f"{m}-{o}-{f}", overrides(m, o, "fsdp", f), {"evaluate": False, "check_sync": True})
            for m, o, f in cases]
    results = run_ranks(workers.fsdp_shards_then_unlearn, 2, str(job_path), runs, str(tmp_path / "two"))
    # every tensor is split across the two ranks: PCGrad-R's per-tensor dots are partial sums
    for (name, n0, full), (_, n1, _) in zip(*(sizes for sizes, _ in results)):
        assert n0 + n1 == full and 0 < n0 < full, name
    two = [rows for _, rows in results]
    start = load_weights_of_target(job_path)
    for m, o, f in cases:
        tag = f"{m}-{o}-{f}"
        w1, w2 = final_weights(one[tag]), final_weights(two[0][tag])
        assert set(w1) == set(w2)
        assert max_diff(w1, start) > 1e-4, f"{tag}: the run must move the parameters"
        assert max_diff(w1, w2) < TOL, tag
        for rank_rows in two:  # the gathered parameters agree on both ranks after every step
            assert [r["params_in_sync"] for r, _ in rank_rows[tag]] == [1.0] * 5
            for (m2, _), (m1, _) in zip(rank_rows[tag], one[tag]):
                for key in ("loss_forget", "loss_retain_0", "norm_forget", "norm_retain", "cos_forget_retain",
                            "norm_update"):
                    # a cosine near 0 is a difference of nearly equal float32 sums: absolute tolerance
                    tol = 1e-6 if key.startswith("cos_") else 1e-7
                    assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=tol), (tag, key)


def test_fsdp_equals_one_process_with_the_double_batch(job_path, tmp_path):
    check_equivalence(job_path, tmp_path, FAST)


@pytest.mark.slow
def test_fsdp_equals_one_process_for_every_method_and_optimizer(job_path, tmp_path):
    assert {m for m, _, _ in ALL} == set(SYNTHESIS.names())
    check_equivalence(job_path, tmp_path, ALL)


def test_fsdp_resume_from_a_sharded_checkpoint_equals_uninterrupted(job_path, tmp_path):
    ov = overrides("gru", "adamw", "fsdp", "npo")  # shard-local EMA, sharded moments, sharded reference
    root = tmp_path / "resume"
    cut = root / "cut" / "step_000003"
    runs = [("whole", ov, {"evaluate": False}),
            ("cut", ov, {"evaluate": False, "stop_at_step": 3, "checkpoint_every": 3}),
            ("resumed", ov, {"evaluate": False, "resume_from": str(cut)}),
            ("bf16", {**ov, "train.precision": "bf16"}, {"evaluate": False})]
    out = run_ranks(workers.unlearn_many, 2, str(job_path), runs, str(root))[0]
    assert [c for _, c in out["cut"] if c][-1] == str(cut)
    assert sorted(p.name for p in cut.iterdir()) == ["meta.json", "sharded", "train_state_rank0.json",
                                                     "train_state_rank0.safetensors", "train_state_rank1.json",
                                                     "train_state_rank1.safetensors"]  # no pickle
    assert out["resumed"][0][0]["start_step"] == 3.0 and len(out["resumed"]) == 2
    w_whole, w_resumed = final_weights(out["whole"]), final_weights(out["resumed"])
    assert max(float((w_whole[k] - w_resumed[k]).abs().max()) for k in w_whole) == 0.0
    # bf16 compute under FSDP2 (MixedPrecisionPolicy, fp32 shards and reduction) tracks fp32 FSDP2
    # within the bf16 test's tolerance (tests/engine/test_precision.py)
    from ..engine.test_precision import BF16_LOSS_RTOL

    assert [m["loss_forget"] for m, _ in out["bf16"]] != [m["loss_forget"] for m, _ in out["whole"]]
    for (mb, _), (mf, _) in zip(out["bf16"], out["whole"]):
        assert mb["loss_forget"] == pytest.approx(mf["loss_forget"], rel=BF16_LOSS_RTOL)
        assert mb["loss_retain_0"] == pytest.approx(mf["loss_retain_0"], rel=BF16_LOSS_RTOL)


@pytest.mark.slow
def test_fsdp_final_evaluation_equals_one_process(job_path, tmp_path):
    """Under FSDP every rank runs the whole evaluation (forwards and greedy generation all-gather
    in lockstep); the numbers are the 1-process numbers, on both ranks."""
    one = run_ranks(workers.unlearn_many, 1, str(job_path), [("x", overrides("sago", "adamw", "ddp", "npo"),
                                                                    {"evaluate": True})], str(tmp_path / "one"))
    two = run_ranks(workers.unlearn_many, 2, str(job_path), [("x", overrides("sago", "adamw", "fsdp", "npo"),
                                                                    {"evaluate": True})], str(tmp_path / "two"))
    ref = one[0]["x"][-1][0]
    keys = [k for k in ref if k.startswith("final/")]
    assert "final/forget_truth_ratio" in keys and "final/model_utility" in keys
    for rank in two:
        got = rank["x"][-1][0]
        for k in keys:
            assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k
