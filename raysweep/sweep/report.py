"""``raysweep pareto``: the front from MLflow alone (no Ray needed), a table, JSON, and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from raysweep.sweep import tracking
from raysweep.sweep.pareto import hypervolume, non_dominated


def collect(c, parent) -> tuple[list[dict], dict[str, str]]:
    objectives = tracking.parent_objectives(parent)
    rows = []
    for r in tracking.child_runs(c, parent):
        if r.info.status != "FINISHED":
            continue
        m = r.data.metrics
        values = [m.get(f"objective/{k}") for k in objectives]
        if any(v is None for v in values):
            continue
        params = {k: v for k, v in r.data.params.items()}
        rows.append({
            "trial_id": r.data.tags.get(tracking.TRIAL_TAG),
            "run_id": r.info.run_id,
            "method": r.data.tags.get("raysweep.method"),
            "forget": r.data.tags.get("raysweep.forget"),
            "params": params,
            "objectives": dict(zip(objectives, values)),
            "feasible": bool(m.get("feasible", 1.0) > 0),
            "checkpoint_uri": r.data.tags.get("raysweep.checkpoint_uri"),
        })
    return rows, objectives


def pareto_report(c, tracking_uri: str, sweep: str, log_plot: bool = False, plot_path: Optional[str] = None) -> dict:
    parent = tracking.find_parent(c, sweep, tracking_uri)
    rows, objectives = collect(c, parent)
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
    else:  # the nadir of every finished trial: worst value per objective
        all_pts = np.array([[r["objectives"][k] for k in names] for r in rows])
        ref_point = [float(all_pts[:, i].min() if d == "max" else all_pts[:, i].max()) for i, d in enumerate(directions)]
        ref_note = "nadir of the finished trials"
    hv = hypervolume(pts[mask], directions, ref_point) if len(pts) else 0.0
    report = {
        "sweep": sweep, "tracking_uri": tracking.redact(tracking_uri), "objectives": objectives,
        "reference_point": dict(zip(names, ref_point)), "reference_point_source": ref_note,
        "hypervolume": hv, "n_finished": len(rows), "n_feasible": len(feasible),
        "front": [r for r in rows if r["pareto"]], "trials": rows,
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
    for r in rows:
        kw = dict(color=colours[r["method"]], alpha=0.9 if r["feasible"] else 0.25)
        ax.scatter(r["objectives"][x], r["objectives"][y], s=90 if r["pareto"] else 30,
                   edgecolors="black" if r["pareto"] else "none", linewidths=1.5, **kw)
    front = sorted([r for r in rows if r["pareto"]], key=lambda r: r["objectives"][x])
    if len(front) > 1:
        ax.plot([r["objectives"][x] for r in front], [r["objectives"][y] for r in front], "k--", lw=1)
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


def format_report(report: dict) -> str:
    names = list(report["objectives"])
    head = ["trial", "method", "forget"] + [f"{n} ({report['objectives'][n]})" for n in names] + ["hyperparameters", "checkpoint"]
    lines = []
    for r in sorted(report["front"], key=lambda r: r["objectives"][names[0]]):
        hp = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sorted(r["params"].items())
                       if k not in ("method", "forget"))
        lines.append([r["trial_id"], r["method"], r["forget"]] + [f"{r['objectives'][n]:.4f}" for n in names]
                     + [hp, r["checkpoint_uri"] or "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
    out = [f"Pareto front of sweep {report['sweep']}: {len(report['front'])} of {report['n_finished']} finished trials "
           f"({report['n_feasible']} feasible)"]
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
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
