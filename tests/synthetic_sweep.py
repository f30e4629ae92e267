"""A finished sweep of N synthetic trials written straight into an MLflow SQL store (sqlite or
PostgreSQL): what ``benchmarks/tracking_queries.py`` and tests/sweep/test_tracking_scale.py read.

Each child run carries what a real trial with ``eval.every`` leaves (raysweep/sweep/trial.py,
mlflow_log.py): the layout tags (parent, trial id, sweep, method, forget, node, model, config,
objective directions, final step, checkpoint URIs per evaluated step), the flat params, per-step
``train/*`` metrics, ``eval/*`` at every ``every`` steps with ``eval/feasible``, and ``final/*``
and ``objective/*`` at the last step. Rows go in with bulk inserts (SQLAlchemy core): 5,000 trials
in seconds instead of the ~10 requests each a real trial makes.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

OBJECTIVES = {"forget_answer_loss": "max", "retain_answer_loss": "min"}
METHODS = ("graddiff", "npo", "simnpo", "sago")


def parent_run(store_uri: str, sweep: str, experiment: str = "raysweep/synthetic") -> tuple[str, str]:
    """The sweep's parent run, as the driver creates it; (experiment id, parent run id)."""
    from raysweep.sweep import tracking

    c = tracking.client(store_uri)
    exp = c.get_experiment_by_name(experiment)
    # its artifacts (the parent's files, the points snapshot) beside a sqlite store, not in the cwd
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment, artifact_location=_artifact_root(store_uri))
    parent = c.create_run(exp_id, run_name=sweep, tags={
        tracking.SWEEP_TAG: sweep, tracking.ROLE_TAG: "parent", "raysweep.objectives": json.dumps(OBJECTIVES),
        "raysweep.reference_point": "", "raysweep.constrained": "False", **tracking.objective_tags(OBJECTIVES)})
    c.set_terminated(parent.info.run_id)
    return exp_id, parent.info.run_id


def _artifact_root(store_uri: str) -> str:
    import tempfile
    from pathlib import Path

    if store_uri.startswith("sqlite:///"):
        return (Path(store_uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return Path(tempfile.mkdtemp(prefix="synthetic-artifacts-")).as_uri()


def write_trials(store_uri: str, exp_id: str, parent_id: str, sweep: str, n: int, steps: int = 20, every: int = 5,
                 seed: int = 0, chunk: int = 500) -> None:
    """``n`` FINISHED child runs of ``parent_id``, inserted in chunks of ``chunk`` runs."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    rng = np.random.default_rng(seed)
    engine = sa.create_engine(store_uri)
    now = int(time.time() * 1000)
    try:
        for start in range(0, n, chunk):
            runs, tags, params, metrics, latest = [], [], [], [], []
            for i in range(start, min(n, start + chunk)):
                run_id, trial = uuid.uuid4().hex, f"syn_{i:05d}"
                method = METHODS[i % len(METHODS)]
                alpha, lr = float(rng.uniform(0.1, 2)), float(10 ** rng.uniform(-6, -4))
                t0 = now - (n - i) * 60_000
                runs.append({"run_uuid": run_id, "name": f"{method}-npo-trial-{trial}", "source_type": "LOCAL",
                             "source_name": "", "entry_point_name": "", "user_id": "bench", "status": "FINISHED",
                             "start_time": t0, "end_time": t0 + 50_000, "source_version": "",
                             "lifecycle_stage": "active", "artifact_uri": f"/tmp/synthetic/{run_id}/artifacts",
                             "experiment_id": int(exp_id)})
                evals = list(range(every, steps + 1, every))
                checkpoints = {f"raysweep.checkpoint.step.{s}": f"runs:/{run_id}/checkpoints/step_{s:06d}" for s in evals}
                run_tags = {"mlflow.parentRunId": parent_id, "raysweep.trial_id": trial, "raysweep.sweep": sweep,
                            "mlflow.runName": f"{method}-npo-trial-{trial}", "raysweep.method": method,
                            "raysweep.forget": "npo", "raysweep.node": "node-1", "raysweep.model": "tiny-llama",
                            "raysweep.config": json.dumps({"method": method, f"method.{method}.alpha": alpha,
                                                           "unlearn.lr": lr}, sort_keys=True),
                            "raysweep.final_step": str(steps), "raysweep.checkpoint_uri": checkpoints[
                                f"raysweep.checkpoint.step.{steps}"] if steps in evals else "",
                            **checkpoints, **{f"raysweep.objective.{k}": v for k, v in OBJECTIVES.items()}}
                tags += [{"key": k, "value": v, "run_uuid": run_id} for k, v in run_tags.items()]
                params += [{"key": "alpha", "value": repr(alpha), "run_uuid": run_id},
                           {"key": "lr", "value": repr(lr), "run_uuid": run_id}]
                values: dict[str, list[tuple[int, float]]] = {}
                for s in range(1, steps + 1):
                    for k in ("train/loss_forget", "train/loss_retain", "train/lr"):
                        values.setdefault(k, []).append((s, float(rng.normal())))
                forget = np.cumsum(rng.uniform(0, 1, len(evals)))
                retain = forget * rng.uniform(0.2, 1.0) + rng.uniform(0, 0.5, len(evals))
                for s, f, r in zip(evals, forget, retain):
                    values.setdefault("eval/forget_answer_loss", []).append((s, float(f)))
                    values.setdefault("eval/retain_answer_loss", []).append((s, float(r)))
                    values.setdefault("eval/feasible", []).append((s, 1.0))
                for k, v in (("forget_answer_loss", forget[-1]), ("retain_answer_loss", retain[-1])):
                    values[f"final/{k}"] = [(steps, float(v))]
                    values[f"objective/{k}"] = [(steps, float(v))]
                for k, points in values.items():
                    metrics += [{"key": k, "value": v, "timestamp": t0 + s, "step": s, "is_nan": False,
                                 "run_uuid": run_id} for s, v in points]
                    s, v = points[-1]
                    latest.append({"key": k, "value": v, "timestamp": t0 + s, "step": s, "is_nan": False,
                                   "run_uuid": run_id})
            with engine.begin() as conn:
                for table, rows in ((SqlRun, runs), (SqlTag, tags), (SqlParam, params), (SqlMetric, metrics),
                                    (SqlLatestMetric, latest)):
                    conn.execute(sa.insert(table.__table__), rows)
    finally:
        engine.dispose()


def synthetic_sweep(store_uri: str, sweep: str, n: int, **kw) -> tuple[str, str]:
    exp_id, parent_id = parent_run(store_uri, sweep)
    write_trials(store_uri, exp_id, parent_id, sweep, n, **kw)
    return exp_id, parent_id
