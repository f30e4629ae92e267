"""Learning-rate schedule (HF warm-up parity, spec 2.1/4.3) and AutoLR's horizon scale (spec 5.4)."""

import math

import pytest
import torch
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from raysweep.engine.autolr import SMOOTHING
from raysweep.horizons import horizon_scale
from raysweep.engine.engine import UnlearningEngine, lr_at
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis

from ..helpers import hand_batch, tiny_llama

PAIRS = [(10, 0), (10, 1), (10, 2), (10, 3), (7, 7), (5, 9), (25, 5), (1, 0), (1, 1), (100, 10)]


def hf_rates(schedule, total, warmup, base_lr):
    """The lr a real optimizer runs each step under HF's scheduler (scheduler.step() after
    optimizer.step(), as in the HF Trainer), a few steps past the end included."""
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param], lr=base_lr)
    if schedule == "linear":
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
    else:
        sched = get_constant_schedule_with_warmup(opt, warmup)
    rates = []
    for _ in range(total + 3):
        rates.append(opt.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("schedule", ["linear", "constant"])
@pytest.mark.parametrize("total,warmup", PAIRS)
@pytest.mark.parametrize("base_lr", [1e-5, 3e-4])
def test_lr_matches_hugging_face_at_every_step(schedule, total, warmup, base_lr):
    expected = hf_rates(schedule, total, warmup, base_lr)
    ours = [lr_at(s, base_lr, total, schedule, warmup) for s in range(len(expected))]
    assert ours == expected  # bit-identical, step 0 of a warm-up included (lr 0)


def test_engine_runs_the_schedule_it_reports():
    """The engine's optimizer really uses lr_at(step): with warm-up, step 0 leaves θ unchanged."""
    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    eng = UnlearningEngine(model, build_objective("ga"), [build_objective("nll")], build_synthesis("graddiff"),
                           ObjectiveContext(), lr=0.1, optimizer="sgd", total_steps=4, schedule="linear",
                           warmup_steps=2)
    b = hand_batch()
    m = eng.step([(b, b)])
    assert m["lr"] == 0.0
    for p, q in zip(model.parameters(), before):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert eng.step([(b, b)])["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("total", [1, 4, 10, 1000])
def test_horizon_scales(total):
    for t in range(total + 1):
        frac = t / total
        assert horizon_scale("constant", t, total) == 1.0
        assert horizon_scale("linear", t, total) == pytest.approx(1 - frac, abs=1e-15)
        assert horizon_scale("cosine", t, total) == pytest.approx((1 + math.cos(math.pi * frac)) / 2, abs=1e-15)
    assert horizon_scale("linear", 0, total) == 1.0 and horizon_scale("linear", total, total) == 0.0
    assert horizon_scale("linear", total + 5, total) == 0.0  # past the end: no negative rates


def test_ngdiff_accepts_the_linear_horizon_and_suggests_names():
    assert build_synthesis("ngdiff", {"autolr_horizon": "linear"}).autolr_horizon == "linear"
    with pytest.raises(ValueError, match="did you mean 'linear'"):
        build_synthesis("ngdiff", {"autolr_horizon": "lineer"})


@pytest.mark.parametrize("horizon", ["constant", "linear", "cosine"])
def test_autolr_applies_the_horizon_scale_in_the_gen_update(horizon):
    """η_new = 0.9 η + 0.1 s_t clip(η*, η/2, 2η), with s_t = 1 - t/T for "linear" (spec 5.4)."""
    b = hand_batch()
    r = {k: v.clone() for k, v in b.items()}
    r["input_ids"] = torch.where(b["attention_mask"].bool(), (b["input_ids"] * 3) % 35 + 3, b["input_ids"])
    r["labels"] = torch.where(b["labels"] != -100, r["input_ids"], b["labels"])
    model = tiny_llama()
    total, lr = 4, 0.5
    eng = UnlearningEngine(model, build_objective("ga"), [build_objective("nll")],
                           build_synthesis("ngdiff", {"autolr": True, "autolr_interval": 1, "autolr_horizon": horizon}),
                           ObjectiveContext(), lr=lr, optimizer="sgd", total_steps=total)
    eng.step_count = 1  # t/T = 1/4: linear 0.75, cosine 0.854
    m = eng.step([(b, r)], probe_batch=r)
    assert m["autolr_fit"] == 1.0
    s_t = {"constant": 1.0, "linear": 0.75, "cosine": (1 + math.cos(math.pi / 4)) / 2}[horizon]
    clipped = min(max(m["autolr_opt_lr"], lr / 2), 2 * lr)
    assert m["lr"] == pytest.approx(SMOOTHING * lr + (1 - SMOOTHING) * s_t * clipped, rel=1e-12)


# Warm-up over 4 steps, AutoLR every 2: step 0 runs at lr 0 and skips the fit; the fit at step 2
# (warm-up factor 0.5) sets AutoLR's base rate, which the warm-up keeps scaling (0.75 at step 3).
WARMUP_AUTOLR = {"warmup_steps": 4, "method": {"autolr": True, "autolr_interval": 2}}


def assert_warm_up_ramps_autolrs_rate(rows: list[dict], base_lr: float) -> None:
    assert len(rows) == 6
    assert all(math.isfinite(m["loss_forget"]) and math.isfinite(m["loss_retain_0"]) for m in rows)
    lrs = [m["lr"] for m in rows]
    assert lrs[0] == 0.0 and rows[0]["autolr_fit"] == 0.0
    assert lrs[1] == pytest.approx(0.25 * base_lr)          # the schedule's rate until AutoLR has fitted
    assert "autolr_fit" in rows[2] and lrs[2] > 0            # the fit at factor 0.5 chose this step's rate ...
    assert lrs[3] == pytest.approx(lrs[2] / 0.5 * 0.75)      # ... so its base rate is lrs[2] / 0.5
    assert all(lr > 0 for lr in lrs[1:])


def test_ngdiff_autolr_through_a_warm_up_ramps_autolrs_base_rate():
    """The engine over 6 steps (tiny Llama, hand batches)."""
    b = hand_batch()
    r = {k: v.clone() for k, v in b.items()}
    r["input_ids"] = torch.where(b["attention_mask"].bool(), (b["input_ids"] * 3) % 35 + 3, b["input_ids"])
    r["labels"] = torch.where(b["labels"] != -100, r["input_ids"], b["labels"])
    base = 1e-3
    eng = UnlearningEngine(tiny_llama(), build_objective("ga"), [build_objective("nll")],
                           build_synthesis("ngdiff", WARMUP_AUTOLR["method"]), ObjectiveContext(), lr=base,
                           optimizer="adamw", total_steps=6, schedule="linear",
                           warmup_steps=WARMUP_AUTOLR["warmup_steps"])
    rows = [eng.step([(b, r)], probe_batch=r) for _ in range(6)]
    assert_warm_up_ramps_autolrs_rate(rows, base)
    assert rows[5]["lr"] == pytest.approx(eng.synthesis.autolr_lr)  # past the warm-up: AutoLR's rate itself


@pytest.mark.slow
def test_an_ngdiff_autolr_trial_with_warm_up_ramps_autolrs_rate(tmp_path, tofu_dir, shared_cache):
    """A real tiny trial: TOFU rows through the worker's loop."""
    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.spec import load_job

    from ..conftest import tiny_job
    from ..distributed.workers import Recorder

    base = 1e-3
    path = tiny_job(tmp_path, tofu_dir, shared_cache, steps=6, lr=base, warmup_steps=WARMUP_AUTOLR["warmup_steps"],
                    method={"name": "ngdiff", **WARMUP_AUTOLR["method"]})
    rec = Recorder()
    run_worker(load_job(path), 0, 1, torch.device("cpu"), rec, WorkerOptions(evaluate=False, save_checkpoints=False),
               None)
    assert_warm_up_ramps_autolrs_rate([m for m, _ in rec.rows], base)
