"""IDK as TOFU computes it (spec 2.6): one token mean over the concatenated batch
[refusals ∪ retain]. With forget=idk, retain=nll and GradDiff γ = α = 1, the engine's update is
the gradient of that single NLL, checked against Hugging Face's own loss on the concatenated batch."""

import pytest
import torch

from raysweep.engine.engine import UnlearningEngine
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis

from ..helpers import hand_batch, tiny_llama


def rows(token_rows, n_prompt):
    """Right-padded rows: the first n_prompt[i] tokens are prompt (label -100)."""
    width = max(len(r) for r in token_rows)
    ids = torch.zeros(len(token_rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for i, (r, p) in enumerate(zip(token_rows, n_prompt)):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, p:len(r)] = torch.tensor(r[p:])
        attn[i, :len(r)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def forget_batch():
    b = hand_batch()  # the true forget answers (unused by idk), plus the refusals below
    refusals = rows([[1, 5, 6, 7, 20, 21, 22, 2], [1, 8, 7, 23, 2]], [4, 3])  # 4 and 2 refusal labels
    b.update({f"idk_{k}": v for k, v in refusals.items()})
    return b


def retain_batch():
    b = rows([[1, 14, 15, 16, 17, 18, 19, 24, 25, 2], [1, 26, 27, 28, 29, 2], [1, 30, 31, 32, 2]], [3, 2, 3])
    b["index"] = torch.tensor([0, 1, 2])
    return b


def concatenated(fb, rb):
    """TOFU's batch: refusal rows and retain rows stacked, padded to one width."""
    parts = [{k[4:]: v for k, v in fb.items() if k.startswith("idk_")}, rb]
    width = max(p["input_ids"].shape[1] for p in parts)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return {"input_ids": torch.cat([pad(p["input_ids"], 0) for p in parts]),
            "labels": torch.cat([pad(p["labels"], -100) for p in parts]),
            "attention_mask": torch.cat([pad(p["attention_mask"], 0) for p in parts])}


def engine_update(model, micro_batches, pooled=True):
    eng = UnlearningEngine(model, build_objective("idk", {"pooled": pooled}), [build_objective("nll")],
                           build_synthesis("graddiff", {"gamma": 1.0, "alpha": 1.0}), ObjectiveContext(),
                           lr=0.1, optimizer="sgd")
    grads, metrics = eng.task_gradients(micro_batches)
    return eng.synthesis(eng.reduce_task_grads(grads)), metrics, eng.params


def reference_gradient(model, params, fb, rb):
    """Gradient of one NLL over the concatenated batch, as HF (and TOFU) computes it."""
    batch = concatenated(fb, rb)
    loss = model(**batch).loss
    return torch.autograd.grad(loss, params), float(loss.detach())


def test_graddiff_of_idk_and_nll_is_the_gradient_of_one_pooled_mean():
    model = tiny_llama()
    fb, rb = forget_batch(), retain_batch()
    g, metrics, params = engine_update(model, [(fb, rb)])
    expected, loss = reference_gradient(model, params, fb, rb)
    for a, b in zip(g, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the logged losses are the two parts of that mean
    assert metrics["loss_forget"] + metrics["loss_retain_0"] == pytest.approx(loss, rel=1e-5)


def test_accumulated_micro_batches_give_the_same_pooled_gradient():
    """Micro-batches hold 4 refusal + 7 retain and 2 refusal + 6 retain tokens: the step's
    combined count (19) is the denominator of every term, not a per-micro-batch one."""
    model = tiny_llama()
    fb, rb = forget_batch(), retain_batch()
    halves = [({k: v[i:i + 1] for k, v in fb.items()}, {k: v[sl] for k, v in rb.items()})
              for i, sl in ((0, slice(0, 1)), (1, slice(1, 3)))]
    g, _, params = engine_update(model, halves)
    expected, _ = reference_gradient(model, params, fb, rb)
    for a, b in zip(g, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_separate_means_differ_when_counts_differ():
    """pooled: false (each task its own mean) is not TOFU's IDK: the check above can fail."""
    model = tiny_llama()
    fb, rb = forget_batch(), retain_batch()
    g, _, params = engine_update(model, [(fb, rb)], pooled=False)
    expected, _ = reference_gradient(model, params, fb, rb)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(g, expected))


def test_pooling_needs_the_retain_nll_first():
    with pytest.raises(ValueError, match="idk.pooled"):
        UnlearningEngine(tiny_llama(), build_objective("idk"), [build_objective("kl")], build_synthesis("graddiff"),
                         ObjectiveContext(), lr=0.1)
    UnlearningEngine(tiny_llama(), build_objective("idk", {"pooled": False}), [build_objective("kl")],
                     build_synthesis("graddiff"), ObjectiveContext(), lr=0.1)
