"""``raysweep pareto``: the front from MLflow alone (no Ray needed), a table, JSON, and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from raysweep.reporting.constraint import recorded_feasible
from raysweep.sweep import tracking
from raysweep.sweep.points import rows_by_run, usable
from raysweep.sweep.tracking import checkpoint_tag
from raysweep.sweep.pareto import hypervolume, nadir, non_dominated


def collect(c, parent, listing: Optional[dict] = None, cached: bool = True) -> tuple[list[dict], dict[str, str]]:
    """Every candidate point of the sweep: one row per evaluated (trial, step) of each finished
    trial (``eval.every``), or one per trial when it was evaluated only at its end. A trial the
    scheduler stopped contributes the points it reached. The last point of a trial is its final
    evaluation (``objective/*``). Rows come grouped by run, in MLflow's listing order (latest
    start first).

    With the parent's snapshot of these rows (``cached``; sweep/points.py), only the runs
    that could differ from it are listed: ended since it was taken, RUNNING, or deleted; the
    rows are the same as the full listing's. ``listing`` receives what a new snapshot needs."""
    objectives = tracking.parent_objectives(parent)
    constrained = tracking.parent_constrained(parent)
    seen = parent.data.tags.get(tracking.POINTS_TAG, "")
    snapshot = tracking.read_points(c, parent) if cached and seen else None
    taken = tracking.now_ms()  # before listing: a run that ends during it is listed again next time
    deleted = tracking.deleted_child_ids(c, parent)
    by_run: dict[str, list[dict]] = {}
    if not usable(snapshot, objectives, constrained, deleted):
        runs = tracking.child_runs(c, parent)
    else:
        runs = tracking.changed_child_runs(c, parent, snapshot["taken"])
        by_run = rows_by_run(snapshot, skip={r.info.run_id for r in runs} | deleted)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    # The trajectories of every trial evaluated along its run, in bulk (not per run: issue 28).
    along = [r.info.run_id for r in finished if all(f"eval/{k}" in r.data.metrics for k in objectives)]
    history = {k: tracking.metric_histories(c, along, f"eval/{k}") for k in [*objectives, "feasible"]} if along else {}
    for r in finished:
        by_run[r.info.run_id] = _run_rows(r, history, objectives, constrained)
    if listing is not None:
        listing.update(seen=seen, taken=taken, deleted=sorted(deleted))
    order = sorted((rows for rows in by_run.values() if rows), key=lambda rows: (-(rows[0]["start_time"] or 0),
                                                                               rows[0]["run_id"]))
    return [row for rows in order for row in rows], objectives


def _run_rows(r, history: dict, objectives: dict, constrained: bool) -> list[dict]:
    """The candidate points of one finished child run (:func:`collect`)."""
    m, tags = r.data.metrics, r.data.tags
    base = {
        "trial_id": tags.get(tracking.TRIAL_TAG), "run_id": r.info.run_id, "method": tags.get("raysweep.method"),
        "forget": tags.get("raysweep.forget"), "stopped_by": tags.get("raysweep.stopped_by"),
        "start_time": r.info.start_time, "end_time": r.info.end_time, "run_name": r.info.run_name, **split_params(r),
        # raysweep densify's points: weights between the target and a front point, evaluated alone
        "kind": tags.get("raysweep.kind", "trial"), "parents": json.loads(tags.get("raysweep.parents", "[]")),
        "lambda": float(tags["raysweep.lambda"]) if "raysweep.lambda" in tags else None,
        # the front marks it carries now (sweep/front_marks.py rewrites only the changed ones)
        "marks": {k: v for k, v in tags.items() if k.startswith((tracking.PARETO_TAG, tracking.OBJECTIVE_TAG)) or k == "mlflow.runColor"},
        # the logged models of its front points so far (sweep/front_models.py: no request per run)
        "models": {k: v for k, v in tags.items() if k.startswith(tracking.MODEL_AT)},
    }
    rows = []
    final = [m.get(f"objective/{k}") for k in objectives]
    final_step = None
    if all(f"eval/{k}" in m for k in objectives):
        points, feasible = _trajectory(history, r.info.run_id, objectives)
        final_step = max(points) if all(v is not None for v in final) and points else None
        for step in sorted(points):
            if step == final_step:
                continue  # the final evaluation below stands for it
            rows.append({**base, "step": step, "final": False, "objectives": points[step],
                         "feasible": recorded_feasible(feasible.get(step), constrained),
                         "checkpoint_uri": tags.get(checkpoint_tag(step))})
    if any(v is None for v in final):
        return rows
    rows.append({**base, "step": final_step if final_step is not None else _final_step(m, tags),
                 "final": True, "objectives": dict(zip(objectives, final)),
                 "feasible": recorded_feasible(m.get("feasible"), constrained),
                 "checkpoint_uri": tags.get("raysweep.checkpoint_uri")})
    return rows


def split_params(run) -> dict:
    """A child run's searched parameters (``method.sago.alpha``, ``unlearn.lr``: its
    ``raysweep.config``) apart from the flat cross-method names it logs as params (``alpha``, ``lr``)."""
    from raysweep.sweep.space import is_space_key

    return {"params": tracking.trial_config(run),
            "flat_params": {k: v for k, v in run.data.params.items() if not is_space_key(k)}}


def _trajectory(history: dict, run_id: str, objectives: dict) -> tuple[dict[int, dict], dict[int, float]]:
    """``eval/<objective>`` by step (steps where every objective was evaluated) and the recorded
    ``eval/feasible`` by step, from :func:`tracking.metric_histories` of each (``history``)."""
    hist = {k: history[k].get(run_id, {}) for k in objectives}
    steps = set.intersection(*(set(h) for h in hist.values())) if hist else set()
    return {s: {k: hist[k][s] for k in objectives} for s in steps}, history["feasible"].get(run_id, {})


def _final_step(m: dict, tags: dict):
    """The step of a trial's final evaluation (runs of older versions logged it as a metric)."""
    v = tags.get("raysweep.final_step", m.get("train/step", m.get("step")))
    return int(float(v)) if v is not None else None


def per_trial_fronts(rows: list[dict], objectives: dict[str, str]) -> dict[str, list[dict]]:
    """Each trial's own best trade-offs: the non-dominated points among its feasible steps (all of
    its points when none is feasible)."""
    names, directions = list(objectives), list(objectives.values())
    by_trial: dict[str, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    out = {}
    for trial, points in by_trial.items():
        pool = [r for r in points if r["feasible"]] or points
        mask = non_dominated(np.array([[r["objectives"][k] for k in names] for r in pool]), directions)
        out[trial] = sorted((r for r, keep in zip(pool, mask) if keep), key=lambda r: (r["step"] is None, r["step"]))
    return out


def _front_mask(rows: list[dict], objectives: dict[str, str]) -> np.ndarray:
    """Non-dominated among the feasible rows (infeasible ones are never on the front)."""
    names = list(objectives)
    mask = np.zeros(len(rows), dtype=bool)
    idx = [i for i, r in enumerate(rows) if r["feasible"]]
    if idx:
        pts = np.array([[rows[i]["objectives"][k] for k in names] for i in idx])
        mask[idx] = non_dominated(pts, list(objectives.values()))
    return mask


def _front_hv(rows: list[dict], objectives: dict[str, str], ref_point) -> float:
    front = [r for r, keep in zip(rows, _front_mask(rows, objectives)) if keep]
    if not front:
        return 0.0
    pts = np.array([[r["objectives"][k] for k in objectives] for r in front])
    return float(hypervolume(pts, list(objectives.values()), ref_point))


def assign_ranks(rows: list[dict], objectives: dict[str, str]) -> None:
    """``rank`` of each row: its non-domination rank (0 = the front); infeasible rows rank after
    every feasible one (dominated by all of them, as MO-ASHA treats them), ranked among themselves."""
    from raysweep.sweep.pareto import nondominated_ranks

    names, directions = list(objectives), list(objectives.values())
    offset = 0
    for group in ([r for r in rows if r["feasible"]], [r for r in rows if not r["feasible"]]):
        if not group:
            continue
        ranks = nondominated_ranks(np.array([[r["objectives"][k] for k in names] for r in group]), directions)
        for r, rank in zip(group, ranks):
            r["rank"] = offset + int(rank)
        offset += int(ranks.max()) + 1


def per_method_fronts(rows: list[dict], objectives: dict[str, str], ref_point) -> dict[str, dict]:
    """Each method's own front (its feasible non-dominated points) and hypervolume, against the
    sweep's reference point so the methods compare."""
    out = {}
    for method in sorted({r["method"] or "?" for r in rows}):
        mine = [r for r in rows if (r["method"] or "?") == method]
        front = [r for r, keep in zip(mine, _front_mask(mine, objectives)) if keep]
        out[method] = {"front": front, "hypervolume": _front_hv(mine, objectives, ref_point),
                       "n_trials": len({r["run_id"] for r in mine}), "n_points": len(mine)}
    return out


def _trial_order(rows: list[dict]) -> list[tuple[str, tuple]]:
    """(run id, (end time, trial id)) of each finished trial, in the order they finished."""
    return sorted({r["run_id"]: (r.get("end_time") or 0, r["trial_id"] or "") for r in rows}.items(),
                  key=lambda kv: kv[1])


def hypervolume_history(rows: list[dict], objectives: dict[str, str], ref_point) -> list[dict]:
    """Hypervolume of the front of the first k finished trials (by end time), k = 1..n, and the
    unlearning steps those trials spent: how the search progressed, against the final reference point. The front of k trials is the front of
    (the front of k - 1 trials + trial k's points): one small front per step, not all k trials'
    points again (quadratic at 5,000 trials, issue 28)."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    out, front, steps, hv = [], [], 0, 0.0
    for k, (run_id, (_, trial)) in enumerate(_trial_order(rows), start=1):
        pool = front + by_run[run_id]
        keep = _front_mask(pool, objectives)
        # A trial none of whose points joins the front leaves it, and its hypervolume, as they were
        # (a point that drops an old front point is itself on the front): most trials of a large sweep.
        if keep[len(front):].any():
            front = [r for r, on in zip(pool, keep) if on]
            hv = float(hypervolume(np.array([[r["objectives"][n] for n in objectives] for r in front]),
                                   list(objectives.values()), ref_point))
        # the anytime curve's cost (issue 26): unlearning steps the finished trials trained, a
        # stopped trial's up to its last evaluation
        steps += max((r["step"] or 0) for r in by_run[run_id])
        out.append({"trials": k, "trial_id": trial, "hypervolume": hv, "steps": steps})
    return out


def fronts_over_time(rows: list[dict], objectives: dict[str, str], ref_point,
                     fractions=(0.25, 0.5, 0.75, 1.0)) -> list[dict]:
    """The front after the first 25/50/75/100% of finished trials (by end time; ceil of the share,
    at least one trial): where the search had got to, to overlay on one chart."""
    order = [run_id for run_id, _ in _trial_order(rows)]
    out = []
    for frac in fractions:
        k = max(1, math.ceil(frac * len(order) - 1e-9))
        seen = set(order[:k])
        mine = [r for r in rows if r["run_id"] in seen]
        front = [r for r, keep in zip(mine, _front_mask(mine, objectives)) if keep]
        out.append({"fraction": frac, "trials": k, "front": front,
                    "hypervolume": _front_hv(mine, objectives, ref_point)})
    return out


def pareto_report(c, tracking_uri: str, sweep: str, log_plot: bool = False, plot_path: Optional[str] = None,
                  cached: bool = True) -> dict:
    """The sweep's front and what goes with it; ``cached=False``: from the full listing even where
    the parent has a snapshot (:func:`collect`)."""
    parent = tracking.find_parent(c, sweep, tracking_uri)
    listing: dict = {}
    rows, objectives = collect(c, parent, listing, cached=cached)
    if not rows:
        raise tracking.TrackingError(f"sweep '{sweep}' has no finished trials yet")
    names, directions = list(objectives), [objectives[k] for k in objectives]
    feasible = [r for r in rows if r["feasible"]]
    pts = np.array([[r["objectives"][k] for k in names] for r in feasible]) if feasible else np.zeros((0, len(names)))
    mask = non_dominated(pts, directions) if len(pts) else np.zeros(0, dtype=bool)
    for r in rows:
        r["pareto"] = False
    for r, on_front in zip(feasible, mask):
        r["pareto"] = bool(on_front)
    ref_tag = parent.data.tags.get("raysweep.reference_point")
    if ref_tag:
        ref = json.loads(ref_tag)
        ref_point, ref_note = [ref[k] for k in names], "stated in the job"
    else:  # the nadir of every finished trial: worst value per objective. Not of the interpolated
        # points, which lie towards the target: adding them must not move the reference point.
        trial_rows = [r for r in rows if r["kind"] != "interpolated"] or rows
        ref_point = nadir([[r["objectives"][k] for k in names] for r in trial_rows], directions)
        ref_note = "nadir of the finished trials"
    hv = hypervolume(pts[mask], directions, ref_point) if len(pts) else 0.0
    trial_fronts = per_trial_fronts(rows, objectives)
    assign_ranks(rows, objectives)
    report = {
        "sweep": sweep, "tracking_uri": tracking.redact(tracking_uri), "objectives": objectives,
        "reference_point": dict(zip(names, ref_point)), "reference_point_source": ref_note,
        "hypervolume": hv, "n_finished": len({r["run_id"] for r in rows if r["kind"] != "interpolated"}),
        "n_interpolated": sum(r["kind"] == "interpolated" for r in rows), "n_points": len(rows),
        "n_feasible": len(feasible),
        "front": [r for r in rows if r["pareto"]], "trials": rows, "per_trial": trial_fronts,
        "per_method": per_method_fronts(rows, objectives, ref_point),
        "hypervolume_history": hypervolume_history(rows, objectives, ref_point),
        "fronts_over_time": fronts_over_time(rows, objectives, ref_point),
        "experiment_id": parent.info.experiment_id, "parent_run_id": parent.info.run_id,
        "constrained": tracking.parent_constrained(parent), "listing": listing,
    }
    if log_plot or plot_path:
        path = Path(plot_path or f"pareto_{sweep}.png")
        plot_front(rows, names, directions, path, title=f"{sweep}: HV {hv:.4g}")
        report["plot"] = str(path.resolve())
        if log_plot:
            c.log_artifact(parent.info.run_id, str(path))
            c.log_metric(parent.info.run_id, "pareto/hypervolume", hv)
            c.log_metric(parent.info.run_id, "pareto/front_size", len(report["front"]))
    return report


def plot_front(rows: list[dict], names: list[str], directions: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = names[0], names[1] if len(names) > 1 else names[0]
    methods = sorted({r["method"] for r in rows})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # one scatter per look, not per point: 20,000 points at 5,000 trials (issue 28)
        groups.setdefault((r["method"], bool(r["feasible"]), bool(r["pareto"])), []).append(r)
    for (method, feasible, pareto), group in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1])):  # front on top
        ax.scatter([r["objectives"][x] for r in group], [r["objectives"][y] for r in group], s=90 if pareto else 30,
                   edgecolors="black" if pareto else "none", linewidths=1.5, color=colours[method],
                   alpha=0.9 if feasible else 0.25)
    front = sorted([r for r in rows if r["pareto"]], key=lambda r: r["objectives"][x])
    if len(front) > 1:
        ax.plot([r["objectives"][x] for r in front], [r["objectives"][y] for r in front], "k--", lw=1)
    for r in front:  # which trial (and step along it) each front point is: what export takes
        ax.annotate(point_label(r), (r["objectives"][x], r["objectives"][y]), xytext=(5, 5),
                    textcoords="offset points", fontsize=7)
    for m in methods:
        ax.scatter([], [], color=colours[m], label=m)
    ax.scatter([], [], facecolors="none", edgecolors="black", s=90, label="Pareto front")
    ax.set_xlabel(f"{x} ({'lower' if directions[0] == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y} ({'lower' if directions[-1] == 'min' else 'higher'} is better)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def point_label(r: dict) -> str:
    """``TRIAL`` or ``TRIAL@STEP`` for a point along the run: the argument ``raysweep export`` takes."""
    return r["trial_id"] if r.get("final", True) or r.get("step") is None else f"{r['trial_id']}@{r['step']}"


def plot_hypervolume_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.step([h["trials"] for h in history], [h["hypervolume"] for h in history], where="post", marker="o", ms=3)
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume of the front")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_report(report: dict, per_trial: bool = False) -> str:
    names = list(report["objectives"])
    head = ["trial", "step", "method", "forget"] + [f"{n} ({report['objectives'][n]})" for n in names] \
        + ["hyperparameters", "checkpoint"]

    def line(r: dict) -> list:
        hp = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sorted(r["params"].items())
                       if k not in ("method", "forget"))
        step = "-" if r.get("step") is None else f"{r['step']}{'' if r.get('final', True) else '*'}"
        return [r["trial_id"], step, r["method"], r["forget"]] + [f"{r['objectives'][n]:.4f}" for n in names] \
            + [hp, r["checkpoint_uri"] or "-"]

    if per_trial:
        chosen = [r for t in sorted(report["per_trial"]) for r in report["per_trial"][t]]
        title = (f"Each trial's own best trade-offs (non-dominated over its evaluated steps) in sweep "
                 f"{report['sweep']}: {len(chosen)} points of {report['n_finished']} trials")
    else:
        chosen = sorted(report["front"], key=lambda r: r["objectives"][names[0]])
        title = (f"Pareto front of sweep {report['sweep']}: {len(report['front'])} of {report.get('n_points', report['n_finished'])} "
                 f"evaluated points from {report['n_finished']} finished trials"
                 + (f" and {report['n_interpolated']} interpolations (raysweep densify)" if report.get("n_interpolated") else "")
                 + f" ({report['n_feasible']} feasible)")
    lines = [line(r) for r in chosen]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in lines]
    if any(not r.get("final", True) for r in chosen):
        out.append("step*: a checkpoint along the run (eval.every), not the trial's last")
    ref = ", ".join(f"{k}={v:.4g}" for k, v in report["reference_point"].items())
    out.append(f"hypervolume {report['hypervolume']:.6g} against ({ref}) [{report['reference_point_source']}]")
    if report.get("plot"):
        out.append(f"plot: {report['plot']}")
    return "\n".join(out)


def _fmt(v) -> str:
    try:
        f = float(v)
        return f"{f:.3g}"
    except (TypeError, ValueError):
        return str(v)


def status_report(c, tracking_uri: str, sweep: str) -> str:
    parent = tracking.find_parent(c, sweep, tracking_uri)
    runs = tracking.child_runs(c, parent)
    counts: dict[str, int] = {}
    lines = [f"sweep {sweep} ({parent.info.status}); Tune state: {parent.data.tags.get('raysweep.storage')}"]
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        counts[r.info.status] = counts.get(r.info.status, 0) + 1
        reason = r.data.tags.get("raysweep.status_reason", "")
        objs = ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in r.data.metrics.items() if k.startswith("objective/"))
        lines.append(f"  {r.data.tags.get(tracking.TRIAL_TAG, '?'):<14} {r.info.status:<9} "
                     f"{r.data.tags.get('raysweep.method', '?'):<18} {objs} {reason}".rstrip())
    lines.insert(1, "  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) if counts else "  no trials yet")
    return "\n".join(lines)
