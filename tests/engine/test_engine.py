"""The engine's step against hand-computed gradient descent, AutoLR, clipping, diagnostics."""

import copy

import pytest
import torch

from raysweep.engine.autolr import gen_learning_rate
from raysweep.engine.engine import UnlearningEngine, lr_at
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis

from ..helpers import hand_batch, tiny_llama


def make_engine(model, method="graddiff", params=None, **kw):
    return UnlearningEngine(model, build_objective("ga"), [build_objective("nll")],
                            build_synthesis(method, params or {}), ObjectiveContext(), **kw)


def batches():
    b = hand_batch()
    r = {k: v.clone() for k, v in b.items()}
    shifted = (b["input_ids"] * 3) % 35 + 3  # other tokens, same layout
    r["input_ids"] = torch.where(b["attention_mask"].bool(), shifted, b["input_ids"])
    r["labels"] = torch.where(b["labels"] != -100, r["input_ids"], b["labels"])
    return b, r


def test_graddiff_step_is_gradient_descent_on_the_summed_loss():
    torch.manual_seed(0)
    model = tiny_llama()
    manual = copy.deepcopy(model)
    fb, rb = batches()
    eng = make_engine(model, "graddiff", {"gamma": 0.7, "alpha": 1.3}, lr=0.1, optimizer="sgd")
    metrics = eng.step([(fb, rb)])

    ctx = ObjectiveContext()
    loss = 0.7 * build_objective("ga")(manual, fb, ctx) + 1.3 * build_objective("nll")(manual, rb, ctx)
    loss.backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for key in ("cos_forget_retain", "norm_forget", "norm_retain", "conflict_fraction", "cos_update_retain"):
        assert key in metrics


@pytest.mark.parametrize("forget", ["ga", "npo", "wga", "uce"])
def test_gradient_accumulation_equals_one_big_batch(forget):
    """Rows with different token counts: micro-batches use the step's global denominator, so the
    accumulated gradient is the big batch's gradient (not a mean of per-micro-batch means)."""
    fb, rb = batches()
    assert (fb["labels"][0] != -100).sum() != (fb["labels"][1] != -100).sum()
    halves = [({k: v[i:i + 1] for k, v in fb.items()}, {k: v[i:i + 1] for k, v in rb.items()}) for i in range(2)]
    model = tiny_llama()
    ref = copy.deepcopy(model)
    eng = UnlearningEngine(model, build_objective(forget), [build_objective("nll")], build_synthesis("sago"),
                           ObjectiveContext(reference_model=ref), lr=0.05, optimizer="sgd")
    g_acc, m_acc = eng.task_gradients(halves)
    g_big, m_big = eng.task_gradients([(fb, rb)])
    for t in range(2):
        for a, b in zip(g_acc[t], g_big[t]):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert m_acc["loss_forget"] == pytest.approx(m_big["loss_forget"], rel=1e-5)


def test_clipping_applies_to_the_synthesised_update():
    fb, rb = batches()
    model, free = tiny_llama(), tiny_llama()
    eng = make_engine(model, "graddiff", lr=1.0, optimizer="sgd", max_grad_norm=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    m = eng.step([(fb, rb)])
    assert m["grad_norm_before_clip"] > 1e-3
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(step) == pytest.approx(1e-3, rel=1e-3)


def test_lr_schedule_is_a_function_of_the_step():
    assert lr_at(0, 1.0, 10, "constant", 0) == 1.0
    assert lr_at(0, 1.0, 10, "linear", 2) == 0.0  # HF: step / warmup, so warm-up starts at 0
    assert lr_at(1, 1.0, 10, "linear", 2) == 0.5
    assert lr_at(6, 1.0, 10, "linear", 2) == pytest.approx(0.5)


def test_gen_rule():
    lr = 0.1
    # L(x) = 1 - B x + A x²/2 with B = 2, A = 10: optimum at 0.2 = 2η -> clipped to 2η, smoothed.
    L = lambda x: 1 - 2 * x + 5 * x * x
    new, info = gen_learning_rate(lr, {-1: L(-lr), 0: L(0), 1: L(lr)})
    assert info["autolr_opt_lr"] == pytest.approx(0.2)
    assert new == pytest.approx(0.9 * lr + 0.1 * 0.2)
    # concave fit: keep η; non-finite: halve.
    assert gen_learning_rate(lr, {-1: 1.0, 0: 2.0, 1: 0.5})[0] == lr
    assert gen_learning_rate(lr, {-1: float("nan"), 0: 2.0, 1: 0.5})[0] == lr / 2


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_autolr_steps_the_optimizer_once_at_the_new_rate(optimizer):
    lr = {"adamw": 1e-3, "sgd": 0.5}[optimizer]  # where the retain loss is convex along d
    """The result equals a single plain step at η_new from the same state: no double step."""
    fb, rb = batches()
    model = tiny_llama()
    twin = copy.deepcopy(model)
    eng = make_engine(model, "ngdiff", {"autolr": True, "autolr_interval": 1}, lr=lr, optimizer=optimizer,
                      weight_decay=0.01)
    m = eng.step([(fb, rb)], probe_batch=rb)
    new_lr = m["lr"]
    assert new_lr != pytest.approx(lr) and "autolr_probe_0" in m
    assert eng.synthesis.autolr_lr == new_lr

    twin_eng = make_engine(twin, "ngdiff", {}, lr=new_lr, optimizer=optimizer, weight_decay=0.01)
    twin_eng.step([(fb, rb)])
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    if optimizer == "adamw":  # moments updated exactly once
        sa = eng.optimizer.state_dict()["state"]
        sb = twin_eng.optimizer.state_dict()["state"]
        for k in sa:
            assert float(sa[k]["step"]) == 1.0
            torch.testing.assert_close(sa[k]["exp_avg"], sb[k]["exp_avg"])


def test_rmu_freezes_everything_but_the_chosen_down_projections():
    fb, rb = batches()
    model = tiny_llama(layers=2)
    eng = UnlearningEngine(model, build_objective("rmu", {"layer": 1}), [build_objective("rmu_retain", {"layer": 1})],
                           build_synthesis("graddiff"), ObjectiveContext(reference_model=copy.deepcopy(model)), lr=1e-2)
    assert eng.param_names == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in eng.param_names}
    eng.step([(fb, rb)])
    for n, p in model.named_parameters():
        if n in frozen:
            torch.testing.assert_close(p, frozen[n], rtol=0, atol=0)


def test_autolr_at_lr_zero_keeps_the_rate_and_moves_nothing():
    """Warm-up's step 0 runs at lr 0: the step is a no-op, so there is no curve to fit (the GeN
    rule would divide by η²) and the rate is kept."""
    assert gen_learning_rate(0.0, {-1: 1.0, 0: 1.0, 1: 1.0}) == (0.0, {"autolr_fit": 0.0})
    fb, rb = batches()
    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    eng = make_engine(model, "ngdiff", {"autolr": True, "autolr_interval": 1}, lr=1e-3, optimizer="adamw",
                      total_steps=4, schedule="linear", warmup_steps=2)
    m = eng.step([(fb, rb)], probe_batch=rb)
    assert m["lr"] == 0.0 and m["autolr_fit"] == 0.0 and eng.synthesis.autolr_lr is None
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    # the moments advanced once, as in any step at lr 0 (the same state as without AutoLR)
    assert all(float(s["step"]) == 1.0 for s in eng.optimizer.state_dict()["state"].values())
