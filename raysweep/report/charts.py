"""The report's charts: inline SVG, no script. Every chart has an id, a plot frame
(``rect.frame``), axis labels (``text.axis-label``) and a legend (``g.legend``); hover text is SVG
``<title>``. Objective-space plots share one look: fronts drawn as staircases (the attainment
line, not diagonals), markers kept inside the frame by their radius.
"""

from __future__ import annotations

import html
import math
from typing import Optional, Sequence

from raysweep.sweep.report import point_label

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt(v) -> str:
    f = _num(v)
    return f"{f:.4g}" if f is not None else str(v)


class Axis:
    """A value -> pixel map: linear, log (positive values spanning more than 20x), or categorical.
    ``margin_px`` keeps the extreme values that far inside the ends, so a marker of that radius
    sits inside the plot frame rather than on its edge."""

    def __init__(self, values: Sequence, lo_px: float, hi_px: float, margin_px: float = 0.0):
        nums = [_num(v) for v in values if v is not None]
        self.lo_px, self.hi_px = lo_px, hi_px
        self.categories = None
        self.log = False
        if values and any(n is None for n in nums):
            self.categories = sorted({str(v) for v in values if v is not None})
            self.margin = max(margin_px, 0.08 * abs(hi_px - lo_px))  # no category on the frame
            return
        nums = [n for n in nums if n is not None] or [0.0, 1.0]
        lo, hi = min(nums), max(nums)
        self.log = lo > 0 and hi / lo > 20
        if self.log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:  # one value: a small range around it, not one crossing zero
            half = abs(lo) * 0.25 or 0.5
            lo, hi = lo - half, hi + half
        span = abs(hi_px - lo_px)
        pad = max(0.06, margin_px / max(1.0, span - 2 * margin_px)) * (hi - lo)
        self.lo, self.hi = lo - pad, hi + pad

    def __call__(self, v) -> float:
        if self.categories is not None:
            n = len(self.categories)
            i = self.categories.index(str(v)) if str(v) in self.categories else 0
            sign = 1 if self.hi_px >= self.lo_px else -1
            lo, hi = self.lo_px + sign * self.margin, self.hi_px - sign * self.margin
            return (lo + hi) / 2 if n == 1 else lo + i / (n - 1) * (hi - lo)
        f = _num(v)
        f = math.log10(f) if self.log and f and f > 0 else f
        return self.lo_px + (f - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

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


WIDTH = 1160  # the page's column (1200 px less padding): every chart at full width
LEGEND_W = 230  # right of each plot


def colours(rows: list[dict]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted({r["method"] or "?" for r in rows}))}


def hover(r: dict, names: list[str]) -> str:
    """The configuration of a point, as the chart's hover text."""
    hp = r.get("flat_params") or {k: v for k, v in r.get("params", {}).items() if k not in ("method", "forget")}
    lines = [f"{point_label(r)}: {r['method']} / {r['forget']}" + (" (on the front)" if r["pareto"] else "")
             + ("" if r["feasible"] else " (infeasible)")]
    lines += [f"{n} = {fmt(r['objectives'][n])}" for n in names]
    lines += [f"{k} = {fmt(v)}" for k, v in sorted(hp.items())]
    lines.append(f"checkpoint: {r.get('checkpoint_uri') or '-'}")
    return "\n".join(lines)


BETTER = {"min": "lower is better", "max": "higher is better"}


