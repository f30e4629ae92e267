"""MLflow layout of a sweep: one parent run per sweep, one child run per Tune trial.

Parent tags: ``raysweep.sweep`` (the sweep name, what the CLI takes), ``raysweep.role=parent``,
``raysweep.storage`` (the Tune experiment path), ``raysweep.objectives`` (JSON {metric: min|max}),
``raysweep.reference_point`` (JSON, optional), ``raysweep.objective.<name>`` (its direction).
Artifacts: ``job.yaml``, ``job.json``, ``search_space.yaml``; once the front is computed
``pareto_front.csv``/``.json``, the front and hypervolume plots, a description listing the front
(``sweep/front_marks.py``); the snapshot of the sweep's points ``raysweep/points.json.gz`` named by
tag ``raysweep.points`` (``sweep/points.py``). Child runs are named ``<method>-<forget>-trial-<id>``; tags:
``raysweep.trial_id``, ``raysweep.method``, ``raysweep.forget``, ``raysweep.objective.<name>``,
``raysweep.checkpoint_uri``, ``raysweep.node``, ``raysweep.pareto`` (front|dominated); a trial
keeps one child run across restarts.

Why one module: it is the sweep's whole contract with MLflow - the layout's names, the reads every
command shares (runs and metric histories in bulk, pages in parallel from a server: issue 28) and
the few writes - so that no other module spells a tag key or a request of its own.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

SWEEP_TAG = "raysweep.sweep"
ROLE_TAG = "raysweep.role"
TRIAL_TAG = "raysweep.trial_id"
PARETO_TAG = "raysweep.pareto"  # the front marks (sweep/front_marks.py)
# A trial the sweep's own early stop ended (the retain-loss guard) closes FAILED with this reason
# prefix (sweep/trial.py); resume counts it as ended by itself (sweep/schedulers/restore.py).
EARLY_STOP_REASON = "early stop: "


class TrackingError(RuntimeError):
    """One-line errors for the CLI (unknown sweep, unreachable server, ...)."""


# Where the checkpoint evaluated at a step along the run lives (MLflow tag keys allow no '@').
CHECKPOINT_AT = "raysweep.checkpoint.step."


# The MLflow logged model of the front point at a step (sweep/front_models.py): tag key prefix.
MODEL_AT = "raysweep.model.step."


def checkpoint_tag(step: int) -> str:
    return f"{CHECKPOINT_AT}{int(step)}"


def redact(uri: str) -> str:
    """A URI fit to print or log: ``user:password@`` becomes ``***@`` and a secret-looking query
    parameter's value (``?token=...``) becomes ``***``."""
    import re

    if not uri:
        return uri
    # ":/+" also catches a URI that went through a path join ("http:/user:pw@host"). The user
    # information runs to the last "@" before the host: a raw "@" in a password is still secret.
    out = re.sub(r"(:/+)[^/\s'\"?#]+@", r"\1***@", uri)
    return re.sub(r"([?&])([^=&#\s'\"]+)=([^&#\s'\"]*)",
                  lambda m: f"{m.group(1)}{m.group(2)}=***" if is_secret_key(m.group(2)) else m.group(0), out)


_SECRET_PARTS = {"password", "passwd", "pwd", "secret", "token", "apikey", "credential", "credentials", "auth",
                 "authorization", "passphrase", "private"}


def is_secret_key(name: str) -> bool:
    """``db_password``, ``api-key``, ``MLFLOW_TRACKING_TOKEN``, ``aws_secret_access_key``: yes;
    ``authors``, ``tokenizer``: no (whole parts of the name, not substrings)."""
    import re

    parts = [p for p in re.split(r"[_.\-]", name.lower()) if p]
    joined = "".join(parts)
    return any(p in _SECRET_PARTS for p in parts) or "apikey" in joined or "accesskey" in joined


