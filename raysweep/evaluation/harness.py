"""lm-eval-harness on the trial's model (``eval.benchmarks: [lm_eval]``): ``lm_eval.simple_evaluate``
with lm-eval's own ``HFLM`` wrapping the model and tokenizer in memory (no save and reload).

Tasks are found among raysweep's local ones (``lm_eval_tasks/``: lm-eval's WMDP and MMLU settings
over the data root's JSON Lines, ``eval.mcq_data``), those of ``eval.lm_eval.include_path``, then
lm-eval's own (which need their hub data). ``eval.mcq_add_bos`` is passed as HFLM's
``add_bos_token``, so the built-in scorer and lm-eval encode alike. A task's ``<metric>,<filter>``
results are logged as ``lm_eval/<task>/<metric>`` (``_<filter>`` unless "none"), with
``_sub<limit>`` when ``eval.lm_eval.limit`` cuts the documents. ``lm_eval`` is imported only here,
when a task runs: it takes seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from raysweep.spec import LmEvalSpec, subset_label

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"


def local_tasks() -> list[str]:
    """raysweep's own task names (one YAML per task, named as its task)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def task_manager(spec: LmEvalSpec, data_root: Path, defaults: Optional[bool] = None):
    """lm-eval's index of the tasks ``spec`` may name. lm-eval's own ~15,000 are indexed (6 s) only
    when a task is not found among the local ones (``defaults=None``)."""
    from lm_eval.tasks import TaskManager

    _quiet()
    include = [str(TASKS_DIR)] + ([str(spec.include_path)] if spec.include_path else [])
    meta = {"data_root": str(data_root)}
    if defaults is None:
        tm = TaskManager(include_path=include, include_defaults=False, metadata=meta)
        if all(t in tm.all_tasks for t in spec.tasks):
            return tm
    return TaskManager(include_path=include, include_defaults=defaults is not False, metadata=meta)


def check_tasks(spec: LmEvalSpec, data_root: Path, metrics: list[str]) -> None:
    """One-line ValueError unless every task exists (with a "did you mean"), loads its data, and
    each ``lm_eval/...`` name of ``metrics`` is one the tasks produce."""
    from raysweep.validation import did_you_mean

    tm = task_manager(spec, data_root)
    for i, name in enumerate(spec.tasks):
        if name not in tm.all_tasks:
            known = tm.all_tasks if len(tm.all_tasks) > len(local_tasks()) else task_manager(spec, data_root, True).all_tasks
            raise ValueError(f"eval.lm_eval.tasks[{i}]: {name!r} is not allowed (not an lm-eval task: raysweep's "
                             f"local {', '.join(local_tasks())}, eval.lm_eval.include_path's, or lm-eval's own)"
                             f"{did_you_mean(name, known)}")
    try:
        loaded = tm.load(list(spec.tasks))["tasks"]
    except Exception as err:  # noqa: BLE001 - lm-eval or datasets: missing files, no hub
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"eval.lm_eval.tasks: {list(spec.tasks)} is not allowed (a task's data did not load "
                         f"from {str(data_root)!r}: {first})") from None
    produced = sorted({f"lm_eval/{task}/{m['metric']}{stderr}{subset_label(spec.limit)}"
                       for task, obj in loaded.items() for m in (obj.config.metric_list or [])
                       for stderr in ("", "_stderr")})
    for name in metrics:
        if name.startswith("lm_eval/") and name not in produced:
            raise ValueError(f"sweep: metric {name!r} is not allowed (the lm-eval tasks produce "
                             f"{', '.join(produced)}){did_you_mean(name, produced)}")


def metric_name(task: str, key: str, limit: Optional[int]) -> Optional[str]:
    """``acc,none`` of ``task`` -> ``lm_eval/<task>/acc`` (None for lm-eval's non-metric keys)."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    return f"lm_eval/{task}/{metric}{'' if filt == 'none' else '_' + filt}{subset_label(limit)}"


def run_lm_eval(model, tokenizer, spec: LmEvalSpec, data_root: Path, *, batch_size: int, add_bos: bool,
                max_length: Optional[int] = None, log_samples: bool = False, task_manager_=None) -> dict:
    """lm-eval's whole result (``results``, and ``samples`` with ``log_samples``)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        # lm-eval's progress bar per request type, every evaluation, in every trial's log: off.
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

    _quiet()
    lm = QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos,
                   max_length=max_length)
    return simple_evaluate(model=lm, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot, limit=spec.limit,
                           task_manager=task_manager_ or task_manager(spec, data_root), log_samples=log_samples)


def evaluate_lm_eval(model, tokenizer, spec: LmEvalSpec, data_root: Path, *, batch_size: int, add_bos: bool,
                     max_length: Optional[int] = None) -> dict[str, float]:
    out = run_lm_eval(model, tokenizer, spec, data_root, batch_size=batch_size, add_bos=add_bos,
                      max_length=max_length)
    metrics = {}
    for task, res in out["results"].items():
        for key, value in res.items():
            name = metric_name(task, key, spec.limit)
            if name is not None and isinstance(value, (int, float)):
                metrics[name] = float(value)
    return metrics


def _quiet() -> None:
    # lm-eval logs every task's build and a warning per pre-built model at INFO/WARNING; a trial's
    # console keeps one line per event.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
