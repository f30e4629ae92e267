"""Every bad input ends in one line naming the field (or file and line), the value and what is
allowed, exit code 2, no traceback, before any training or Ray start (issue 12, item 1).

The table is called through the CLI's ``main`` in this process (``run`` and ``launch`` with
``--dry-run`` so a case that wrongly passed validation still starts nothing); a few cases run the
real console entry point in a fresh process (the hang and the exit code seen by a shell)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, tiny_job

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


@pytest.fixture(scope="module")
def world(tmp_path_factory, tofu_dir):
    """A valid job + search space + sqlite MLflow, and the broken variants the table points at."""
    root = tmp_path_factory.mktemp("bad_input")
    job = tiny_job(root, tofu_dir)
    raw = yaml.safe_load(job.read_text())
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({"method": {"graddiff": {"alpha": {"uniform": [0.5, 2.0]}}},
                                     "unlearn": {"lr": {"loguniform": [1e-4, 1e-3]}}}))
    raw["eval"] = {"benchmarks": ["qa"], "max_questions": 6, "max_new_tokens": 8}
    raw["sweep"] = {"search_space": str(space), "objectives": {"forget_answer_loss": "max", "retain_answer_loss": "min"},
                    "num_trials": 2, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                    "storage_path": str(root / "runs")}
    sweep_job = root / "sweep.yaml"
    sweep_job.write_text(yaml.safe_dump(raw))
    # a database with one experiment and no sweep in it
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").create_experiment("empty")
    # data folders: the real first 3 authors, then one defect each
    full = (tofu_dir / "full.jsonl").read_text().splitlines()[:60]
    for name, lines in {
        "ok": full,
        "broken_json": full[:7] + ['{"question": "q", "answer": '] + full[8:],
        "no_answer": full[:3] + [json.dumps({"question": "q"})] + full[4:],
        "answer_not_str": full[:3] + [json.dumps({"question": "q", "answer": 3})] + full[4:],
        "row_list": full[:3] + ["[1, 2]"] + full[4:],
        "empty": [],
    }.items():
        d = root / "data" / name
        d.mkdir(parents=True)
        (d / "full.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    binary = root / "data" / "binary"
    binary.mkdir()
    (binary / "full.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    # files that are not what they claim
    (root / "binary.yaml").write_bytes(b"\x00\x01\xff\xfe\x80binary")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "scalar.yaml").write_text("just a string\n")
    (root / "bad.yaml").write_text("name: x\ndata: {path: [\nunlearn: 3\n")
    (root / "tabs.yaml").write_text("name: x\n\tdata: 1\n")
    (root / "folder.yaml").mkdir()
    (root / "a_file").write_text("x")
    notmodel = root / "notmodel"
    notmodel.mkdir()
    (notmodel / "readme.txt").write_text("not a model")
    noweights = root / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text("{}")
    user_folder = root / "user_folder"  # a folder of the user's that export must never touch
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("mine")
    # a finished sweep 'made' (trials t1-t5, checkpoints that are not on this machine) for export
    from .sweep.made_sweep import make_sweep

    make_sweep(root / "made", name="made", tofu_dir=tofu_dir, uri=f"sqlite:///{root / 'mlflow.db'}")
    model = root / "model"  # passes the folder check; the job that follows is what is wrong
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x")
    return root


def _space(root: Path, name: str, body) -> str:
    path = root / f"space_{name}.yaml"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return str(path)


def _job(root: Path, name: str, **changes) -> str:
    """The sweep job with top-level sections replaced (``None`` removes one)."""
    raw = yaml.safe_load((root / "sweep.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = root / f"job_{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _with_space(root, name, body):
    raw = yaml.safe_load((root / "sweep.yaml").read_text())
    return _job(root, name, sweep={**raw["sweep"], "search_space": _space(root, name, body)})


def _with_data(root, name):
    raw = yaml.safe_load((root / "sweep.yaml").read_text())
    return _job(root, name, data={**raw["data"], "path": str(root / "data" / name)})


J, S = "job.yaml", "sweep.yaml"
RUN = ("run", "--dry-run")
LAUNCH = ("launch", "--dry-run")
# (class, id, argv(root) -> list, expected fragment of the one error line)
CASES = [
    # --- --set syntax and structure ---
    ("set", "no-equals", lambda r: [*RUN, str(r / J), "--set", "unlearn.lr"], "--set 'unlearn.lr' is not allowed (key.path=value)"),
    ("set", "empty-key", lambda r: [*RUN, str(r / J), "--set", "=3"], "key '' is not allowed"),
    ("set", "empty-part", lambda r: [*RUN, str(r / J), "--set", "unlearn..lr=3"], "key 'unlearn..lr' is not allowed"),
    ("set", "key-under-scalar", lambda r: [*RUN, str(r / J), "--set", "unlearn.steps.max=5"], "unlearn.steps is 3, not a mapping"),
    ("set", "key-under-list", lambda r: [*RUN, str(r / J), "--set", "unlearn.retain=[{name: nll}]", "--set", "unlearn.retain.name=kl"], "unlearn.retain is [{'name': 'nll'}], not a mapping"),
    ("set", "set-on-list-job", lambda r: [*RUN, str(r / "list.yaml"), "--set", "a.b=1"], "a YAML list is not allowed (a YAML mapping)"),
    ("set", "invalid-yaml-value", lambda r: [*RUN, str(r / J), "--set", "unlearn.lr=[1,"], "--set unlearn.lr: '[1,' is not allowed (not valid YAML"),
    ("set", "invalid-yaml-mapping", lambda r: [*RUN, str(r / J), "--set", "unlearn.method={name: sago"], "--set unlearn.method: '{name: sago' is not allowed (not valid YAML"),
    ("set", "hyperparameter-str", lambda r: [*RUN, str(r / J), "--set", "unlearn.method.alpha=abc"], "unlearn.method.alpha: 'abc' is not allowed (a finite number)"),
    ("set", "hyperparameter-bool", lambda r: [*RUN, str(r / J), "--set", "unlearn.method.alpha=true"], "unlearn.method.alpha: True is not allowed (a finite number)"),
    ("set", "hyperparameter-inf", lambda r: [*RUN, str(r / J), "--set", "unlearn.forget.name=npo", "--set", "unlearn.forget.beta=.nan"], "unlearn.forget.beta: nan is not allowed (a finite number)"),
    ("set", "int-hyperparameter-float", lambda r: [*RUN, str(r / J), "--set", "unlearn.method={name: ngdiff, autolr_interval: 2.5}"], "unlearn.method.autolr_interval: 2.5 is not allowed (an integer)"),
    ("set", "prepare-set", lambda r: ["prepare", str(r / J), "--set", "prepare.epochs.x=1"], "prepare.epochs is 2, not a mapping"),
    ("set", "launch-set", lambda r: [*LAUNCH, str(r / S), "--set", "sweep.num_trials=[1"], "--set sweep.num_trials: '[1' is not allowed"),
    ("set", "eval-set", lambda r: ["eval", str(r / "model"), "--benchmark", "qa", "--job", str(r / J), "--set", "eval.batch_size=0"], "eval.batch_size: 0 is not allowed"),
    # --- the job file itself ---
    ("job-file", "missing", lambda r: [*RUN, str(r / "nope.yaml")], "job file '"),
    ("job-file", "folder", lambda r: [*RUN, str(r / "folder.yaml")], "is a folder (a YAML file is expected)"),
    ("job-file", "binary", lambda r: [*RUN, str(r / "binary.yaml")], "is not allowed (a UTF-8 text file is expected"),
    ("job-file", "invalid-yaml-line", lambda r: [*RUN, str(r / "bad.yaml")], "bad.yaml:4:1: not valid YAML"),
    ("job-file", "tab-indent", lambda r: [*RUN, str(r / "tabs.yaml")], "tabs.yaml:2:1: not valid YAML"),
    ("job-file", "list", lambda r: [*RUN, str(r / "list.yaml")], "a YAML list is not allowed (a YAML mapping)"),
    ("job-file", "scalar", lambda r: [*RUN, str(r / "scalar.yaml")], "a YAML str is not allowed (a YAML mapping)"),
    ("job-file", "prepare-binary", lambda r: ["prepare", str(r / "binary.yaml")], "a UTF-8 text file is expected"),
    ("job-file", "launch-folder", lambda r: [*LAUNCH, str(r / "folder.yaml")], "is a folder"),
    ("job-file", "eval-job-invalid-yaml", lambda r: ["eval", str(r / "model"), "--benchmark", "qa", "--job", str(r / "bad.yaml")], "bad.yaml:4:1: not valid YAML"),
    # --- job fields ---
    ("job-field", "unknown-key", lambda r: [*RUN, str(r / J), "--set", "unlearn.stpes=3"], "unlearn.stpes: unknown key (allowed:"),
    ("job-field", "wrong-type", lambda r: [*RUN, str(r / J), "--set", "unlearn.steps=many"], "unlearn.steps: 'many' is not allowed"),
    ("job-field", "steps-zero", lambda r: [*RUN, str(r / J), "--set", "unlearn.steps=0"], "unlearn.steps: 0 is not allowed (Input should be greater than 0)"),
    ("job-field", "lr-inf", lambda r: [*RUN, str(r / J), "--set", "unlearn.lr=.inf"], "unlearn.lr: inf is not allowed (a finite number)"),
    ("job-field", "lr-nan", lambda r: [*RUN, str(r / J), "--set", "unlearn.lr=.nan"], "unlearn.lr: nan is not allowed"),
    ("job-field", "retain-empty", lambda r: [*RUN, str(r / J), "--set", "unlearn.retain=[]"], "unlearn.retain: 0 retain objective(s) is not allowed (method 'graddiff' takes 1 to 2)"),
    ("job-field", "retain-too-many", lambda r: [*RUN, str(r / J), "--set", "unlearn.retain=[{name: nll}, {name: kl}, {name: nll}]"], "unlearn.retain: 3 retain objective(s) is not allowed"),
    ("job-field", "workers-64", lambda r: [*RUN, str(r / J), "--set", "train.workers=64"], "train.workers: 64 is not allowed (at most"),
    ("job-field", "unknown-method", lambda r: [*RUN, str(r / J), "--set", "unlearn.method.name=sag0"], "did you mean 'sago'?"),
    ("job-field", "unknown-forget", lambda r: [*RUN, str(r / J), "--set", "unlearn.forget.name=npoo"], "unlearn.forget.name: 'npoo' is not allowed"),
    ("job-field", "unknown-hyperparameter", lambda r: [*RUN, str(r / J), "--set", "unlearn.method.gama=2"], "did you mean 'gamma'?"),
    ("job-field", "hyperparameter-range", lambda r: [*RUN, str(r / J), "--set", "unlearn.method={name: gru, mu: 0}"], "gru.mu: 0 is not allowed (0 < mu <= 1)"),
    ("job-field", "grad-accum", lambda r: [*RUN, str(r / J), "--set", "unlearn.grad_accum=3"], "unlearn.grad_accum: 3 is not allowed (must divide batch_size=4)"),
    ("job-field", "optimizer", lambda r: [*RUN, str(r / J), "--set", "unlearn.optimizer=adam"], "unlearn.optimizer: 'adam' is not allowed"),
    ("job-field", "forget-split", lambda r: [*RUN, str(r / J), "--set", "data.subset=null", "--set", "data.forget_split=forget11"], "data.forget_split: 'forget11' is not allowed"),
    ("job-field", "cache-dir-under-file", lambda r: [*RUN, str(r / J), "--set", f"cache_dir={r / 'a_file' / 'cache'}"], "cache_dir: '"),
    ("job-field", "sweep-missing", lambda r: [*LAUNCH, str(r / J)], "sweep: missing is not allowed"),
    ("job-field", "sweep-metric", lambda r: [*LAUNCH, str(r / S), "--set", "sweep.objectives={forget_rouge: min}"], "metric 'forget_rouge' is not allowed"),
    ("job-field", "sweep-space-missing", lambda r: [*LAUNCH, str(r / S), "--set", "sweep.search_space=nope.yaml"], "sweep.search_space: "),
    ("job-field", "sweep-lr-negative-prepare", lambda r: ["prepare", str(r / J), "--set", "prepare.lr=-1"], "prepare.lr: -1 is not allowed"),
    # --- the search space ---
    ("search-space", "binary", lambda r: [*LAUNCH, _with_space(r, "binary", b"\xff\xfe\x00\x01")], "a UTF-8 text file is expected"),
    ("search-space", "invalid-yaml", lambda r: [*LAUNCH, _with_space(r, "badyaml", "method:\n  sago: {alpha: [1,\n")], "space_badyaml.yaml:3:1: not valid YAML"),
    ("search-space", "not-mapping", lambda r: [*LAUNCH, _with_space(r, "list", "- sago\n")], "a search space is a YAML mapping"),
    ("search-space", "unknown-section", lambda r: [*LAUNCH, _with_space(r, "section", {"methods": {"sago": {}}})], "methods: unknown key (allowed: method, forget, retain, unlearn); did you mean 'method'?"),
    ("search-space", "unknown-method", lambda r: [*LAUNCH, _with_space(r, "name", {"method": {"sagoo": {}}})], "method.sagoo: unknown name"),
    ("search-space", "unknown-hyperparameter", lambda r: [*LAUNCH, _with_space(r, "hp", {"method": {"sago": {"alfa": 1.0}}})], "method.sago.alfa: unknown hyperparameter"),
    ("search-space", "fixed-str", lambda r: [*LAUNCH, _with_space(r, "fixed", {"method": {"sago": {"alpha": "abc"}}})], "method.sago.alpha: 'abc' is not allowed (a finite number)"),
    ("search-space", "choice-str", lambda r: [*LAUNCH, _with_space(r, "choice", {"method": {"sago": {"alpha": {"choice": [1.0, "x"]}}}})], "method.sago.alpha: 'x' is not allowed (a finite number)"),
    ("search-space", "steps-zero", lambda r: [*LAUNCH, _with_space(r, "steps", {"unlearn": {"steps": {"int": [0, 5]}}})], "unlearn.steps: 0 is not allowed (the job with it is invalid: unlearn.steps: 0"),
    ("search-space", "lr-negative", lambda r: [*LAUNCH, _with_space(r, "lr", {"unlearn": {"lr": {"uniform": [-1e-3, 1e-3]}}})], "unlearn.lr: -0.001 is not allowed"),
    ("search-space", "bad-distribution", lambda r: [*LAUNCH, _with_space(r, "dist", {"unlearn": {"lr": {"logunifrom": [1e-4, 1e-3]}}})], "did you mean 'loguniform'?"),
    ("search-space", "low-ge-high", lambda r: [*LAUNCH, _with_space(r, "order", {"unlearn": {"lr": {"uniform": [1e-3, 1e-4]}}})], "is not allowed (low < high)"),
    ("search-space", "inf-bound", lambda r: [*LAUNCH, _with_space(r, "inf", {"unlearn": {"lr": {"uniform": [1e-4, float("inf")]}}})], "is not allowed (finite bounds)"),
    ("search-space", "not-searchable", lambda r: [*LAUNCH, _with_space(r, "field", {"unlearn": {"seed": {"int": [0, 3]}}})], "unlearn.seed: not searchable"),
    ("search-space", "bad-optimizer-choice", lambda r: [*LAUNCH, _with_space(r, "opt", {"unlearn": {"optimizer": {"choice": ["adamw", "lion"]}}})], "unlearn.optimizer: 'lion' is not allowed"),
    ("search-space", "grad-accum", lambda r: [*LAUNCH, _with_space(r, "accum", {"unlearn": {"grad_accum": {"choice": [1, 3]}}})], "unlearn.grad_accum: 3 is not allowed"),
    ("search-space", "choice-of-dicts", lambda r: [*LAUNCH, _with_space(r, "dicts", {"unlearn": {"lr": {"choice": [{"a": 1}]}}})], "is not allowed (numbers, strings, booleans or null)"),
    ("search-space", "params-not-mapping", lambda r: [*LAUNCH, _with_space(r, "params", {"method": {"sago": [1, 2]}})], "method.sago: [1, 2] is not allowed"),
    ("search-space", "gru-mu-range", lambda r: [*LAUNCH, _with_space(r, "mu", {"method": {"gru": {"mu": {"uniform": [0.5, 1.5]}}}})], "method.gru.mu: 1.5 is not allowed"),
    # --- data files ---
    ("data", "broken-json", lambda r: [*RUN, _with_data(r, "broken_json")], "full.jsonl:8:"),
    ("data", "missing-answer", lambda r: [*RUN, _with_data(r, "no_answer")], "full.jsonl:4: field 'answer' missing is not allowed"),
    ("data", "answer-not-string", lambda r: [*RUN, _with_data(r, "answer_not_str")], "full.jsonl:4: field 'answer' 3 is not allowed"),
    ("data", "row-not-object", lambda r: [*RUN, _with_data(r, "row_list")], "full.jsonl:4: a JSON list is not allowed"),
    ("data", "empty-file", lambda r: [*RUN, _with_data(r, "empty")], "is empty (allowed: one JSON object per line"),
    ("data", "binary-file", lambda r: [*RUN, _with_data(r, "binary")], "full.jsonl:1: not allowed (not UTF-8 text"),
    ("data", "missing-folder", lambda r: [*RUN, str(r / J), "--set", f"data.path={r / 'nodata'}"], "data.path: "),
    ("data", "prepare-broken-json", lambda r: ["prepare", _with_data(r, "broken_json")], "full.jsonl:8:"),
    ("data", "launch-missing-answer", lambda r: [*LAUNCH, _with_data(r, "no_answer")], "field 'answer' missing"),
    ("data", "eval-data-root", lambda r: ["eval", str(r / "model"), "--benchmark", "qa", "--data", str(r / "nodata")], "--data: '"),
    ("data", "subset-too-large", lambda r: [*RUN, _with_data(r, "ok"), "--set", "data.subset.authors=9"], "data.subset.authors: 9 is not allowed (at most 3)"),
    # --- models ---
    ("model", "eval-missing-dir", lambda r: ["eval", str(r / "nomodel"), "--benchmark", "qa"], "model: '"),
    ("model", "eval-non-model-dir", lambda r: ["eval", str(r / "notmodel"), "--benchmark", "qa"], "(no config.json; a save_pretrained model folder)"),
    ("model", "eval-file", lambda r: ["eval", str(r / "a_file"), "--benchmark", "tofu"], "(a file; a model folder with config.json)"),
    ("model", "eval-no-weights", lambda r: ["eval", str(r / "noweights"), "--benchmark", "qa"], "(no weights;"),
    ("model", "eval-bad-reference", lambda r: ["eval", str(r / "model"), "--benchmark", "tofu", "--reference", str(r / "notmodel")], "--reference: '"),
    ("model", "base-non-model-dir", lambda r: [*RUN, str(r / J), "--set", f"model.base={r / 'notmodel'}"], "model.base: '"),
    ("model", "base-misspelled", lambda r: [*RUN, str(r / J), "--set", "model.base=tiny-lama"], "did you mean 'tiny-llama'?"),
    ("model", "base-unknown-hub", lambda r: ["prepare", str(r / J), "--set", "model.base=nobody/no-such-model"], "model.base: 'nobody/no-such-model' is not allowed"),
    ("model", "launch-base-misspelled", lambda r: [*LAUNCH, str(r / S), "--set", "model.base=tiny_llama"], "did you mean 'tiny-llama'?"),
    # --- tracking server and storage (remote resources) ---
    ("remote", "launch-dead-server", lambda r: [*LAUNCH, str(r / S), "--tracking-uri", DEAD], "no MLflow server answered within"),
    ("remote", "launch-dead-server-in-job", lambda r: [*LAUNCH, str(r / S), "--set", f"sweep.tracking_uri={DEAD}"], "no MLflow server answered within"),
    ("remote", "launch-bad-scheme", lambda r: [*LAUNCH, str(r / S), "--tracking-uri", "htp://x:5000"], "(http(s)://HOST:PORT, sqlite:///PATH or a folder)"),
    ("remote", "launch-storage-under-file", lambda r: [*LAUNCH, str(r / S), "--storage", str(r / "a_file" / "runs")], "--storage: '"),
    ("remote", "launch-sqlite-under-file", lambda r: [*LAUNCH, str(r / S), "--tracking-uri", f"sqlite:///{r / 'a_file' / 'm.db'}"], "--tracking-uri: '"),
    ("remote", "run-ray-storage-under-file", lambda r: [*RUN, str(r / J), "--ray", "--storage", str(r / "a_file" / "x")], "--storage: '"),
    ("remote", "resume-dead-server", lambda r: ["resume", "s", "--tracking-uri", DEAD], "no MLflow server answered within"),
    ("remote", "resume-no-database", lambda r: ["resume", "s", "--tracking-uri", f"sqlite:///{r / 'none.db'}"], "no tracking database there"),
    ("remote", "resume-unknown-sweep", lambda r: ["resume", "nosuch", "--tracking-uri", f"sqlite:///{r / 'mlflow.db'}"], "unknown sweep 'nosuch'"),
    ("remote", "pareto-dead-server", lambda r: ["pareto", "s", "--tracking-uri", DEAD], "no MLflow server answered within"),
    ("remote", "pareto-no-database", lambda r: ["pareto", "s", "--tracking-uri", f"sqlite:///{r / 'none.db'}"], "no tracking database there"),
    ("remote", "pareto-unknown-sweep", lambda r: ["pareto", "nosuch", "--tracking-uri", f"sqlite:///{r / 'mlflow.db'}"], "unknown sweep 'nosuch'"),
    ("remote", "report-dead-server", lambda r: ["report", "s", "--tracking-uri", DEAD], "no MLflow server answered within"),
    ("remote", "report-unknown-sweep", lambda r: ["report", "nosuch", "--tracking-uri", f"sqlite:///{r / 'mlflow.db'}"], "unknown sweep 'nosuch'"),
    ("remote", "status-dead-server", lambda r: ["status", "s", "--tracking-uri", DEAD], "no MLflow server answered within"),
    ("remote", "status-no-database", lambda r: ["status", "s", "--tracking-uri", f"sqlite:///{r / 'none.db'}"], "no tracking database there"),
    ("remote", "credentials-redacted", lambda r: ["status", "s", "--tracking-uri", "http://alice:s3cret@127.0.0.1:9"], "'http://***@127.0.0.1:9' is not allowed"),
    # --- output paths ---
    ("output", "plot-missing-folder", lambda r: ["pareto", "s", "--tracking-uri", f"sqlite:///{r / 'mlflow.db'}", "--plot", str(r / "nofolder" / "p.png")], "--plot: '"),
    ("output", "run-out-missing-folder", lambda r: [*RUN, str(r / J), "--out", str(r / "nofolder" / "r.json")], "its folder '"),
    ("output", "run-out-is-folder", lambda r: [*RUN, str(r / J), "--out", str(r)], "(a folder; a file path is expected)"),
    ("output", "report-out-is-file", lambda r: ["report", "s", "--tracking-uri", f"sqlite:///{r / 'mlflow.db'}", "--out", str(r / "a_file")], "(a file; a folder is expected)"),
    ("output", "eval-out-missing-folder", lambda r: ["eval", str(r / "model"), "--benchmark", "qa", "--out", str(r / "nofolder" / "e.json")], "--out: '"),
    # export: OUT_DIR is checked before anything else; the point before any prepare (issue 21)
    ("output", "export-parent-of-cwd", lambda r: [*_EXPORT(r, "t1"), ".."], "OUT_DIR: '..' is not allowed (the working folder, your home or a folder above them"),
    ("output", "export-cwd", lambda r: [*_EXPORT(r, "t1"), "."], "OUT_DIR: '.' is not allowed (the working folder"),
    ("output", "export-out-is-file", lambda r: [*_EXPORT(r, "t1"), str(r / "a_file")], "(a file; a new or empty folder is expected)"),
    ("output", "export-into-user-folder", lambda r: [*_EXPORT(r, "t1"), str(r / "user_folder")], "(it holds 1 entries: notes.txt; a new or empty folder, or --force"),
    ("output", "export-unknown-trial", lambda r: [*_EXPORT(r, "nosuch"), str(r / "exported")], "trial 'nosuch' is not in sweep made (trials: t1,"),
    ("output", "export-step-not-a-number", lambda r: [*_EXPORT(r, "t1@notastep"), str(r / "exported")], "the step 'notastep' is not a whole number"),
    ("output", "export-no-trial-before-at", lambda r: [*_EXPORT(r, "@4"), str(r / "exported")], "no trial id before '@'"),
    ("output", "export-step-not-evaluated", lambda r: [*_EXPORT(r, "t1@3"), str(r / "exported")], "trial t1 has no checkpoint at step 3 (evaluated steps with checkpoints: 2, 4)"),
    ("output", "export-checkpoint-not-here", lambda r: [*_EXPORT(r, "t1@2"), str(r / "exported")], "does not exist on this machine"),
    ("remote", "export-unknown-sweep", lambda r: ["export", "nosuch", "t1", str(r / "exported"), "--tracking-uri", f"sqlite:///{r / 'mlflow.db'}"], "unknown sweep 'nosuch'"),
]


def _EXPORT(root, point):  # noqa: N802 - reads like the constants RUN and LAUNCH above
    return ["export", "made", point, "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"]


COMMANDS = ("run", "launch", "prepare", "eval", "pareto", "status", "resume", "report", "export")


def test_the_table_covers_every_class_and_command(world):
    ids = [(c[0], c[1]) for c in CASES]
    assert len(set(ids)) == len(ids) >= 60
    assert {c[2](world)[0] for c in CASES} == set(COMMANDS)
    assert {c[0] for c in CASES} == {"set", "job-file", "job-field", "search-space", "data", "model", "remote", "output"}
    assert {c[2](world)[0] for c in CASES if c[0] == "set"} >= {"run", "launch", "prepare", "eval"}


@pytest.mark.parametrize("cls,case_id,argv,expected", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_bad_input_is_one_line_exit_2(world, capsys, cls, case_id, argv, expected):
    import ray

    from raysweep.cli import main

    args = argv(world)
    cache = world / "cache"
    cached_before = cache.exists() and any(cache.iterdir())
    code = main(args)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, (args, out.out[-500:], out.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("raysweep: error: "), out.err
    assert "Traceback" not in out.err and "Traceback" not in out.out
    assert expected in lines[0], lines[0]
    assert not ray.is_initialized()
    assert "s3cret" not in out.err
    if not cached_before:  # nothing was prepared (trained) on the way to the error
        assert not cache.exists() or not any(cache.iterdir())
    made_cache = world / "made" / "cache"  # the cache of the sweep that export reads
    assert not made_cache.exists() or not any(made_cache.iterdir())
    assert (world / "user_folder" / "notes.txt").read_text() == "mine"
    assert not (world / "exported").exists() and not list(world.glob(".exported.export-*"))


def _console(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "raysweep.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_resume_against_a_dead_server_answers_instead_of_hanging(world):
    """Was a 90 s hang; the preflight has a 5 s timeout and no retries."""
    res = _console("resume", "some-sweep", "--tracking-uri", DEAD, timeout=45)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "no MLflow server answered" in res.stderr and "Traceback" not in res.stderr


def test_console_exit_codes_and_no_database_created(world):
    res = _console("run", str(world / "binary.yaml"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    db = world / "fresh.db"
    res = _console("status", "x", "--tracking-uri", f"sqlite:///{db}")
    assert res.returncode == 2 and not db.exists()  # a query never creates a database


def test_launch_dry_run_prints_the_plan_and_starts_nothing(world, capsys):
    import ray

    from raysweep.cli import main

    storage = world / "dry_runs"
    code = main(["launch", str(world / S), "--dry-run", "--storage", str(storage)])
    out = capsys.readouterr().out
    assert code == 0
    assert "tracking server answered; nothing started" in out and "2 trials" in out and "method in {graddiff}" in out
    assert not ray.is_initialized() and not storage.exists() and not (world / "cache").exists()
    code = main(["run", str(world / J), "--dry-run"])
    assert code == 0 and "would run one trial in this process" in capsys.readouterr().out


@pytest.mark.slow  # starts a real MLflow server
def test_launch_dry_run_contacts_a_real_server(world, mlflow_server, capsys):
    from raysweep.cli import main

    assert main(["launch", str(world / S), "--dry-run", "--tracking-uri", mlflow_server]) == 0
    assert mlflow_server in capsys.readouterr().out


def test_counts_per_class_for_the_closing_note():
    counts = Counter(c[0] for c in CASES)
    print("\nbad-input cases per class:", dict(counts), "total", sum(counts.values()))
    assert all(n >= 3 for n in counts.values())
