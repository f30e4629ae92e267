"""The snapshot of a sweep's evaluated points on its parent run (issue 28): what
:func:`raysweep.sweep.report.collect` reads instead of listing every child run - at 5,000 trials
the listing is most of ``raysweep pareto``'s time (a server spends ~1.5 ms of CPU per full run).

It is only a cache of the full listing's rows: written by the front refresh and by ``publish``
(the end of a sweep, ``raysweep pareto``, densify) after their writes, read back with the runs that
could differ from it (ended since it was taken, less a clock-skew margin; RUNNING; deleted). Who
writes to a child run that has ended, other than by ending it again (marks, model tags), calls
:func:`runs_changing` first: the snapshot is dropped before the runs change, and a writer that
finds another's changes since its own listing saves none. The clock-skew margin also covers a
write that lands just after its run ended (a trial's last buffered metrics or a checkpoint tag
racing the driver's end of the run). Storage and the run listings are ``tracking.py``'s.
"""

from __future__ import annotations

from typing import Optional

from raysweep.sweep import tracking

# The snapshot's layout: a snapshot of another layout is not read (the full listing instead).
VERSION = 1
# A row's own keys; the rest (the run's) is stored once per run. "pareto" and "rank" are the
# report's, not the listing's.
POINT_KEYS, REPORT_KEYS = ("step", "final", "objectives", "feasible", "checkpoint_uri"), ("pareto", "rank")


def usable(snapshot: Optional[dict], objectives: dict, constrained: bool, deleted: set[str]) -> bool:
    """Not another layout, not another sweep definition, and no run deleted when it was taken has
    been restored since (a restored run keeps its old end time: no listing would bring it back)."""
    return snapshot is not None and snapshot.get("version") == VERSION and snapshot["objectives"] == objectives \
        and snapshot["constrained"] == constrained and not set(snapshot["deleted"]) - deleted


def rows_by_run(snapshot: dict, skip: set[str]) -> dict[str, list[dict]]:
    """{run id: its rows} as the listing gave them, but for the runs in ``skip``; a run's rows
    share its dicts (marks, models), as :func:`report.collect`'s do."""
    return {run_id: [{**kept["base"], **point} for point in kept["points"]]
            for run_id, kept in snapshot["runs"].items() if run_id not in skip}


def snapshot_of(report: dict) -> dict:
    """The report's rows as the listing gave them (with the marks and models written since), when
    it listed them, and the deleted runs it saw."""
    import uuid

    runs: dict[str, dict] = {}
    for r in report["trials"]:
        kept = runs.setdefault(r["run_id"], {"base": {k: v for k, v in r.items() if k not in (*POINT_KEYS, *REPORT_KEYS)},
                                             "points": []})
        kept["points"].append({k: r[k] for k in POINT_KEYS})
    listing = report["listing"]
    return {"id": uuid.uuid4().hex, "version": VERSION, "taken": listing["taken"], "deleted": listing["deleted"],
            "objectives": report["objectives"], "constrained": report["constrained"], "runs": runs}


def runs_changing(c, report: dict) -> None:
    """Call before writing to the report's ended runs: the parent's snapshot is dropped (once per
    report), so that no reader trusts it while the runs change."""
    listing = report.setdefault("listing", {})  # a report made elsewhere: drop, and save none
    if not listing.get("dropped"):
        ok = tracking.drop_points(c, report["parent_run_id"], listing.get("seen"))
        listing.update(dropped=True, seen="" if ok else None)  # None: another writer's changes; no snapshot


def save_points(c, report: dict) -> bool:
    """The report's rows as the parent's snapshot, unless another writer changed the runs or wrote
    its own snapshot since this report listed them."""
    if report.get("listing", {}).get("seen") is None:
        return False
    try:
        return tracking.write_points(c, report["parent_run_id"], snapshot_of(report), report["listing"]["seen"])
    except Exception as err:  # noqa: BLE001 - a cache: without it the next read lists every run
        import sys

        print(f"sweep {report['sweep']}: no snapshot of its points saved; the next read lists every run "
              f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})", file=sys.stderr, flush=True)
        return False
