"""The feature matrix on 2 ranks (issue 21, docs/matrix.md): every synthesis method under DDP and
under FSDP2, each run combined with other features (bf16, LoRA, gradient checkpointing, evaluation
along the run) so that every pair of those values with a strategy runs. One real gloo group per
strategy runs all its cells in turn (imports and process start paid once)."""

import math

import pytest

from ..conftest import tiny_job
from ..matrix import AXES
from . import workers
from raysweep.distributed.local import run_ranks

METHODS = sorted(AXES["method"])
# (method, precision, lora, gradient checkpointing, eval.every): each value of the four binary
# axes meets both strategies, and every method runs once per strategy.
DDP_CELLS = [("graddiff", "bf16", "on", "on", "on"), ("gru", "fp32", "off", "off", "off"),
             ("mgda", "fp32", "on", "on", "off"), ("ngdiff", "bf16", "off", "off", "on"),
             ("pcgrad_r", "bf16", "on", "off", "off"), ("sago", "fp32", "off", "on", "on"),
             ("sago_prefer_retain", "fp32", "on", "off", "on")]
FSDP_CELLS = [(m, p, "off", g, e) for m, p, _, g, e in DDP_CELLS]  # LoRA with FSDP is refused (docs/matrix.md)


def _overrides(strategy, method, precision, lora, checkpointing, every):
    return {"train.workers": 2, "train.strategy": strategy, "train.precision": precision,
            "train.gradient_checkpointing": checkpointing == "on", "unlearn.method": {"name": method},
            "eval.every": 2 if every == "on" else 0,
            **({"model.lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}} if lora == "on" else {})}


def _marks(strategy, cells):
    return [pytest.mark.matrix(strategy=strategy, method=m, precision=p, lora=lo, gradient_checkpointing=g,
                               eval_every=e, event="uninterrupted", export="none") for m, p, lo, g, e in cells]


@pytest.fixture(scope="module")
def job_path(tmp_path_factory, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    path = tiny_job(tmp_path_factory.mktemp("matrix_ranks"), tofu_dir, shared_cache, steps=4, batch_size=4)
    prepare(load_job(path))
    return path


def test_the_cells_cover_every_method_and_both_values_of_each_feature():
    for cells in (DDP_CELLS, FSDP_CELLS):
        assert sorted(c[0] for c in cells) == METHODS
        for axis in range(1, 5):
            assert len({c[axis] for c in cells}) == 2 or (cells is FSDP_CELLS and axis == 2)


@pytest.mark.parametrize("strategy, cells", [
    pytest.param("ddp", DDP_CELLS, marks=_marks("ddp", DDP_CELLS), id="ddp"),
    pytest.param("fsdp", FSDP_CELLS, marks=_marks("fsdp", FSDP_CELLS), id="fsdp"),
])
def test_every_cell_runs_to_its_end_on_two_ranks(job_path, tmp_path, strategy, cells):
    from raysweep.distributed.checkpoint import load_weights

    runs = [(f"{c[0]}-{'-'.join(c[1:])}", _overrides(strategy, *c), {"evaluate": False, "check_sync": strategy == "ddp"})
            for c in cells]
    out = run_ranks(workers.unlearn_many, 2, str(job_path), runs, str(tmp_path), timeout=600)
    for (tag, overrides, _), cell in zip(runs, cells):
        rows = [out[r][tag] for r in (0, 1)]
        steps = [m for m, _ in rows[0]]
        assert [m["step"] for m in steps if "loss_forget" in m][-1] == 4.0, tag
        for m in steps:
            for k in ("loss_forget", "loss_retain_0"):
                if k in m:
                    assert math.isfinite(m[k]), (tag, k, m[k])
            assert m.get("params_in_sync", 1.0) == 1.0, tag  # DDP: the ranks hold the same model
        evaluated = [(a, b) for (a, _), (b, _) in zip(*rows) if any(k.startswith("eval/") for k in a)]
        if cell[4] == "on":  # both ranks evaluated step 2 and agree (no final evaluation asked for)
            assert len(evaluated) == 1, tag
            for a, b in evaluated:
                assert {k: v for k, v in a.items() if k.startswith("eval/")} == \
                       {k: v for k, v in b.items() if k.startswith("eval/")}, tag
        checkpoint = [c for _, c in rows[0] if c][-1]
        weights = load_weights(checkpoint)  # what export reads: verified and complete
        assert weights and all(".lora_" in k for k in weights) == (cell[2] == "on"), tag
