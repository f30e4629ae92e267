"""RMU's steering MSE in the open-unlearning/SAGO form (spec 2.7): mean over d, per sequence over
exactly its label positions (no shift: the hidden state at t goes with the label at t), then a
mean over sequences; checked against a float64 hand computation, and data-parallel/accumulation
consistent (the unit is a row)."""

import copy

import pytest
import torch

from raysweep.engine.engine import UnlearningEngine
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis

from ..helpers import hand_batch, tiny_llama

LAYER, COEFF = 1, 6.5


def block_output_float64(model, batch, layer):
    captured = {}
    hook = model.model.layers[layer].register_forward_hook(
        lambda m, i, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hook.remove()
    return captured["h"].double()


def per_row_by_hand(h, target, labels):
    """Row by row, position by position, in float64."""
    rows = []
    for b in range(h.shape[0]):
        terms = [float(((h[b, t] - target[b, t]) ** 2).mean()) for t in range(h.shape[1]) if labels[b, t] != -100]
        rows.append(sum(terms) / len(terms))
    return sum(rows) / len(rows)


def control(dim, seed=0):
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed)).double()
    return u / u.norm()


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def model(request):
    return tiny_llama().to(request.param)


def test_forget_loss_is_the_mean_of_per_sequence_means(model):
    b = hand_batch()
    counts = (b["labels"] != -100).sum(-1)
    assert counts[0] != counts[1]  # so a pooled mean would differ from the mean of row means
    h = block_output_float64(model, b, LAYER)
    expected = per_row_by_hand(h, COEFF * control(h.shape[-1]).expand_as(h), b["labels"])
    obj = build_objective("rmu", {"layer": LAYER, "steering_coeff": COEFF})
    got = float(obj(model, b, ObjectiveContext()))
    assert got == pytest.approx(expected, rel=1e-5)
    assert obj.units(b) == 2  # rows, not label tokens


def test_retain_loss_is_the_mean_of_per_sequence_means(model):
    b = hand_batch()
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(0.05 * torch.randn_like(p))
    h, ref = block_output_float64(shifted, b, LAYER), block_output_float64(model, b, LAYER)
    expected = per_row_by_hand(h, ref, b["labels"])
    got = float(build_objective("rmu_retain", {"layer": LAYER})(shifted, b, ObjectiveContext(reference_model=model)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > 0


def test_a_denominator_divides_the_sum_of_row_means():
    """Under data parallelism the engine sets ctx.denominator = global rows / (ranks x micro-batches);
    the loss is then Σ_rows row-mean / denominator."""
    model, b = tiny_llama(), hand_batch()
    obj = build_objective("rmu", {"layer": LAYER, "steering_coeff": COEFF})
    mean = float(obj(model, b, ObjectiveContext()))
    assert float(obj(model, b, ObjectiveContext(denominator=0.5))) == pytest.approx(2 * mean / 0.5, rel=1e-6)


@pytest.mark.parametrize("name", ["rmu", "rmu_retain"])
def test_accumulated_gradient_equals_the_big_batch_gradient(name):
    """Two micro-batches of one row each (3 and 4 labels) give the gradient of the two-row mean."""
    b = hand_batch()
    halves = [({k: v[i:i + 1] for k, v in b.items()}, {k: v[i:i + 1] for k, v in b.items()}) for i in range(2)]
    model = tiny_llama()
    objective = build_objective(name, {"layer": LAYER})
    eng = UnlearningEngine(model, build_objective("rmu", {"layer": LAYER}), [objective], build_synthesis("graddiff"),
                           ObjectiveContext(reference_model=tiny_llama(seed=1)), lr=0.1, optimizer="sgd")
    acc, _ = eng.accumulated_gradient(objective, [fb for fb, _ in halves])
    big, _ = eng.accumulated_gradient(objective, [b])
    for a, c in zip(acc, big):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-8)
    # and the big batch's gradient is that of the mean of the two row means, by hand
    grads = []
    for fb, _ in halves:
        loss = objective(model, fb, ObjectiveContext(reference_model=eng.ctx.reference_model))
        grads.append(torch.autograd.grad(loss, eng.params))
    for k, c in enumerate(big):
        torch.testing.assert_close(c, 0.5 * (grads[0][k] + grads[1][k]), rtol=1e-5, atol=1e-8)