def redact_text(text: str) -> str:
    """Text fit to log: URI credentials and the values of secret-looking ``key: value`` /
    ``key=value`` pairs become ``***`` (YAML, JSON and command lines alike), YAML block scalars
    (``password: |`` and the indented lines under it) included."""
    import re

    text = _redact_block_scalars(redact(text))

    # Keys are matched without consuming their values, so ``env: TOKEN=x`` still sees ``TOKEN=x``.
    pairs = re.finditer(r"(?<![\w.-])\"?([A-Za-z][\w.-]*)\"?\s*[:=]\s*(?=(\"[^\"]*\"|'[^']*'|[^\s,}#]+))", text)
    out, last = [], 0
    for m in pairs:
        if is_secret_key(m.group(1)) and m.end() >= last and not m.group(2).startswith("***"):
            out += [text[last:m.end()], "'***'"]
            last = m.end() + len(m.group(2))
    return "".join(out) + text[last:]


def _redact_block_scalars(text: str) -> str:
    """``secret_key: |`` (or ``>``, with chomping/indent marks): every line indented under it
    becomes ``***``; the key's own line is left to :func:`redact_text`'s pair rule."""
    import re

    lines, under = text.split("\n"), None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if under is not None:
            if not line.strip() or indent > under:
                lines[i] = line[:indent] + "***" if line.strip() else line
                continue
            under = None
        m = re.match(r"\s*(?:-\s+)?\"?([A-Za-z][\w.-]*)\"?\s*:\s*[|>][-+0-9]*\s*(#.*)?$", line)
        if m and is_secret_key(m.group(1)):
            under = indent
    return "\n".join(lines)


