"""Per-step metrics to MLflow, batched and off the training thread.

``step()`` only appends to a buffer; a background thread sends ``log_batch`` every
``every_steps`` steps or ``every_seconds`` seconds, whichever comes first. A failed send keeps
the metrics and retries with back-off (a restarted tracking server catches up); ``close()``
flushes synchronously and raises :class:`MetricsNotDelivered` if some metrics could not be
delivered by its deadline, so a trial never ends with silently missing metrics.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Optional

from raysweep.reporting import TrialReporter
from raysweep.reporting.constraint import RetentionConstraint
from raysweep.sweep.tracking import redact, redact_text

MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's own limit)
MAX_BUFFERED = 500_000     # beyond this the oldest are dropped, and close() says how many
COUNTERS = ("step", "start_step", "total_steps")
TIMING_PREFIXES = ("startup/", "eval_seconds/")
RESUMED_TAG = "raysweep.resumed_from_step"


class MetricsNotDelivered(RuntimeError):
    """Some metrics could not be logged to MLflow; the message says how many and why."""


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


class MlflowStepLogger(TrialReporter):
    def __init__(self, tracking_uri: Optional[str], run_id: str, *, every_steps: int = 10,
                 every_seconds: float = 5.0, tags: Optional[dict] = None, prefix: str = "train/",
                 close_timeout: float = 60.0, constraint: Optional[RetentionConstraint] = None):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.constraint = constraint
        self.every_steps, self.every_seconds = max(1, every_steps), every_seconds
        self.prefix, self.close_timeout = prefix, close_timeout
        self._tags = dict(tags or {})
        self._buffer: list = []
        self._dropped = 0
        self._since_flush = 0
        self._last_error: Optional[str] = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._client = None
        self.sent = 0  # metrics delivered, for tests and benchmarks
        self._thread = threading.Thread(target=self._loop, name="raysweep-mlflow-log", daemon=True)
        self._thread.start()

    # ---- the reporter contract ------------------------------------------------------------------
    def step(self, step: int, metrics: dict) -> None:
        # Counters are not charts: the step is the x axis; a restart is a tag.
        start = metrics.get("start_step")
        if start:
            self._tags[RESUMED_TAG] = str(int(start))
        self._add({f"{self.prefix}{k}": v for k, v in metrics.items() if k not in COUNTERS}, step)
        self._since_flush += 1
        if self._since_flush >= self.every_steps:
            self._wake.set()

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        # Evaluations carry their own namespace ("eval/...", "final/..."): log them at their step;
        # the evaluation before unlearning at step 0. Timings go to the run's timings.json instead.
        namespaced = {k: v for k, v in metrics.items() if "/" in k and not k.startswith(TIMING_PREFIXES)}
        if self.constraint is not None:  # each point's feasibility, logged with the point itself
            namespaced.update(self.constraint.judge_evaluation(metrics))
        before = {k: v for k, v in namespaced.items() if k.startswith("before/")}
        if before:
            self._add(before, 0)
        rest = {k: v for k, v in namespaced.items() if k not in before}
        if rest:
            self._add(rest, int(metrics.get("step", 0)))
        if namespaced:
            self._wake.set()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=self.close_timeout)
        deadline = time.time() + self.close_timeout
        delay = 0.5
        while self._pending() and time.time() < deadline:
            if not self._send():
                time.sleep(min(delay, max(0.0, deadline - time.time())))
                delay = min(delay * 2, 10.0)
        missing = self._pending() + self._dropped
        if missing:
            raise MetricsNotDelivered(
                f"{missing} per-step metrics could not be logged to MLflow run {self.run_id} at "
                f"{redact(self.tracking_uri or '')}: {redact_text(str(self._last_error or 'buffer overflow'))}")

    # ---- internals ------------------------------------------------------------------------------
    def _add(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        entries = [Metric(k.replace(":", "_"), float(v), ts, int(step)) for k, v in metrics.items() if _finite_number(v)]
        with self._lock:
            self._buffer.extend(entries)
            overflow = len(self._buffer) - MAX_BUFFERED
            if overflow > 0:
                del self._buffer[:overflow]
                self._dropped += overflow

    def _pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def _send(self) -> bool:
        """Send everything buffered; False (metrics kept) on any transport error."""
        with self._send_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                self._since_flush = 0
            if not batch and not self._tags:
                return True
            try:
                if self._client is None:
                    from mlflow.tracking import MlflowClient

                    self._client = MlflowClient(tracking_uri=self.tracking_uri)
                for key, value in list(self._tags.items()):
                    self._client.set_tag(self.run_id, key, value)
                    del self._tags[key]
                while batch:
                    self._client.log_batch(self.run_id, metrics=batch[:MLFLOW_BATCH_LIMIT])
                    self.sent += len(batch[:MLFLOW_BATCH_LIMIT])
                    batch = batch[MLFLOW_BATCH_LIMIT:]
                return True
            except Exception as err:  # noqa: BLE001 - kept and retried; close() reports it
                self._last_error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
                with self._lock:
                    self._buffer[:0] = batch
                return False

    def _loop(self) -> None:
        delay = self.every_seconds
        while not self._stopping.is_set():
            self._wake.wait(timeout=delay)
            self._wake.clear()
            if self._stopping.is_set():
                break
            ok = self._send()
            # Back off while the server is down; return to the normal cadence once it answers.
            delay = self.every_seconds if ok else min(max(delay, 1.0) * 2, 30.0)
