"""``raysweep densify SWEEP``: a denser front for evaluations alone (issue 26, part 2).

Every front point has a checkpoint and the sweep knows its target, so each point of the segment
``theta(l) = theta_target + l * (theta_point - theta_target)`` costs one evaluation and no
training. For each chosen front point (``--points K``: the K with the largest hypervolume
contribution; ``--point TRIAL[@STEP]``: named ones) and each ``l`` of ``--lambdas``, the
interpolated model is evaluated with the sweep's own final evaluation (the trial's job: benchmarks,
questions, constraint) and logged as a point of the sweep: one FINISHED child run per interpolated
point, tags ``raysweep.kind=interpolated``, ``raysweep.parents`` (JSON, ``target`` or a point's
``TRIAL[@STEP]``), ``raysweep.lambda``, ``raysweep.trial_id`` ``i-<parent>-l<lambda>``, the
``objective/*`` metrics and ``raysweep.checkpoint_uri``. Its checkpoint is weights-only, written
where the sweep's checkpoints go (an artifact of its own run, or inside the sweep's signed
storage), so ``raysweep export`` takes it like any trial's. ``--neighbours`` also interpolates
between neighbouring front points (along the first objective) that share the target.

* LoRA: the segment target -> point is the adapters with ``lora_B`` scaled by ``l`` (the merged
  weight is then exactly ``W + l * delta``); the checkpoint stays adapter-sized. Two LoRA points'
  segment is not an adapter of the same rank, so ``--neighbours`` skips LoRA pairs.
* FSDP: a sharded checkpoint carries the consolidated weights rank 0 wrote (``model.safetensors``,
  :func:`raysweep.distributed.fsdp.save_sharded`); those are read, never the shards.

Hypervolume gain is measured against the reference point of the front before densifying (a
stated one, or the nadir of the trials: interpolated points never move the nadir,
:func:`raysweep.sweep.report.pareto_report`).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from raysweep.sweep import tracking
from raysweep.validation import InputError

KIND_TAG, PARENTS_TAG, LAMBDA_TAG = "raysweep.kind", "raysweep.parents", "raysweep.lambda"
INTERPOLATED = "interpolated"
TARGET = "target"
DEFAULT_LAMBDAS = (0.25, 0.5, 0.75)


def parse_lambdas(values: Optional[list[str]]) -> list[float]:
    """``--lambdas``: distinct numbers strictly between 0 (the target) and 1 (the point itself)."""
    if not values:
        return list(DEFAULT_LAMBDAS)
    out = []
    for v in values:
        try:
            lam = float(v)
        except ValueError:
            lam = float("nan")
        if not (0.0 < lam < 1.0) or lam in out:
            why = "given twice" if lam in out else "not a number strictly between 0 and 1"
            raise InputError(f"--lambdas: {v!r} is not allowed ({why}; 0 is the target, 1 the point itself; "
                             "e.g. --lambdas 0.25 0.5 0.75)")
        out.append(lam)
    return sorted(out)


def parse_count(value: Optional[str]) -> Optional[int]:
    """``--points K``: a whole number >= 1 (None: every front point)."""
    if value is None:
        return None
    if not str(value).isdigit() or int(value) < 1:
        raise InputError(f"--points: {value!r} is not allowed (a whole number of front points, at least 1)")
    return int(value)


def point_id(r: dict) -> str:
    from raysweep.sweep.report import point_label

    return point_label(r)


def interpolated_id(parents: list[str], lam: float) -> str:
    """``i-3f2a_00004-l0.5``, ``i-3f2a_00004-s8-l0.25`` (a step along the run), ``i-a-b-l0.5``:
    what ``raysweep export`` takes (no ``@``, no ``/``)."""
    names = [p.replace("@", "-s") for p in parents if p != TARGET]
    return "i-" + "-".join(names) + f"-l{lam:g}"


def choose(report: dict, named: Optional[list[str]], k: Optional[int]) -> list[dict]:
    """The trials' points to densify towards: the named ones, else the front's (K with the
    largest exclusive hypervolume contribution), each with a checkpoint."""
    from raysweep.sweep.export import parse_point
    from raysweep.sweep.pareto import hypervolume_contributions

    trials = [r for r in report["trials"] if r.get("kind") != INTERPOLATED and r.get("checkpoint_uri")]
    if named:
        out = []
        for p in named:
            trial, step = parse_point(p)
            hit = [r for r in trials if r["trial_id"] == trial and (r["final"] if step is None else r["step"] == step)]
            if not hit:
                known = ", ".join(sorted(point_id(r) for r in report["front"] if r in trials)) or "none"
                raise InputError(f"--point: {p!r} is not allowed (not a trial's point with a checkpoint in sweep "
                                 f"{report['sweep']}; its front: {known})")
            out.append(hit[0])
        return out
    front = [r for r in report["front"] if r in trials]
    if k is None or k >= len(front):
        return front
    names, directions = list(report["objectives"]), list(report["objectives"].values())
    ref = [report["reference_point"][n] for n in names]
    gains = hypervolume_contributions([[r["objectives"][n] for n in names] for r in front], directions, ref)
    ranked = sorted(range(len(front)), key=lambda i: -gains[i])
    return [front[i] for i in sorted(ranked[:k])]


def neighbour_pairs(points: list[dict], objectives: dict) -> list[tuple[dict, dict]]:
    first = next(iter(objectives))
    ordered = sorted(points, key=lambda r: r["objectives"][first])
    return list(zip(ordered, ordered[1:]))


class _Models:
    """What densifying needs per trial job, built once each: the prepared target (from the cache:
    densify never trains) and the sweep's final evaluation."""

    def __init__(self, c, parent):
        self.c, self.parent = c, parent
        self._evaluators: dict = {}
        self.target_metrics = {k[len("target/"):]: v for k, v in parent.data.metrics.items() if k.startswith("target/")}

    def job(self, params: dict):
        from raysweep.sweep.export import trial_job_of

        return trial_job_of(self.c, self.parent, params)

    def prepared(self, job):
        from raysweep.models.prepare import cached_preparation

        prepared = cached_preparation(job)
        if prepared is None:
            raise InputError(f"densify: the sweep's target is not prepared in '{job.cache_dir}' (densify never "
                             "trains; allowed: run it where the sweep ran, or `raysweep prepare` the job first)")
        return prepared

    def evaluator(self, job):
        from raysweep.data.collate import QACollator
        from raysweep.evaluation.suite import Evaluator
        from raysweep.models.build import load_tokenizer
        from raysweep.models.prepare import load_job_data

        key = (job.data.model_dump_json(), job.eval.model_dump_json(), job.model.base, job.model.template)
        if key not in self._evaluators:
            prepared, data = self.prepared(job), load_job_data(job)
            tok = load_tokenizer(prepared.tokenizer)
            self._evaluators[key] = Evaluator(job, data, tok, QACollator.for_job(job, tok), prepared.retain_reference)
        return self._evaluators[key]

    def target(self, job):
        from raysweep.models.build import load_causal_lm

        return load_causal_lm(self.prepared(job).target, job.model.dtype)


