"""A finished sweep with a known cause in real sqlite MLflow (no Ray): ``forget_rougeL_recall``
is a function of ``unlearn.lr`` alone (log-spaced over 100x) and ``retain_rougeL_recall`` of the
method alone (plus a hair of the method's alpha), over three methods, one without alpha."""

import json
import math

import numpy as np
import yaml

from raysweep.sweep import tracking
from raysweep.sweep.space import SearchSpace

OBJECTIVES = {"forget_rougeL_recall": "min", "retain_rougeL_recall": "max"}
SPACE = {"method": {"graddiff": {"alpha": {"loguniform": [0.3, 3.0]}}, "sago": {"alpha": {"loguniform": [0.1, 2.0]}},
                    "ngdiff": {}},
         "forget": {"ga": {}},
         "unlearn": {"lr": {"loguniform": [1e-5, 1e-3]}}}
RETAIN = {"graddiff": 0.3, "sago": 0.6, "ngdiff": 0.45}
N = 15  # five per method: each method's own ranking needs four


def forget_of(lr: float) -> float:
    return 0.2 + 0.1 * math.log10(lr / 1e-5)


def trials() -> list[tuple[str, dict, float, float]]:
    """(method, config, forget, retain) per trial; deterministic."""
    rng = np.random.default_rng(0)
    methods = sorted(RETAIN)
    out = []
    for i in range(N):
        method = methods[i % 3]
        lr = float(10 ** rng.uniform(-5, -3))
        config = {"method": method, "forget": "ga", "unlearn.lr": lr}
        alpha = 0.0
        if method != "ngdiff":
            lo, hi = SPACE["method"][method]["alpha"]["loguniform"]
            alpha = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            config[f"method.{method}.alpha"] = alpha
        out.append((method, config, forget_of(lr), RETAIN[method] + 0.001 * alpha))
    return out


def make_importance_sweep(tmp_path, name="imp"):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = c.create_experiment(f"raysweep/{name}", artifact_location=(tmp_path / "artifacts").as_uri())
    space = SearchSpace(SPACE, "space.yaml")
    parent = c.create_run(exp, run_name=name, tags={
        tracking.SWEEP_TAG: name, tracking.ROLE_TAG: "parent", "raysweep.objectives": json.dumps(OBJECTIVES),
        **tracking.objective_tags(OBJECTIVES)})
    pid = parent.info.run_id
    c.log_text(pid, yaml.safe_dump(SPACE), "search_space.yaml")
    for i, (method, config, f, r) in enumerate(trials()):
        run = tracking.get_or_create_child(c, pid, exp, f"t{i:02d}", name, {**space.flat_params(config), **config},
                                           {"raysweep.method": method, "raysweep.forget": "ga"})
        tracking.log_metrics(c, run, {"objective/forget_rougeL_recall": f, "objective/retain_rougeL_recall": r})
        c.set_terminated(run, "FINISHED")
    c.set_terminated(pid, "FINISHED")
    return c, uri, parent
