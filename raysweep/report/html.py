"""``raysweep report SWEEP [--out DIR]``: one self-contained HTML page (and a Markdown twin) built
from MLflow alone, from the report :func:`raysweep.sweep.report.pareto_report` computes.

The page: the front plot (every evaluated point, the front as a staircase, labelled, one colour
per method, hover = the configuration), the table of non-dominated configurations with their
checkpoints and runs, every method's front on shared axes, the fronts after 25/50/75/100% of the
trials overlaid, hypervolume by finished trials, hyperparameter importance per objective
(:mod:`raysweep.sweep.importance`), and parallel coordinates of method, hyperparameters and
objectives. Charts (:mod:`.charts`) are inline SVG whose hover text is SVG ``<title>``: no script,
no CDN, the file opens offline and survives being mailed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from raysweep.report.charts import (colours, esc, fmt, history_svg, importance_svg, methods_svg, parallel_svg,
                                    scatter_svg, time_svg)
from raysweep.sweep.report import point_label


def _importance_section(report: dict) -> list[str]:
    imp = report.get("importance")
    if not imp:
        return ["<p class='muted'>Not computed (<code>raysweep report</code> computes it from the sweep's runs).</p>"]
    parts = [f"<p>{esc(imp['evaluator'])} on the {imp['n_trials']} finished trials (their final evaluation), one "
             "importance per objective. fANOVA compares only parameters every trial has: the whole sweep is "
             "ranked over the parameters common to all trials, each method over its own trials, its own "
             "parameters included. Also logged to the parent run as <code>importance.json</code>.</p>"]
    for i, g in enumerate(imp["groups"]):
        parts.append(f"<h3>{esc(g['name'])} <span class='muted'>({esc(g['scope'])}; {_ranked_on(g)})</span></h3>")
        if g.get("skipped"):
            parts.append(f"<p class='muted'>Not ranked: {esc(g['skipped'])}.</p>")
        else:
            if g.get("constant"):
                parts.append(f"<p class='muted'>Constant over these trials (nothing to explain): "
                             f"{esc(', '.join(g['constant']))}.</p>")
            parts.append(importance_svg(g, report["objectives"], i))
    return parts


def _ranked_on(group: dict) -> str:
    """``125 trials``, or ``200 of 1250 trials (a seeded random sample)`` where fANOVA ranked a sample."""
    n, used = group["n_trials"], group.get("n_sampled", group["n_trials"])
    return f"{n} trials" if used == n else f"{used} of {n} trials (a seeded random sample)"


class Run:
    """A table's MLflow run cell: a link on a tracking server, else the run's name with its id."""

    def __init__(self, name: str, run_id: str, url: Optional[str]):
        self.name, self.run_id, self.url = name, run_id, url

    def html(self) -> str:
        if self.url:
            return f"<a href='{esc(self.url)}' title='run id {esc(self.run_id)}'>{esc(self.name)}</a>"
        return f"<span title='run id {esc(self.run_id)}'>{esc(self.name)}</span> <code>{esc(self.run_id[:8])}</code>"

    def markdown(self) -> str:
        return f"[{self.name}]({self.url})" if self.url else f"{self.name} (`{self.run_id[:8]}`)"


def _front_table(report: dict, link_base: Optional[str]) -> list[list]:
    from raysweep.sweep.front_marks import run_link
    from raysweep.sweep.tracking import child_run_name

    names = list(report["objectives"])
    rows = []
    for r in sorted(report["front"], key=lambda r: r["objectives"][names[0]]):
        hp = ", ".join(f"{k}={fmt(v)}" for k, v in sorted((r.get("flat_params") or r["params"]).items())
                       if k not in ("method", "forget"))
        run = run_link(report["experiment_id"], r["run_id"], link_base) if link_base else None
        name = r.get("run_name") or child_run_name(r["method"], r["forget"], r["trial_id"])
        rows.append([point_label(r), "-" if r["step"] is None else str(r["step"]), r["method"] or "",
                     r["forget"] or "", *[f"{r['objectives'][n]:.4g}" for n in names], hp,
                     r.get("checkpoint_uri") or "-", f"raysweep export {report['sweep']} {point_label(r)} OUT_DIR",
                     Run(name, r["run_id"], run)])
    return rows


def _front_head(report: dict) -> list[str]:
    return ["point", "step", "method", "forget", *[f"{n} ({d})" for n, d in report["objectives"].items()],
            "hyperparameters", "checkpoint", "export", "MLflow run"]


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 4px}.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:11px}.muted{color:#666;font-size:12px}
.chart{display:block;width:100%;max-width:1160px;height:auto}
circle:hover,polyline:hover,g.line:hover path{stroke:#000;stroke-opacity:1}
td code,td.run{white-space:nowrap;overflow-wrap:normal;word-break:normal}"""