def _weights(c, parent, sweep: str, r: dict, scratch: Path) -> dict:
    """A point's stored weights (a LoRA point's adapters; an FSDP point's consolidated weights),
    its checkpoint location checked as export checks it."""
    from raysweep.distributed.checkpoint import CheckpointError, load_weights
    from raysweep.sweep.export import _confine, _local_checkpoint

    run = c.get_run(r["run_id"])
    _confine(r["checkpoint_uri"], run, parent, sweep)
    try:
        return load_weights(_local_checkpoint(c, r["checkpoint_uri"], scratch / r["run_id"]))
    except CheckpointError as err:
        raise tracking.TrackingError(f"densify: {err}") from None


def blend(a: dict, b: dict, lam: float, lora: bool) -> dict:
    """``a + lam * (b - a)`` per tensor, in float32 and back to each tensor's dtype. LoRA
    (``a`` None: the target): ``lora_B`` scaled by ``lam``, ``lora_A`` kept, so the merged delta
    ``B @ A`` is scaled by exactly ``lam``."""
    import torch

    if lora:
        other = sorted(k for k in b if ".lora_A." not in k and ".lora_B." not in k)
        if other:
            raise InputError(f"densify: adapter weights {other[:2]} are not allowed (plain LoRA: lora_A, lora_B)")
        return {k: (v.float() * lam).to(v.dtype) if ".lora_B." in k else v.clone() for k, v in b.items()}
    return {k: (a[k].float() + lam * (b[k].float() - a[k].float())).to(a[k].dtype)
            if torch.is_floating_point(a[k]) else a[k].clone() for k in a}


