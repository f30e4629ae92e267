"""The sweep's retention constraint, judged in one place: by the worker's MLflow sink with every
evaluation (``eval/feasible``), by the trial's final record, by MO-ASHA, and read back by the
report and by MO-ASHA's rungs rebuilt on resume.

``metric >= threshold`` is feasible. With a constraint, unknown is never feasible: a missing or
non-finite metric is infeasible, and so is a point that recorded no feasibility. Without one,
every point is feasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

CONSTRAINT_KEY = "retention_constraint"  # the margin ``threshold - value``: feasible when <= 0


@dataclass(frozen=True)
class RetentionConstraint:
    metric: str
    threshold: float

    def margin(self, metrics: dict) -> float:
        """``threshold - metrics[metric]``; NaN when the metric is missing or not finite."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return math.nan
        return float(self.threshold - value)

    def judge(self, metrics: dict) -> dict[str, float]:
        """``{"feasible": 1.0 or 0.0, CONSTRAINT_KEY: margin}`` (a NaN margin is infeasible)."""
        margin = self.margin(metrics)
        return {"feasible": float(margin <= 0), CONSTRAINT_KEY: margin}

    def judge_evaluation(self, report: dict) -> dict[str, float]:
        """The judgement of a report's ``eval/*`` metrics, as ``eval/feasible`` and
        ``eval/<CONSTRAINT_KEY>``; empty when the report holds no evaluation."""
        evaluated = {k[len("eval/"):]: v for k, v in report.items() if k.startswith("eval/")}
        if not evaluated:
            return {}
        return {f"eval/{k}": v for k, v in self.judge(evaluated).items()}


def recorded_feasible(recorded: Optional[float], constrained: bool) -> bool:
    """A point's feasibility from what it recorded (``eval/feasible`` or ``feasible``, None when
    nothing): unknown counts as infeasible when the sweep has a constraint."""
    if not constrained:
        return True
    return recorded is not None and math.isfinite(recorded) and recorded > 0
