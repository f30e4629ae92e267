"""FSDP2 (``train.strategy: fsdp``) on CPU/gloo with real shards: 2 FSDP ranks x batch b end with
the same parameters as 1 process x batch 2b after 5 steps, for every synthesis method, with SGD and
AdamW, within the DDP test's tolerance (2e-6 absolute; the float32 reordering of the reductions).
Every tensor is split across the two ranks, so PCGrad-R's module scope reduces per-tensor partial
dots of split tensors. A run stopped at step 3 and resumed from its sharded checkpoint equals the
uninterrupted run. Checkpoints are atomic, checksummed and verified like single-process ones (a
damaged one falls back on every rank), every checkpoint holds the consolidated weights, and
evaluation along the run (eval.every) runs the same forwards on every rank."""

import json

import pytest
import torch

from raysweep.distributed.checkpoint import CheckpointError, load_weights, verify_checkpoint
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


@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="pcgrad_r")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="sago")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="ngdiff")
def test_fsdp_equals_one_process_with_the_double_batch(job_path, tmp_path):
    check_equivalence(job_path, tmp_path, FAST)


@pytest.mark.slow
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="graddiff")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="sago")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="sago_prefer_retain")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="pcgrad_r")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="ngdiff")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="gru")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", export="none", method="mgda")
def test_fsdp_equals_one_process_for_every_method_and_optimizer(job_path, tmp_path):
    assert {m for m, _, _ in ALL} == set(SYNTHESIS.names())
    check_equivalence(job_path, tmp_path, ALL)


@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="off", method="gru")
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="bf16", eval_every="off", export="none", method="gru")
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
    assert sorted(p.name for p in cut.iterdir()) == ["meta.json", "model.safetensors", "sharded",
                                                     "train_state_rank0.json",
                                                     "train_state_rank0.safetensors", "train_state_rank1.json",
                                                     "train_state_rank1.safetensors"]  # no pickle
    # a mid-run checkpoint: every file checksummed, the consolidated weights loadable (export)
    files = {str(p.relative_to(cut)) for p in cut.rglob("*") if p.is_file()} - {"meta.json"}
    assert set(json.loads((cut / "meta.json").read_text())["sha256"]) == files
    assert set(load_weights(cut)) == set(final_weights(out["whole"]))
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


@pytest.mark.slow  # a 2-rank spawn with three runs (~40 s here); the default suite checks the layout above
def test_fsdp_checkpoints_are_checksummed_and_a_damaged_one_falls_back_on_every_rank(job_path, tmp_path):
    """Each FSDP checkpoint is renamed into place whole (no temporary folder left), its meta.json
    holds the sha256 of every file (DCP shards, every rank's state, the consolidated weights), a
    damaged DCP shard is a CheckpointError, and a run resumed from it starts at the previous good
    checkpoint on both ranks and ends where the uninterrupted run ends."""
    ov = overrides("gru", "adamw", "fsdp")
    out = run_ranks(workers.fsdp_resume_past_a_damaged_checkpoint, 2, str(job_path), ov, str(tmp_path), timeout=300)
    for rank_rows in out:
        assert rank_rows["resumed"][0][0]["start_step"] == 2.0 and len(rank_rows["resumed"]) == 3
    cut = tmp_path / "cut"
    assert sorted(p.name for p in cut.iterdir()) == ["step_000001", "step_000002", "step_000003"]
    good = cut / "step_000002"
    files = {str(p.relative_to(good)) for p in good.rglob("*") if p.is_file()} - {"meta.json"}
    assert {"model.safetensors", "sharded/.metadata", "train_state_rank1.json"} <= files
    assert set(json.loads((good / "meta.json").read_text())["sha256"]) == files
    with pytest.raises(CheckpointError, match=r"step_000003': sharded/.*does not match its sha256"):
        verify_checkpoint(cut / "step_000003")
    w_whole, w_resumed = final_weights(out[0]["whole"]), final_weights(out[0]["resumed"])
    assert max(float((w_whole[k] - w_resumed[k]).abs().max()) for k in w_whole) == 0.0


@pytest.mark.slow  # a 2-rank spawn with evaluations (~30 s here)
@pytest.mark.matrix(strategy="fsdp", lora="off", gradient_checkpointing="off", event="uninterrupted", precision="fp32", eval_every="on")
def test_fsdp_evaluates_along_the_run_and_each_evaluated_point_loads_with_its_metrics(job_path, tmp_path):
    """eval.every under FSDP: every rank runs the same forwards (no row split: each forward
    all-gathers), so the run ends instead of hanging, both ranks log the same eval/* metrics, and
    the step-2 checkpoint (a mid-run point) holds consolidated weights that load_weights verifies;
    evaluating them in one process gives the metrics logged at step 2."""
    from raysweep.engine.trial import build_trial
    from raysweep.spec import load_job

    ov = {**overrides("graddiff", "sgd", "fsdp"), "unlearn.steps": 4, "eval.every": 2}
    out = run_ranks(workers.unlearn_many, 2, str(job_path), [("x", ov, {"evaluate": False})], str(tmp_path),
                    timeout=300)
    logged, checkpoint = out[0]["x"][1]
    keys = [k for k in logged if k.startswith("eval/") and k != "eval/step"]
    assert checkpoint and "eval/forget_truth_ratio" in keys
    assert {k: out[1]["x"][1][0][k] for k in keys} == {k: logged[k] for k in keys}
    parts = build_trial(load_job(job_path, {**ov, "train.strategy": "ddp"}))
    parts.model.load_state_dict(load_weights(checkpoint))
    got = parts.during_evaluator(parts.model, progress=False)
    for k in keys:
        assert got[k[len("eval/"):]] == pytest.approx(logged[k], rel=1e-5, abs=1e-5), k


@pytest.mark.parametrize("how", ["owner", pytest.param("mode", marks=pytest.mark.slow)])  # ~30 s each here
def test_a_planted_pickle_in_an_fsdp_checkpoint_is_refused_and_never_runs(job_path, tmp_path, how):
    """Issue 23, finding 3: DCP unpickles its .metadata. A pickle planted there (with meta.json
    rewritten to match, so checksums pass) by another user, or in a file others may write, is
    refused on every rank in one line, and never unpickled."""
    marker = tmp_path / "pwned"
    ov = overrides("graddiff", "sgd", "fsdp")
    out = run_ranks(workers.fsdp_resume_from_a_planted_pickle, 2, str(job_path), ov, str(tmp_path),
                    str(marker), how, timeout=300)
    assert not marker.exists(), "the planted pickle ran"
    why = "is owned by another user (uid 65534)" if how == "owner" else "is writable by others"
    said = out[0][0]  # rank 0 speaks for the trial
    refusals = [line for line in said.splitlines() if "which is not allowed" in line]
    assert len(refusals) == 1, said
    assert f"sharded/.metadata' {why}, which is not allowed (DCP unpickles its metadata" in refusals[0]
    assert [start_step for _, start_step in out] == [0.0, 0.0]  # every rank starts over rather than trust it