def _fits(model, weights: dict, what: str) -> None:
    from raysweep.distributed.checkpoint import CheckpointError, check_fits

    try:
        check_fits(Path(what), model, weights)
    except CheckpointError as err:
        raise tracking.TrackingError(f"densify: {err}") from None


def _segments(report: dict, chosen: list[dict], neighbours: bool, lora: dict) -> list[tuple[Optional[dict], dict]]:
    out = [(None, r) for r in chosen]
    if neighbours:
        out += [(a, b) for a, b in neighbour_pairs(chosen, report["objectives"]) if not (lora[a["run_id"]] or lora[b["run_id"]])]
    return out


def densify(c, tracking_uri: str, sweep: str, lambdas: list[float], named: Optional[list[str]] = None,
            k: Optional[int] = None, neighbours: bool = False, log=None) -> dict:
    """Evaluate and log the interpolations; the front and hypervolume before and after."""
    import numpy as np

    from raysweep.sweep.front_marks import publish
    from raysweep.sweep.pareto import hypervolume
    from raysweep.sweep.report import pareto_report
    from raysweep.sweep.trial import retention_constraint

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    before = pareto_report(c, tracking_uri, sweep)
    parent = tracking.find_parent(c, sweep, tracking_uri)
    chosen = choose(before, named, k)
    models = _Models(c, parent)
    jobs = {r["run_id"]: models.job(r["params"]) for r in chosen}
    lora = {rid: job.model.lora is not None for rid, job in jobs.items()}
    segments = _segments(before, chosen, neighbours, lora)
    if neighbours and not any(a is not None for a, _ in segments):
        log("densify: --neighbours: no pair of neighbouring front points without LoRA to interpolate between")
    done = {r["trial_id"] for r in before["trials"] if r.get("kind") == INTERPOLATED}
    new, seconds = [], 0.0
    with tempfile.TemporaryDirectory(prefix="raysweep-densify-") as tmp:
        scratch = Path(tmp)
        for a, b in segments:
            job = jobs[b["run_id"]]
            if a is not None and models.prepared(jobs[a["run_id"]]).target != models.prepared(job).target:
                continue  # neighbours of different targets share no segment
            parents = [TARGET if a is None else point_id(a), point_id(b)]
            todo = [lam for lam in lambdas if interpolated_id(parents, lam) not in done]
            if not todo:
                continue
            model = models.target(job)
            if lora[b["run_id"]]:
                from raysweep.models.lora import apply_lora

                model = apply_lora(model, job.model.lora)
            end = _weights(c, parent, sweep, b, scratch)
            _fits(model, end, b["checkpoint_uri"])
            start = _weights(c, parent, sweep, a, scratch) if a is not None else (
                None if lora[b["run_id"]] else {k: v.detach().clone() for k, v in model.state_dict().items()})
            if start is not None:
                _fits(model, start, a["checkpoint_uri"] if a else "target")
            evaluator = models.evaluator(job)
            constraint = retention_constraint(job, models.target_metrics) if job.sweep.constraint else None
            for lam in todo:
                model.load_state_dict(blend(start, end, lam, lora[b["run_id"]]), strict=not lora[b["run_id"]])
                t0 = time.time()
                metrics = evaluator(model, progress=False)
                spent = time.time() - t0
                seconds += spent
                row = _log_point(c, parent, sweep, job, b if a is None else a, b, parents, lam, model, metrics,
                                 constraint, scratch)
                new.append({**row, "seconds": spent})
                log(f"densify: {row['trial_id']}: " + ", ".join(f"{n}={row['objectives'][n]:.4g}"
                                                               for n in before["objectives"]) + f" ({spent:.1f}s)")
    after = pareto_report(c, tracking_uri, sweep)
    publish(c, after)
    names, directions = list(before["objectives"]), list(before["objectives"].values())
    ref = [before["reference_point"][n] for n in names]
    front_after = [r for r in after["front"]]
    pts = np.array([[r["objectives"][n] for n in names] for r in front_after]) if front_after else np.zeros((0, len(names)))
    hv_after = float(hypervolume(pts, directions, ref)) if len(pts) else 0.0
    ids = {r["trial_id"] for r in new}
    return {"sweep": sweep, "objectives": before["objectives"], "reference_point": before["reference_point"],
            "lambdas": lambdas, "points": [point_id(r) for r in chosen], "evaluated": new,
            "evaluation_seconds": seconds, "hypervolume_before": before["hypervolume"], "hypervolume_after": hv_after,
            "front_before": before["front"], "front_after": after["front"],
            "new_on_front": sorted(r["trial_id"] for r in after["front"] if r["trial_id"] in ids)}


