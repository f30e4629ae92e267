"""``raysweep report SWEEP [--out DIR]``: one self-contained HTML page (and a Markdown twin) built
from MLflow alone, from the report :func:`raysweep.sweep.report.pareto_report` computes.

The page: the front plot (every evaluated point, the front highlighted and labelled, one colour
per method, hover = the configuration), each method's own front and hypervolume, hypervolume by
finished trials, parallel coordinates of hyperparameters against objectives, and the table of
non-dominated configurations with their checkpoints. Charts are inline SVG whose hover text is
SVG ``<title>``: no script, no CDN, the file opens offline and survives being mailed.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Optional, Sequence

from raysweep.sweep.report import point_label

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _g(v) -> str:
    f = _num(v)
    return f"{f:.4g}" if f is not None else str(v)


class Axis:
    """A value -> pixel map: linear, log (positive values spanning more than 20x), or categorical."""

    def __init__(self, values: Sequence, lo_px: float, hi_px: float):
        nums = [_num(v) for v in values if v is not None]
        self.lo_px, self.hi_px = lo_px, hi_px
        self.categories = None
        if values and any(n is None for n in nums):
            self.categories = sorted({str(v) for v in values if v is not None})
            return
        nums = [n for n in nums if n is not None] or [0.0, 1.0]
        lo, hi = min(nums), max(nums)
        self.log = lo > 0 and hi / lo > 20
        if self.log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:  # one value: a small range around it, not one crossing zero
            half = abs(lo) * 0.25 or 0.5
            lo, hi = lo - half, hi + half
        pad = (hi - lo) * 0.06
        self.lo, self.hi = lo - pad, hi + pad

    def __call__(self, v) -> float:
        if self.categories is not None:
            n = len(self.categories)
            i = self.categories.index(str(v)) if str(v) in self.categories else 0
            frac = 0.5 if n == 1 else i / (n - 1)
        else:
            f = _num(v)
            f = math.log10(f) if self.log and f and f > 0 else f
            frac = (f - self.lo) / (self.hi - self.lo)
        return self.lo_px + frac * (self.hi_px - self.lo_px)

    def ticks(self, n: int = 5) -> list[tuple[float, str]]:
        """Round values inside the axis (1, 2, 5 x 10^k steps; powers of ten on a log axis)."""
        if self.categories is not None:
            return [(self(c), c) for c in self.categories]
        if self.log:
            vals = [10.0 ** k for k in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
            if len(vals) < 3:
                vals = sorted({m * 10.0 ** k for k in range(math.floor(self.lo), math.ceil(self.hi) + 1)
                               for m in (1, 2, 5) if self.lo <= math.log10(m * 10.0 ** k) <= self.hi})
        else:
            raw = (self.hi - self.lo) / n
            mag = 10 ** math.floor(math.log10(raw))
            step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
            vals = [k * step for k in range(math.ceil(self.lo / step), math.floor(self.hi / step) + 1)]
        return [(self(v), f"{v:.3g}") for v in vals]


def colours(rows: list[dict]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted({r["method"] or "?" for r in rows}))}


def hover(r: dict, names: list[str]) -> str:
    """The configuration of a point, as the chart's hover text."""
    hp = r.get("flat_params") or {k: v for k, v in r.get("params", {}).items() if k not in ("method", "forget")}
    lines = [f"{point_label(r)}: {r['method']} / {r['forget']}" + (" (on the front)" if r["pareto"] else "")
             + ("" if r["feasible"] else " (infeasible)")]
    lines += [f"{n} = {_g(r['objectives'][n])}" for n in names]
    lines += [f"{k} = {_g(v)}" for k, v in sorted(hp.items())]
    lines.append(f"checkpoint: {r.get('checkpoint_uri') or '-'}")
    return "\n".join(lines)