def _open(chart_id: str, title: str, width: int, height: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" id="{chart_id}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" class="chart" role="img"><title>{esc(title)}</title>')


def _frame(box: tuple, ax: Axis, ay: Axis, xlabel: str, ylabel: str, title: str = "") -> list[str]:
    """The plot frame (``rect.frame``), tick labels and axis labels (``text.axis-label``)."""
    left, right, top, bottom = box
    out = [f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
           f'fill="#fafafa" stroke="#ccc"/>']
    for px, t in ax.ticks():
        out.append(f'<text x="{px:.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">{esc(t)}</text>')
    for py, t in ay.ticks():
        out.append(f'<text x="{left - 6}" y="{py + 3:.1f}" font-size="11" text-anchor="end">{esc(t)}</text>')
    out.append(f'<text class="axis-label" x="{(left + right) / 2}" y="{bottom + 38}" font-size="13" '
               f'text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text class="axis-label" transform="translate(18,{(top + bottom) / 2}) rotate(-90)" font-size="13" '
               f'text-anchor="middle">{esc(ylabel)}</text>')
    if title:
        out.append(f'<text x="{left}" y="20" font-size="14" font-weight="bold">{esc(title)}</text>')
    return out


def _legend(items: list[tuple[str, str, str]], x: float, y: float) -> str:
    """``g.legend``: (label, mark, colour) per line; mark is dot, ring, open, line or dash."""
    out = ['<g class="legend" font-size="12">']
    for i, (label, mark, col) in enumerate(items):
        cy = y + 18 * i
        out.append({
            "dot": f'<circle cx="{x}" cy="{cy}" r="5" fill="{col}"/>',
            "ring": f'<circle cx="{x}" cy="{cy}" r="6" fill="none" stroke="{col}" stroke-width="2"/>',
            "open": f'<circle cx="{x}" cy="{cy}" r="4" fill="none" stroke="{col}" stroke-width="1.5"/>',
            "line": f'<line x1="{x - 8}" y1="{cy}" x2="{x + 8}" y2="{cy}" stroke="{col}" stroke-width="3"/>',
            "dash": f'<line x1="{x - 8}" y1="{cy}" x2="{x + 8}" y2="{cy}" stroke="{col}" stroke-width="1.5" '
                    f'stroke-dasharray="4 3"/>',
        }[mark] + f'<text x="{x + 14}" y="{cy + 4}">{esc(label)}</text>')
    out.append("</g>")
    return "".join(out)


def staircase(front: list[dict], objectives: dict[str, str]) -> list[tuple[float, float]]:
    """The attainment line of a front on the first two objectives: its 2-D non-dominated points in
    order of the first, joined through the corner that takes the worse value of each objective
    (what the front guarantees between two points), not by a diagonal."""
    from raysweep.sweep.pareto import non_dominated

    names = list(objectives)[:2]
    if len(names) < 2 or not front:
        return []
    pts = [(r["objectives"][names[0]], r["objectives"][names[1]]) for r in front]
    keep = non_dominated(pts, [objectives[n] for n in names])
    pts = sorted({p for p, k in zip(pts, keep) if k})
    worse = [max if objectives[n] == "min" else min for n in names]
    out = [pts[0]]
    for a, b in zip(pts, pts[1:]):
        out += [(worse[0](a[0], b[0]), worse[1](a[1], b[1])), b]
    return out


def _xy_axes(rows: list[dict], objectives: dict[str, str], box: tuple, margin: float = 10) -> tuple[Axis, Axis, str, str]:
    names = list(objectives)
    x, y = names[0], names[1] if len(names) > 1 else names[0]
    left, right, top, bottom = box
    return (Axis([r["objectives"][x] for r in rows], left, right, margin),
            Axis([r["objectives"][y] for r in rows], bottom, top, margin), x, y)


def _box(width: int, height: int) -> tuple:
    return 80, width - LEGEND_W, 34, height - 52


def _polyline(pts, ax, ay, **attrs) -> str:
    a = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return (f'<polyline points="{" ".join(f"{ax(px):.1f},{ay(py):.1f}" for px, py in pts)}" fill="none" {a}/>'
            if len(pts) > 1 else "")


def scatter_svg(rows: list[dict], objectives: dict[str, str], palette: dict[str, str], *, width=WIDTH, height=520,
                title: str = "", labels: bool = True) -> str:
    box = _box(width, height)
    ax, ay, x, y = _xy_axes(rows, objectives, box)
    out = [_open("front-chart", title or "Pareto front", width, height),
           *_frame(box, ax, ay, f"{x} ({BETTER[objectives[x]]})", f"{y} ({BETTER[objectives[y]]})", title)]
    front = [r for r in rows if r["pareto"]]
    out.append(_polyline(staircase(front, objectives), ax, ay, stroke="#333", stroke_dasharray="4 3",
                         **{"class": "staircase"}))
    right = box[1]
    for r in sorted(rows, key=lambda r: r["pareto"]):  # the front drawn last, on top
        cx, cy, col = ax(r["objectives"][x]), ay(r["objectives"][y]), palette[r["method"] or "?"]
        fill = col if r["feasible"] else "none"
        size, stroke = (7, 'stroke="#000" stroke-width="2"') if r["pareto"] else (4, f'stroke="{col}" stroke-width="1.5"')
        cls = "front" if r["pareto"] else "point"
        out.append(f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{size}" fill="{fill}" '
                   f'fill-opacity="{0.9 if r["pareto"] else 0.55}" {stroke}><title>{esc(hover(r, list(objectives)))}'
                   f'</title></circle>')
        if r["pareto"] and labels:  # left of points near the right edge, so the label stays inside
            flip = cx > right - 90
            out.append(f'<text class="label" x="{cx - 10 if flip else cx + 10:.1f}" y="{cy - 8:.1f}" font-size="11" '
                       f'text-anchor="{"end" if flip else "start"}">{esc(point_label(r))}</text>')
    items = [(m, "dot", c) for m, c in palette.items()]
    items += [("Pareto front (staircase)", "ring", "#000"), ("attainment line", "dash", "#333"),
              ("infeasible", "open", "#555")]
    out += [_legend(items, right + 24, box[2] + 10), "</svg>"]
    return "\n".join(o for o in out if o)


def methods_svg(report: dict, palette: dict[str, str], *, width=WIDTH, height=520) -> str:
    """Every method's own front on shared axes: one staircase and colour per method, its other
    points faint behind."""
    rows, objectives = report["trials"], report["objectives"]
    box = _box(width, height)
    ax, ay, x, y = _xy_axes(rows, objectives, box)
    out = [_open("methods-chart", "Each method's front", width, height),
           *_frame(box, ax, ay, f"{x} ({BETTER[objectives[x]]})", f"{y} ({BETTER[objectives[y]]})")]
    for r in rows:
        col = palette[r["method"] or "?"]
        out.append(_marker("point", r, ax, ay, x, y, 3.5, f'fill="{col if r["feasible"] else "none"}" stroke="{col}" '
                           'fill-opacity="0.3" stroke-opacity="0.5"', hover(r, list(objectives))))
    items = []
    for m, v in report["per_method"].items():
        col = palette[m]
        out.append(_polyline(staircase(v["front"], objectives), ax, ay, stroke=col, stroke_width="2.5",
                             **{"class": "staircase"}))
        for r in v["front"]:
            out.append(_marker("front", r, ax, ay, x, y, 6, f'fill="{col}" stroke="#000" stroke-width="1.5"',
                               hover(r, list(objectives))))
        items.append((f"{m}: HV {v['hypervolume']:.4g}", "line", col))
    items.append(("other points of the method", "open", "#888"))
    out += [_legend(items, box[1] + 24, box[2] + 10), "</svg>"]
    return "\n".join(o for o in out if o)


def _marker(cls: str, r: dict, ax, ay, x: str, y: str, radius: float, style: str, title: str = "") -> str:
    """One point of a front chart at its two objectives, with its hover text."""
    head = f'<circle class="{cls}" cx="{ax(r["objectives"][x]):.1f}" cy="{ay(r["objectives"][y]):.1f}" r="{radius:g}" {style}'
    return f"{head}><title>{esc(title)}</title></circle>" if title else f"{head}/>"


def time_svg(report: dict, *, width=WIDTH, height=520) -> str:
    """The front after 25/50/75/100% of the finished trials, overlaid: light to dark."""
    rows, objectives = report["trials"], report["objectives"]
    box = _box(width, height)
    ax, ay, x, y = _xy_axes(rows, objectives, box)
    out = [_open("time-chart", "Fronts over time", width, height),
           *_frame(box, ax, ay, f"{x} ({BETTER[objectives[x]]})", f"{y} ({BETTER[objectives[y]]})")]
    for r in rows:
        out.append(_marker("point", r, ax, ay, x, y, 3, 'fill="#bbb" fill-opacity="0.5"'))
    shades = ["#c6dbef", "#6baed6", "#2171b5", "#08306b"]
    fronts = report.get("fronts_over_time", [])
    items = []
    for i, f in enumerate(fronts):
        col = shades[i] if len(fronts) <= len(shades) else PALETTE[i % 10]
        # earlier fronts wider underneath: where the front did not move, every stage still shows
        out.append(_polyline(staircase(f["front"], objectives), ax, ay, stroke=col,
                             stroke_width=f"{2 + 2.5 * (len(fronts) - 1 - i):g}", **{"class": "staircase"}))
        for r in f["front"]:
            out.append(_marker("front", r, ax, ay, x, y, 5, f'fill="{col}" stroke="#333"',
                               f'{point_label(r)} on the front after {f["trials"]} trials'))
        items.append((f"after {f['fraction']:.0%} ({f['trials']} trials): HV {f['hypervolume']:.4g}", "line", col))
    items.append(("every evaluated point", "dot", "#bbb"))
    out += [_legend(items, box[1] + 24, box[2] + 10), "</svg>"]
    return "\n".join(o for o in out if o)


def history_svg(history: list[dict], *, x: str = "trials", width=WIDTH, height=300) -> str:
    """The hypervolume of the front so far, by finished trials (``x="trials"``) or by the
    unlearning steps they spent (``x="steps"``: the anytime curve a scheduler is judged by)."""
    box = _box(width, height)
    left, right, top, bottom = box
    ax = Axis([h[x] for h in history] or [1], left, right, 6)
    ay = Axis([h["hypervolume"] for h in history] or [0.0], bottom, top, 6)
    chart_id, title, xlabel = {
        "trials": ("hv-chart", "Hypervolume by finished trials", "finished trials (in the order they finished)"),
        "steps": ("hv-steps-chart", "Hypervolume by unlearning steps spent",
                  "unlearning steps spent by the finished trials (in the order they finished)")}[x]
    out = [_open(chart_id, title, width, height), *_frame(box, ax, ay, xlabel, "hypervolume")]
    pts, prev = [], None
    for h in history:  # a step line: the front only changes when a trial ends
        px, py = ax(h[x]), ay(h["hypervolume"])
        if prev is not None:
            pts.append(f"{px:.1f},{prev:.1f}")
        pts.append(f"{px:.1f},{py:.1f}")
        prev = py
    out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    for h in history:
        out.append(f'<circle cx="{ax(h[x]):.1f}" cy="{ay(h["hypervolume"]):.1f}" r="3" fill="{PALETTE[0]}">'
                   f'<title>{h["trials"]} trials, {h.get("steps", "?")} steps (last: {esc(h["trial_id"])}): '
                   f'HV {h["hypervolume"]:.5g}</title></circle>')
    out += [_legend([("hypervolume of the front so far", "line", PALETTE[0])], right + 24, top + 10), "</svg>"]
    return "\n".join(out)


def _hp_values(r: dict) -> dict:
    return r.get("flat_params") or {k: v for k, v in (r.get("params") or {}).items() if k not in ("method", "forget")}


def parallel_svg(rows: list[dict], objectives: dict[str, str], palette: dict[str, str], *, width=WIDTH,
                 height=420) -> str:
    """One line per evaluated point across method (a categorical axis), the hyperparameters, then
    the objectives. A hyperparameter a method does not have is a gap in its line, not a value; an
    objective to minimise has its axis flipped so that better is up on every objective axis; a
    hyperparameter spanning more than 20x is on a log axis."""
    hps = sorted({k for r in rows for k in _hp_values(r)})
    cats = [k for k in ("method", "forget") if len({r[k] for r in rows}) > 1]
    axes = [("cat", k) for k in cats] + [("hp", k) for k in hps] + [("obj", k) for k in objectives]
    top, bottom = 62, height - 30
    plot_right = width - LEGEND_W - 130  # the last axis's label is centred on it: room before the legend
    xs = [70 + i * (plot_right - 70) / max(1, len(axes) - 1) for i in range(len(axes))]

    def value(r, kind, k):
        return r["objectives"][k] if kind == "obj" else r[k] if kind == "cat" else _hp_values(r).get(k)

    def scale(kind, k):
        vals = [value(r, kind, k) for r in rows if value(r, kind, k) is not None]
        flip = kind == "obj" and objectives[k] == "min"  # better (lower) at the top
        return Axis([str(v) for v in vals] if kind == "cat" else vals, top if flip else bottom,
                    bottom if flip else top, 8)

    scales = [scale(kind, k) for kind, k in axes]
    out = [_open("parallel-chart", "Parallel coordinates: method, hyperparameters and objectives", width, height)]
    for r in sorted(rows, key=lambda r: r["pareto"]):
        d, dots, prev = [], [], False
        for (kind, k), x, sc in zip(axes, xs, scales):
            v = value(r, kind, k)
            if v is None:
                prev = False
                continue
            d.append(f"{'L' if prev else 'M'}{x:.1f},{sc(v):.1f}")
            dots.append((x, sc(v)))
            prev = True
        col = palette[r["method"] or "?"]
        w, op = (2.5, 0.95) if r["pareto"] else (1.2, 0.45)
        out.append(f'<g class="line"><title>{esc(hover(r, list(objectives)))}</title>'
                   f'<path d="{" ".join(d)}" fill="none" stroke="{col}" stroke-width="{w}" stroke-opacity="{op}"/>'
                   + "".join(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="{col}" fill-opacity="{op}"/>'
                             for px, py in dots) + "</g>")
    for i, ((kind, k), x, sc) in enumerate(zip(axes, xs, scales)):
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#444"/>')
        if kind == "obj":
            label = f"{k} (min, flipped: better ↑)" if objectives[k] == "min" else f"{k} (max: better ↑)"
        else:
            label = f"{k} (log)" if sc.log else k
        out.append(f'<text class="axis-label" x="{x:.1f}" y="{top - 12 - 16 * (i % 2)}" font-size="12" '
                   f'text-anchor="middle" font-weight="{"bold" if kind == "obj" else "normal"}">{esc(label)}</text>')
        for py, t in sc.ticks(4):
            out.append(f'<text class="tick" x="{x + 5:.1f}" y="{py + 3:.1f}" font-size="10">{esc(t)}</text>')
    items = [(m, "line", c) for m, c in palette.items()] + [("on the front (bold)", "line", "#000")]
    out += [_legend(items, width - LEGEND_W + 40, top), "</svg>"]
    return "\n".join(out)


def importance_svg(group: dict, objectives: dict[str, str], index: int, *, width=WIDTH) -> str:
    """Horizontal bars: one row per parameter, one bar per objective (the share of that
    objective's variance the parameter explains)."""
    names = list(objectives)
    params = sorted(group["params"], key=lambda p: -max(group["importance"][n].get(p, 0.0) for n in names))
    bar, gap = 14, 12
    left, right, top = 200, width - LEGEND_W, 40
    bottom = top + len(params) * (bar * len(names) + gap) + gap
    height = bottom + 48
    ax = Axis([0.0, 1.0], left, right)
    ax.lo, ax.hi = 0.0, 1.0  # shares: exactly 0..1
    out = [_open(f"importance-chart-{index}", f"Hyperparameter importance: {group['name']}", width, height),
           f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafafa" '
           f'stroke="#ccc"/>']
    for px, t in ax.ticks():
        out.append(f'<text x="{px:.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">{esc(t)}</text>')
    out.append(f'<text class="axis-label" x="{(left + right) / 2}" y="{bottom + 38}" font-size="13" '
               f'text-anchor="middle">importance (fANOVA: share of the objective\'s variance)</text>')
    out.append(f'<text class="axis-label" x="{left - 8}" y="{top - 12}" font-size="13" text-anchor="end">'
               f'parameter</text>')
    y = top + gap
    for p in params:
        out.append(f'<text x="{left - 8}" y="{y + bar * len(names) / 2 + 4:.1f}" font-size="12" '
                   f'text-anchor="end">{esc(p)}</text>')
        for j, n in enumerate(names):
            v = group["importance"][n].get(p, 0.0)
            out.append(f'<rect class="bar" x="{left}" y="{y}" width="{max(0.5, ax(v) - left):.1f}" height="{bar - 2}" '
                       f'fill="{PALETTE[j % 10]}"><title>{esc(p)}: {v:.3f} of {esc(n)}</title></rect>'
                       f'<text x="{ax(v) + 4:.1f}" y="{y + bar - 4}" font-size="10">{v:.2f}</text>')
            y += bar
        y += gap
    out += [_legend([(f"{n} ({d})", "line", PALETTE[j % 10]) for j, (n, d) in enumerate(objectives.items())],
                    right + 24, top + 10), "</svg>"]
    return "\n".join(out)
