"""Mixed precision (spec 3.2 rule 5) and activation checkpointing on real tiny Llamas.

bf16 tolerance: a 5-step trial's per-step forget/retain losses stay within 2% (relative) of the fp32
trial's, with the same data order; bf16 has 8 mantissa bits (~0.4% per rounding), so a broken path
(fp16-style overflow, bf16 buffers accumulating, a bf16 optimizer state) leaves that band quickly."""

import copy

import pytest
import torch

from raysweep.engine.engine import UnlearningEngine
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis
from raysweep.synthesis.primitives import dot, norm2

from ..conftest import tiny_job
from ..helpers import tiny_llama
from .test_engine import batches

BF16_LOSS_RTOL = 2e-2


def engine(model, method="sago", precision="fp32", **kw):
    return UnlearningEngine(model, build_objective("npo"), [build_objective("nll")], build_synthesis(method, {}),
                            ObjectiveContext(reference_model=copy.deepcopy(model).eval()), lr=1e-2,
                            precision=precision, **kw)


@pytest.mark.parametrize("method", ["sago", "pcgrad_r", "mgda", "gru", "ngdiff"])
def test_bf16_keeps_buffers_scalars_weights_and_optimizer_state_fp32(method):
    seen = []

    def recording_sum(x):  # every synthesis/diagnostic scalar passes through reduce_sum
        seen.append(x.dtype)
        return x

    model = tiny_llama(hidden=32)
    eng = engine(model, method, "bf16", reduce_sum=recording_sum)
    logits_dtypes = []
    model.lm_head.register_forward_hook(lambda m, i, o: logits_dtypes.append(o.dtype))
    fb, rb = batches()
    grads, _ = eng.task_gradients([(fb, rb)])
    assert logits_dtypes and set(logits_dtypes) == {torch.bfloat16}, "the forward must run under bf16 autocast"
    assert all(t.dtype == torch.float32 for task in grads for t in task if t is not None)
    eng.step([(fb, rb)])
    assert seen and set(seen) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for state in eng.optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_scalars_of_bf16_gradients_are_exact_fp32_sums(scale):
    """Primitives upcast bf16 inputs before multiplying: the result is the fp64 value of the same
    bf16 numbers to fp32 accuracy, at tiny and huge scales (a bf16 product would lose ~3 digits)."""
    torch.manual_seed(0)
    a = [(torch.randn(300, 7) * scale).bfloat16(), None, (torch.randn(50) * scale).bfloat16()]
    b = [(torch.randn(300, 7) * scale).bfloat16(), torch.randn(4).bfloat16(), (torch.randn(50) * scale).bfloat16()]
    want = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b) if x is not None)
    got = dot(a, b)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(norm2(a)) == pytest.approx(sum(float((x.double() ** 2).sum()) for x in a if x is not None), rel=1e-5)


@pytest.mark.matrix(strategy="single", precision="bf16", lora="off", gradient_checkpointing="off", eval_every="off", event="uninterrupted", export="none")
def test_bf16_trial_tracks_the_fp32_trial(tmp_path, tofu_dir, shared_cache):
    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.spec import load_job

    from ..distributed.workers import Recorder

    path = tiny_job(tmp_path, tofu_dir, shared_cache, steps=5, batch_size=4, lr=2e-3,
                    forget={"name": "npo"}, method={"name": "sago"})
    losses = {}
    for precision in ("fp32", "bf16"):
        rec = Recorder()
        job = load_job(path, {"train.precision": precision})
        run_worker(job, 0, 1, torch.device("cpu"), rec, WorkerOptions(evaluate=False, save_checkpoints=False), None)
        losses[precision] = [(m["loss_forget"], m["loss_retain_0"]) for m, _ in rec.rows]
    assert len(losses["bf16"]) == 5
    assert losses["fp32"][0] != losses["fp32"][-1], "the trial must move"
    assert losses["bf16"] != losses["fp32"], "bf16 must actually change the arithmetic"
    for (f32, r32), (f16, r16) in zip(losses["fp32"], losses["bf16"]):
        assert f16 == pytest.approx(f32, rel=BF16_LOSS_RTOL)
        assert r16 == pytest.approx(r32, rel=BF16_LOSS_RTOL)


def test_fp16_scales_the_loss_and_skips_overflowing_steps():
    """GradScaler's rule: an overflow skips the step (parameters untouched) and halves the scale;
    a finite step updates with the unscaled gradient."""
    model = tiny_llama(hidden=32)
    eng = engine(model, "graddiff", "fp16")
    fb, rb = batches()
    scales, stepped = [], False
    for _ in range(20):
        before = [p.detach().clone() for p in model.parameters()]
        scale = eng.loss_scale
        m = eng.step([(fb, rb)])
        if m.get("skipped_overflow"):
            assert eng.loss_scale == scale / 2
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
            scales.append(scale)
        else:
            stepped = True
            assert all(torch.isfinite(p).all() for p in model.parameters())
            assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
            break
    assert stepped and eng.loss_scale < 2.0 ** 16 and m["norm_update"] > 0
    eng.loss_scale = 1e38  # overflows any gradient
    assert eng.step([(fb, rb)])["skipped_overflow"] == 1.0


def test_precision_needs_fp32_master_weights():
    model = tiny_llama().to(torch.bfloat16)
    with pytest.raises(ValueError, match="train.precision: 'bf16' needs fp32 master weights"):
        engine(model, "graddiff", "bf16")


def saved_activation_bytes(model, fb):
    """Bytes autograd keeps for the backward of one forward (what checkpointing trades away)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"], labels=fb["labels"]).loss
    return total[0]


@pytest.mark.matrix(strategy="single", method="sago", precision="fp32", lora="off", gradient_checkpointing="on", eval_every="off", event="uninterrupted", export="none")
def test_gradient_checkpointing_gives_the_same_task_gradients():
    """Two backward passes per step through checkpointed layers: far fewer activations are kept
    (so the layers are recomputed in each backward) and both task gradients are unchanged."""
    plain = tiny_llama(hidden=32, layers=4).train()
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fb, rb = batches()
    assert saved_activation_bytes(ckpt, fb) < 0.5 * saved_activation_bytes(plain, fb)
    g_plain, m_plain = engine(plain, "sago").task_gradients([(fb, rb)])
    g_ckpt, m_ckpt = engine(ckpt, "sago").task_gradients([(fb, rb)])
    assert m_ckpt == m_plain
    for task_p, task_c in zip(g_plain, g_ckpt):
        for a, b in zip(task_p, task_c):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