def scatter_svg(rows: list[dict], objectives: dict[str, str], palette: dict[str, str], *, width=640, height=440,
                title: str = "", labels: bool = True) -> str:
    names = list(objectives)
    x, y = names[0], names[1] if len(names) > 1 else names[0]
    left, right, top, bottom = 70, width - 130, 30, height - 50  # the legend sits right of the plot
    ax = Axis([r["objectives"][x] for r in rows], left, right)
    ay = Axis([r["objectives"][y] for r in rows], bottom, top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'class="chart" role="img"><title>{_e(title or "Pareto front")}</title>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafafa" stroke="#ccc"/>']
    for px, t in ax.ticks():
        out.append(f'<text x="{px:.1f}" y="{bottom + 16}" font-size="10" text-anchor="middle">{_e(t)}</text>')
    for py, t in ay.ticks():
        out.append(f'<text x="{left - 6}" y="{py + 3:.1f}" font-size="10" text-anchor="end">{_e(t)}</text>')
    better = {"min": "lower is better", "max": "higher is better"}
    out.append(f'<text x="{(left + right) / 2}" y="{height - 12}" font-size="12" text-anchor="middle">'
               f'{_e(x)} ({better[objectives[x]]})</text>')
    out.append(f'<text transform="translate(16,{(top + bottom) / 2}) rotate(-90)" font-size="12" text-anchor="middle">'
               f'{_e(y)} ({better[objectives[y]]})</text>')
    if title:
        out.append(f'<text x="{left}" y="18" font-size="13" font-weight="bold">{_e(title)}</text>')
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["objectives"][x])
    if len(front) > 1:
        pts = " ".join(f"{ax(r['objectives'][x]):.1f},{ay(r['objectives'][y]):.1f}" for r in front)
        out.append(f'<polyline points="{pts}" fill="none" stroke="#333" stroke-dasharray="4 3"/>')
    for r in sorted(rows, key=lambda r: r["pareto"]):  # the front drawn last, on top
        cx, cy, col = ax(r["objectives"][x]), ay(r["objectives"][y]), palette[r["method"] or "?"]
        fill = col if r["feasible"] else "none"
        size, stroke = (7, 'stroke="#000" stroke-width="2"') if r["pareto"] else (4, f'stroke="{col}" stroke-width="1.5"')
        cls = "front" if r["pareto"] else "point"
        out.append(f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{size}" fill="{fill}" '
                   f'fill-opacity="{0.9 if r["pareto"] else 0.55}" {stroke}><title>{_e(hover(r, names))}</title></circle>')
        if r["pareto"] and labels:  # left of points near the right edge, so the label stays inside
            flip = cx > right - 70
            out.append(f'<text class="label" x="{cx - 9 if flip else cx + 9:.1f}" y="{cy - 7:.1f}" font-size="10" '
                       f'text-anchor="{"end" if flip else "start"}">{_e(point_label(r))}</text>')
    out.append(_legend(palette, right + 18, top + 8))
    out.append("</svg>")
    return "\n".join(out)


def _legend(palette: dict[str, str], x: float, y: float) -> str:
    out = [f'<g font-size="11">']
    for i, (m, col) in enumerate(palette.items()):
        out.append(f'<circle cx="{x}" cy="{y + 14 * i}" r="5" fill="{col}"/>'
                   f'<text x="{x + 10}" y="{y + 14 * i + 4}">{_e(m)}</text>')
    i = len(palette)
    out.append(f'<circle cx="{x}" cy="{y + 14 * i}" r="6" fill="none" stroke="#000" stroke-width="2"/>'
               f'<text x="{x + 10}" y="{y + 14 * i + 4}">Pareto front</text>')
    out.append(f'<circle cx="{x}" cy="{y + 14 * (i + 1)}" r="4" fill="none" stroke="#555"/>'
               f'<text x="{x + 10}" y="{y + 14 * (i + 1) + 4}">infeasible</text></g>')
    return "".join(out)


def history_svg(history: list[dict], *, width=640, height=260) -> str:
    left, right, top, bottom = 70, width - 20, 20, height - 40
    ax = Axis([h["trials"] for h in history] or [1], left, right)
    ay = Axis([h["hypervolume"] for h in history] or [0.0], bottom, top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" role="img">'
           f'<title>Hypervolume by finished trials</title>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafafa" stroke="#ccc"/>']
    pts, prev = [], None
    for h in history:  # a step line: the front only changes when a trial ends
        px, py = ax(h["trials"]), ay(h["hypervolume"])
        if prev is not None:
            pts.append(f"{px:.1f},{prev:.1f}")
        pts.append(f"{px:.1f},{py:.1f}")
        prev = py
    out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    for h in history:
        out.append(f'<circle cx="{ax(h["trials"]):.1f}" cy="{ay(h["hypervolume"]):.1f}" r="3" fill="{PALETTE[0]}">'
                   f'<title>{h["trials"]} trials (last: {_e(h["trial_id"])}): HV {h["hypervolume"]:.5g}</title></circle>')
    for px, t in ax.ticks():
        out.append(f'<text x="{px:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{_e(t)}</text>')
    for py, t in ay.ticks(4):
        out.append(f'<text x="{left - 6}" y="{py + 3:.1f}" font-size="10" text-anchor="end">{_e(t)}</text>')
    out.append(f'<text x="{(left + right) / 2}" y="{height - 6}" font-size="12" text-anchor="middle">finished trials</text>')
    out.append(f'<text transform="translate(14,{(top + bottom) / 2}) rotate(-90)" font-size="12" '
               f'text-anchor="middle">hypervolume</text></svg>')
    return "\n".join(out)


