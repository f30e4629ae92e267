"""The study's tables and plots (issues 13, 27).

    python jobs/study/make_tables.py --from results/study_points.csv     # every table of RESULTS.md
    python jobs/study/make_tables.py --export results/study_points.csv --commit study-paired=<sha> ...
    python jobs/study/make_tables.py [--tracking-uri sqlite:///study_runs/mlflow.db] [--out docs/study]
                                     [--fq-level 0.001 0.03 0.3]
                                     [--only method|method2|objective|sampler|geffect|method20|objective20]

RESULTS.md's tables (issue 27) come from the committed per-point CSV alone (``--from``; the test
tests/test_study_results.py compares them with RESULTS.md): ``--export`` writes it from the MLflow
store, one row per evaluated point of every ``study-paired-*`` sweep and per calibration model
(jobs/study/calibrate.py), with the raysweep commit that produced it (``--commit PREFIX=SHA``, per
sweep-name prefix). The older tables (rounds 1-3, below) still read an MLflow store directly; their
store (study_runs/ of 2026-11-23) is gone.

Sweeps are found by name (as ``jobs/study/run_all.sh`` launches them):
  study-method-<method>-o<offset>     method study (NPO forget, one synthesis method, one author subset)
  study-method2-<method>-o<offset>    its second round (lr range 5e-4..5e-3)
  study-objective-<forget>-<method>   objective study (one forget objective under one synthesis method)
  study-method20-<method>-<forget>-o<offset>   round 3 (20 authors, forget 2): method and objective study
  study-sampler-<sampler>-s<seed>     search efficiency (one sampler, one seed)
  study-sampler-grid-s<seed>          its baseline: every point of a grid three times the budget
  study-geffect-<forget>              G-effect along one GradDiff run per forget objective

Printed per table:
* hypervolume of each sweep's front (reference point of the job), mean and spread (max - min) over
  the author subsets;
* utility kept at matched forgetting (the SAGO paper's recovery measure): walking the front from
  high utility to high forget quality, the first point whose forget quality is at least each
  ``--fq-level``; its model utility / the target's model utility. A level counts only for subsets
  whose target is below it; "-" (and a smaller n) when no point of a front reaches it;
* hypervolume vs trials per sampler and seed, and the trials each needs to reach the final
  hypervolume of the random sampler (mean over seeds) and that of a grid three times the budget
  (``study-sampler-grid-s<seed>``, every point of the grid once);
* G-effect per layer group (retain and forget) at each measured step.
PNG plots go to ``--out`` (small: 100 dpi, few points).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from raysweep.sweep import tracking  # noqa: E402
from raysweep.sweep.pareto import hypervolume, non_dominated  # noqa: E402
from raysweep.sweep.report import collect  # noqa: E402

FQ, MU = "forget_quality", "model_utility"


def sweeps(c) -> dict[str, object]:
    """Every parent run by sweep name (the newest when a name repeats)."""
    ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, filter_string=f"tags.`{tracking.ROLE_TAG}` = 'parent'", max_results=5000,
                         order_by=["attributes.start_time ASC"]) if ids else []
    return {r.data.tags[tracking.SWEEP_TAG]: r for r in runs if tracking.SWEEP_TAG in r.data.tags}


def points(c, parent) -> np.ndarray:
    rows, objectives = collect(c, parent)
    return np.array([[r["objectives"][FQ], r["objectives"][MU]] for r in rows], dtype=float).reshape(-1, 2)


def subset_cell(c, parent) -> tuple:
    """One sweep's (points, target utility, target forget quality): a subset's cell of a table."""
    m = parent.data.metrics
    return points(c, parent), m.get(f"target/{MU}"), m.get(f"target/{FQ}")


def front(pts: np.ndarray) -> np.ndarray:
    if not len(pts):
        return pts
    f = pts[non_dominated(pts, ["max", "max"])]
    return f[np.argsort(f[:, 0])]  # ascending forget quality = descending utility


def hv(pts: np.ndarray) -> float:
    return hypervolume(pts, ["max", "max"], [0.0, 0.0]) if len(pts) else 0.0


def kept_at(pts, target_mu: float, level: float):
    """Utility after / target utility at the highest-utility (FQ, utility) point with forget quality
    >= level (a front point: one that dominated it would have as much utility); None where none
    reaches it."""
    return max((mu / target_mu for fq, mu in pts if fq >= level), default=None)


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def _row_cells(d: dict, offsets, levels) -> tuple[list, int, str, str]:
    """One table row's parts from ``d[offset] = (points, target, target FQ)``: the hypervolumes, the
    trial count, the per-subset HV cells and the "kept at FQ >= level" cells."""
    hvs = [hv(d[o][0]) for o in offsets if o in d]
    n = sum(len(d[o][0]) for o in offsets if o in d)
    cells = "".join(f"{_fmt(hv(d[o][0]), '.4f') if o in d else '-':>10}" for o in offsets)
    kept_cells = ""
    for lv in levels:
        # A level only means "more forgetting than the target" where the target is below it.
        usable = [o for o in offsets if o in d and d[o][2] is not None and d[o][2] < lv]
        kept = [k for o in usable for k in [kept_at(d[o][0], d[o][1], lv)] if k is not None]
        kept_cells += f"{_spread(kept) + f' ({len(kept)}/{len(usable)})':<30}"
    return hvs, n, cells, kept_cells


def _spread(vals: list[float]) -> str:
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.3g} [{min(vals):.3g}, {max(vals):.3g}]"


def _plot_fronts(groups: dict[str, list[np.ndarray]], path: Path, title: str, targets=()) -> None:
    _plot_panels([(groups, title, targets)], path)


def _plot_panels(panels: list[tuple[dict, str, object]], path: Path) -> None:
    """One front plot per (groups, title, targets) side by side; a group's colour is the same in
    every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 if len(panels) == 1 else 4.2 * len(panels), 4.0),
                             dpi=100 if len(panels) == 1 else 80, squeeze=False)
    labels = sorted({label for groups, _, _ in panels for label in groups})
    for ax, (groups, title, targets) in zip(axes[0], panels):
        _draw_fronts(ax, groups, title, targets, labels)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path} ({path.stat().st_size // 1024} KB)")


def _draw_fronts(ax, groups, title, targets, labels) -> None:
    for label, fronts in sorted(groups.items()):
        i = labels.index(label)
        color = f"C{i % 10}"
        marks = "os^Dv"
        for j, f in enumerate(fronts):
            if len(f):
                ax.step(f[:, 0], f[:, 1], where="pre", color=color, alpha=0.7)
                ax.scatter(f[:, 0], f[:, 1], color=color, s=18, marker=marks[j % len(marks)],
                           label=label if j == 0 else None)
    for k, (fq, mu) in enumerate(targets):
        if fq is not None and mu is not None:
            ax.scatter([fq], [mu], color="k", marker="*", s=60, label="target" if k == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("forget quality (KS p-value, log scale, max)")
    ax.set_ylabel("model utility (max)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def method_table(c, all_sweeps, out: Path, levels: list[float], prefix: str = "study-method-") -> None:
    by_method: dict[str, dict[str, tuple]] = defaultdict(dict)
    for name, parent in all_sweeps.items():
        m = re.fullmatch(re.escape(prefix) + r"(.+)-o(\d+)", name)
        if not m:
            continue
        by_method[m.group(1)][m.group(2)] = subset_cell(c, parent)
    if not by_method:
        print(f"(no {prefix}* sweeps)")
        return
    offsets = sorted({o for d in by_method.values() for o in d}, key=int)
    print(f"\n== {prefix}*: method study (NPO forget; objectives forget quality, model utility; "
          f"reference point (0, 0)) ==")
    print("target per subset (model utility, forget quality): " + ", ".join(
        f"o{o}: ({_fmt(d[1])}, {_fmt(d[2], '.2g')})" for o in offsets for d in [next(
            (v[o] for v in by_method.values() if o in v), (None, None, None))]))
    head = "".join(f"{'HV o' + o:>10}" for o in offsets)
    print(f"{'method':<10}{'trials':>7}{head}  {'HV mean [min, max]':<30}"
          + "".join(f"{f'kept@FQ>={lv:g} [min, max] (n)':<30}" for lv in levels))
    print("(trials: over all subsets; n: subsets whose front reaches the level / subsets whose target is below it)")
    groups = {}
    for method, d in sorted(by_method.items()):
        hvs, n, cells, kept_cells = _row_cells(d, offsets, levels)
        print(f"{method:<10}{n:>7}{cells}  {_spread(hvs):<30}{kept_cells}")
        groups[method] = [front(d[o][0]) for o in offsets if o in d]
    targets = {o: (v[o][2], v[o][1]) for v in by_method.values() for o in v}
    _plot_fronts(groups, out / f"{prefix.strip('-').replace('study-', '')}_fronts.png",
                 "method study: front per method and author subset (marker = subset)", targets.values())


ROUND3 = "study-method20-"
ROUND3_FORGETS = ("npo", "ga", "simnpo")
TOKEN_WEIGHTED = ("wga", "tnpo", "wtnpo")


def round3_cells(c, all_sweeps) -> dict[tuple[str, str], dict[str, tuple]]:
    """(method, forget) -> offset -> (points, target utility, target forget quality), from sweeps
    ``study-method20-<method>-<forget>-o<offset>``."""
    cells: dict[tuple[str, str], dict[str, tuple]] = defaultdict(dict)
    for name, parent in all_sweeps.items():
        m = re.fullmatch(re.escape(ROUND3) + r"([a-z_]+)-([a-z]+)-o(\d+)", name)
        if m:
            cells[(m.group(1), m.group(2))][m.group(3)] = subset_cell(c, parent)
    return cells


def best_method(cells) -> tuple[str | None, dict[str, float]]:
    """The synthesis method with the best mean hypervolume rank over every (forget objective,
    subset) cell of round 3 (1 = best; ties share the mean rank). Ranks, not raw hypervolumes:
    the subsets' hypervolumes differ by orders of magnitude (their targets' forget quality does)."""
    ranks: dict[str, list[float]] = defaultdict(list)
    total: dict[str, float] = defaultdict(float)  # a tie in mean rank goes to the larger summed hypervolume
    keys = {(f, o) for (m, f), d in cells.items() if f in ROUND3_FORGETS for o in d}
    for f, o in sorted(keys):
        hvs = {m: hv(d[o][0]) for (m, f_), d in cells.items() if f_ == f and o in d}
        for m, v in hvs.items():
            better = sum(1 for w in hvs.values() if w > v + 1e-12)
            same = sum(1 for w in hvs.values() if abs(w - v) <= 1e-12)
            ranks[m].append(better + (same + 1) / 2)
            total[m] += v
    mean = {m: statistics.mean(r) for m, r in ranks.items()}
    return (min(mean, key=lambda m: (mean[m], -total[m])) if mean else None), mean


def round3_table(c, all_sweeps, out: Path, levels: list[float], objective_study: bool = False) -> None:
    cells = round3_cells(c, all_sweeps)
    if not cells:
        print(f"(no {ROUND3}* sweeps)")
        return
    best, mean_rank = best_method(cells)
    if objective_study:
        methods = ["graddiff"] + ([best] if best and best != "graddiff" else [])
        forgets = ["ga", "npo", *TOKEN_WEIGHTED]
        title = f"round 3 objective study (GradDiff and the best method, {best})"
    else:
        methods = sorted({m for m, _ in cells})
        forgets = list(ROUND3_FORGETS)
        title = "round 3 method study"
    rows = [(f, m) for f in forgets for m in methods if (m, f) in cells]
    offsets = sorted({o for d in cells.values() for o in d}, key=int)
    print(f"\n== {ROUND3}*: {title} (20 authors, forget 2, 40 questions per split; objectives forget "
          f"quality, model utility; reference point (0, 0)) ==")
    targets = {o: (d[o][2], d[o][1]) for d in cells.values() for o in d}
    print("target per subset (model utility, forget quality): " + ", ".join(
        f"o{o}: ({_fmt(targets[o][1])}, {_fmt(targets[o][0], '.2g')})" for o in offsets))
    head = "".join(f"{'HV o' + o:>10}" for o in offsets)
    print(f"{'forget':<8}{'method':<10}{'trials':>7}{head}  {'HV mean [min, max]':<30}"
          + "".join(f"{f'kept@FQ>={lv:g} [min, max] (n)':<30}" for lv in levels) + f"{'max FQ':>10}")
    print("(trials: over all subsets; kept: utility / the target's at the first front point with forget quality >= "
          "the level, over the subsets whose target is below it (n: reached / usable); max FQ: highest forget "
          "quality reached on any subset)")
    for f, m in rows:
        d = cells[(m, f)]
        hvs, n, cell_s, kept_cells = _row_cells(d, offsets, levels)
        max_fq = max((float(d[o][0][:, 0].max()) for o in offsets if o in d and len(d[o][0])), default=None)
        print(f"{f:<8}{m:<10}{n:>7}{cell_s}  {_spread(hvs):<30}{kept_cells}{_fmt(max_fq, '.3g'):>10}")
    if not objective_study:
        print("mean hypervolume rank over the (forget, subset) cells (1 = best): " + ", ".join(
            f"{m} {r:.2f}" for m, r in sorted(mean_rank.items(), key=lambda kv: kv[1])) + f"  -> best: {best}")
        panels = [({m: [front(cells[(m, f)][o][0]) for o in offsets if o in cells[(m, f)]]
                    for m in methods if (m, f) in cells}, f"{f} forget (marker = subset)", targets.values())
                  for f in forgets if any((m, f) in cells for m in methods)]
        _plot_panels(panels, out / "method20_fronts.png")
    else:
        panels = [({f: [front(cells[(m, f)][o][0])] for f in forgets if (m, f) in cells and o in cells[(m, f)]},
                   f"{m}, subset o{o}", [targets[o]]) for m in methods for o in offsets]
        _plot_panels(panels, out / "objective20_fronts.png")


def objective_table(c, all_sweeps, out: Path, levels: list[float]) -> None:
    rows, target = {}, None
    for name, parent in all_sweeps.items():
        m = re.fullmatch(r"study-objective-(.+)-(.+)", name)
        if m:
            pts, target_mu, target_fq = subset_cell(c, parent)
            rows[(m.group(2), m.group(1))] = (pts, target_mu)
            target = (target_fq, target_mu)
    if not rows:
        print("(no study-objective-* sweeps)")
        return
    print("\n== Objective study (author subset o0) ==")
    print(f"{'method':<10}{'forget':<8}{'trials':>7}{'HV':>9}" + "".join(f"{f'kept@FQ>={lv:g}':>14}" for lv in levels)
          + f"{'best FQ':>10}{'MU at best FQ':>15}{'max MU':>9}")
    groups = defaultdict(list)
    for (method, forget), (pts, tmu) in sorted(rows.items()):
        best = pts[np.argmax(pts[:, 0])] if len(pts) else None
        print(f"{method:<10}{forget:<8}{len(pts):>7}{hv(pts):>9.4f}"
              + "".join(f"{_fmt(kept_at(pts, tmu, lv) if target and target[0] < lv else None):>14}" for lv in levels) +
              f"{_fmt(None if best is None else best[0], '.3g'):>10}{_fmt(None if best is None else best[1]):>15}"
              f"{_fmt(pts[:, 1].max() if len(pts) else None):>9}")
        groups[f"{forget}+{method}"].append(front(pts))
    _plot_fronts(groups, out / "objective_fronts.png", "objective study: fronts per forget objective",
                 [target] if target else ())


def sampler_table(c, all_sweeps, out: Path) -> None:
    curves: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for name, parent in all_sweeps.items():
        m = re.fullmatch(r"study-sampler-(.+)-s(\d+)", name)
        if not m:
            continue
        # Trials in the order they started; one that diverged or failed still spent its budget.
        pts, ys = [], []
        for r in sorted(tracking.child_runs(c, parent), key=lambda r: r.info.start_time):
            m_ = r.data.metrics
            if r.info.status == "FINISHED" and f"objective/{FQ}" in m_ and f"objective/{MU}" in m_:
                pts.append([m_[f"objective/{FQ}"], m_[f"objective/{MU}"]])
            ys.append(hv(np.array(pts)) if pts else 0.0)
        curves[m.group(1)][int(m.group(2))] = ys
    # The grid (every point of a grid three times the samplers' budget) is the baseline, not a curve.
    grid = curves.pop("grid", {})
    if not curves:
        print("(no study-sampler-* sweeps)")
        return
    print("\n== Search efficiency (hypervolume after n trials; mean over seeds) ==")
    n = max(len(y) for d in curves.values() for y in d.values())
    goal_vals = [y[-1] for y in curves.get("random", {}).values() if y]
    goal = statistics.mean(goal_vals) if goal_vals else None
    grid_hv = max(y[-1] for y in grid.values()) if grid else None
    print(f"{'sampler':<8}{'seeds':>6}" + "".join(f"{'n=' + str(i + 1):>8}" for i in range(n))
          + f"{'final mean [min, max]':>26}{'trials to random final HV':>28}"
          + (f"{'trials to grid HV':>22}" if grid else ""))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=100)
    for i, (sampler, d) in enumerate(sorted(curves.items())):
        mean = [statistics.mean(y[k] for y in d.values() if len(y) > k) for k in range(n)]
        finals = [y[-1] for y in d.values() if y]
        reach = []
        for y in d.values():
            hit = next((k + 1 for k, v in enumerate(y) if goal is not None and v >= goal - 1e-12), None)
            reach.append(hit)
        reach_s = ", ".join("-" if r is None else str(r) for r in reach)
        to_grid = ""
        if grid:  # per seed: the first n whose hypervolume reaches the whole grid's
            to_grid = ", ".join(next((str(k + 1) for k, v in enumerate(y) if v >= grid_hv - 1e-12), f">{len(y)}")
                                for _, y in sorted(d.items()))
        print(f"{sampler:<8}{len(d):>6}" + "".join(f"{v:>8.4f}" for v in mean)
              + f"{_spread(finals):>26}{reach_s:>28}{to_grid:>22}")
        for j, y in enumerate(d.values()):
            ax.plot(range(1, len(y) + 1), y, color=f"C{i}", alpha=0.35)
        ax.plot(range(1, n + 1), mean, color=f"C{i}", lw=2, label=f"{sampler} (mean of {len(d)})")
    for seed, y in sorted(grid.items()):
        size = len(y)
        print(f"grid (seed {seed}, {size} points, every point once): final HV {y[-1]:.4f}; "
              f"after its first {n} points (the grid's seeded order) {y[min(n, size) - 1]:.4f}; "
              f"first reached after {next(k + 1 for k, v in enumerate(y) if v >= y[-1] - 1e-12)} of {size}")
        ax.axhline(y[-1], color="k", ls="--", lw=1, label=f"grid of {size} (all points)")
    if grid:
        print("(trials to grid HV: per seed, the first n at which a sampler's front reaches the whole grid's "
              f"hypervolume; >{n}: not within its {n} trials)")
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (forget quality x utility)")
    ax.set_title("search efficiency: hypervolume vs trials", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "sampler_hv.png"
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path} ({path.stat().st_size // 1024} KB)")


def geffect_table(c, all_sweeps, out: Path) -> None:
    """One G-effect run per sweep ``study-geffect-<forget>`` (objective + GradDiff's retain term)
    or ``study-geffect-<forget>-alone`` (the objective alone)."""
    found = {}
    print("\n== G-effect per layer group: mean over the measured steps, first and last measurement ==")
    for name, parent in all_sweeps.items():
        m = re.fullmatch(r"study-geffect-([a-z]+)(-alone)?", name)
        if not m:
            continue
        # A run stopped for divergence (retain loss above the job's ceiling) keeps its curves up to there.
        runs = [r for r in tracking.child_runs(c, parent) if any(k.startswith("train/geffect_") for k in r.data.metrics)]
        if not runs:
            continue
        run = runs[0]
        if run.info.status != "FINISHED":
            print(f"  ({name}: trial {run.info.status.lower()}, curves up to its last measurement)")
        keys = sorted(k for k in run.data.metrics if k.startswith("train/geffect_"))
        hist = {k: sorted((x.step, x.value) for x in c.get_metric_history(run.info.run_id, k)) for k in keys}
        found[(m.group(1), "alone" if m.group(2) else "+GD")] = hist
    if not found:
        print("(no study-geffect-* sweeps)")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("   (e(D) = <grad NLL(D), update>; removal wants e(forget) < 0, retention e(retain) >= 0)")
    forgets = [f for f in ("ga", "npo", "wga") if any(k[0] == f for k in found)]
    variants = [v for v in ("+GD", "alone") if any(k[1] == v for k in found)]
    fig, axes = plt.subplots(2 * len(variants), len(forgets), figsize=(3.0 * len(forgets), 2.1 * 2 * len(variants)),
                             dpi=75, squeeze=False, sharex=True)
    for vi, variant in enumerate(variants):
        for j, forget in enumerate(forgets):
            hist = found.get((forget, variant))
            for si, side in enumerate(("retain", "forget")):
                ax = axes[2 * vi + si][j]
                ax.set_title(f"{forget} ({variant}): {side} G-effect", fontsize=8)
                ax.axhline(0, color="k", lw=0.5)
                ax.set_yscale("symlog", linthresh=1e-3)
                ax.tick_params(labelsize=6)
                if hist is None:
                    continue
                keys = [k for k in hist if f"geffect_{side}/" in k]
                order = sorted(keys, key=lambda k: (k.endswith("/total"), k.endswith("/head"),
                                                    not k.endswith("/embed"), k))
                for k in order:
                    vals = [v for _, v in hist[k]]
                    group = k.split("/")[-1]
                    print(f"  {forget:<4}{variant:<6} {side:<7} {group:<11} mean {statistics.mean(vals):+.2e}  "
                          f"first {vals[0]:+.2e}  last {vals[-1]:+.2e}  (n={len(vals)})")
                    style = {"color": "k", "lw": 1.5, "ls": "--"} if group == "total" else {"lw": 1}
                    ax.plot([st for st, _ in hist[k]], vals, label=group.replace("blocks_", "layer ").split("-")[0],
                            **style)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=7)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    path = out / "geffect_layers.png"
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path} ({path.stat().st_size // 1024} KB)")


# ---- issue 27: the per-point CSV, the paired design and the calibration --------------------------
# cut_pairs came after the first export: the rows written before it keep their 14 fields (a short row
# reads as cut_pairs None), so that those rows, whose MLflow store is gone, stay byte for byte as exported.
CSV_FIELDS = ["sweep", "trial", "step", "method", "forget", "offset", "seed", "lr", "params", "forget_quality",
              "model_utility", "target_forget_quality", "target_model_utility", "commit", "cut_pairs", "metrics"]
# The "metrics" column (JSON; added for SmolLM2, issue 27 item 5): more of the point's own TOFU metrics
# than the two objectives, and the target's as "target/<name>" (rows written before it have none).
EXTRA_METRICS = ("forget_answer_loss", "forget_truth_ratio", "forget_rougeL_recall", "retain_rougeL_recall")
PAIRED = "study-paired-"
EXTENDED = "study-extended-"   # SAGO's extended budget (issue 27 item 3)
LONG = "study-long-"           # SAGO's long budget: SAGO and GradDiff, 144 steps at low lrs (issue 27 item 3)
TUNED = "study-tuned-"         # the tuned comparison (issue 27 item 2)
CALIBRATION = "study-calibration-"
SMOLLM2 = "study-smollm2-"      # SmolLM2-135M-Instruct with LoRA (issue 27 item 5), and its calibration models
# sweep-name prefix -> the rest of the name: (method, offset[, seed])
SWEEP_NAMES = {PAIRED: r"([a-z_]+)-o(\d+)-s(\d+)", EXTENDED: r"([a-z_]+)-o(\d+)-s(\d+)",
               LONG: r"([a-z_]+)-o(\d+)-s(\d+)", TUNED: r"([a-z_]+)-o(\d+)", SMOLLM2: r"([a-z_]+)-o(\d+)-s(\d+)"}
METHODS = ("graddiff", "sago", "pcgrad_r", "ngdiff", "gru", "mgda")
KEPT_LEVELS = (1e-3, 1e-2)  # above the collapsed model's forget quality (calibration: <= 2e-4)
FLOOR = 0.5        # the stated utility floor of the normalised hypervolume (a fraction of the target's)
N_BOOT = 2000


def export_points(c, all_sweeps, path: Path, commits: dict[str, str]) -> int:
    """Append to ``path`` one CSV row per evaluated point of every paired, extended and tuned sweep
    and per calibration model that it does not hold yet; the rows it holds stay as they are (the
    MLflow store of some is gone)."""
    def commit_of(name: str) -> str:
        hits = [sha for prefix, sha in commits.items() if name.startswith(prefix)]
        if not hits:
            raise SystemExit(f"--commit: no PREFIX=SHA names sweep {name!r} (allowed: a prefix of its name)")
        return hits[0]

    rows = []
    for name, parent in sorted(all_sweeps.items()):
        m = next((m for prefix, rest in SWEEP_NAMES.items() for m in [re.fullmatch(re.escape(prefix) + rest, name)]
                  if m), None)
        if not m:
            continue
        pm = parent.data.metrics
        cut = pm.get("target/truncated_inputs")
        for r in sorted(collect(c, parent)[0], key=lambda r: (float(r["params"]["unlearn.lr"]), r["step"] or 0)):
            params = r["params"]
            # the final evaluation's own metrics (a point along the run has only its objectives)
            own = c.get_run(r["run_id"]).data.metrics if r["final"] else {}
            rows.append({"sweep": name, "trial": r["trial_id"], "step": r["step"], "method": m.group(1),
                         "forget": r["forget"] or "npo", "offset": m.group(2),
                         "seed": m.group(3) if m.re.groups > 2 else "0",  # tuned sweeps: unlearn.seed 0
                         "lr": f"{float(params['unlearn.lr']):.6g}",
                         "params": json.dumps(params, sort_keys=True),
                         "forget_quality": repr(float(r["objectives"][FQ])),
                         "model_utility": repr(float(r["objectives"][MU])),
                         "target_forget_quality": repr(pm[f"target/{FQ}"]),
                         "target_model_utility": repr(pm[f"target/{MU}"]), "commit": commit_of(name),
                         "cut_pairs": "" if cut is None else str(int(cut)),
                         "metrics": _metrics_json({**{k: own.get(f"final/{k}") for k in EXTRA_METRICS},
                                                   **{f"target/{k}": pm.get(f"target/{k}") for k in EXTRA_METRICS}})})
    exp = c.get_experiment_by_name("study-calibration")
    runs = c.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"]) if exp else []
    for r in runs:  # the newest run per (subset, model)
        name, model = r.data.tags[tracking.SWEEP_TAG], r.data.tags["raysweep.calibration"]
        m = r.data.metrics
        rows = [x for x in rows if (x["sweep"], x["trial"]) != (name, model)]
        cut = m.get("objective/truncated_inputs")
        rows.append({"sweep": name, "trial": model, "step": "", "method": "", "forget": "",
                     "offset": r.data.params["data.subset.offset"], "seed": "", "lr": "", "params": "{}",
                     "forget_quality": repr(m[f"objective/{FQ}"]), "model_utility": repr(m[f"objective/{MU}"]),
                     "target_forget_quality": "", "target_model_utility": "", "commit": commit_of(name),
                     "cut_pairs": "" if cut is None else str(int(cut)),
                     "metrics": _metrics_json({k: m.get(f"objective/{k}") for k in EXTRA_METRICS})})
    return append_points(path, rows)


def _metrics_json(metrics: dict) -> str:
    return json.dumps({k: v for k, v in metrics.items() if v is not None}, sort_keys=True)


def append_points(path: Path, rows: list[dict]) -> int:
    """Append the rows whose (sweep, trial, step) ``path`` does not hold; its rows stay byte for byte
    (only the header gains the columns added since they were written)."""
    import csv
    import io

    old = path.read_text().splitlines(keepends=True)[1:] if path.exists() else []
    held = {(r["sweep"], r["trial"], r["step"])
            for r in csv.DictReader(io.StringIO(",".join(CSV_FIELDS) + "\n" + "".join(old)))}
    new = [r for r in rows if (r["sweep"], r["trial"], str(r["step"])) not in held]
    buf = io.StringIO()
    csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n").writerows(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(CSV_FIELDS) + "\n" + "".join(old) + buf.getvalue())
    print(f"{path}: {len(old)} points kept, {len(new)} added")
    return len(new)


def read_points(path: Path) -> list[dict]:
    import csv

    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [k for k in CSV_FIELDS if rows and k not in rows[0]]
    if missing:
        raise SystemExit(f"--from: {path} has no column {missing[0]!r} (allowed: a CSV with {', '.join(CSV_FIELDS)})")
    return rows


def _commits(rows) -> str:
    return ", ".join(sorted({r["commit"] for r in rows}))


def calibration_table(rows: list[dict]) -> None:
    cal = [r for r in rows if r["sweep"].startswith(CALIBRATION)]
    if not cal:
        return
    print(f"== Calibration: the noise floor (jobs/study/calibrate.py; raysweep commit {_commits(cal)}) ==")
    cuts = _cuts(rows)
    print(f"{'subset':<8}{'model':<18}{'forget quality':>16}{'utility':>10}{'utility / target':>18}{'cut pairs':>11}")
    for o in sorted({r["offset"] for r in cal}, key=int):
        by = {r["trial"]: r for r in cal if r["offset"] == o}
        t_mu = float(by["target"]["model_utility"]) if "target" in by else None
        for model in ("target", "reference_seed0", "reference_seed1", "collapsed"):
            if model in by:
                fq, mu = float(by[model]["forget_quality"]), float(by[model]["model_utility"])
                print(f"{'o' + o:<8}{model:<18}{fq:>16.3g}{mu:>10.3f}{_fmt(mu / t_mu if t_mu else None):>18}"
                      f"{cuts.get(o, '-'):>11}")
    print(CUTS_NOTE)
    print()


CUTS_NOTE = ("(cut pairs: the scored answers, paraphrases and perturbed answers of the subset's evaluation cut at "
             "eval.max_length 96, by open-unlearning's rule; the same for every model of a subset - it depends on the "
             "subset, the tokenizer and the cap alone, which every study sweep shares - read from the sweeps that logged it)")


def _cuts(rows: list[dict]) -> dict[str, str]:
    """Subset offset -> its evaluation's cut-pair count, from the rows that carry one ("a/b" if they disagree)."""
    by: dict = defaultdict(set)
    for r in rows:
        if r.get("cut_pairs"):
            by[r["offset"]].add(r["cut_pairs"])
    return {o: "/".join(sorted(v, key=int)) for o, v in by.items()}


def _paired_blocks(rows: list[dict]) -> dict:
    """(offset, seed) -> method -> list of (lr, FQ, MU), with the block's target (FQ, MU): a paired
    trial is evaluated once, at its end."""
    blocks, targets = _trials_by_block(rows, PAIRED)
    return {k: {m: [(lr, fq, mu) for t in trials.values() for lr, _, fq, mu in t] for m, trials in b.items()}
            for k, b in blocks.items()}, targets


def paired_tables(rows: list[dict]) -> None:
    from raysweep.sweep.comparison import bootstrap_ci, friedman, nemenyi_cd, normalised_hv, ranks

    paired = [r for r in rows if r["sweep"].startswith(PAIRED)]
    if not paired:
        return
    blocks, targets = _paired_blocks(paired)
    # Only blocks where every method ran (a partial stage leaves the last block short).
    methods = [m for m in METHODS if any(m in b for b in blocks.values())]
    full = sorted((k for k, b in blocks.items() if all(m in b for m in methods)), key=lambda k: (int(k[0]), int(k[1])))
    lrs = sorted({lr for k in full for m in methods for lr, _, _ in blocks[k][m]})
    commit = _commits(paired)
    print(f"== Paired design: every method's default weights on one lr grid, NPO forget, 12 steps "
          f"(raysweep commit {commit}) ==")
    print(f"blocks (subset, unlearning data-order seed): {', '.join(f'o{o}/s{s}' for o, s in full)}; "
          f"targets (FQ, utility): " + ", ".join(f"o{o}: ({targets[(o, s)][0]:.2g}, {targets[(o, s)][1]:.3f})"
                                                  for o, s in sorted({(k[0], '0') for k in full} & set(targets)))
          + "; cut pairs " + ", ".join(f"o{o} {_cuts(rows).get(o, '-')}" for o in sorted({k[0] for k in full}, key=int)))
    print("forget quality / utility kept (utility / the target's) per lr, mean over blocks [min, max]:")
    print(f"{'method':<10}" + "".join(f"{'lr ' + format(lr, '.2g'):>28}" for lr in lrs))
    for m in methods:
        cells = []
        for lr in lrs:
            pts = [(fq, mu / targets[k][1]) for k in full for l_, fq, mu in blocks[k][m] if l_ == lr]
            fqs, kept = [p[0] for p in pts], [p[1] for p in pts]
            if not pts:  # every block's trial at this lr stopped by the divergence guard
                cells.append("-")
                continue
            cells.append(f"{statistics.geometric_mean(max(f, 1e-300) for f in fqs):.2g} / {statistics.mean(kept):.2f} "
                         f"[{min(kept):.2f}, {max(kept):.2f}]")
        print(f"{m:<10}" + "".join(f"{c:>28}" for c in cells))
    print("(forget quality: geometric mean over blocks; kept: mean [min, max] over blocks; a trial stopped by the "
          "divergence guard has no point)")
    print()

    def block_hv(points_by_block, floor):
        return statistics.mean(normalised_hv(points_by_block.get(k, []), targets[k][0], targets[k][1], floor)
                               for k in full)

    print(f"== Paired design: normalised hypervolume per method (log10 FQ from the target's to 1; utility from "
          f"{FLOOR:g} of the target's to the target's; raysweep commit {commit}) ==")
    hv_table = {m: [normalised_hv([(fq, mu) for _, fq, mu in blocks[k][m]], targets[k][0], targets[k][1], FLOOR)
                    for k in full] for m in methods}
    print(f"{'method':<10}" + "".join(f"{'o' + o + '/s' + s:>9}" for o, s in full)
          + f"{'mean':>8}{'CI, trials':>18}{'CI, blocks':>18}{'floor 0':>9}{'linear HV':>11}{'mean rank':>11}"
          + "".join(f"{f'kept@FQ>={lv:g}':>20}" for lv in KEPT_LEVELS))
    mean_ranks = np.mean([ranks([hv_table[m][i] for m in methods]) for i in range(len(full))], axis=0)
    for j, m in enumerate(methods):
        trials = [(k, fq, mu) for k in full for _, fq, mu in blocks[k][m]]

        def stat(ts, floor=FLOOR):
            by: dict = defaultdict(list)
            for k, fq, mu in ts:
                by[k].append((fq, mu))
            return block_hv(by, floor)

        est, lo, hi = bootstrap_ci(trials, stat, n_boot=N_BOOT, seed=0)
        _, blo, bhi = bootstrap_ci(hv_table[m], statistics.mean, n_boot=N_BOOT, seed=0)
        floor0 = stat(trials, 0.0)
        linear = statistics.mean(hv(np.array([(fq, mu) for _, fq, mu in blocks[k][m]]).reshape(-1, 2)) for k in full)
        print(f"{m:<10}" + "".join(f"{v:>9.3f}" for v in hv_table[m]) + f"{est:>8.3f}{f'[{lo:.3f}, {hi:.3f}]':>18}{f'[{blo:.3f}, {bhi:.3f}]':>18}"
              f"{floor0:>9.3f}{linear:>11.4f}{mean_ranks[j]:>11.2f}"
              + "".join(f"{_kept_cell(blocks, targets, full, m, lv):>20}" for lv in KEPT_LEVELS))
    cuts = _cuts(rows)
    print(f"{'cut pairs':<10}" + "".join(f"{cuts.get(o, '-'):>9}" for o, _ in full))
    print(f"(95% bootstrap CIs, {N_BOOT} resamples, seed 0: of the method's trials over all blocks, or of the blocks' "
          "hypervolumes; floor 0: the same hypervolume "
          "with utility floor 0; linear HV: the old measure, FQ x utility against (0, 0), mean over blocks; "
          "kept@FQ>=L: utility / the target's at the highest-utility point with forget quality >= L, mean over the blocks "
          "where one exists (n of N blocks))")
    _friedman_line("blocks = (subset, seed), one hypervolume per method", hv_table, methods, friedman, nemenyi_cd)
    # The same, with the FQ axis starting at the noise floor: the higher of the target's and the
    # collapsed model's forget quality (calibration), so FQ gains a model that knows nothing also
    # reaches earn nothing.
    floor_fq = _floor_fq(rows, full, targets)
    above = {m: [normalised_hv([(fq, mu) for _, fq, mu in blocks[k][m]], floor_fq[k[0]], targets[k][1], FLOOR)
                 for k in full] for m in methods}
    print("above the noise floor (FQ axis from " + ", ".join(f"o{o}: {v:.2g}" for o, v in sorted(floor_fq.items()))
          + "): mean HV " + ", ".join(f"{m} {statistics.mean(above[m]):.3f}" for m in methods))
    _friedman_line("blocks = (subset, seed), hypervolume above the noise floor", above, methods, friedman,
                   nemenyi_cd)
    # Paired by lr too: one block per (subset, seed, lr), a method's single point's normalised area.
    per_point = {m: [normalised_hv([(fq, mu) for l_, fq, mu in blocks[k][m] if l_ == lr], targets[k][0],
                                   targets[k][1], FLOOR) for k in full for lr in lrs] for m in methods}
    _friedman_line("blocks = (subset, seed, lr), one point's area per method", per_point, methods, friedman,
                   nemenyi_cd)
    _wilcoxon_line(per_point, methods)
    print()


def _floor_fq(rows: list[dict], keys, targets) -> dict[str, float]:
    """Subset offset -> the noise floor of forget quality: the higher of the target's and the collapsed
    model's (calibration)."""
    return {o: max([targets[k][0] for k in keys if k[0] == o]
                   + [float(r["forget_quality"]) for r in rows if r["sweep"] == f"{CALIBRATION}o{o}"
                      and r["trial"] == "collapsed"]) for o in {k[0] for k in keys}}


def _kept_cell(blocks, targets, full, method, level) -> str:
    kept = [k for b in full for k in [kept_at(np.array([(fq, mu) for _, fq, mu in blocks[b][method]]).reshape(-1, 2),
                                              targets[b][1], level)] if k is not None]
    return f"{_fmt(statistics.mean(kept) if kept else None, '.2f')} ({len(kept)}/{len(full)})"


def _friedman_line(what: str, table: dict, methods, friedman, nemenyi_cd) -> None:
    t = np.array([[table[m][i] for m in methods] for i in range(len(table[methods[0]]))])
    n = len(t)
    if n < 2 or len(methods) < 3 or np.all(t == t[0]):
        print(f"Friedman ({what}): not computable ({n} blocks, {len(methods)} methods)")
        return
    stat, p, mean_ranks = friedman(t)
    cd = nemenyi_cd(len(methods), n)
    order = sorted(zip(methods, mean_ranks), key=lambda kv: kv[1])
    pairs = [f"{a} < {b}" for i, (a, ra) in enumerate(order) for b, rb in order[i + 1:] if rb - ra > cd]
    print(f"Friedman ({what}): N = {n}, chi2 = {stat:.2f}, df = {len(methods) - 1}, p = {p:.3g}; "
          f"Nemenyi CD (alpha 0.05) = {cd:.2f} ranks; mean ranks " + ", ".join(f"{m} {r:.2f}" for m, r in order)
          + "; pairs apart by more than the CD: " + (", ".join(pairs) if pairs else "none"))


def _wilcoxon_line(per_point: dict, methods) -> None:
    """Each method against GradDiff (the naive baseline of every claim), paired by (subset, seed, lr):
    two-sided Wilcoxon signed-rank on the points' areas, Holm-adjusted over the comparisons."""
    from scipy.stats import wilcoxon

    from raysweep.sweep.comparison import holm

    base = np.array(per_point["graddiff"]) if "graddiff" in per_point else None
    others = [m for m in methods if m != "graddiff"]
    if base is None or not others:
        return
    raw, wins = [], []
    for m in others:
        d = np.array(per_point[m]) - base
        raw.append(float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0)
        wins.append(f"{int(np.sum(d > 0))}/{int(np.sum(d < 0))}")
    print("Wilcoxon signed-rank vs graddiff (blocks = (subset, seed, lr); better/worse blocks; Holm-adjusted p): "
          + ", ".join(f"{m} {w} p = {p:.3g}" for m, w, p in zip(others, wins, holm(raw))))


MATCHED_LEVELS = (1e-3, 1e-2, 1e-1)  # the extended budget's matched-forgetting levels (noise floor: <= 2e-4)


def _trials_by_block(rows: list[dict], prefix: str) -> tuple[dict, dict]:
    """(offset, seed) -> method -> trial -> [(lr, step, FQ, MU)], and (offset, seed) -> the target (FQ, MU)."""
    blocks: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    targets = {}
    for r in rows:
        if r["sweep"].startswith(prefix) and r["step"] != "":
            key = (r["offset"], r["seed"])
            blocks[key][r["method"]][r["trial"]].append(
                (float(r["lr"]), int(r["step"]), float(r["forget_quality"]), float(r["model_utility"])))
            targets[key] = (float(r["target_forget_quality"]), float(r["target_model_utility"]))
    return blocks, targets


def _kept0(points, target_mu: float, level: float) -> float:
    """Utility / the target's at the highest-utility point with forget quality >= level; 0 where no
    point reaches it (not reaching a level counts as keeping nothing at it)."""
    kept = kept_at([(fq, mu) for _, _, fq, mu in points], target_mu, level)
    return 0.0 if kept is None else kept


def _block_order(keys) -> list:
    return sorted(keys, key=lambda k: (int(k[0]), int(k[1])))


def extended_tables(rows: list[dict], prefix: str = EXTENDED, title: str = "SAGO's extended budget") -> None:
    """SAGO's extended budget (issue 27 item 3): what each method reaches at 48 steps and lrs up to
    3e-2 (or, ``prefix`` LONG, 144 steps at low lrs), and the claim's own test - utility kept at
    matched forgetting, against GradDiff."""
    ext = [r for r in rows if r["sweep"].startswith(prefix)]
    if not ext:
        return
    blocks, targets = _trials_by_block(ext, prefix)
    methods = [m for m in METHODS if any(m in b for b in blocks.values())]
    keys = _block_order(blocks)
    steps = sorted({st for b in blocks.values() for t in b.values() for pts in t.values() for _, st, _, _ in pts})
    lrs = sorted({lr for b in blocks.values() for t in b.values() for pts in t.values() for lr, _, _, _ in pts})
    cuts = _cuts(rows)
    print(f"== {title}: default weights, lr grid {lrs[0]:.2g}..{lrs[-1]:.2g}, {steps[-1]} steps evaluated "
          f"every {steps[0]}, NPO forget (raysweep commit {_commits(ext)}) ==")
    print("blocks (subset, data-order seed) per method: " + "; ".join(
        f"{m} " + ", ".join(f"o{o}/s{sd}" for o, sd in keys if m in blocks[(o, sd)]) for m in methods))
    print("cut pairs per subset: " + ", ".join(f"o{o} {cuts.get(o, '-')}" for o in sorted({k[0] for k in keys}, key=int)))
    print(f"forget quality / utility kept at step {steps[-1]} per lr, over the method's blocks (FQ geometric mean; kept "
          "mean [min, max]); then the highest FQ reached at any step and lr:")
    print(f"{'method':<10}" + "".join(f"{'lr ' + format(lr, '.2g'):>28}" for lr in lrs) + f"{'max FQ [min, max]':>28}")
    for m in methods:
        cells = []
        for lr in lrs:
            pts = [(fq, mu / targets[k][1]) for k in keys if m in blocks[k] for t in blocks[k][m].values()
                   for l_, st, fq, mu in t if l_ == lr and st == steps[-1]]
            cells.append("-" if not pts else
                         f"{statistics.geometric_mean(max(p[0], 1e-300) for p in pts):.2g} / "
                         f"{statistics.mean(p[1] for p in pts):.2f} [{min(p[1] for p in pts):.2f}, "
                         f"{max(p[1] for p in pts):.2f}]")
        top = [max(fq for t in blocks[k][m].values() for _, _, fq, _ in t) for k in keys if m in blocks[k]]
        print(f"{m:<10}" + "".join(f"{c:>28}" for c in cells)
              + f"{f'{statistics.geometric_mean(top):.2g} [{min(top):.2g}, {max(top):.2g}]':>28}")
    print("(a trial stopped by the divergence guard keeps the points evaluated before it stopped; \"-\": none at that lr)")
    print()

    print(f"== {title}: utility kept at matched forgetting, against GradDiff (raysweep commit "
          f"{_commits(ext)}) ==")
    print(f"{'method':<10}{'blocks':>7}" + "".join(f"{f'kept@FQ>={lv:g}':>18}" for lv in MATCHED_LEVELS)
          + "".join(f"{f'vs graddiff @{lv:g}':>32}" for lv in MATCHED_LEVELS))
    rng = np.random.default_rng(0)
    for m in methods:
        mine = [k for k in keys if m in blocks[k]]
        kept = {lv: [_kept0([p for t in blocks[k][m].values() for p in t], targets[k][1], lv) for k in mine]
                for lv in MATCHED_LEVELS}
        cells = "".join(f"{f'{statistics.mean(v):.2f} ({sum(x > 0 for x in v)}/{len(v)})':>18}" for v in kept.values())
        both = [k for k in mine if "graddiff" in blocks[k]]
        diffs = ""
        if m != "graddiff" and both:
            for lv in MATCHED_LEVELS:
                d = [_kept0([p for t in blocks[k][m].values() for p in t], targets[k][1], lv)
                     - _kept0([p for t in blocks[k]["graddiff"].values() for p in t], targets[k][1], lv) for k in both]
                boots = []
                for _ in range(N_BOOT):  # trials resampled with replacement within each (block, method)
                    bd = []
                    for k in both:
                        kb = []
                        for who in (m, "graddiff"):
                            ts = list(blocks[k][who].values())
                            kb.append(_kept0([p for i in rng.integers(0, len(ts), len(ts)) for p in ts[i]],
                                             targets[k][1], lv))
                        bd.append(kb[0] - kb[1])
                    boots.append(statistics.mean(bd))
                lo, hi = np.quantile(boots, [0.025, 0.975])
                diffs += (f"{f'{statistics.mean(d):+.2f} [{lo:+.2f}, {hi:+.2f}] {sum(x > 0 for x in d)}/{sum(x < 0 for x in d)}':>32}")
        print(f"{m:<10}{len(mine):>7}{cells}{diffs}")
    print(f"(kept@FQ>=L: utility / the target's at the highest-utility point - any lr, any evaluated step - with forget "
          f"quality >= L, 0 where none reaches L; mean over the method's blocks (blocks where one reaches L / blocks). "
          f"vs graddiff: the mean over the blocks both ran of the difference, its 95% bootstrap CI ({N_BOOT} resamples, "
          "seed 0, each method's trials resampled within each block) and the blocks where it is better/worse)")
    print()


def tuned_tables(rows: list[dict]) -> None:
    """The tuned comparison (issue 27 item 2): each method's own full space, the same number of
    trials, side by side with the paired design's blocks of the same data order (seed 0)."""
    from raysweep.sweep.comparison import bootstrap_ci, friedman, nemenyi_cd, normalised_hv

    tuned = [r for r in rows if r["sweep"].startswith(TUNED)]
    if not tuned:
        return
    blocks, targets = _trials_by_block(tuned, TUNED)
    pblocks, ptargets = _trials_by_block(rows, PAIRED)
    methods = [m for m in METHODS if any(m in b for b in blocks.values())]
    keys = [k for k in _block_order(blocks) if all(m in blocks[k] for m in methods)]
    cuts = _cuts(rows)
    counts = sorted({len(blocks[k][m]) for k in keys for m in methods})

    def pts(b, k, m):
        return [(fq, mu) for t in b[k][m].values() for _, _, fq, mu in t]

    hv_t = {m: [normalised_hv(pts(blocks, k, m), targets[k][0], targets[k][1], FLOOR) for k in keys] for m in methods}
    same = [k for k in keys if k in pblocks and all(m in pblocks[k] for m in methods)]
    hv_p = {m: [normalised_hv(pts(pblocks, k, m), ptargets[k][0], ptargets[k][1], FLOOR) for k in same] for m in methods}
    print(f"== Tuned comparison: each method's own full space (search_spaces/study/lr_high), TPE, "
          f"{'/'.join(map(str, counts))} trials per method and subset, 12 steps, NPO forget, data-order seed 0 "
          f"(raysweep commit {_commits(tuned)}), beside the paired design's blocks of the same seed ==")
    head = "".join(f"{'o' + o + '/s' + sd:>9}" for o, sd in keys)
    print(f"{'':<10}{'tuned: normalised HV':<{9 * len(keys) + 26}}{'lr drawn':>10}"
          f"  {'paired, same blocks':<{9 * len(same) + 8}}")
    print(f"{'method':<10}{head}{'mean':>8}{'CI, trials':>18}{'gmean':>10}  "
          + "".join(f"{'o' + o + '/s' + sd:>9}" for o, sd in same) + f"{'mean':>8}")
    for m in methods:
        trials = [(k, t) for k in keys for t in blocks[k][m].values()]

        def stat(ts):
            by: dict = defaultdict(list)
            for k, t in ts:
                by[k] += [(fq, mu) for _, _, fq, mu in t]
            return statistics.mean(normalised_hv(by.get(k, []), targets[k][0], targets[k][1], FLOOR) for k in keys)

        est, lo, hi = bootstrap_ci(trials, stat, n_boot=N_BOOT, seed=0)
        lr_g = statistics.geometric_mean(t[0][0] for k in keys for t in blocks[k][m].values())
        paired_cells = "".join(f"{v:>9.3f}" for v in hv_p[m]) + (f"{statistics.mean(hv_p[m]):>8.3f}" if same else "")
        print(f"{m:<10}" + "".join(f"{v:>9.3f}" for v in hv_t[m]) + f"{est:>8.3f}{f'[{lo:.3f}, {hi:.3f}]':>18}"
              f"{lr_g:>10.2g}  {paired_cells}")
    print(f"{'cut pairs':<10}" + "".join(f"{cuts.get(o, '-'):>9}" for o, _ in keys))
    floor_fq = _floor_fq(rows, keys, targets)
    above_t = {m: [normalised_hv(pts(blocks, k, m), floor_fq[k[0]], targets[k][1], FLOOR) for k in keys] for m in methods}
    above_p = {m: [normalised_hv(pts(pblocks, k, m), floor_fq[k[0]], ptargets[k][1], FLOOR) for k in same]
               for m in methods}
    print("above the noise floor (FQ axis from " + ", ".join(f"o{o}: {v:.2g}" for o, v in sorted(floor_fq.items()))
          + "): mean HV tuned / paired, same blocks: " + ", ".join(
              f"{m} {statistics.mean(above_t[m]):.3f} / {statistics.mean(above_p[m]) if same else float('nan'):.3f}"
              for m in methods))
    print(f"(normalised HV as in the paired design (utility floor {FLOOR:g} of the target's); CI: 95% bootstrap over the "
          f"method's trials, {N_BOOT} resamples, seed 0; lr drawn: geometric mean of the lrs TPE drew; paired, same "
          "blocks: the paired design's hypervolume on the blocks with the same subset and data order)")
    _friedman_line("tuned, blocks = (subset, seed)", hv_t, methods, friedman, nemenyi_cd)
    if same:
        _friedman_line("paired, the same blocks", hv_p, methods, friedman, nemenyi_cd)
    print()


def smollm2_table(rows: list[dict]) -> None:
    """SmolLM2-135M-Instruct with LoRA (issue 27 item 5): each (method, lr) point beside the models that
    were not unlearned - the untuned pretrained model, the target, the retain reference."""
    mine = [r for r in rows if r["sweep"].startswith(SMOLLM2)]
    trials = [r for r in mine if r["step"] != ""]
    if not trials:
        return
    cuts = _cuts(rows)
    steps = "/".join(sorted({r["step"] for r in trials}, key=int))
    print(f"== SmolLM2-135M-Instruct, LoRA r 8: TOFU authors 15-19, forget author 19, NPO forget, {steps} steps, "
          f"default weights, no prior-knowledge rows (raysweep commit {_commits(mine)}) ==")
    cols = ("forget answer loss", "forget truth ratio", "forget ROUGE-L", "retain ROUGE-L")
    print(f"{'model':<18}{'lr':>8}{'forget quality':>16}{'utility':>9}{'kept':>7}" + "".join(f"{c:>20}" for c in cols)
          + f"{'cut pairs':>11}")
    for o in sorted({r["offset"] for r in trials}, key=int):
        t = next(r for r in trials if r["offset"] == o)
        t_mu = float(t["target_model_utility"])

        def line(label, lr, fq, mu, extra):
            print(f"{label:<18}{lr:>8}{float(fq):>16.3g}{float(mu):>9.3f}{float(mu) / t_mu:>7.2f}"
                  + "".join(f"{_fmt(extra.get(k)):>20}" for k in EXTRA_METRICS) + f"{cuts.get(o, '-'):>11}")

        cal = {r["trial"]: r for r in mine if r["step"] == "" and r["offset"] == o}
        if "untuned" in cal:
            line("untuned", "", cal["untuned"]["forget_quality"], cal["untuned"]["model_utility"],
                 json.loads(cal["untuned"]["metrics"] or "{}"))
        tm = json.loads(t["metrics"] or "{}")
        line("target", "", t["target_forget_quality"], t_mu, {k: tm.get(f"target/{k}") for k in EXTRA_METRICS})
        if "reference_seed0" in cal:
            r0 = cal["reference_seed0"]
            line("retain reference", "", r0["forget_quality"], r0["model_utility"], json.loads(r0["metrics"] or "{}"))
        order = {m: i for i, m in enumerate(METHODS)}
        for r in sorted((r for r in trials if r["offset"] == o), key=lambda r: (order.get(r["method"], 99),
                                                                                float(r["lr"]), int(r["step"]))):
            line(r["method"], f"{float(r['lr']):.0e}", r["forget_quality"], r["model_utility"],
                 json.loads(r["metrics"] or "{}"))
    print("(one trial per method and lr, unlearning data-order seed 0; kept: utility / the target's; utility: TOFU's "
          "model utility, on the subset's retain authors and on SmolLM2's own real-author and world-fact knowledge; "
          "untuned: the pretrained model before any TOFU fine-tuning; the retain reference's forget quality is 1 by "
          "construction)")
    print()


def tables_from_csv(path: Path) -> None:
    rows = read_points(path)
    calibration_table(rows)
    paired_tables(rows)
    extended_tables(rows)
    extended_tables(rows, LONG, "SAGO's long budget")
    tuned_tables(rows)
    smollm2_table(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'study_runs' / 'mlflow.db'}")
    ap.add_argument("--out", default=str(REPO / "docs" / "study"))
    ap.add_argument("--fq-level", type=float, nargs="+", default=[0.001, 0.03, 0.3],
                    help="forget quality levels a front point must reach for 'utility kept at matched forgetting'")
    ap.add_argument("--only", choices=["method", "method2", "objective", "sampler", "geffect", "method20",
                                       "objective20"])
    ap.add_argument("--from", dest="from_csv", help="print RESULTS.md's tables from this per-point CSV (no MLflow)")
    ap.add_argument("--export", help="write the per-point CSV of the paired and calibration runs from the MLflow store")
    ap.add_argument("--commit", nargs="+", default=[], metavar="PREFIX=SHA",
                    help="with --export: the raysweep commit that ran the sweeps whose name starts with PREFIX")
    args = ap.parse_args(argv)
    if args.from_csv:
        tables_from_csv(Path(args.from_csv))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c = tracking.client(args.tracking_uri)
    all_sweeps = sweeps(c)
    if args.export:
        bad = [x for x in args.commit if "=" not in x]
        if bad:
            raise SystemExit(f"--commit: {bad[0]!r} is not allowed (PREFIX=SHA)")
        export_points(c, all_sweeps, Path(args.export), dict(x.split("=", 1) for x in args.commit))
        return 0
    tables = {"method": lambda: method_table(c, all_sweeps, out, args.fq_level),
              "method2": lambda: method_table(c, all_sweeps, out, args.fq_level, prefix="study-method2-"),
              "objective": lambda: objective_table(c, all_sweeps, out, args.fq_level),
              "method20": lambda: round3_table(c, all_sweeps, out, args.fq_level),
              "objective20": lambda: round3_table(c, all_sweeps, out, args.fq_level, objective_study=True),
              "sampler": lambda: sampler_table(c, all_sweeps, out),
              "geffect": lambda: geffect_table(c, all_sweeps, out)}
    for name, fn in tables.items():
        if args.only in (None, name):
            fn()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
