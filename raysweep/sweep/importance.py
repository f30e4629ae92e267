"""Hyperparameter importance per objective, from a finished sweep's MLflow runs alone.

Each finished trial becomes a COMPLETE trial of an in-memory Optuna study (its searched
parameters as the sampler drew them, its final objective values), and Optuna's fANOVA evaluator
(``optuna.importance.FanovaImportanceEvaluator``: the share of the objective's variance a
parameter explains, from a random forest fit to the trials) ranks the parameters, once per
objective. fANOVA only compares parameters every trial has, so a per-method parameter
(``method.sago.alpha``) is ranked inside its method's trials and the whole sweep is ranked over the
parameters common to all of them (``method``, ``forget``, ``unlearn.*``).

Distributions come from the sweep's ``search_space.yaml`` artifact; a parameter it does not
describe (or whose values fall outside it) gets one inferred from the values (categorical for
strings, log-float when positive and spanning more than 20x). The result is logged to the parent
run as ``importance.json``.

fANOVA's forest and its marginal variances grow faster than the trials (500 trials took ~25 s,
5,000 ran for minutes: issue 28), so a group of more than ``SAMPLE`` trials is ranked on a seeded
random sample of ``SAMPLE`` of them; each group states both counts (``n_trials``, ``n_sampled``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
MIN_TRIALS = 4  # fewer trials than this explain no variance worth ranking
SAMPLE = 100  # trials per group fANOVA ranks on at most (a seeded random sample beyond)
ARTIFACT = "importance.json"


def search_space(c, parent_run_id: str) -> Optional[dict]:
    """The sweep's search space as logged at launch, or None when the parent has none."""
    import yaml

    try:
        path = c.download_artifacts(parent_run_id, "search_space.yaml")
    except Exception:  # noqa: BLE001 - an older or hand-made sweep without the artifact: inferred instead
        return None
    return yaml.safe_load(Path(path).read_text()) or None


def space_distributions(space: Optional[dict]) -> dict:
    """Optuna distributions under the sampler's names (``method``, ``method.sago.alpha``,
    ``unlearn.lr``) for the searched parameters of a search space (fixed values are not searched)."""
    from optuna.distributions import CategoricalDistribution

    out = {}
    for section in ("method", "forget", "retain"):
        block = (space or {}).get(section) or {}
        if len(block) > 1:
            out[section] = CategoricalDistribution(list(block))
        for choice, params in block.items():
            for p, spec in (params or {}).items():
                if isinstance(spec, dict):
                    out[f"{section}.{choice}.{p}"] = _distribution(spec)
    for field, spec in ((space or {}).get("unlearn") or {}).items():
        if isinstance(spec, dict):
            out[f"unlearn.{field}"] = _distribution(spec)
    return out


def _distribution(spec: dict):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return CategoricalDistribution(args)
    if kind in ("int", "intlog"):
        return IntDistribution(int(args[0]), int(args[1]), log=kind == "intlog")
    return FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")


def _typed(raw: str, dist):
    """An MLflow param string as the value the distribution holds, or None when it holds none."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    try:
        if isinstance(dist, CategoricalDistribution):
            return next(c for c in dist.choices if str(c) == str(raw))
        v = int(float(raw)) if isinstance(dist, IntDistribution) else float(raw)
    except (StopIteration, ValueError, TypeError):
        return None
    return v if dist._contains(dist.to_internal_repr(v)) else None


def _inferred(values: list[str]):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    nums = []
    for v in values:
        try:
            nums.append(float(v))
        except (TypeError, ValueError):
            return CategoricalDistribution(sorted(set(values)))
    if not all(math.isfinite(n) for n in nums):
        return CategoricalDistribution(sorted(set(values)))
    lo, hi = min(nums), max(nums)
    return FloatDistribution(lo, hi if hi > lo else lo + 1.0, log=lo > 0 and hi / lo > 20)


def study_trials(rows: list[dict], space: Optional[dict]) -> list[tuple[dict, dict, dict, dict]]:
    """(params, distributions, objective values, row) per finished trial: its final evaluation, its searched
    parameters typed by the space (inferred where the space does not hold a value)."""
    finals = [r for r in rows if r.get("final", True)]
    known = space_distributions(space)
    names = sorted({k for r in finals for k in r["params"]})
    dists = {}
    for k in names:
        values = [r["params"][k] for r in finals if k in r["params"]]
        d = known.get(k)
        dists[k] = d if d is not None and all(_typed(v, d) is not None for v in values) else _inferred(values)
    return [({k: _typed(v, dists[k]) for k, v in r["params"].items() if k in dists},
             {k: dists[k] for k in r["params"] if k in dists}, r["objectives"], r) for r in finals]


def param_importances(rows: list[dict], objectives: dict[str, str], space: Optional[dict] = None) -> dict:
    """``{"evaluator", "groups": [{"name", "scope", "n_trials", "importance": {objective: {param: share}}}]}``:
    the whole sweep over the parameters all trials have, then each method over its own trials."""
    trials = study_trials(rows, space)
    groups = [("all trials", "parameters every trial has", trials)]
    methods = sorted({t[3]["method"] or "?" for t in trials})
    if len(methods) > 1:
        groups += [(f"method {m}", f"{m}'s trials, its parameters included",
                    [t for t in trials if (t[3]["method"] or "?") == m]) for m in methods]
    out = {"evaluator": EVALUATOR, "n_trials": len(trials), "groups": []}
    for name, scope, members in groups:
        ranked = sample(members, SAMPLE)
        out["groups"].append({"name": name, "scope": scope, "n_trials": len(members), "n_sampled": len(ranked),
                              **_group(ranked, objectives)})
    return out


def sample(members: list, k: int, seed: int = 0) -> list:
    """At most ``k`` of ``members``, drawn at random with ``seed`` (all of them when there are no
    more), in their own order."""
    import random

    if len(members) <= k:
        return members
    keep = sorted(random.Random(seed).sample(range(len(members)), k))
    return [members[i] for i in keep]


def _group(members: list, objectives: dict[str, str]) -> dict:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    common = set.intersection(*(set(p) for p, *_ in members)) if members else set()
    # a parameter with one value in the group explains nothing (and fANOVA cannot split on it)
    varying = sorted(k for k in common if len({str(p[k]) for p, *_ in members}) > 1)
    if len(members) < MIN_TRIALS or not varying:
        why = (f"{len(members)} finished trials (importance needs {MIN_TRIALS})" if len(members) < MIN_TRIALS
               else "no searched parameter varies across these trials")
        return {"params": varying, "importance": {}, "skipped": why}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = list(objectives)
    study = optuna.create_study(directions=["minimize" if d == "min" else "maximize" for d in objectives.values()])
    for params, dists, values, _ in members:
        study.add_trial(optuna.trial.create_trial(params={k: params[k] for k in varying},
                                                  distributions={k: dists[k] for k in varying},
                                                  values=[float(values[n]) for n in names]))
    importance, constant = {}, []
    for i, n in enumerate(names):
        if len({float(values[n]) for _, _, values, _ in members}) == 1:
            constant.append(n)  # no variance to explain (fANOVA raises on it)
            importance[n] = {}
            continue
        res = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=varying,
                                    target=lambda t, i=i: t.values[i])
        importance[n] = {k: float(v) for k, v in res.items()}
    return {"params": varying, "importance": importance, "constant": constant}


def log_importance(c, parent_run_id: str, importance: dict) -> None:
    """``importance.json`` on the parent run (the report's section, for MLflow's artifact view)."""
    c.log_text(parent_run_id, json.dumps(importance, indent=2), ARTIFACT)
