"""One unlearning trial on one process: load the target, N steps, evaluate before and after."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from raysweep.data.collate import QACollator
from raysweep.data.sampler import PairedSampler
from raysweep.data.tofu import UnlearnData
from raysweep.engine.engine import UnlearningEngine
from raysweep.evaluation.suite import Evaluator, during_job
from raysweep.models.build import load_causal_lm, load_tokenizer
from raysweep.models.prepare import PreparedModels, load_job_data, prepare
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.spec import JobSpec
from raysweep.synthesis import build_synthesis


@dataclass
class TrialParts:
    """Everything a trial needs, built from a spec; shared by the local and the Ray paths."""

    job: JobSpec
    data: UnlearnData
    prepared: PreparedModels
    tokenizer: object
    collator: QACollator
    sampler: PairedSampler
    model: torch.nn.Module
    engine: UnlearningEngine
    forget_needs_idk: bool
    evaluator: Evaluator
    timings: dict = field(default_factory=dict)  # seconds per start-up part, for benchmarks and MLflow
    during_evaluator: Optional[Evaluator] = None  # eval.every: the (cheaper) evaluation along the run


# Trials of a sweep reuse their process (Tune's reuse_actors): the parsed data and the tokenizer
# are kept per process, so only the first trial of a process pays for them.
_PROCESS_CACHE: dict = {}


def _cached(key, build):
    if key not in _PROCESS_CACHE:
        if len(_PROCESS_CACHE) > 16:
            _PROCESS_CACHE.clear()
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


def build_trial(job: JobSpec, model_wrapper: Optional[Callable] = None, engine_kwargs: Optional[dict] = None) -> TrialParts:
    timings: dict[str, float] = {}
    clock = [time.time()]

    def lap(name: str) -> None:
        now = time.time()
        timings[name] = now - clock[0]
        clock[0] = now

    torch.manual_seed(job.seed)
    data = _cached(("data", job.data.model_dump_json()), lambda: load_job_data(job))
    lap("data")
    prepared = prepare(job, data, quiet=True)
    # Re-seed: a preparation that just trained consumed random numbers, and the trial (LoRA's
    # adapter init, dropout, samplers) must not depend on whether the cache answered.
    torch.manual_seed(job.seed)
    lap("prepare_lookup")
    tokenizer = _cached(("tokenizer", str(prepared.tokenizer)), lambda: load_tokenizer(prepared.tokenizer))
    lap("tokenizer")
    model = load_causal_lm(prepared.target, job.model.dtype)
    if job.train.gradient_checkpointing:
        # Non-reentrant: correct with two separate backward passes per step and frozen inputs.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    lap("model_load")
    u = job.unlearn
    forget = build_objective(u.forget.name, u.forget.params)
    retain = [build_objective(r.name, r.params) for r in u.retain]
    ctx = ObjectiveContext()
    if any(o.needs_reference for o in [forget, *retain]):
        ref = copy.deepcopy(model).eval()  # π_ref: the frozen model before unlearning
        for p in ref.parameters():
            p.requires_grad_(False)
        if job.train.precision == "bf16":
            ref.to(torch.bfloat16)  # frozen, only ever run forward under bf16 autocast
        ctx.reference_model = ref
    model.train()
    if job.model.lora is not None:  # after the reference copy: π_ref is the plain base model
        from raysweep.models.lora import apply_lora

        model = apply_lora(model, job.model.lora)
    from raysweep.models.lora import restrict_trainable

    restrict_trainable(model, forget.trainable_filter(model))  # before any DDP wrapper's hooks
    lap("reference_copy")
    wrapped = model_wrapper(model) if model_wrapper else model
    if ctx.reference_model is not None and job.train.strategy != "fsdp":  # FSDP shards it onto the device
        ctx.reference_model.to(next(model.parameters()).device)
    lap("model_wrap")
    engine = UnlearningEngine(
        wrapped, forget, retain, build_synthesis(u.method.name, u.method.params), ctx,
        lr=u.lr, optimizer=u.optimizer, weight_decay=u.weight_decay, max_grad_norm=u.max_grad_norm,
        total_steps=u.steps, schedule=u.schedule, warmup_steps=u.warmup_steps,
        geffect_every=job.eval.geffect_every, geffect_block_groups=job.eval.geffect_block_groups,
        precision=job.train.precision, **(engine_kwargs or {}),
    )
    collator = QACollator.for_job(job, tokenizer, refusals=data.refusals, seed=u.seed)
    sampler = PairedSampler(len(data.forget), len(data.retain), u.batch_size, seed=u.seed)
    evaluator = Evaluator(job, data, tokenizer, collator, prepared.retain_reference)
    during = None
    if job.eval.every:
        dj = during_job(job)
        during = Evaluator(dj, data, tokenizer, collator, prepared.retain_reference,
                           benchmarks=dj.eval.benchmarks or None)
    lap("engine_and_evaluator")
    return TrialParts(job, data, prepared, tokenizer, collator, sampler, model, engine, forget.needs_idk, evaluator,
                      timings, during)


def micro_batches(parts: TrialParts, step: int, rank: int = 0, world_size: int = 1):
    """This rank's micro-batches for global step ``step``, and a retain probe batch for AutoLR."""
    accum = parts.job.unlearn.grad_accum
    f_pairs = parts.sampler.batch(step, "forget", rank, world_size)
    r_pairs = parts.sampler.batch(step, "retain", rank, world_size)
    if len(f_pairs) % accum:
        raise ValueError(f"unlearn.grad_accum: {accum} does not divide the per-rank batch {len(f_pairs)}")
    m = len(f_pairs) // accum
    out = []
    for a in range(accum):
        fp, rp = f_pairs[a * m:(a + 1) * m], r_pairs[a * m:(a + 1) * m]
        fb = parts.collator([parts.data.forget[i] for _, i in fp], [i for _, i in fp],
                            with_idk=parts.forget_needs_idk, epoch=fp[0][0])
        rb = parts.collator([parts.data.retain[i] for _, i in rp], [i for _, i in rp])
        out.append((fb, rb))
    if not getattr(parts.engine.synthesis, "autolr", False):
        return out, None
    # AutoLR probes on the next step's retain rows: a fresh batch, identical after a resume.
    probe_pairs = parts.sampler.batch(step + 1, "retain", rank, world_size)
    probe = parts.collator([parts.data.retain[i] for _, i in probe_pairs], [i for _, i in probe_pairs])
    return out, probe
