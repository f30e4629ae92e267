"""The Pareto front where MLflow users look: marks on the child runs, files and a description on
the sweep's parent run.

Contract: :func:`publish` takes a report from :func:`raysweep.sweep.report.pareto_report` (it
computes nothing itself) and writes

* on every finished child run: tag ``raysweep.pareto=front|dominated`` (so
  ``tags.raysweep.pareto = 'front'`` filters the runs table to the front), tag
  ``raysweep.pareto.steps`` (its steps on the front) and tag ``raysweep.pareto.rank`` (its best
  non-domination rank, 0 = front), and ``mlflow.runColor`` (red on the front, grey dominated:
  how MLflow's UI draws the run in its table and charts);
* on the experiment: a shared view of the sweep's runs, front and dominated, with the objectives'
  scatter (:func:`save_front_view`), opened by :func:`front_runs_link`;
* on the parent (``full=True``, at the end and on ``raysweep pareto``): ``pareto_front.csv`` and
  ``pareto_front.json``, the hypervolume-by-trials plot and metric ``pareto/hypervolume_by_trials``,
  and the run description (``mlflow.note.content``) listing the front with links.

:func:`refresh_callback` is the Tune callback that refreshes the child marks while the sweep
runs, at most every ``every_seconds``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from raysweep.sweep import tracking
from raysweep.sweep.points import runs_changing, save_points
from raysweep.sweep.report import plot_hypervolume_history, point_label

FRONT, DOMINATED = "front", "dominated"
PARETO_TAG = tracking.PARETO_TAG
RANK_TAG = "raysweep.pareto.rank"
RUN_COLOUR_TAG, FRONT_COLOUR, DOMINATED_COLOUR = "mlflow.runColor", "#d62728", "#aaaaaa"
FRONT_FILTER = f"tags.{PARETO_TAG} = '{FRONT}'"


def front_filter(sweep: str) -> str:
    """The runs-table filter of one sweep's front (sweeps of a job share its experiment)."""
    return f"{FRONT_FILTER} and tags.{tracking.SWEEP_TAG} = '{sweep}'"
# MLflow 3.x's UI ignores the experiment's `mlflow.experimentKind` tag: it opens the GenAI view
# unless the URL says otherwise (or the browser remembered the sidebar switch, localStorage
# `mlflow.workflowType_v1`). Every link raysweep writes carries the parameter.
TRAINING_VIEW = "workflowType=machine_learning"
VIEW_PARAM, SHARED_VIEW_TAG = "viewStateShareKey", "mlflow.sharedViewState."


def run_link(experiment_id: str, run_id: str, base: str = "") -> str:
    return f"{base}#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def view_key(sweep: str) -> str:
    return "raysweep-front-" + re.sub(r"[^A-Za-z0-9_-]", "-", sweep)


