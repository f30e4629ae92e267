"""The grid sampler (``sweep.sampler: grid``): every point of a grid built from the search space,
each exactly once, through Optuna's ``GridSampler``.

The grid: a ``choice`` gives its choices; a numeric range gives ``sweep.grid_points`` evenly
spaced points (log-spaced for ``loguniform``/``intlog``; one point = the range's middle), an int
per range or a mapping ``{parameter: points}`` naming every range (parameters as the sampler
draws them: ``unlearn.lr``, ``method.sago.gamma``); fixed values stay fixed. A space choosing
between methods (two names in one section) has conditional parameters, which a product grid
would repeat, so it is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Union

DEFAULT_POINTS = 3


class GridError(ValueError):
    """``field``: the job field at fault (``grid_points``, ``search_space``); ``str()``: one line."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field


def _ranges(space) -> dict[str, tuple[str, list]]:
    """Sampled parameters in draw order: name -> (distribution, args)."""
    out: dict[str, tuple[str, list]] = {}
    for section in ("method", "forget", "retain"):
        block = space.raw.get(section)
        if not block:
            continue
        if len(block) > 1:
            raise GridError("search_space", f"{space.source}: {section}: {len(block)} names ({', '.join(block)}) are "
                                            "not allowed with sampler grid (one name per section: a choice between "
                                            "methods has conditional parameters; one sweep per name instead)")
        name = next(iter(block))
        for p, spec in (block[name] or {}).items():
            if isinstance(spec, dict):
                out[f"{section}.{name}.{p}"] = next(iter(spec.items()))
    for field, spec in (space.raw.get("unlearn") or {}).items():
        if isinstance(spec, dict):
            out[f"unlearn.{field}"] = next(iter(spec.items()))
    return out


def _points(kind: str, lo: float, hi: float, n: int) -> list:
    log = kind in ("loguniform", "intlog")
    a, b = (math.log(lo), math.log(hi)) if log else (float(lo), float(hi))
    if n == 1:
        raw = [(a + b) / 2]
    else:
        raw = [a + (b - a) * i / (n - 1) for i in range(n)]
    values = [math.exp(v) if log else v for v in raw]
    if kind in ("int", "intlog"):
        return list(dict.fromkeys(int(round(v)) for v in values))
    if n > 1:  # the bounds exactly (exp(log(x)) may leave the range by one ulp)
        values = _readable([float(lo)] + values[1:-1] + [float(hi)])
    return values


def _readable(values: list[float]) -> list[float]:
    """Inner points to the fewest significant digits (4 at least) that keep every point distinct
    and in order, so a narrow range (1e-6..1.0001e-6) keeps its points apart. A range too narrow
    for them even unrounded (neighbouring floats) is deduplicated: the caller reports the count."""
    for digits in range(4, 18):  # 17 significant digits round-trip any float
        rounded = [values[0]] + [float(f"{v:.{digits}g}") for v in values[1:-1]] + [values[-1]]
        if all(a < b for a, b in zip(rounded, rounded[1:])):
            return rounded
    return sorted(set(values))


def grid_values(space, grid_points: Union[int, dict, None]) -> dict[str, list]:
    """Each sampled parameter's grid values (draw names -> list); raises ``GridError``."""
    ranges = _ranges(space)
    numeric = [k for k, (kind, _) in ranges.items() if kind != "choice"]
    if isinstance(grid_points, dict):
        unknown = [k for k in grid_points if k not in numeric]
        if unknown:
            raise GridError("grid_points", f"{unknown[0]!r} is not allowed (a numeric range of {space.source}: "
                                           f"{', '.join(numeric) or 'none'})")
        missing = [k for k in numeric if k not in grid_points]
        if missing:
            raise GridError("grid_points", f"{grid_points!r} is not allowed (it names no point count for "
                                           f"{', '.join(missing)}; a mapping names every numeric range)")
    out: dict[str, list] = {}
    for name, (kind, args) in ranges.items():
        if kind == "choice":
            out[name] = list(args)
            continue
        n = grid_points.get(name) if isinstance(grid_points, dict) else (DEFAULT_POINTS if grid_points is None else grid_points)
        where = f"{name}: " if isinstance(grid_points, dict) else ""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise GridError("grid_points", f"{where}{n!r} is not allowed (a whole number of points >= 1)")
        values = _points(kind, args[0], args[1], n)
        if len(values) < n:
            raise GridError("grid_points", f"{where or name + ': '}{n!r} is not allowed ({kind} range {args} has "
                                           f"only {len(values)} distinct values on its grid)")
        out[name] = values
    return out


def grid_size(values: dict[str, list]) -> int:
    return math.prod(len(v) for v in values.values())


def resolve_grid(job):
    """The job with ``sweep.num_trials`` = its grid's size under sampler grid (when omitted or
    null); a job of another sampler, as it is. See :func:`resolve_grid_sweep`."""
    if job.sweep is None or job.sweep.sampler != "grid":
        return job
    return job.model_copy(update={"sweep": resolve_grid_sweep(job.sweep)})


def resolve_grid_sweep(sw):
    """A sweep spec of sampler grid with ``num_trials`` = the grid's size, once the grid is checked
    against the search space. A bad grid is a one-line :class:`~raysweep.spec.JobSpecError`
    naming the field at fault."""
    from raysweep.spec import JobSpecError
    from raysweep.sweep.space import SearchSpace, SearchSpaceError

    try:
        size = grid_size(grid_values(SearchSpace.load(sw.search_space), sw.grid_points))
    except SearchSpaceError as err:
        raise JobSpecError(f"sweep.search_space: {err}") from None
    except GridError as err:
        raise JobSpecError(f"sweep.{err.field}: {err}") from None
    if sw.num_trials is None:
        return sw.model_copy(update={"num_trials": size})
    if sw.num_trials != size:
        raise JobSpecError(f"sweep.num_trials: {sw.num_trials} is not allowed with sampler grid (the grid of "
                           f"{Path(sw.search_space).name} has {size} points: omit num_trials, set it to null or give {size})")
    return sw


def make_grid_sampler(values: dict[str, Any], seed: int):
    """Optuna's GridSampler, seeded (the seed shuffles the order of the points). Trial number k < grid
    size gets point k, so ``num_trials`` = grid size covers every point once."""
    from raysweep.sweep.grid_sampler import TuneGridSampler

    return TuneGridSampler(values, seed=seed)