def render_html(report: dict, link_base: Optional[str] = None) -> str:
    rows = report["trials"]
    palette = colours(rows)
    ref = ", ".join(f"{k}={fmt(v)}" for k, v in report["reference_point"].items())
    more = len(report["objectives"]) > 2
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>raysweep report: {esc(report['sweep'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Sweep {esc(report['sweep'])}</h1>",
             f"<p id='summary'>Pareto front: <b>{len(report['front'])}</b> of {report['n_points']} evaluated points "
             f"from {report['n_finished']} finished trials ({report['n_feasible']} feasible points). "
             f"Hypervolume <b>{report['hypervolume']:.5g}</b> against ({esc(ref)}), {esc(report['reference_point_source'])}. "
             f"Objectives: {esc(', '.join(f'{k} ({d})' for k, d in report['objectives'].items()))}.</p>",
             "<p class='muted'>Hover a point or a line for its configuration. Built from MLflow "
             f"({esc(report['tracking_uri'])}) by <code>raysweep report</code>.{_front_view(report, link_base)}"
             + (" The charts show the first two objectives; their staircases join the points that are "
                "non-dominated on those two." if more else "") + "</p>",
             "<h2>Front</h2>", scatter_svg(rows, report["objectives"], palette,
                                             title=f"all evaluated points, front labelled (HV {report['hypervolume']:.4g})"),
             "<h2>Non-dominated configurations</h2>", _html_table(_front_head(report), _front_table(report, link_base),
                                                                  table_id="front-table"),
             "<h2>Per method</h2>", _html_table(["method", "trials", "points", "front points", "hypervolume"],
                                                [[m, str(v["n_trials"]), str(v["n_points"]), str(len(v["front"])),
                                                  f"{v['hypervolume']:.5g}"] for m, v in report["per_method"].items()]),
             "<p class='muted'>Each method's own front on the same axes, as the staircase of what it attains; "
             "hypervolumes against the sweep's reference point.</p>", methods_svg(report, palette),
             "<h2>Fronts over time</h2>",
             "<p class='muted'>The front after the first 25, 50, 75 and 100% of the finished trials (in the order "
             "they finished): how far each stage of the search had got.</p>", time_svg(report),
             "<h2>Hypervolume by finished trials</h2>", history_svg(report["hypervolume_history"]),
             "<h2>Hypervolume by unlearning steps spent</h2>",
             "<p class='muted'>The anytime curve: what the search had found for the steps it had trained. An "
             "early-stopping scheduler (sweep.scheduler) is worth its settings if it climbs faster here.</p>",
             history_svg(report["hypervolume_history"], x="steps"),
             "<h2>Hyperparameter importance</h2>", *_importance_section(report),
             "<h2>Hyperparameters and objectives</h2>",
             "<p class='muted'>Parallel coordinates: one line per evaluated point, coloured by method; front points "
             "bold. A parameter a method does not have is a gap in its line. Objective axes are oriented so that "
             "better is up (an objective to minimise is flipped); parameters spanning more than 20x are on a log "
             "axis.</p>",
             parallel_svg(rows, report["objectives"], palette), "</body></html>"]
    return "\n".join(parts)


def _front_view(report: dict, link_base: Optional[str]) -> str:
    if not link_base:
        return ""
    from raysweep.sweep.front_marks import front_runs_link

    return f" <a href='{esc(front_runs_link(report['experiment_id'], report['sweep'], link_base))}'>The front in MLflow</a>."


def _html_table(head: list[str], rows: list[list], table_id: str = "") -> str:
    def cell(v) -> str:
        if isinstance(v, Run):
            return f"<td class='run'>{v.html()}</td>"
        if v.startswith("raysweep ") or v.startswith(("runs:/", "/")):
            return f"<td><code>{esc(v)}</code></td>"
        return f"<td>{esc(v)}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return (f"<div class='scroll'><table{f' id={table_id!r}' if table_id else ''}><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody></table></div>")


def render_markdown(report: dict, link_base: Optional[str] = None) -> str:
    def table(head, rows):
        esc = lambda v: (v.markdown() if isinstance(v, Run) else str(v)).replace("|", "\\|")  # noqa: E731
        return "\n".join(["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])

    names = list(report["objectives"])
    imp = report.get("importance")
    importance = ["Not computed."] if not imp else [f"{imp['evaluator']}; the whole sweep over the parameters all "
                                                   "trials have, each method over its own trials."] + [
        f"**{g['name']}** ({_ranked_on(g)}): " + (f"not ranked, {g['skipped']}." if g.get("skipped") else "\n\n"
        + table(["parameter", *names], [[p, *[f"{g['importance'][n].get(p, 0.0):.3f}" for n in names]]
                                        for p in g["params"]])) for g in imp["groups"]]
    ref = ", ".join(f"{k}={fmt(v)}" for k, v in report["reference_point"].items())
    return "\n\n".join([
        f"# Sweep {report['sweep']}",
        f"Pareto front: **{len(report['front'])}** of {report['n_points']} evaluated points from "
        f"{report['n_finished']} finished trials; hypervolume **{report['hypervolume']:.5g}** against ({ref}), "
        f"{report['reference_point_source']}.",
        "![front](front.svg)",
        "## Non-dominated configurations", table(_front_head(report), _front_table(report, link_base)),
        "## Per method", table(["method", "trials", "points", "front points", "hypervolume"],
                               [[m, v["n_trials"], v["n_points"], len(v["front"]), f"{v['hypervolume']:.5g}"]
                                for m, v in report["per_method"].items()]),
        "![each method's front](methods.svg)",
        "## Fronts over time", "![fronts over time](fronts_over_time.svg)",
        table(["after", "trials", "front", "hypervolume"],
              [[f"{f['fraction']:.0%}", f["trials"], ", ".join(point_label(r) for r in f["front"]),
                f"{f['hypervolume']:.5g}"] for f in report.get("fronts_over_time", [])]),
        "## Hypervolume by finished trials", "![hypervolume](hypervolume.svg)",
        "![hypervolume by unlearning steps spent](hypervolume_by_steps.svg)",
        table(["trials", "last trial", "steps spent", "hypervolume"],
              [[h["trials"], h["trial_id"], h["steps"], f"{h['hypervolume']:.5g}"]
               for h in report["hypervolume_history"]]),
        "## Hyperparameter importance", *importance,
        "## Hyperparameters and objectives", "![parallel coordinates](parallel.svg)", ""])


def write_report(report: dict, out_dir: str | Path, link_base: Optional[str] = None) -> dict[str, Path]:
    """``report.html`` (self-contained) and ``report.md`` with the SVGs it shows, in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    palette = colours(report["trials"])
    svgs = {"front": scatter_svg(report["trials"], report["objectives"], palette),
            "methods": methods_svg(report, palette), "fronts_over_time": time_svg(report),
            "hypervolume": history_svg(report["hypervolume_history"]),
            "hypervolume_by_steps": history_svg(report["hypervolume_history"], x="steps"),
            "parallel": parallel_svg(report["trials"], report["objectives"], palette)}
    files = {"html": out / "report.html", "markdown": out / "report.md", **{k: out / f"{k}.svg" for k in svgs}}
    files["html"].write_text(render_html(report, link_base))
    files["markdown"].write_text(render_markdown(report, link_base))
    for k, svg in svgs.items():
        files[k].write_text(svg)
    return files