def _log_point(c, parent, sweep: str, job, like: dict, b: dict, parents: list[str], lam: float, model, metrics: dict,
               constraint, scratch: Path) -> dict:
    """One interpolated point as a FINISHED child run of the sweep, its checkpoint where the
    sweep's checkpoints go; returns its row as the report's ``trials`` hold them."""
    from raysweep.distributed.checkpoint import save_weights
    from raysweep.sweep import storage_trust

    objectives = tracking.parent_objectives(parent)
    missing = [n for n in objectives if not isinstance(metrics.get(n), (int, float)) or not math.isfinite(metrics[n])]
    if missing:
        raise tracking.TrackingError(f"densify: the evaluation gave no finite {', '.join(missing)} "
                                     f"(evaluated: {', '.join(sorted(metrics))})")
    trial_id = interpolated_id(parents, lam)
    method = like["method"] if like["method"] == b["method"] else f"{like['method']}+{b['method']}"
    run_id = tracking.get_or_create_child(
        c, parent.info.run_id, parent.info.experiment_id, trial_id, sweep, dict(b.get("flat_params", {})),
        {"raysweep.method": method, "raysweep.forget": b["forget"] or "", "raysweep.model": job.model.base,
         tracking.CONFIG_TAG: json.dumps(b["params"], sort_keys=True), KIND_TAG: INTERPOLATED,
         PARENTS_TAG: json.dumps(parents), LAMBDA_TAG: f"{lam:g}", **tracking.objective_tags(objectives)})
    extra = {"kind": INTERPOLATED, "parents": parents, "lambda": lam}
    if job.sweep.checkpoint == "artifact":
        folder = save_weights(scratch / trial_id, model, extra)
        c.log_artifacts(run_id, str(folder), "checkpoint")
        uri = f"runs:/{run_id}/checkpoint"
    else:
        storage = storage_trust.signed_storage(parent.data.tags, sweep)
        if storage is None or not Path(storage).is_dir():
            raise tracking.TrackingError(f"densify: the sweep's storage {storage or parent.data.tags.get('raysweep.storage')!r} "
                                         "is not allowed (not signed by this user's key, or not on this machine: "
                                         "interpolated checkpoints go inside it)")
        uri = str(save_weights(Path(storage) / "densify" / trial_id, model, extra))
    judged = constraint.judge(metrics) if constraint is not None else {}
    tracking.log_metrics(c, run_id, {**{f"final/{k}": v for k, v in metrics.items()},
                                     **{f"objective/{n}": metrics[n] for n in objectives}, **judged})
    c.set_tag(run_id, "raysweep.checkpoint_uri", uri)
    c.set_terminated(run_id, status="FINISHED")
    return {"trial_id": trial_id, "run_id": run_id, "parents": parents, "lambda": lam, "checkpoint_uri": uri,
            "objectives": {n: metrics[n] for n in objectives}, "feasible": bool(judged.get("feasible", 1.0))}


def format_summary(s: dict) -> str:
    from raysweep.sweep.report import point_label

    names = list(s["objectives"])

    def front(rows):
        return "; ".join(f"{point_label(r)} (" + ", ".join(f"{r['objectives'][n]:.4g}" for n in names) + ")"
                         for r in sorted(rows, key=lambda r: r["objectives"][names[0]]))

    gain = s["hypervolume_after"] - s["hypervolume_before"]
    ref = ", ".join(f"{k}={v:.4g}" for k, v in s["reference_point"].items())
    n = len(s["evaluated"])
    return "\n".join([
        f"densify {s['sweep']}: {n} interpolated points towards {', '.join(s['points']) or 'no point'} "
        f"(lambdas {', '.join(f'{x:g}' for x in s['lambdas'])}), {len(s['new_on_front'])} on the front",
        f"front before ({len(s['front_before'])}): {front(s['front_before'])}",
        f"front after  ({len(s['front_after'])}): {front(s['front_after'])}",
        f"hypervolume {s['hypervolume_before']:.6g} -> {s['hypervolume_after']:.6g} ({gain:+.6g}, "
        f"{(gain / s['hypervolume_before'] * 100 if s['hypervolume_before'] else float('nan')):+.2f}%) against ({ref})",
        f"evaluation time {s['evaluation_seconds']:.1f}s ({s['evaluation_seconds'] / n if n else 0:.2f}s per point)",
    ])
