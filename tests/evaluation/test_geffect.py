"""G-effect: pure GA has a negative forget-side G-effect at the first step; groups sum to total."""

import pytest
import torch

from raysweep.engine.engine import UnlearningEngine
from raysweep.evaluation.geffect import layer_groups
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis

from ..engine.test_engine import batches
from ..helpers import tiny_llama


def test_layer_groups_cover_embeddings_block_ranges_and_head():
    model = tiny_llama(layers=4)
    names = [n for n, _ in model.named_parameters()]
    groups = layer_groups(names, 4, block_groups=2)
    assert groups[0] == "embed" and groups[-1] == "head"
    assert set(groups) == {"embed", "blocks_0-1", "blocks_2-3", "head"}


@pytest.mark.parametrize("seed", range(3))
def test_ga_forget_geffect_is_negative_at_the_first_step(seed):
    torch.manual_seed(seed)
    model = tiny_llama(layers=4, seed=seed)
    fb, rb = batches()
    # Pure GA: the update is the forget-descent gradient alone (retain weight 0).
    eng = UnlearningEngine(model, build_objective("ga"), [build_objective("nll")],
                           build_synthesis("graddiff", {"gamma": 1.0, "alpha": 0.0}), ObjectiveContext(),
                           lr=1e-3, geffect_every=1, geffect_block_groups=2)
    m = eng.step([(fb, rb)])
    assert m["geffect_forget/total"] < 0  # e(D_u) = <∇NLL(D_u), -∇NLL(D_u)> = -||∇NLL||² < 0
    assert m["geffect_forget/total"] == pytest.approx(-m["norm_forget"] ** 2, rel=1e-4)
    for side in ("forget", "retain"):
        parts = [v for k, v in m.items() if k.startswith(f"geffect_{side}/") and not k.endswith("total")]
        assert len(parts) == 4 and sum(parts) == pytest.approx(m[f"geffect_{side}/total"], rel=1e-5, abs=1e-9)
