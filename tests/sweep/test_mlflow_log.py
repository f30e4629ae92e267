"""Per-step metrics reach a real MLflow (sqlite) in batches, and are never dropped silently."""

import pytest

from raysweep.reporting import FanOut, TrialReporter, build_reporter
from raysweep.sweep.sinks import ReportingOptions
from raysweep.sweep.mlflow_log import MetricsNotDelivered, MlflowStepLogger


@pytest.fixture()
def run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("log-test")
    return uri, c, c.create_run(exp).info.run_id


class CountingClient:
    """Wraps the real client to count the round trips the logger makes."""

    def __init__(self, real):
        self.real, self.batches = real, 0

    def log_batch(self, run_id, metrics):
        self.batches += 1
        return self.real.log_batch(run_id, metrics=metrics)

    def set_tag(self, *args):
        return self.real.set_tag(*args)


def test_every_step_arrives_in_few_batches(run):
    uri, c, run_id = run
    logger = MlflowStepLogger(uri, run_id, every_steps=10, every_seconds=3600, tags={"node": "n1"})
    counting = logger._client = CountingClient(c)
    for step in range(1, 26):
        logger.step(step, {"loss_forget": -0.1 * step, "lr": 1e-4, "diverged": False, "note": "text"})
    logger.report({"step": 25, "final/forget_rougeL_recall": 0.25, "loss_forget": 1.0})
    logger.close()
    hist = c.get_metric_history(run_id, "train/loss_forget")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, 26))
    assert sorted(hist, key=lambda m: m.step)[-1].value == pytest.approx(-2.5)
    assert c.get_metric_history(run_id, "final/forget_rougeL_recall")[0].step == 25
    assert "train/note" not in c.get_run(run_id).data.metrics  # strings and booleans are not metrics
    assert c.get_run(run_id).data.tags["node"] == "n1"
    # 25 steps, flushed every 10 steps and at close: a handful of calls, not one per step.
    assert 1 <= counting.batches <= 4
    assert logger.sent == 25 * 2 + 1


def test_unreachable_server_is_an_error_at_close_not_a_silent_loss(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger = MlflowStepLogger("http://127.0.0.1:9", "0" * 32, every_steps=1, every_seconds=0.1, close_timeout=1.0)
    for step in range(1, 4):
        logger.step(step, {"loss_forget": 1.0})  # never raises into the training loop
    with pytest.raises(MetricsNotDelivered, match=r"3 per-step metrics could not be logged .*127\.0\.0\.1:9"):
        logger.close()


def test_rank_zero_alone_gets_the_sinks(run):
    uri, _, run_id = run
    options = ReportingOptions(mlflow_tracking_uri=uri, mlflow_run_id=run_id)
    primary = TrialReporter()
    zero, one = build_reporter(options, 0, primary), build_reporter(options, 1, primary)
    assert isinstance(zero, FanOut) and len(zero.reporters) == 2
    # Ray's reporter comes last: a scheduler stop inside its report must not cost MLflow the event.
    assert isinstance(zero.reporters[0], MlflowStepLogger) and zero.reporters[1] is primary
    assert one.reporters == [primary]
    zero.close()
