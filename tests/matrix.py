"""The feature matrix (issue 21): the axes a researcher combines, how each value is written in a
job, which job field belongs to which axis, and the validator's verdict on every pair of values.

Tests say which cell they run with ``@pytest.mark.matrix(strategy=..., lora=..., ...)`` (an axis
left out is not claimed). ``docs/make_matrix.py`` collects those marks through pytest and writes
``docs/matrix.md``: every pair of axis values is *works* (the tests that run it), *refused* (the
validator's one-line error, raised before anything starts) or *not applicable* (why).
"""

from __future__ import annotations

import itertools
from typing import Optional

# axis -> value -> the job overrides (dotted keys) that select it; {} when a run, not a job field,
# decides the value (an event, an export).
AXES: dict[str, dict[str, dict]] = {
    "strategy": {
        "single": {"train.workers": 1},                      # raysweep run, one process
        "inline": {"train.workers": 1, "train.inline": True},  # a one-worker trial inside its Tune trial
        "ddp": {"train.workers": 2, "train.strategy": "ddp"},
        "fsdp": {"train.workers": 2, "train.strategy": "fsdp"},
    },
    "precision": {"fp32": {"train.precision": "fp32"}, "bf16": {"train.precision": "bf16"}},
    "lora": {"off": {}, "on": {"model.lora.r": 4}},
    "gradient_checkpointing": {"off": {}, "on": {"train.gradient_checkpointing": True}},
    "eval_every": {"off": {"eval.every": 0}, "on": {"eval.every": 2}},
    "scheduler": {"fifo": {}, "mo_asha": {"sweep.scheduler.name": "mo_asha", "sweep.scheduler.grace_period": 2}},
    "method": {m: {"unlearn.method.name": m} for m in
               ("graddiff", "sago", "sago_prefer_retain", "pcgrad_r", "ngdiff", "gru", "mgda")},
    "event": {"uninterrupted": {}, "worker_killed": {}, "driver_killed_resume": {}},
    "export": {"none": {}, "final": {}, "mid_run": {}},
}

# Pairs that are not a combination at all (not refused: there is nothing to refuse), and why.
NOT_APPLICABLE: dict[tuple[tuple[str, str], tuple[str, str]], str] = {}


def _na(a: tuple[str, str], b: tuple[str, str], why: str) -> None:
    NOT_APPLICABLE[(a, b)] = NOT_APPLICABLE[(b, a)] = why


_na(("strategy", "single"), ("scheduler", "mo_asha"), "raysweep run is one trial: there is no scheduler")
_na(("strategy", "single"), ("scheduler", "fifo"), "raysweep run is one trial: there is no scheduler")
_na(("strategy", "single"), ("event", "driver_killed_resume"), "raysweep run has no sweep driver to resume")
_na(("strategy", "single"), ("export", "final"), "raysweep export reads a sweep; raysweep run writes no sweep")
_na(("strategy", "single"), ("export", "mid_run"), "raysweep export reads a sweep; raysweep run writes no sweep")
_na(("strategy", "single"), ("event", "worker_killed"), "raysweep run is one process with no supervisor: a killed run "
    "is run again (a sweep, or run --ray, restarts a dead worker from its checkpoint)")
_na(("eval_every", "off"), ("export", "mid_run"), "a mid-run point exists only where eval.every evaluates one")