def parallel_svg(rows: list[dict], objectives: dict[str, str], palette: dict[str, str], *, height=360) -> str:
    """One polyline per evaluated point across hyperparameter axes then objective axes; a method
    without a hyperparameter passes through the axis's 'n/a' mark below it."""
    hps = sorted({k for r in rows for k in (r.get("flat_params") or r.get("params") or {})})
    axes = [("hp", k) for k in hps] + [("obj", k) for k in objectives]
    width = max(640, 150 * len(axes) + 60)
    top, bottom, na = 48, height - 50, height - 30
    xs = [80 + i * (width - 170) / max(1, len(axes) - 1) for i in range(len(axes))]

    def value(r, kind, k):
        return r["objectives"][k] if kind == "obj" else (r.get("flat_params") or r.get("params") or {}).get(k)

    scales = [Axis([value(r, kind, k) for r in rows if value(r, kind, k) is not None], bottom, top)
              for kind, k in axes]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" role="img">'
           f'<title>Parallel coordinates: hyperparameters and objectives</title>']
    for r in sorted(rows, key=lambda r: r["pareto"]):
        pts = []
        for (kind, k), x, sc in zip(axes, xs, scales):
            v = value(r, kind, k)
            pts.append(f"{x:.1f},{(sc(v) if v is not None else na):.1f}")
        col = palette[r["method"] or "?"]
        w, op = (2.5, 0.95) if r["pareto"] else (1, 0.35)
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{col}" stroke-width="{w}" '
                   f'stroke-opacity="{op}"><title>{_e(hover(r, list(objectives)))}</title></polyline>')
    for i, ((kind, k), x, sc) in enumerate(zip(axes, xs, scales)):
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#444"/>')
        label = f"{k} ({objectives[k]})" if kind == "obj" else k
        out.append(f'<text x="{x:.1f}" y="{top - 10 - 14 * (i % 2)}" font-size="11" text-anchor="middle" '
                   f'font-weight="{"bold" if kind == "obj" else "normal"}">{_e(label)}</text>')
        for py, t in sc.ticks(4):
            out.append(f'<text x="{x + 4:.1f}" y="{py + 3:.1f}" font-size="9">{_e(t)}</text>')
        out.append(f'<text x="{x:.1f}" y="{na + 14}" font-size="9" text-anchor="middle" fill="#888">n/a</text>')
    out.append("</svg>")
    return "\n".join(out)


def _front_table(report: dict, link_base: Optional[str]) -> list[list[str]]:
    from raysweep.sweep.front_marks import run_link

    names = list(report["objectives"])
    rows = []
    for r in sorted(report["front"], key=lambda r: r["objectives"][names[0]]):
        hp = ", ".join(f"{k}={_g(v)}" for k, v in sorted((r.get("flat_params") or r["params"]).items())
                       if k not in ("method", "forget"))
        run = run_link(report["experiment_id"], r["run_id"], link_base) if link_base else None
        rows.append([point_label(r), "-" if r["step"] is None else str(r["step"]), r["method"] or "",
                     r["forget"] or "", *[f"{r['objectives'][n]:.4g}" for n in names], hp,
                     r.get("checkpoint_uri") or "-", f"raysweep export {report['sweep']} {point_label(r)} OUT_DIR",
                     run or r["run_id"]])
    return rows


