"""``raysweep export SWEEP TRIAL[@STEP] OUT_DIR``: a trial's checkpoint (its last, or the one
evaluated at STEP along the run) as a Hugging Face model directory - safetensors weights, config,
tokenizer - loadable with ``from_pretrained``, with a model card listing the method, the
hyperparameters and the objective values recorded for that point. A LoRA trial's adapters are
merged into the base weights, so the folder loads without peft.

OUT_DIR is a user's path: the model is written beside it first and then moved in file by file,
and only files an earlier export listed in its manifest (``raysweep_export.json``) are ever
replaced or removed; a user's own files stay (``preflight.check_export_dir`` runs first)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from raysweep.sweep import tracking
from raysweep.sweep.tracking import CHECKPOINT_AT

CARD = "README.md"
EXPORT_MANIFEST = "raysweep_export.json"


def parse_point(point: str) -> tuple[str, Optional[int]]:
    """``TRIAL`` or ``TRIAL@STEP`` -> (trial, step or None); anything else is a one-line error."""
    trial, at, step = point.strip().partition("@")
    if not re.fullmatch(r"[^@\s/]+", trial):
        raise tracking.TrackingError(f"export: TRIAL[@STEP] {point!r} is not allowed (no trial id before '@'; "
                                     "TRIAL or TRIAL@STEP, e.g. 3f2a_00004@8)")
    if at and not step.isdigit():
        raise tracking.TrackingError(f"export: TRIAL[@STEP] {point!r} is not allowed (the step {step!r} is not a "
                                     "whole number; TRIAL or TRIAL@STEP, e.g. 3f2a_00004@8)")
    return trial, int(step) if at else None


def _points(run) -> dict[int, str]:
    return {int(k[len(CHECKPOINT_AT):]): v for k, v in run.data.tags.items()
            if k.startswith(CHECKPOINT_AT) and k[len(CHECKPOINT_AT):].isdigit()}


def _objectives_at(c, run, objectives: dict, step: Optional[int]) -> dict[str, float]:
    m = run.data.metrics
    final = {k: m.get(f"objective/{k}") for k in objectives}
    if step is None or (all(v is not None for v in final.values()) and step == max(_points(run) or [step])):
        return {k: v for k, v in final.items() if v is not None}
    at = {k: tracking.metric_histories(c, [run.info.run_id], f"eval/{k}")[run.info.run_id] for k in objectives}
    return {k: at[k][step] for k in objectives if step in at[k]}


def export(c, tracking_uri: str, sweep: str, point: str, out_dir: str) -> Path:
    """Write the point's model into ``out_dir`` (checked by ``preflight.check_export_dir``)."""
    trial, step = parse_point(point)
    parent = tracking.find_parent(c, sweep, tracking_uri)
    run = tracking.find_child(c, parent.info.run_id, parent.info.experiment_id, trial)
    if run is None:
        known = sorted(r.data.tags.get(tracking.TRIAL_TAG, "?") for r in tracking.child_runs(c, parent))
        raise tracking.TrackingError(f"export: trial {trial!r} is not in sweep {sweep} (trials: {', '.join(known)})")
    points = _points(run)
    if step is None:
        uri = run.data.tags.get("raysweep.checkpoint_uri") or (points[max(points)] if points else None)
    else:
        uri = points.get(step)
        if uri is None:
            raise tracking.TrackingError(f"export: trial {trial} has no checkpoint at step {step} "
                                         f"(evaluated steps with checkpoints: {', '.join(map(str, sorted(points))) or 'none'})")
    if uri is None:
        raise tracking.TrackingError(f"export: trial {trial} recorded no checkpoint (status {run.info.status})")
    _confine(uri, run, parent, sweep)

    trial_spec = trial_job_of(c, parent, tracking.trial_config(run))

    out = Path(out_dir).expanduser()
    with tempfile.TemporaryDirectory(prefix="raysweep-export-") as scratch:
        ckpt = _local_checkpoint(c, uri, Path(scratch))
        out.parent.mkdir(parents=True, exist_ok=True)
        # Staged beside OUT_DIR (same filesystem: the moves into it are renames).
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
        try:
            _write_model(trial_spec, ckpt, staging)
            objectives = tracking.parent_objectives(parent)
            meta = {"sweep": sweep, "trial": trial, "step": step, "mlflow_run_id": run.info.run_id,
                    "checkpoint": uri, "method": run.data.tags.get("raysweep.method"),
                    "forget": run.data.tags.get("raysweep.forget"), "lora": trial_spec.model.lora is not None,
                    "hyperparameters": tracking.trial_config(run), "objectives": _objectives_at(c, run, objectives, step),
                    "directions": objectives, "tracking_uri": tracking.redact(tracking_uri)}
            (staging / CARD).write_text(_card(meta))
            meta["files"] = sorted([p.name for p in staging.iterdir()] + [EXPORT_MANIFEST])
            (staging / EXPORT_MANIFEST).write_text(json.dumps(meta, indent=2))
            _move_into(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # only ever our own staging folder
    return out


def _move_into(staging: Path, out: Path) -> None:
    """Put the staged export into ``out``: a new folder is renamed into place; an existing one
    receives the files one by one, and of what it held only the files the earlier export listed
    in its manifest are replaced or removed. A user's file with the name of one of ours stops the
    export before anything in ``out`` changes."""
    if not out.exists():
        os.replace(staging, out)
        return
    ours = set(_earlier_export_files(out))
    new = {p.name for p in staging.iterdir()}
    clash = sorted(n for n in new if (out / n).exists() and n not in ours)
    if clash:
        raise tracking.TrackingError(f"export: '{out}' holds {', '.join(clash[:3])}, which an earlier export did "
                                     "not write; nothing there was changed (name a new folder)")
    for name in sorted(ours - new):
        stale = out / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    for name in sorted(new - {EXPORT_MANIFEST}) + [EXPORT_MANIFEST]:  # the manifest last: it vouches for the rest
        os.replace(staging / name, out / name)


def _earlier_export_files(out: Path) -> list[str]:
    """The plain file names an earlier export wrote into ``out`` (its manifest's list)."""
    try:
        files = json.loads((out / EXPORT_MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..")]


def trial_job_of(c, parent, params: dict):
    """The job a trial ran: the sweep's job (``job.json``) with the trial's recorded parameters."""
    from raysweep.spec import JobSpec
    from raysweep.sweep.trial import trial_job

    job_raw = Path(c.download_artifacts(parent.info.run_id, "job.json")).read_text()
    job = JobSpec.model_validate_json(job_raw)
    ctx = {"space": _space(c, parent), "space_source": str(job.sweep.search_space), "job_json": job_raw}
    return trial_job({k: _typed(v) if isinstance(v, str) else v for k, v in params.items()}, ctx)


def _space(c, parent) -> dict:
    import yaml

    return yaml.safe_load(Path(c.download_artifacts(parent.info.run_id, "search_space.yaml")).read_text())


def _typed(v: str):
    import yaml

    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def _confine(uri: str, run, parent, sweep: str) -> None:
    """A checkpoint location comes from an MLflow tag, which anyone who can write to the server
    can change: an artifact of the trial's own run, or a folder inside the sweep's storage whose
    path this user's key signed at launch (:mod:`raysweep.sweep.storage_trust`); else one line."""
    from raysweep.sweep import storage_trust

    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        if run_id != run.info.run_id or ".." in Path(path).parts:
            raise tracking.TrackingError(f"export: checkpoint {uri!r} is not allowed (an artifact of the trial's own "
                                         f"run, runs:/{run.info.run_id}/..., is expected)")
        return
    storage = storage_trust.signed_storage(parent.data.tags, sweep)
    if storage is None or not storage_trust.is_under(uri, [storage]):
        raise tracking.TrackingError(
            f"export: checkpoint '{uri}' is not allowed (not inside the sweep's storage"
            f"{' ' + repr(storage) if storage else ', whose path carries no signature of this user'}: "
            "the trial's checkpoint tag may have been changed)")


def _local_checkpoint(c, uri: str, scratch: Path) -> Path:
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        return Path(c.download_artifacts(run_id, path, str(scratch)))
    path = Path(uri)
    if not path.is_dir():
        raise tracking.TrackingError(f"export: checkpoint {uri} does not exist on this machine (storage path)")
    return path


def _write_model(job, checkpoint: Path, out: Path) -> None:
    """The prepared target's config and tokenizer with the checkpoint's weights (a LoRA
    checkpoint's adapters applied to the target and merged), saved into the folder ``out``."""
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import prepare

    prepared = prepare(job, quiet=True)
    model = point_model(job, checkpoint, load_causal_lm(prepared.target, job.model.dtype))
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(prepared.tokenizer).save_pretrained(out)


def point_model(job, checkpoint: Path, base):
    """``base`` (the target's architecture; for a LoRA trial the target itself, whose weights the
    adapters go on) with the checkpoint's weights, checked as resuming checks them; LoRA merged."""
    from raysweep.distributed.checkpoint import CheckpointError, check_fits, load_weights
    from raysweep.models.lora import apply_lora, is_peft

    model = apply_lora(base, job.model.lora) if job.model.lora is not None else base
    try:  # the same checks as resuming from it: verified, and exactly this model's names and shapes
        weights = load_weights(checkpoint)
        check_fits(checkpoint, model, weights)
    except CheckpointError as err:
        raise tracking.TrackingError(f"export: {err}") from None
    model.load_state_dict(weights, strict=not is_peft(model))  # LoRA: the adapters; the base is the target's
    return model.merge_and_unload() if is_peft(model) else model


def _card(meta: dict) -> str:
    where = f"step {meta['step']}" if meta["step"] is not None else "its last checkpoint"
    objectives = "\n".join(f"| {k} | {v:.6g} | {meta['directions'].get(k, '')} |" for k, v in meta["objectives"].items())
    params = "\n".join(f"| {k} | {v} |" for k, v in sorted(meta["hyperparameters"].items()))
    return f"""---
library_name: transformers
tags: [unlearning, raysweep]
---
# {meta['sweep']} / trial {meta['trial']} ({where})

Unlearned with raysweep: synthesis method **{meta['method']}**, forget objective **{meta['forget']}**.
Exported from MLflow run `{meta['mlflow_run_id']}` (checkpoint `{meta['checkpoint']}`).

## Objectives recorded for this point

| objective | value | direction |
|---|---|---|
{objectives}

## Hyperparameters

| name | value |
|---|---|
{params}

Load with `AutoModelForCausalLM.from_pretrained(<this folder>)`.
"""