def redact_mapping(obj):
    """A copy of a job (dicts, lists, scalars) with secret-looking keys' values and URI
    credentials redacted."""
    if isinstance(obj, dict):
        return {k: ("***" if isinstance(k, str) and is_secret_key(k) and v not in (None, "") else redact_mapping(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_mapping(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    from raysweep.sweep.sqlite_store import seed_new_store

    seed_new_store(tracking_uri)  # a new sqlite store in milliseconds instead of ~9 s of migrations
    return MlflowClient(tracking_uri=tracking_uri)


def fail_fast_http() -> None:
    # A dead tracking server should be a clear error within seconds, not minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def log_job(c, run_id: str, job) -> None:
    """The job as ``job.json`` (what ``resume`` reads) and its source file, both redacted:
    credentials a user put in the job (a tracking URI with user:password@, a secret-looking
    field) never reach MLflow."""
    c.log_text(run_id, json.dumps(redact_mapping(job.model_dump(mode="json"))), "job.json")
    if job.source and Path(job.source).is_file():
        c.log_text(run_id, redact_text(Path(job.source).read_text()), Path(job.source).name)


TRIAL_USER_ENV = "RAYSWEEP_TRIAL_USER"


def grant_trials(tracking_uri: str, experiment: str) -> Optional[str]:
    """On an MLflow basic-auth server, give the trials' own user (``$RAYSWEEP_TRIAL_USER``, not an
    admin: cluster.yaml creates it) EDIT on the sweep's experiment, and nothing else: a node's
    credentials then reach this experiment only. The driver, logged in as the admin, calls it.
    Returns the user granted, or None where there is no such user or server."""
    user = os.environ.get(TRIAL_USER_ENV)
    if not user or not tracking_uri.startswith(("http://", "https://")):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        auth.grant_user_permission(user, "experiment", experiment, "EDIT")
    except MlflowException as err:  # granted before (a resumed or second sweep of this experiment)
        if "already exists" not in str(err) and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise TrackingError(f"{TRIAL_USER_ENV}: cannot give {user!r} access to experiment {experiment} at "
                                f"{redact(tracking_uri)} ({str(err).splitlines()[0][:200]})") from None
    return user


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def find_parent(c, sweep: str, tracking_uri: str):
    try:
        exps = c.search_experiments()
    except Exception as err:  # noqa: BLE001 - any transport error means unreachable
        raise TrackingError(f"cannot reach the tracking server at {tracking_uri}: {str(err).splitlines()[0][:200]}") from None
    ids = [e.experiment_id for e in exps]
    runs = c.search_runs(ids, filter_string=f"tags.`{ROLE_TAG}` = 'parent'", max_results=5000) if ids else []
    for r in runs:
        if r.data.tags.get(SWEEP_TAG) == sweep:
            return r
    known = sorted({r.data.tags.get(SWEEP_TAG, "?") for r in runs})
    raise TrackingError(f"unknown sweep '{sweep}' at {tracking_uri} (known: {', '.join(known) or 'none'})")


# Runs per search_runs request: a server builds a page of 1,000 full runs in ~1.5 s of CPU, past
# the CLI's 10 s timeout on a loaded machine; 250 keep each request short.
SEARCH_PAGE = 250
# Requests in flight at once to a tracking server: as many as cluster.yaml's server has workers
# (more would queue behind them, and a queued request's wait counts against its timeout). Its
# workers build pages in parallel while this process parses the ones that came back (issue 28).
IN_FLIGHT = 2


def _remote(c) -> bool:
    """Whether ``c`` talks to a tracking server (in-process stores gain nothing from threads)."""
    from mlflow.store.tracking.rest_store import RestStore

    return isinstance(c._tracking_client.store, RestStore)


def _offset_token(offset: int) -> str:
    import base64

    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def _token_offset(token: Optional[str]) -> Optional[int]:
    """The offset of an MLflow SQL/file store's page token ({"offset": N}, base64), or None for
    any other kind of token (then pages are read one after another)."""
    import base64

    try:
        decoded = json.loads(base64.b64decode(token, validate=True))
    except (ValueError, TypeError):
        return None
    return decoded["offset"] if isinstance(decoded, dict) and set(decoded) == {"offset"} \
        and isinstance(decoded["offset"], int) else None


def search_all_runs(c, experiment_ids: list, filter_string: str, deleted: bool = False) -> list:
    """Every run matching a server-side filter, page by page (no silent cap at one page); the
    deleted ones instead with ``deleted``. From a tracking server whose pages are offsets, the
    pages after the first are read ``IN_FLIGHT`` at a time; until a page comes back last."""
    from mlflow.entities import ViewType

    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY

    def page(token):
        return c.search_runs(experiment_ids, filter_string=filter_string, run_view_type=view,
                             max_results=SEARCH_PAGE, page_token=token)

    first = page(None)
    runs, token = list(first), first.token
    offset = _token_offset(token) if token and _remote(c) else None
    if offset is not None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            while token:
                batch = pool.map(page, [_offset_token(offset + i * SEARCH_PAGE) for i in range(IN_FLIGHT)])
                for p in batch:
                    runs.extend(p)
                    token = p.token
                    if not token:
                        break
                offset += IN_FLIGHT * SEARCH_PAGE
        return runs
    while token:
        p = page(token)
        runs.extend(p)
        token = p.token
    return runs


def _children(parent) -> str:
    return f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"


def child_runs(c, parent) -> list:
    return search_all_runs(c, [parent.info.experiment_id], _children(parent))


# The sweep's evaluated points as of a moment, on its parent run (sweep/points.py, issue 28): a
# cache of what the full listing of its child runs gives (report.py's rows), so that a read lists
# only the runs that could differ from it - listing 5,000 full runs costs a server ~1.5 ms of CPU
# each. The tag holds {"id", "taken", "runs"}; the artifact the rows (gzipped JSON, its "id" the
# tag's). Who writes to a child run that has ended, other than by ending it again, first drops it.
POINTS_TAG, POINTS_ARTIFACT = "raysweep.points", "raysweep/points.json.gz"
# Runs ended up to this long before a snapshot was taken are listed again: a run's end time is
# its node's clock, which may lag the clock that took the snapshot.
CLOCK_SKEW_MS = 5 * 60 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


def deleted_child_ids(c, parent) -> set[str]:
    return {r.info.run_id for r in search_all_runs(c, [parent.info.experiment_id], _children(parent), deleted=True)}


def changed_child_runs(c, parent, since_ms: int) -> list:
    """The child runs that may differ from a listing taken at ``since_ms``: those that ended after
    it (less :data:`CLOCK_SKEW_MS`; a reopened run that ends again has a new end time) and those
    RUNNING (a run reopened by ``resume`` keeps its old end time while it runs)."""
    exp = [parent.info.experiment_id]
    ended = search_all_runs(c, exp, f"{_children(parent)} and attributes.end_time >= {int(since_ms) - CLOCK_SKEW_MS}")
    running = search_all_runs(c, exp, f"{_children(parent)} and attributes.status = 'RUNNING'")
    return list({r.info.run_id: r for r in [*ended, *running]}.values())


def read_points(c, parent) -> Optional[dict]:
    """The snapshot the parent's tag names, or None (none, or it cannot be read: then the caller
    lists every run, as before snapshots)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar on the CLI's output
    try:
        meta = json.loads(parent.data.tags.get(POINTS_TAG) or "null")
        if not meta:
            return None
        with tempfile.TemporaryDirectory(prefix="raysweep-points-") as tmp:
            path = c.download_artifacts(parent.info.run_id, POINTS_ARTIFACT, tmp)
            snapshot = json.loads(gzip.decompress(Path(path).read_bytes()))
    except Exception:  # noqa: BLE001 - a cache: the full listing is always right
        return None
    # the artifact is rewritten in place: one written after this tag was read is not the tag's
    return snapshot if snapshot.get("id") == meta.get("id") else None


def _points_tag(c, parent_run_id: str) -> str:
    return c.get_run(parent_run_id).data.tags.get(POINTS_TAG, "")


def drop_points(c, parent_run_id: str, seen: str) -> bool:
    """Invalidate the parent's snapshot before writing to its ended child runs; whether the tag
    was still ``seen`` (else another writer changed the runs meanwhile: write no snapshot)."""
    ok = _points_tag(c, parent_run_id) == seen
    c.set_tag(parent_run_id, POINTS_TAG, "")
    return ok


def write_points(c, parent_run_id: str, snapshot: dict, seen: str) -> bool:
    """Store ``snapshot`` (with its ``id`` and ``taken``) on the parent, unless its tag is no
    longer ``seen`` (another writer's snapshot or changes since this one's listing)."""
    if _points_tag(c, parent_run_id) != seen:
        return False
    folder, name = POINTS_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="raysweep-points-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(gzip.compress(json.dumps(snapshot, separators=(",", ":")).encode(), compresslevel=6))
        c.log_artifact(parent_run_id, str(path), folder)
    c.set_tag(parent_run_id, POINTS_TAG, json.dumps({"id": snapshot["id"], "taken": snapshot["taken"],
                                                     "runs": len(snapshot["runs"])}))
    return True


# MLflow's limits for metrics/get-history-bulk (the UI's bulk history): runs per request, values
# per request (beyond which it truncates).
HISTORY_RUNS_PER_CALL, HISTORY_VALUES_PER_CALL = 100, 25000


def metric_histories(c, run_ids: list[str], key: str) -> dict[str, dict[int, float]]:
    """{run id: {step: value}} of one metric for many runs (:func:`metric_points`, values only)."""
    return {r: {s: v for s, (v, _) in points.items()} for r, points in metric_points(c, run_ids, key).items()}


def metric_points(c, run_ids: list[str], key: str) -> dict[str, dict[int, tuple[float, int]]]:
    """{run id: {step: (value, timestamp)}} of one metric for many runs: one request (one SQL
    query) per 100 runs instead of one per run - 5,000 trials x 3 metrics were 15,000 round trips
    (issue 28); from a tracking server ``IN_FLIGHT`` at a time. A request that comes back full is
    split (one run alone: read whole with get_metric_history); where the value of a step was
    logged twice, the later one counts."""
    out: dict[str, dict[int, tuple[float, int]]] = {r: {} for r in run_ids}
    todo = [run_ids[i:i + HISTORY_RUNS_PER_CALL] for i in range(0, len(run_ids), HISTORY_RUNS_PER_CALL)]

    def read(chunk):
        points = _bulk_history(c, chunk, key)
        if points is None or (len(points) >= HISTORY_VALUES_PER_CALL and len(chunk) == 1):
            # no bulk API here, or one run with more values than a request holds
            return [], [(r, m.step, m.value, m.timestamp) for r in chunk for m in c.get_metric_history(r, key)]
        if len(points) >= HISTORY_VALUES_PER_CALL:
            return [chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]], []
        return [], points

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(IN_FLIGHT if _remote(c) else 1) as pool:
        while todo:
            done = list(pool.map(read, todo))
            todo = [half for split, _ in done for half in split]
            for _, points in done:
                for run_id, step, value, ts in sorted(points, key=lambda p: (p[0], p[3], p[1])):
                    out[run_id][int(step)] = (value, ts)
    return out


def _bulk_history(c, run_ids: list[str], key: str) -> Optional[list[tuple]]:
    """(run id, step, value, timestamp) of ``key`` for up to 100 runs in one call, or None where
    the store offers no bulk read."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = c._tracking_client.store
    if isinstance(store, SqlAlchemyStore):
        return [(m.run_id, m.step, m.value, m.timestamp) for m in
                store.get_metric_history_bulk(run_ids, key, max_results=HISTORY_VALUES_PER_CALL)]
    if not isinstance(store, RestStore):
        return None
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    # The server's bulk history (what its UI charts with): one SQL query for the runs.
    endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
    resp = http_request(store.get_host_creds(), endpoint, "GET",
                        params={"run_id": run_ids, "metric_key": key, "max_results": HISTORY_VALUES_PER_CALL})
    if resp.status_code == 404:  # a server without it
        return None
    verify_rest_response(resp, endpoint)
    return [(m["run_id"], m.get("step", 0), float(m["value"]), int(m.get("timestamp", 0)))
            for m in resp.json().get("metrics", [])]


def find_child(c, parent_run_id: str, experiment: str, trial_id: str):
    found = c.search_runs([experiment], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                                                     f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return found[0] if found else None


def get_or_create_child(c, parent_run_id: str, experiment: str, trial_id: str, sweep: str, params: dict,
                        tags: dict) -> str:
    """The trial's one child run: reused when the trial restarts (resume), created otherwise."""
    found = find_child(c, parent_run_id, experiment, trial_id)
    if found is not None:
        run_id = found.info.run_id
        if found.info.status != "RUNNING":
            c.update_run(run_id, status="RUNNING")
        c.set_tag(run_id, "raysweep.restarts", str(int(found.data.tags.get("raysweep.restarts", "0")) + 1))
        return run_id
    name = child_run_name(tags.get("raysweep.method"), tags.get("raysweep.forget"), trial_id)
    run = c.create_run(experiment, tags={"mlflow.parentRunId": parent_run_id, TRIAL_TAG: trial_id, SWEEP_TAG: sweep,
                                         "mlflow.runName": name, **tags})
    from mlflow.entities import Param

    if params:
        c.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id


CONFIG_TAG = "raysweep.config"


def trial_config(run) -> dict:
    """A child run's drawn configuration under the sampler's names (``method.sago.alpha``,
    ``unlearn.lr``): the ``raysweep.config`` tag (JSON); runs of older versions logged it as params
    beside the flat ones."""
    raw = run.data.tags.get(CONFIG_TAG)
    if raw:
        return json.loads(raw)
    from raysweep.sweep.space import is_space_key

    return {k: v for k, v in run.data.params.items() if is_space_key(k)}


def child_run_name(method: Optional[str], forget: Optional[str], trial_id: str) -> str:
    """``sago-npo-trial-3f2a1_00003``: what the runs table shows, readable without opening the run."""
    return "-".join([p for p in (method, forget) if p] + [f"trial-{trial_id}"])


OBJECTIVE_TAG = "raysweep.objective."


def objective_tags(objectives: dict[str, str]) -> dict[str, str]:
    """One tag per objective with its direction (``raysweep.objective.forget_quality=max``): a
    column of its own in the runs table, unlike the JSON of ``raysweep.objectives``."""
    return {f"{OBJECTIVE_TAG}{k}": v for k, v in objectives.items()}


def log_metrics(c, run_id: str, metrics: dict, step: Optional[int] = None) -> None:
    import math

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k.replace(":", "_"), float(v), ts, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    for i in range(0, len(batch), 900):
        c.log_batch(run_id, metrics=batch[i:i + 900])


def close_stale_runs(c, parent, reason: str) -> int:
    """Child runs still RUNNING when their sweep is not: KILLED, with the reason as a tag."""
    n = 0
    for r in child_runs(c, parent):
        if r.info.status == "RUNNING":
            c.set_tag(r.info.run_id, "raysweep.status_reason", reason)
            c.set_terminated(r.info.run_id, status="KILLED")
            n += 1
    return n


def parent_objectives(parent) -> dict[str, str]:
    return json.loads(parent.data.tags.get("raysweep.objectives", "{}"))


def parent_constrained(parent) -> bool:
    """Whether the sweep has a ``sweep.constraint`` (then a point that recorded no feasibility is infeasible)."""
    return parent.data.tags.get("raysweep.constrained") == "True"