def _front_head(report: dict) -> list[str]:
    return ["point", "step", "method", "forget", *[f"{n} ({d})" for n, d in report["objectives"].items()],
            "hyperparameters", "checkpoint", "export", "MLflow run"]


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:11px}.small{display:inline-block;
margin:0 8px 8px 0}.muted{color:#666;font-size:12px}.chart{max-width:100%;height:auto}
circle:hover,polyline:hover{stroke:#000;stroke-opacity:1}td code{word-break:break-all}"""


def render_html(report: dict, link_base: Optional[str] = None) -> str:
    names, rows = list(report["objectives"]), report["trials"]
    palette = colours(rows)
    ref = ", ".join(f"{k}={_g(v)}" for k, v in report["reference_point"].items())
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>raysweep report: {_e(report['sweep'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Sweep {_e(report['sweep'])}</h1>",
             f"<p id='summary'>Pareto front: <b>{len(report['front'])}</b> of {report['n_points']} evaluated points "
             f"from {report['n_finished']} finished trials ({report['n_feasible']} feasible points). "
             f"Hypervolume <b>{report['hypervolume']:.5g}</b> against ({_e(ref)}), {_e(report['reference_point_source'])}. "
             f"Objectives: {_e(', '.join(f'{k} ({d})' for k, d in report['objectives'].items()))}.</p>",
             "<p class='muted'>Hover a point or a line for its configuration. Built from MLflow "
             f"({_e(report['tracking_uri'])}) by <code>raysweep report</code>.{_front_view(report, link_base)}</p>",
             "<h2>Front</h2>", scatter_svg(rows, report["objectives"], palette,
                                             title=f"all evaluated points, front labelled (HV {report['hypervolume']:.4g})"),
             "<h2>Non-dominated configurations</h2>", _html_table(_front_head(report), _front_table(report, link_base),
                                                                  table_id="front-table"),
             "<h2>Per method</h2>", _html_table(["method", "trials", "points", "front points", "hypervolume"],
                                                [[m, str(v["n_trials"]), str(v["n_points"]), str(len(v["front"])),
                                                  f"{v['hypervolume']:.5g}"] for m, v in report["per_method"].items()])]
    for m, v in report["per_method"].items():
        mine = [{**r, "pareto": any(r is f for f in v["front"])} for r in rows if (r["method"] or "?") == m]
        chart = scatter_svg(mine, report["objectives"], {m: palette[m]}, width=440, height=300,
                            title=f"{m}: HV {v['hypervolume']:.4g}")
        parts.append(f"<div class='small'>{chart}</div>")
    parts += ["<h2>Hypervolume by finished trials</h2>", history_svg(report["hypervolume_history"]),
              "<h2>Hyperparameters and objectives</h2>",
              "<p class='muted'>Parallel coordinates: one line per evaluated point; front points bold.</p>",
              parallel_svg(rows, report["objectives"], palette), "</body></html>"]
    return "\n".join(parts)


def _front_view(report: dict, link_base: Optional[str]) -> str:
    if not link_base:
        return ""
    from raysweep.sweep.front_marks import front_runs_link

    return f" <a href='{_e(front_runs_link(report['experiment_id'], report['sweep'], link_base))}'>The front in MLflow</a>."


def _html_table(head: list[str], rows: list[list[str]], table_id: str = "") -> str:
    def cell(v: str) -> str:
        if v.startswith(("http://", "https://", "#/")):
            return f"<td><a href='{_e(v)}'>MLflow run</a></td>"
        if v.startswith("raysweep ") or v.startswith(("runs:/", "/")):
            return f"<td><code>{_e(v)}</code></td>"
        return f"<td>{_e(v)}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return (f"<table{f' id={table_id!r}' if table_id else ''}><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def render_markdown(report: dict, link_base: Optional[str] = None) -> str:
    def table(head, rows):
        esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
        return "\n".join(["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])

    ref = ", ".join(f"{k}={_g(v)}" for k, v in report["reference_point"].items())
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
        "## Hypervolume by finished trials", "![hypervolume](hypervolume.svg)",
        table(["trials", "last trial", "hypervolume"],
              [[h["trials"], h["trial_id"], f"{h['hypervolume']:.5g}"] for h in report["hypervolume_history"]]),
        "## Hyperparameters and objectives", "![parallel coordinates](parallel.svg)", ""])


def write_report(report: dict, out_dir: str | Path, link_base: Optional[str] = None) -> dict[str, Path]:
    """``report.html`` (self-contained) and ``report.md`` with the SVGs it shows, in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    palette = colours(report["trials"])
    files = {"html": out / "report.html", "markdown": out / "report.md", "front": out / "front.svg",
             "hypervolume": out / "hypervolume.svg", "parallel": out / "parallel.svg"}
    files["html"].write_text(render_html(report, link_base))
    files["markdown"].write_text(render_markdown(report, link_base))
    files["front"].write_text(scatter_svg(report["trials"], report["objectives"], palette))
    files["hypervolume"].write_text(history_svg(report["hypervolume_history"]))
    files["parallel"].write_text(parallel_svg(report["trials"], report["objectives"], palette))
    return files
