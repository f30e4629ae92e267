"""Search spaces (``search_spaces/*.yaml``), validated at load and sampled define-by-run.

```yaml
method:                       # a categorical over synthesis methods; a choice's block applies
  sago: {alpha: {loguniform: [0.05, 2.0]}}   # only when that choice is drawn
  ngdiff: {}
forget:                       # a categorical over forget objectives (same shape)
  npo: {beta: {loguniform: [0.01, 1.0]}}
retain:                       # optional: a categorical over retain objectives
  nll: {}
unlearn:                      # plain fields of the job's `unlearn` section
  lr: {loguniform: [1.0e-5, 1.0e-3]}
  steps: {int: [10, 40]}
```
Distributions: ``{loguniform: [lo, hi]}``, ``{uniform: [lo, hi]}``, ``{int: [lo, hi]}``,
``{intlog: [lo, hi]}``, ``{choice: [a, b, ...]}``; any other value is fixed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


DISTRIBUTIONS = ("loguniform", "uniform", "int", "intlog", "choice")
SECTIONS = ("method", "forget", "retain", "unlearn")
UNLEARN_SEARCHABLE = ("steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "max_grad_norm",
                      "optimizer", "schedule")


class SearchSpaceError(ValueError):
    pass


def _hint(name: str, allowed) -> str:
    m = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"; did you mean '{m[0]}'?" if m else ""


def _check_dist(where: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        return  # a fixed value
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        key = next(iter(spec), "")
        raise SearchSpaceError(f"{where}: {spec!r} is not allowed (one of {', '.join(DISTRIBUTIONS)}){_hint(str(key), DISTRIBUTIONS)}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}.choice: {args!r} is not allowed (a non-empty list)")
        bad = [a for a in args if a is not None and not isinstance(a, (bool, int, float, str))]
        if bad:
            raise SearchSpaceError(f"{where}.choice: {bad[0]!r} is not allowed (numbers, strings, booleans or null)")
        return
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise SearchSpaceError(f"{where}.{kind}: {args!r} is not allowed ([low, high])")
    if not all(math.isfinite(a) for a in args):
        raise SearchSpaceError(f"{where}.{kind}: {args!r} is not allowed (finite bounds)")
    lo, hi = args
    if not lo < hi:
        raise SearchSpaceError(f"{where}.{kind}: {args!r} is not allowed (low < high)")
    if kind in ("loguniform", "intlog") and lo <= 0:
        raise SearchSpaceError(f"{where}.{kind}: {args!r} is not allowed (low > 0 on a log scale)")
    if kind in ("int", "intlog") and not all(float(a).is_integer() for a in args):
        raise SearchSpaceError(f"{where}.{kind}: {args!r} is not allowed (integers)")


@dataclass
class SearchSpace:
    raw: dict
    source: str = "<space>"

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        from raysweep.validation import InputError, read_yaml

        try:
            raw = read_yaml(path, "search space")
        except InputError as err:
            raise SearchSpaceError(str(err)) from None
        space = cls({} if raw is None else raw, str(path))
        space.validate()
        return space

    def validate(self) -> None:
        from raysweep.objectives import OBJECTIVES
        from raysweep.synthesis import SYNTHESIS

        src = self.source
        if not isinstance(self.raw, dict):
            raise SearchSpaceError(f"{src}: a search space is a YAML mapping")
        for key in self.raw:
            if key not in SECTIONS:
                raise SearchSpaceError(f"{src}: {key}: unknown key (allowed: {', '.join(SECTIONS)}){_hint(key, SECTIONS)}")
        registries = {"method": SYNTHESIS, "forget": OBJECTIVES, "retain": OBJECTIVES}
        for section, registry in registries.items():
            block = self.raw.get(section)
            if block is None:
                continue
            if not isinstance(block, dict) or not block:
                raise SearchSpaceError(f"{src}: {section}: {block!r} is not allowed (a mapping of names to their parameters)")
            for name, params in block.items():
                if name not in registry:
                    raise SearchSpaceError(
                        f"{src}: {section}.{name}: unknown name (allowed: {', '.join(registry.names())}){_hint(name, registry.names())}")
                if params is not None and not isinstance(params, dict):
                    raise SearchSpaceError(f"{src}: {section}.{name}: {params!r} is not allowed "
                                           "(a mapping of hyperparameters to values or distributions)")
                cls = registry.get(name)
                allowed = cls.hyperparameters()
                for p, spec in (params or {}).items():
                    if p not in allowed:
                        raise SearchSpaceError(
                            f"{src}: {section}.{name}.{p}: unknown hyperparameter (allowed: {', '.join(allowed) or 'none'}){_hint(p, allowed)}")
                    _check_dist(f"{src}: {section}.{name}.{p}", spec)
                    _check_types(f"{src}: {section}.{name}.{p}", cls, p, spec)
        unlearn = self.raw.get("unlearn")
        if unlearn is not None and not isinstance(unlearn, dict):
            raise SearchSpaceError(f"{src}: unlearn: {unlearn!r} is not allowed (a mapping of job fields to values or distributions)")
        for field, spec in (unlearn or {}).items():
            if field not in UNLEARN_SEARCHABLE:
                raise SearchSpaceError(
                    f"{src}: unlearn.{field}: not searchable (allowed: {', '.join(UNLEARN_SEARCHABLE)}){_hint(field, UNLEARN_SEARCHABLE)}")
            _check_dist(f"{src}: unlearn.{field}", spec)

    # ---- sampling (Optuna define-by-run) -----------------------------------------------------
    def define_by_run(self, trial) -> None:
        """Ask Optuna for every parameter; conditional blocks only for the drawn choice."""
        for section in ("method", "forget", "retain"):
            block = self.raw.get(section)
            if not block:
                continue
            names = list(block)
            chosen = trial.suggest_categorical(section, names) if len(names) > 1 else names[0]
            if len(names) == 1:
                trial.set_user_attr(section, chosen)
            for p, spec in (block[chosen] or {}).items():
                _suggest(trial, f"{section}.{chosen}.{p}", spec)
        for field, spec in (self.raw.get("unlearn") or {}).items():
            _suggest(trial, f"unlearn.{field}", spec)

    def overrides(self, params: dict) -> dict:
        """Job overrides (dotted keys) from a flat Optuna parameter dict."""
        out: dict = {}
        for section in ("method", "forget", "retain"):
            block = self.raw.get(section)
            if not block:
                continue
            chosen = params.get(section, next(iter(block)))
            fixed = {p: v for p, v in (block[chosen] or {}).items() if not isinstance(v, dict)}
            sampled = {k.split(".", 2)[2]: v for k, v in params.items() if k.startswith(f"{section}.{chosen}.")}
            out[f"unlearn.{section}"] = {"name": chosen, **fixed, **sampled}
        for field, spec in (self.raw.get("unlearn") or {}).items():
            out[f"unlearn.{field}"] = params.get(f"unlearn.{field}", spec)
        return out


    def flat_params(self, params: dict) -> dict:
        """The drawn configuration under cross-method names, for MLflow columns that compare
        methods: ``method.sago.alpha`` and ``method.pcgrad_r.alpha`` are both ``alpha``;
        ``unlearn.lr`` is ``lr``. A name used by two sections of the space keeps its section
        (``method.alpha``, ``forget.alpha``). Fixed values of the drawn blocks are included."""
        sections: dict[str, set] = {}
        for section in ("method", "forget", "retain"):
            for block in (self.raw.get(section) or {}).values():
                for p in block or {}:
                    sections.setdefault(p, set()).add(section)
        for field in self.raw.get("unlearn") or {}:
            sections.setdefault(field, set()).add("unlearn")
        out = {}
        for key, value in self.overrides(params).items():
            section = key.split(".", 1)[1]
            items = {p: v for p, v in value.items() if p != "name"} if section in ("method", "forget", "retain") \
                else {section: value}
            for p, v in items.items():
                home = "unlearn" if section not in ("method", "forget", "retain") else section
                out[p if len(sections.get(p, ())) <= 1 else f"{home}.{p}"] = v
        return out


def is_space_key(name: str) -> bool:
    """A parameter name as the sampler draws it (``method``, ``method.sago.alpha``,
    ``unlearn.lr``), as opposed to a flat cross-method name (``alpha``, ``method.alpha``)."""
    parts = name.split(".")
    if len(parts) == 1:
        return name in ("method", "forget", "retain")
    return (parts[0] in ("method", "forget", "retain") and len(parts) == 3) or (parts[0] == "unlearn" and len(parts) == 2)


def candidate_values(spec: Any) -> list:
    """Values a (validated) parameter spec may yield, as the sampler types them: each bound of a
    range, each choice, or the fixed value."""
    if not isinstance(spec, dict):
        return [spec]
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return list(args)
    if kind in ("int", "intlog"):
        return [int(args[0]), int(args[1])]
    return [float(args[0]), float(args[1])]


def _check_types(where: str, cls, param: str, spec: Any) -> None:
    from raysweep.validation import HyperparameterError, check_hyperparameters

    for value in candidate_values(spec):
        try:
            check_hyperparameters(cls, {param: value})
        except HyperparameterError as err:
            raise SearchSpaceError(f"{where}: {err.detail}") from None


def _suggest(trial, name: str, spec: Any):
    if not isinstance(spec, dict):
        return spec
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return trial.suggest_categorical(name, args)
    if kind == "uniform":
        return trial.suggest_float(name, float(args[0]), float(args[1]))
    if kind == "loguniform":
        return trial.suggest_float(name, float(args[0]), float(args[1]), log=True)
    if kind == "int":
        return trial.suggest_int(name, int(args[0]), int(args[1]))
    return trial.suggest_int(name, int(args[0]), int(args[1]), log=True)