def front_runs_link(experiment_id: str, sweep: str, base: str = "", charts: bool = True) -> str:
    """The experiment's runs page with the sweep's saved view (:func:`save_front_view`), in the
    model-training view; ``charts``: its chart mode (the objectives' scatter beside the runs list)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{base}#/experiments/{experiment_id}/runs?{VIEW_PARAM}={view_key(sweep)}{mode}&{TRAINING_VIEW}"


SCATTER_ID, SECTION_ID = "raysweep-objectives", "raysweep-pareto"


def save_front_view(c, report: dict) -> None:
    """A shared view of the runs page (MLflow's "share view": experiment tag
    ``mlflow.sharedViewState.<key>``): every candidate run of the sweep, grouped into ``front`` and
    ``dominated`` (a filter alone shows child runs folded under their collapsed parent, and the
    view state cannot unfold it), sorted by the first objective; method, model, objectives, flat
    hyperparameters and the checkpoint as columns; one chart: the objectives' scatter with one dot
    per run (``useGroupedValuesInCharts`` off, else a group is one averaged dot; every run shown,
    not MLflow's first 10), front runs red and dominated grey (their ``mlflow.runColor``)."""
    names = list(report["objectives"])
    first = names[0]
    flat = sorted({k for r in report["trials"] for k in r.get("flat_params", {})})
    state = {
        "searchFilter": sweep_filter(report["sweep"]),
        "orderByKey": f"metrics.`objective/{first}`", "orderByAsc": report["objectives"][first] == "min",
        "selectedColumns": ["tags.`raysweep.method`", "tags.`raysweep.model`", "attributes.`Models`",
                            *[f"metrics.`objective/{k}`" for k in names], f"tags.`{PARETO_TAG}.steps`",
                            *[f"params.`{k}`" for k in flat], "tags.`raysweep.checkpoint_path`"],
        "groupBy": {"aggregateFunction": "min", "groupByKeys": [{"mode": "tag", "groupByData": PARETO_TAG}]},
        "groupsExpanded": {}, "useGroupedValuesInCharts": False, "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
        "compareRunSections": [{"uuid": SECTION_ID, "name": "Pareto front", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "compareRunCharts": [{
            "uuid": SCATTER_ID, "type": "SCATTER", "metricSectionId": SECTION_ID, "deleted": False,
            "isGenerated": False, "runsCountToCompare": max(100, report["n_finished"] + report.get("n_interpolated", 0)),
            "displayName": f"{names[0]} vs {names[1]}" if len(names) > 1 else names[0],
            "xaxis": {"key": f"objective/{names[0]}", "type": "METRIC"},
            "yaxis": {"key": f"objective/{names[-1]}", "type": "METRIC"},
        }],
        "isAccordionReordered": True,  # our section first; MLflow appends its generated ones
    }
    c.set_experiment_tag(report["experiment_id"], f"{SHARED_VIEW_TAG}{view_key(report['sweep'])}", json.dumps(state))


def sweep_filter(sweep: str) -> str:
    """The runs-table filter of one sweep's candidate runs (finished trials, front or dominated)."""
    return f"tags.{tracking.SWEEP_TAG} = '{sweep}' and tags.{PARETO_TAG} LIKE '%'"


def mark_children(c, report: dict) -> int:
    """Tags on each child run with a candidate point (front or dominated, its front steps, its
    best non-domination rank); returns how many are on the front. Tags, not metrics: a mark is
    the run's state, not a curve over refreshes."""
    from mlflow.entities import RunTag

    by_run: dict[str, list[dict]] = {}
    for r in report["trials"]:
        by_run.setdefault(r["run_id"], []).append(r)
    on = 0
    for run_id, rows in by_run.items():
        front_steps = sorted({str(r["step"]) for r in rows if r["pareto"] and r["step"] is not None})
        on_front = any(r["pareto"] for r in rows)
        on += on_front
        tags = {PARETO_TAG: FRONT if on_front else DOMINATED, f"{PARETO_TAG}.steps": ",".join(front_steps),
                RANK_TAG: str(min(r["rank"] for r in rows)), **tracking.objective_tags(report["objectives"]),
                # the colour MLflow's UI draws the run in (table dot, every chart): front vs dominated
                RUN_COLOUR_TAG: FRONT_COLOUR if on_front else DOMINATED_COLOUR}
        now = rows[0].get("marks", {})
        if any(now.get(k) != v for k, v in tags.items()):  # a run whose marks stand costs no request
            runs_changing(c, report)
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            now.update(tags)  # the run's rows share one dict: the report (and its snapshot) know the marks
    save_front_view(c, report)
    return on


def front_records(report: dict) -> list[dict]:
    """One record per front point: what ``pareto_front.csv``/``.json`` hold."""
    out = []
    for r in sorted(report["front"], key=lambda r: r["objectives"][next(iter(report["objectives"]))]):
        out.append({"run_id": r["run_id"], "trial_id": r["trial_id"], "step": r["step"], "final": r["final"],
                    "method": r["method"], "forget": r["forget"], "objectives": dict(r["objectives"]),
                    "hyperparameters": {**r.get("flat_params", {}), **r["params"]},
                    "checkpoint": r["checkpoint_uri"], "export": point_label(r)})
    return out


CSV_LEAD, CSV_TAIL = ["trial_id", "method"], ["step", "final", "forget"]


def _csv(records: list[dict], objectives: dict) -> str:
    """One row per front point, what a person reads first on the left (MLflow's preview is
    narrow): trial, method, one column per objective (``objective.<name>`` when the name is
    taken); then step, whether it is the final evaluation, the forget loss, one column per
    hyperparameter, the checkpoint, the ``raysweep export`` argument and the run id."""
    hp = sorted({k for rec in records for k in rec["hyperparameters"]})
    taken = {*CSV_LEAD, *CSV_TAIL, "run_id", "checkpoint", "export"}
    obj_cols = [f"objective.{k}" if k in taken else k for k in objectives]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*CSV_LEAD, *obj_cols, *CSV_TAIL, *hp, "checkpoint", "export", "run_id"])
    for rec in records:
        w.writerow([rec[k] for k in CSV_LEAD] + [rec["objectives"][k] for k in objectives]
                   + [rec[k] for k in CSV_TAIL] + [rec["hyperparameters"].get(k, "") for k in hp]
                   + [rec["checkpoint"] or "", rec["export"], rec["run_id"]])
    return buf.getvalue()


def description(report: dict) -> str:
    """The parent run's description (Markdown): the front with links to its runs."""
    exp, names = report["experiment_id"], list(report["objectives"])
    lines = [f"**Pareto front: {len(report['front'])} of {report['n_points']} evaluated points** from "
             f"{report['n_finished']} finished trials; hypervolume {report['hypervolume']:.4g} "
             f"({report['reference_point_source']}). "
             f"[Show the front runs]({front_runs_link(exp, report['sweep'])}) (filter `{front_filter(report['sweep'])}`).", "",
             "| run | " + " | ".join(f"{n} ({report['objectives'][n]})" for n in names) + " | export |",
             "|---|" + "---|" * len(names) + "---|"]
    for rec in front_records(report):
        name = tracking.child_run_name(rec["method"], rec["forget"], rec["trial_id"])
        lines.append(f"| [{name}]({run_link(exp, rec['run_id'])}) | "
                     + " | ".join(f"{rec['objectives'][n]:.4g}" for n in names) + f" | `{rec['export']}` |")
    per = ", ".join(f"{m} {v['hypervolume']:.4g}" for m, v in report.get("per_method", {}).items())
    if per:
        lines += ["", f"Hypervolume per method: {per}."]
    lines += ["", "Files: `pareto_front.csv`, `pareto_front.json`, the front plot and `hypervolume_by_trials.png` "
              "(Artifacts). Checkpoints of the front are under *Logged models*."]
    return "\n".join(lines)


def log_parent(c, report: dict) -> None:
    from mlflow.entities import Metric

    pid = report["parent_run_id"]
    records = front_records(report)
    c.log_text(pid, json.dumps({"objectives": report["objectives"], "hypervolume": report["hypervolume"],
                                "reference_point": report["reference_point"], "front": records},
                               indent=2, default=str), "pareto_front.json")
    c.log_text(pid, _csv(records, report["objectives"]), "pareto_front.csv")
    history = report["hypervolume_history"]
    if history:
        ts = int(time.time() * 1000)
        c.log_batch(pid, metrics=[Metric("pareto/hypervolume_by_trials", h["hypervolume"], ts, h["trials"])
                                  for h in history])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "hypervolume_by_trials.png"
            plot_hypervolume_history(history, path, f"{report['sweep']}: hypervolume by finished trials")
            c.log_artifact(pid, str(path))
    c.set_tag(pid, "mlflow.note.content", description(report))


def publish(c, report: dict, full: bool = True, models: bool = True) -> None:
    """Child marks always; with ``full`` the parent's files and description, and (``models``) the
    front's checkpoints as MLflow logged models; last, the snapshot of the sweep's points that
    the next read starts from (``report.save_points``)."""
    mark_children(c, report)
    if full:
        log_parent(c, report)
        if models:
            from raysweep.sweep.front_models import log_front_models

            try:
                log_front_models(c, report)
            except Exception as err:  # noqa: BLE001 - e.g. a tracking server older than MLflow 3
                print(f"sweep {report['sweep']}: front checkpoints not logged as MLflow models: "
                      f"{str(err).splitlines()[0][:300] if str(err) else type(err).__name__}", file=sys.stderr, flush=True)
    save_points(c, report)


class FrontRefresh:
    """Build with :func:`refresh_callback`. Recomputes the front from MLflow when a trial ends
    (at most every ``every_seconds``) and refreshes the child marks; the sweep's end does the rest.

    The refresh runs on a thread of its own, one at a time: Tune calls its callbacks on the
    driver's event loop, and a refresh of a 5,000-trial sweep takes seconds that would hold up
    every trial's results and the next trials' start (issue 28)."""

    def __init__(self, tracking_uri: str, sweep: str, every_seconds: float = 30.0):
        self.tracking_uri, self.sweep, self.every_seconds = tracking_uri, sweep, every_seconds
        self._last = 0.0
        self._warned = False
        self._thread: threading.Thread | None = None

    def on_trial_complete(self, iteration, trials, trial, **info):
        if time.time() - self._last < self.every_seconds or (self._thread is not None and self._thread.is_alive()):
            return
        self._last = time.time()
        self._thread = threading.Thread(target=self._refresh, name="raysweep-front-refresh", daemon=True)
        self._thread.start()

    def on_experiment_end(self, trials, **info):
        self.wait()  # the end's own publish comes after, and is the last word

    def wait(self, timeout: float = 300.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _refresh(self) -> None:
        from raysweep.sweep.report import pareto_report

        try:
            c = tracking.client(self.tracking_uri)
            report = pareto_report(c, self.tracking_uri, self.sweep)
            mark_children(c, report)
            save_points(c, report)  # the next refresh lists only the runs that end meanwhile
        except tracking.TrackingError:  # no finished trial yet (this one was stopped or failed)
            pass
        except Exception as err:  # noqa: BLE001 - marks are a view; the sweep's end redoes them
            if not self._warned:
                self._warned = True
                print(f"sweep {self.sweep}: could not refresh the front marks in MLflow "
                      f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__}); retried at the end",
                      file=sys.stderr, flush=True)


def refresh_callback(tracking_uri: str, sweep: str, every_seconds: float = 30.0):
    """A :class:`FrontRefresh` that is also a ``ray.tune.Callback``."""
    from ray.tune import Callback

    return type("FrontRefreshCallback", (FrontRefresh, Callback), {})(tracking_uri, sweep, every_seconds)

