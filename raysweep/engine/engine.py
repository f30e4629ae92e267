"""One optimizer step of unlearning (spec 3.1), data-parallel ready (spec 3.2).

``task gradients`` (one backward per task per micro-batch, accumulated into separate fp32
buffers) -> ``reduce_task_grads`` (each task reduced on its own; identity on one process)
-> ``synthesis`` -> clip the synthesised ``g`` -> optimizer step (with AutoLR for NGDiff).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable, Optional, Sequence

import torch

from raysweep.objectives import Objective, ObjectiveContext
from raysweep.rng import rng_preserved
from raysweep.synthesis import SynthContext, Synthesis, step_diagnostics
from raysweep.synthesis.primitives import GradList, ReduceSum, identity_reduce, norm2

ReduceTaskGrads = Callable[[list[GradList]], list[GradList]]

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_INIT_SCALE = 2.0 ** 16
FP16_GROWTH_INTERVAL = 2000  # torch.amp.GradScaler's defaults


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def lr_at(step: int, base_lr: float, total: int, schedule: str, warmup: int) -> float:
    """Learning rate as a pure function of the step (nothing to checkpoint).

    Exactly Hugging Face's ``get_linear_schedule_with_warmup`` ("linear") and
    ``get_constant_schedule_with_warmup`` ("constant"), the reference trainers' schedules
    (spec 2.1, 4.3): ``step / warmup`` during warm-up, so step 0 runs at lr 0, then
    ``(total - step) / (total - warmup)`` or 1. Written in HF's operation order, so the
    rates are bit-identical.
    """
    if step < warmup:
        return base_lr * (float(step) / float(max(1, warmup)))
    if schedule == "linear":
        return base_lr * max(0.0, float(total - step) / float(max(1, total - warmup)))
    return base_lr


class UnlearningEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        forget: Objective,
        retain: Sequence[Objective],
        synthesis: Synthesis,
        ctx: ObjectiveContext,
        *,
        lr: float,
        optimizer: str = "adamw",
        weight_decay: float = 0.0,
        max_grad_norm: Optional[float] = None,
        total_steps: int = 1,
        schedule: str = "constant",
        warmup_steps: int = 0,
        reduce_task_grads: Optional[ReduceTaskGrads] = None,
        reduce_sum: ReduceSum = identity_reduce,
        sum_across_ranks: Callable[[torch.Tensor], torch.Tensor] = identity_reduce,
        world_size: int = 1,
        no_sync: Optional[Callable[[], Any]] = None,
        geffect_every: int = 0,
        geffect_block_groups: int = 3,
        reduce_after_synthesis: bool = False,
        precision: str = "fp32",
        grad_to_local: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        grad_from_local: Optional[Callable[[torch.nn.Parameter, torch.Tensor], torch.Tensor]] = None,
        params_written: Optional[Callable[[], None]] = None,
    ):
        """``reduce_after_synthesis=True`` is the *wrong* order (synthesise per rank, then average),
        kept only so a test can show that it breaks equivalence for non-linear methods.

        ``precision``: "bf16"/"fp16" run forward (and so backward) under autocast while the
        parameters, the optimizer state, the task buffers and every synthesis scalar stay fp32
        (spec 3.2 rule 5). "fp16" adds a dynamic loss scale, unscaled before synthesis.
        ``grad_to_local``/``grad_from_local``: a sharded gradient's local shard and back (FSDP2).
        ``params_written``: called after parameters are written outside a training step (AutoLR's
        probes), so a sharded model drops gathered copies that would be stale (FSDP2 reshard).
        """
        self.model = model
        self.forget, self.retain = forget, list(retain)
        self.forget_pools_with_retain = bool(self.retain) and forget.pools_with(self.retain[0])
        self.synthesis = synthesis
        self.ctx = ctx
        self.base_lr, self.total_steps = lr, total_steps
        self.schedule, self.warmup_steps = schedule, warmup_steps
        self.max_grad_norm = max_grad_norm
        self.reduce_task_grads = reduce_task_grads or (lambda grads: grads)
        self.reduce_sum = reduce_sum
        self.sum_across_ranks = sum_across_ranks
        self.world_size = world_size
        # DDP's no_sync when the model is wrapped: both task backwards stay local (spec 3.2 rule 2a).
        self.no_sync = no_sync or getattr(model, "no_sync", None) or nullcontext
        self.reduce_after_synthesis = reduce_after_synthesis
        self.step_count = 0
        self.geffect_every = geffect_every
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"train.precision: {precision!r} is not allowed ({', '.join(AUTOCAST_DTYPES)})")
        self.precision = precision
        self.loss_scale = FP16_INIT_SCALE if precision == "fp16" else 1.0
        self._good_steps = 0
        self.grad_to_local = grad_to_local or (lambda g: g)
        self.grad_from_local = grad_from_local or (lambda p, t: t.to(p.dtype))
        self.params_written = params_written or (lambda: None)

        from raysweep.models.lora import restrict_trainable

        restrict_trainable(model, forget.trainable_filter(model))  # RMU's layers, LoRA-aware
        inner = getattr(model, "module", model)
        self.param_names = [n for n, p in inner.named_parameters() if p.requires_grad]
        self.params = [p for p in inner.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters (check the objective's layer setting)")
        self.device = self.params[0].device
        if precision != "fp32" and any(p.dtype != torch.float32 for p in self.params):
            raise ValueError(f"train.precision: {precision!r} needs fp32 master weights (set model.dtype: float32)")
        if geffect_every:
            from raysweep.evaluation.geffect import layer_groups

            n_layers = getattr(getattr(inner, "config", None), "num_hidden_layers", 1)
            self.geffect_groups = layer_groups(self.param_names, n_layers, geffect_block_groups)
        if optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unlearn.optimizer: '{optimizer}' is not allowed (adamw, sgd)")

    # ---- gradients ----------------------------------------------------------------------------
    def _backward_into(self, loss: torch.Tensor, buf: Optional[GradList], scale: float) -> GradList:
        (loss * (scale * self.loss_scale)).backward()
        out: GradList = []
        for k, p in enumerate(self.params):
            g = None if p.grad is None else self.grad_to_local(p.grad)
            p.grad = None
            if g is not None and g.dtype != torch.float32:
                g = g.float()  # fp32 buffers (spec 3.2 rule 5)
            prev = None if buf is None else buf[k]
            out.append(g if prev is None else (prev if g is None else prev.add_(g)))
        return out

    def accumulated_gradient(
        self, objective: Objective, batches: Sequence[dict], pooled_units: float = 0.0
    ) -> tuple[GradList, float]:
        """One task's gradient, accumulated over micro-batches (mean), unreduced; and its mean loss.
        ``pooled_units``: this rank's units of another task that shares this task's mean (spec 2.6)."""
        buf: Optional[GradList] = None
        total = 0.0
        scale = 1.0 / len(batches)
        # Pooled means use the *global* number of units of this step, so the reduced gradient is
        # the gradient of the one big batch, however tokens fall across ranks and micro-batches.
        units = torch.tensor([float(sum(objective.units(b) for b in batches) + pooled_units)])
        global_units = float(self.sum_across_ranks(units)[0])
        self.ctx.denominator = max(global_units, 1.0) / (self.world_size * len(batches))
        try:
            with self.no_sync():  # no DDP all-reduce inside backward: each task is reduced on its own
                for batch in batches:
                    batch = to_device(batch, self.device)
                    with self.autocast():
                        loss = objective(self.model, batch, self.ctx)
                    total += float(loss.detach().float()) * scale
                    buf = self._backward_into(loss, buf, scale)
        finally:
            self.ctx.denominator = None
        if self.loss_scale != 1.0 and buf is not None:  # unscale before synthesis (spec 3.2 rule 5)
            buf = [None if t is None else t.div_(self.loss_scale) for t in buf]
        return buf, total

    def autocast(self):
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _fp16_overflowed(self, grads: list[GradList]) -> bool:
        """Dynamic loss scaling: halve and skip the step on inf/nan, grow after a run of good steps.
        The flag is all-reduced so every rank skips together."""
        if self.precision != "fp16":
            return False
        bad = torch.zeros(1)
        for task in grads:
            for t in task:
                if t is not None and not bool(torch.isfinite(t).all()):
                    bad += 1
        if float(self.sum_across_ranks(bad)[0]) > 0:
            self.loss_scale /= 2.0
            self._good_steps = 0
            return True
        self._good_steps += 1
        if self._good_steps % FP16_GROWTH_INTERVAL == 0:
            self.loss_scale *= 2.0
        return False

    def task_gradients(self, micro_batches: Sequence[tuple[dict, dict]]) -> tuple[list[GradList], dict]:
        """Accumulated, *unreduced* ``[ĝ_F, g_R1, ...]`` over the micro-batches and mean losses."""
        forget_batches = [fb for fb, _ in micro_batches]
        retain_batches = [rb for _, rb in micro_batches]
        grads, metrics = [], {}
        losses = []
        tasks = [(self.forget, forget_batches)] + [(o, retain_batches) for o in self.retain]
        shared = [0.0] * len(tasks)
        if self.forget_pools_with_retain:  # spec 2.6: one mean over [refusals ∪ retain]
            shared[0] = sum(self.retain[0].units(b) for b in retain_batches)
            shared[1] = sum(self.forget.units(b) for b in forget_batches)
        for (obj, batches), pooled_units in zip(tasks, shared):
            g, loss = self.accumulated_gradient(obj, batches, pooled_units)
            grads.append(g)
            losses.append(loss)
        # Each rank's loss is its share of the global pooled mean; the sum is the global value.
        losses = (self.sum_across_ranks(torch.tensor(losses, dtype=torch.float64)) / self.world_size).tolist()
        metrics["loss_forget"] = losses[0]
        metrics.update({f"loss_retain_{i}": l for i, l in enumerate(losses[1:])})
        return grads, metrics

    def _geffect(self, micro_batches, update: GradList) -> dict[str, float]:
        """G-effect of the update on forget and retain data, per layer group (spec 8.1)."""
        from raysweep.evaluation.geffect import geffect
        from raysweep.objectives import build_objective

        nll = build_objective("nll")
        risk_f, _ = self.accumulated_gradient(nll, [fb for fb, _ in micro_batches])
        risk_r, _ = self.accumulated_gradient(nll, [rb for _, rb in micro_batches])
        risk_f, risk_r = self.reduce_task_grads([risk_f, risk_r])
        out = geffect(risk_f, update, self.geffect_groups, "geffect_forget", self.reduce_sum)
        out.update(geffect(risk_r, update, self.geffect_groups, "geffect_retain", self.reduce_sum))
        return out

    # ---- one optimizer step -------------------------------------------------------------------
    def step(self, micro_batches: Sequence[tuple[dict, dict]], probe_batch: Optional[dict] = None) -> dict[str, float]:
        grads, metrics = self.task_gradients(micro_batches)
        if self._fp16_overflowed(grads):
            metrics.update(skipped_overflow=1.0, loss_scale=self.loss_scale, lr=self._current_lr())
            self.step_count += 1
            return metrics
        if self.reduce_after_synthesis:
            g = self.synthesis(grads, SynthContext(reduce_sum=self.reduce_sum, step=self.step_count))
            g = self.reduce_task_grads([g])[0]
            grads = self.reduce_task_grads(grads)  # for the diagnostics only
        else:
            grads = self.reduce_task_grads(grads)
            g = self.synthesis(grads, SynthContext(reduce_sum=self.reduce_sum, step=self.step_count))
        metrics.update(step_diagnostics(grads[0], grads[1], g, self.reduce_sum))
        metrics.update(self.synthesis.last_info)
        if self.geffect_every and self.step_count % self.geffect_every == 0:
            with rng_preserved():  # its train-mode passes draw dropout masks: the next step's stay as they were
                metrics.update(self._geffect(micro_batches, g))

        if self.max_grad_norm is not None:
            total = float(norm2(g, self.reduce_sum).sqrt())
            coef = self.max_grad_norm / (total + 1e-6)
            if coef < 1.0:
                g = [None if t is None else t * coef for t in g]
            metrics["grad_norm_before_clip"] = total
        for p, t in zip(self.params, g):
            p.grad = None if t is None else self.grad_from_local(p, t)

        lr = self._current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self._autolr_due() and probe_batch is not None:
            lr, info = self._autolr(to_device(probe_batch, self.device))
            metrics.update(info)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["lr"] = lr
        self.step_count += 1
        if not all(math.isfinite(v) for v in (metrics["loss_forget"], metrics["norm_update"])):
            metrics["diverged"] = 1.0
        return metrics

    def _current_lr(self) -> float:
        auto = getattr(self.synthesis, "autolr_lr", None)
        if getattr(self.synthesis, "autolr", False) and auto is not None:
            # AutoLR adapts the base rate (its horizon scale replaces the decay); warm-up still ramps it.
            return auto * self._warmup_factor()
        return lr_at(self.step_count, self.base_lr, self.total_steps, self.schedule, self.warmup_steps)

    def _warmup_factor(self) -> float:
        """The warm-up's share of the rate at this step: ``step / warmup``, then 1."""
        return lr_at(self.step_count, 1.0, self.total_steps, "constant", self.warmup_steps)

    def _autolr_due(self) -> bool:
        s = self.synthesis
        return bool(getattr(s, "autolr", False)) and self.step_count % s.autolr_interval == 0

    def _autolr(self, probe_batch: dict) -> tuple[float, dict]:
        from raysweep.engine.autolr import autolr_step
        from raysweep.horizons import horizon_scale

        probe_obj = self.retain[0]
        # The probe loss is the global batch's pooled mean (as for the task losses), so W ranks
        # see the same loss as one process with the whole probe batch.
        units = torch.tensor([float(probe_obj.units(probe_batch))])
        denominator = max(float(self.sum_across_ranks(units)[0]), 1.0) / self.world_size

        def probe() -> float:
            self.params_written()
            self.ctx.denominator = denominator
            try:
                with torch.no_grad(), self.autocast():
                    loss = probe_obj(self.model, probe_batch, self.ctx).detach().reshape(1).float()
            finally:
                self.ctx.denominator = None
            return float(self.sum_across_ranks(loss)[0]) / self.world_size  # same η on every rank

        horizon = horizon_scale(self.synthesis.autolr_horizon, self.step_count, self.total_steps)
        lr, info = autolr_step(self.params, self.optimizer, probe, horizon)
        self.params_written()
        factor = self._warmup_factor()
        if factor > 0:  # the fit chose this step's rate; the base is what the warm-up scales down to it
            self.synthesis.autolr_lr = lr / factor
        return lr, info

    # ---- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "optimizer": self.optimizer.state_dict(),
            "synthesis": self.synthesis.state_dict(),
            "loss_scale": self.loss_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.synthesis.load_state_dict(state["synthesis"])
        self.loss_scale = float(state.get("loss_scale", self.loss_scale))
