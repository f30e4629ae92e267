"""Progress of running trials for the sweep console.

Rank 0 of each trial posts a small summary (step, losses, seconds per step) to the sweep's
:class:`ProgressBoard` actor at most every ``every_seconds`` seconds, fire-and-forget; the
driver's console polls the board. No Tune or Train report is spent on progress.
"""

from __future__ import annotations

import time
from raysweep.reporting import TrialReporter

PROGRESS_KEYS = ("loss_forget", "loss_retain_0", "step_seconds", "lr")


class ProgressBoard:
    """Latest progress per trial plus a sequence number, so a reader sees each post once.
    Created as a Ray actor by the driver (``ray.remote(ProgressBoard)``), with no CPU."""

    def __init__(self):
        self._posts: dict[str, dict] = {}
        self._seq = 0

    def post(self, label: str, payload: dict) -> None:
        self._seq += 1
        self._posts[label] = {**payload, "seq": self._seq}

    def since(self, seq: int) -> tuple[int, dict[str, dict]]:
        return self._seq, {k: v for k, v in self._posts.items() if v["seq"] > seq}


def board_name(sweep: str) -> str:
    return f"raysweep-progress-{sweep}"


class ProgressPoster(TrialReporter):
    def __init__(self, board: str, label: str, every_seconds: float = 10.0):
        self.board_name, self.label = board, label
        self.every_seconds = every_seconds
        self._board = None
        self._last = 0.0
        self._started = time.time()

    def _handle(self):
        if self._board is None:
            import ray

            self._board = ray.get_actor(self.board_name)
        return self._board

    def _post(self, payload: dict) -> None:
        try:
            self._handle().post.remote(self.label, payload)
        except Exception:  # noqa: BLE001 - progress is cosmetic; never fail a trial over it
            self._board = None

    def step(self, step: int, metrics: dict) -> None:
        now = time.time()
        if now - self._last < self.every_seconds:
            return
        self._last = now
        payload = {k: float(metrics[k]) for k in PROGRESS_KEYS if k in metrics}
        self._post({"step": step, "total": metrics.get("total_steps"), "elapsed": now - self._started, **payload})