# Every leaf field of the job spec: the axis it selects, or why it is not a combination axis.
# A new field in raysweep/spec.py fails tests/test_matrix.py until it has a row here.
FIELD_ROWS: dict[str, str] = {
    "train.workers": "strategy", "train.inline": "strategy", "train.strategy": "strategy",
    "train.precision": "precision", "model.dtype": "precision",
    "model.lora.r": "lora", "model.lora.alpha": "lora", "model.lora.dropout": "lora",
    "model.lora.target_modules": "lora",
    "train.gradient_checkpointing": "gradient_checkpointing",
    "eval.every": "eval_every", "eval.during_benchmarks": "eval_every", "eval.during_max_questions": "eval_every",
    "eval.during_mcq_questions": "eval_every",
    "sweep.scheduler.name": "scheduler", "sweep.scheduler.grace_period": "scheduler",
    "sweep.scheduler.reduction_factor": "scheduler", "sweep.scheduler.tie_break": "scheduler",
    "sweep.scheduler.rank_by": "scheduler", "sweep.scheduler.keep_front": "scheduler",
    "sweep.scheduler.extrapolate": "scheduler", "sweep.scheduler.promotion": "scheduler",
    "sweep.scheduler.rung_levels": "scheduler", "sweep.scheduler.stratify": "scheduler",
    "sweep.scheduler.budget": "scheduler", "sweep.scheduler.tie_metrics": "scheduler",
    "unlearn.method.name": "method", "unlearn.preset": "method",
    "train.max_failures": "event", "train.checkpoint_every": "event", "train.keep_checkpoints": "event",
    "sweep.checkpoint": "export",
}
_NOT_AXES = {
    "what is unlearned (data and objectives: checked per value by validation, independent of how it runs)": [
        "data.benchmark", "data.path", "data.forget_split", "data.subset.authors", "data.subset.forget_authors",
        "data.subset.offset", "data.n_forget_texts", "data.max_length", "data.forget_file", "data.retain_file",
        "data.n_retain_texts", "data.chunk_chars", "data.heldout_fraction", "unlearn.forget.name",
        "unlearn.retain.name"],
    "which model (any causal LM; the tiny test model and SmolLM2 run in the tests)": [
        "model.base", "model.tiny.hidden_size", "model.tiny.num_layers", "model.tiny.num_heads",
        "model.tiny.intermediate_size", "model.tiny.vocab_size", "model.tiny.max_position_embeddings",
        "model.template", "model.system_prompt"],
    "preparing the target (runs once before any trial, in one process)": [
        "prepare.epochs", "prepare.batch_size", "prepare.lr", "prepare.weight_decay", "prepare.warmup_ratio",
        "prepare.seed", "prepare.retain_reference", "prepare.prior_knowledge", "prepare.prior_knowledge_rows"],
    "optimisation numbers (values, not code paths: every strategy runs the same engine step)": [
        "unlearn.steps", "unlearn.batch_size", "unlearn.grad_accum", "unlearn.lr", "unlearn.optimizer",
        "unlearn.weight_decay", "unlearn.schedule", "unlearn.warmup_steps", "unlearn.max_grad_norm",
        "unlearn.seed", "seed"],
    "what evaluation measures (the same evaluator on every strategy; FSDP runs it on all ranks alike)": [
        "eval.benchmarks", "eval.max_new_tokens", "eval.max_length", "eval.batch_size", "eval.max_questions",
        "eval.mcq_questions", "eval.mmlu_shots", "eval.mcq_seed", "eval.mcq_data", "eval.mcq_add_bos", "eval.muse_flavour",
        "eval.lm_eval.tasks", "eval.lm_eval.num_fewshot", "eval.lm_eval.limit", "eval.lm_eval.include_path",
        "eval.geffect_every",
        "eval.geffect_block_groups"],
    "resources (how many CPUs/GPUs, not which code runs)": [
        "train.use_gpu", "train.cpus_per_worker", "train.threads_per_worker", "sweep.trial_cpus",
        "sweep.max_concurrent"],
    "the search (which trials, which objectives; the driver, not the trial, reads them)": [
        "sweep.search_space", "sweep.objectives", "sweep.sampler", "sweep.num_trials", "sweep.grid_points",
        "sweep.seed", "sweep.constraint.metric", "sweep.constraint.at_least",
        "sweep.constraint.at_least_fraction_of_target", "sweep.reference_point", "sweep.stop_if_retain_loss_above"],
    "where things are kept (names and paths)": [
        "name", "cache_dir", "source", "sweep.tracking_uri", "sweep.storage_path", "sweep.experiment"],
}
for _why, _fields in _NOT_AXES.items():
    for _f in _fields:
        FIELD_ROWS[_f] = f"not an axis: {_why}"


def value_pairs():
    """Every pair of values of two different axes, in the axes' order."""
    names = list(AXES)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for va, vb in itertools.product(AXES[a], AXES[b]):
                yield (a, va), (b, vb)


def cell_overrides(cell: dict[str, str]) -> dict:
    out: dict = {}
    for axis, value in cell.items():
        out.update(AXES[axis][value])
    return out


def refusal(cell: dict[str, str], job_path) -> Optional[str]:
    """The validator's one-line error for a job with this cell's values, or None if it accepts it.
    ``job_path``: a valid sweep job (``raysweep launch`` input) to apply the cell to."""
    from raysweep.spec import JobSpecError, load_job
    from raysweep.preflight import check_job
    from raysweep.validation import InputError

    overrides = cell_overrides(cell)
    if cell.get("scheduler") == "mo_asha" and "eval.every" not in overrides:
        overrides["eval.every"] = 2  # the scheduler's own requirement, not the pair's
    try:
        check_job(load_job(str(job_path), overrides), data=False, model=False)
    except (JobSpecError, InputError, ValueError) as err:
        return " ".join(str(err).split())
    return None


def job_fields() -> set[str]:
    """Every leaf field of the job spec, dotted (``model.lora.r``)."""
    import typing

    import pydantic

    from raysweep.spec import JobSpec

    def leaves(model, prefix: str) -> set[str]:
        out: set[str] = set()
        for name, field in model.model_fields.items():
            ann = field.annotation
            kinds = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type)]
            nested = [k for k in kinds if issubclass(k, pydantic.BaseModel)]
            if nested:
                for k in nested:
                    out |= leaves(k, f"{prefix}{name}.")
            else:
                out.add(f"{prefix}{name}")
        return out

    return leaves(JobSpec, "")
