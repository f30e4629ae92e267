"""Checkpoints of the front as MLflow 3 logged models: listed under the experiment's *Logged
models*, linked to their trial's run, registrable (``mlflow.register_model("models:/<id>", NAME)``)
and loadable with ``mlflow.pyfunc.load_model`` (a text generator).

A model holds the trial's resolved job (``job.json``), the target's config and tokenizer (``base/``,
kilobytes) and a pointer to the checkpoint (the ``runs:/`` artifact or storage folder the sweep
recorded), not a second copy of the weights: a front of ten 1B-parameter checkpoints would
otherwise add tens of GB to the artifact store. The pyfunc (``front_model_code.py``, MLflow's
models-from-code: nothing pickled) rebuilds the Hugging Face model on load from those alone, never
running ``prepare`` (a LoRA point also reads the target its adapters need); its requirement is
this exact raysweep version. Tags: ``raysweep.checkpoint_path`` (plain
path of the checkpoint, on the model and on the run), ``raysweep.pareto`` (front|dominated,
refreshed), ``raysweep.point`` (``TRIAL@STEP``). Each (run, step) gets one model: the run's tag
``raysweep.model.step.<step>`` remembers it across refreshes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import raysweep
from raysweep.sweep import tracking
from raysweep.sweep.points import runs_changing
from raysweep.sweep.report import point_label

MODEL_TAG = tracking.MODEL_AT
PATH_TAG = "raysweep.checkpoint_path"
MODEL_TYPE = "raysweep-checkpoint"
CODE = Path(__file__).with_name("front_model_code.py")


def plain_path(c, uri: str) -> str:
    """Where a checkpoint's files are, without ``runs:/`` indirection (the run's artifact folder)."""
    if uri and uri.startswith("runs:/"):
        run_id, _, rest = uri[len("runs:/"):].partition("/")
        return f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{rest}"
    return uri


def log_front_models(c, report: dict) -> list[str]:
    """A logged model for each front point that has none yet; ``raysweep.pareto`` refreshed on
    those logged before. Returns the front's model ids."""
    # The sweep's console stays one line per event: no download progress bars from MLflow.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    front = {(r["run_id"], int(r["step"] or 0)): r for r in report["front"] if r.get("checkpoint_uri")}
    # each run's model tags as the report read them (not a request per run: 5,000 at 5,000 trials)
    models = {r["run_id"]: r.get("models", {}) for r in report["trials"]}
    ids = []
    for run_id, tags in models.items():
        for key, model_id in tags.items():
            if key.startswith(MODEL_TAG):
                step = int(key[len(MODEL_TAG):]) if key[len(MODEL_TAG):].isdigit() else -1
                on = (run_id, step) in front
                c.set_logged_model_tags(model_id, {"raysweep.pareto": "front" if on else "dominated"})
                if on:
                    ids.append(model_id)
                    front.pop((run_id, step))
    if front:
        parent = c.get_run(report["parent_run_id"])
        for r in front.values():
            ids.append(_log_one(c, report, r, parent))
    return ids


def _save_base(job, folder: Path) -> Path:
    """The target's config and tokenizer (kilobytes, no weights) into ``folder``: what loading the
    model reads besides the checkpoint. Returns the target's folder on this machine (a LoRA point's
    adapters need its weights)."""
    from transformers import AutoConfig

    from raysweep.models.build import load_tokenizer
    from raysweep.models.prepare import prepare

    prepared = prepare(job, quiet=True)  # the sweep's own cache: its trials prepared it
    AutoConfig.from_pretrained(prepared.target).save_pretrained(folder)
    load_tokenizer(prepared.tokenizer).save_pretrained(folder)
    return prepared.target


def model_description(report: dict, r: dict, path: str) -> str:
    """The logged model's description (Markdown): which point it is, where its weights are, how
    to load or export it."""
    objectives = ", ".join(f"{k} = {v:.4g} ({report['objectives'][k]})" for k, v in r["objectives"].items())
    when = "final evaluation" if r["final"] else f"evaluated at step {r['step']}"
    return "\n".join([
        f"**Pareto-front point {point_label(r)}** of sweep `{report['sweep']}`: {r['method']} / {r['forget']}, "
        f"{when}; {objectives}.",
        "", f"Weights: `{path}` (checkpoint `{r['checkpoint_uri']}`).", "",
        "Load: `mlflow.pyfunc.load_model('models:/<this model id>')` (generates answers), or a plain "
        f"Hugging Face folder: `raysweep export {report['sweep']} {point_label(r)} OUT_DIR`, then "
        "`AutoModelForCausalLM.from_pretrained(OUT_DIR)`.",
    ])


def _log_one(c, report: dict, r: dict, parent) -> str:
    import mlflow.pyfunc

    from raysweep.sweep.export import trial_job_of

    trial_spec = trial_job_of(c, parent, r["params"])
    path = plain_path(c, r["checkpoint_uri"])
    name = tracking.child_run_name(r["method"], r["forget"], r["trial_id"]) + ("" if r["final"] else f"-step-{r['step']}")
    model = c.create_logged_model(
        report["experiment_id"], name=name, source_run_id=r["run_id"], model_type=MODEL_TYPE,
        params={k: str(v)[:6000] for k, v in {**r.get("flat_params", {}), **r["params"]}.items()},
        tags={"raysweep.pareto": "front", "raysweep.point": point_label(r), "raysweep.sweep": report["sweep"],
              "raysweep.checkpoint_uri": r["checkpoint_uri"], PATH_TAG: path,
              "raysweep.method": r["method"] or "", "raysweep.forget": r["forget"] or ""})
    with tempfile.TemporaryDirectory(prefix="raysweep-model-") as tmp:
        (Path(tmp) / "job.json").write_text(trial_spec.model_dump_json())
        target = _save_base(trial_spec, Path(tmp) / "base")
        with warnings.catch_warnings():  # its advice on type hints (prompts are plain strings)
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.save_model(
                str(Path(tmp) / "model"), python_model=str(CODE),
                artifacts={"job": str(Path(tmp) / "job.json"), "base": str(Path(tmp) / "base")},
                model_config={"checkpoint": r["checkpoint_uri"], "point": point_label(r), "sweep": report["sweep"],
                              "target": str(target)},
                # exactly this version: serving with environment restoration installs what is named
                pip_requirements=[f"raysweep=={raysweep.__version__}"])
        c.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
    for k, v in r["objectives"].items():  # the point's objectives, shown with the model (a key of their own)
        c.log_metric(r["run_id"], f"front/{k}", v, step=int(r["step"] or 0), model_id=model.model_id)
    c.set_logged_model_tags(model.model_id, {"mlflow.note.content": model_description(report, r, path)})
    from mlflow.entities import LoggedModelOutput

    # the run's page lists it under "Logged models" only once it is the run's output
    c.log_outputs(r["run_id"], [LoggedModelOutput(model.model_id, int(r["step"] or 0))])
    c.finalize_logged_model(model.model_id, "READY")
    runs_changing(c, report)
    c.set_tag(r["run_id"], f"{MODEL_TAG}{int(r['step'] or 0)}", model.model_id)
    r.setdefault("models", {})[f"{MODEL_TAG}{int(r['step'] or 0)}"] = model.model_id  # the report knows it too
    c.set_tag(r["run_id"], PATH_TAG, path)
    return model.model_id

