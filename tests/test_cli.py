"""`raysweep prepare` / `raysweep run` end to end on a very small job, and one-line job errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]


def raysweep(*args, cwd=REPO):
    """The real console entry point in a fresh process (exit codes, nothing shared)."""
    return subprocess.run([sys.executable, "-m", "raysweep.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def raysweep_inproc(capsys, *args):
    from raysweep.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_prepare_caches_and_says_so(tmp_path, tofu_dir):
    job = tiny_job(tmp_path, tofu_dir)
    first = raysweep("prepare", str(job))
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert not info["reused"] and Path(info["target"], "config.json").exists()
    assert "prepare target: epoch" in first.stderr  # progress shown
    second = raysweep("prepare", str(job))
    assert json.loads(second.stdout)["reused"] and "reusing cached" in second.stderr
    assert json.loads(second.stdout)["key"] == info["key"]
    changed = raysweep("prepare", str(job), "--set", "prepare.epochs=1")
    assert not json.loads(changed.stdout)["reused"]


@pytest.mark.parametrize("method,forget,retain", [
    ("sago", "npo", "nll"), ("pcgrad_r", "simnpo", "kl"), ("ngdiff", "ga", "nll"),
    ("gru", "wga", "nll"), ("mgda", "uce", "nll"), ("graddiff", "idk", "nll"), ("graddiff", "tnpo", "nll"),
    ("sago_prefer_retain", "ga", "nll"),
])
@pytest.mark.matrix(strategy="single", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="off", event="uninterrupted", export="none")
def test_run_prints_before_after_table(tmp_path, tofu_dir, shared_cache, capsys, method, forget, retain):
    job = tiny_job(tmp_path, tofu_dir, shared_cache, method={"name": method}, forget={"name": forget},
                   retain={"name": retain})
    out = tmp_path / "result.json"
    res = raysweep_inproc(capsys, "run", str(job), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "forget_rougeL_recall" in res.stdout and "retain_answer_loss" in res.stdout
    result = json.loads(out.read_text())
    assert len(result["history"]) == 3
    assert result["after"]["forget_answer_loss"] != result["before"]["forget_answer_loss"]
    for step in result["history"]:
        assert -1 <= step["cos_forget_retain"] <= 1 and step["norm_forget"] > 0


@pytest.mark.matrix(strategy="single", method="mgda", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="off", event="uninterrupted", export="none")
@pytest.mark.matrix(strategy="single", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off",
                    eval_every="on", event="uninterrupted", export="none")
def test_run_with_evaluations_along_the_run(tmp_path, tofu_dir, shared_cache, capsys):
    job = tiny_job(tmp_path, tofu_dir, shared_cache, steps=4)
    out = tmp_path / "r.json"
    res = raysweep_inproc(capsys, "run", str(job), "--set", "eval.every=2", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["history"]) == 4 and "forget_answer_loss" in result["after"]


def test_mgda_three_tasks(tmp_path, tofu_dir, shared_cache, capsys):
    job = tiny_job(tmp_path, tofu_dir, shared_cache, method={"name": "mgda"}, forget={"name": "uce"},
                   retain=[{"name": "kl"}, {"name": "nll"}])
    out = tmp_path / "r.json"
    res = raysweep_inproc(capsys, "run", str(job), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    hist = json.loads(out.read_text())["history"]
    assert all(abs(sum(h[f"mgda_lambda_{i}"] for i in range(3)) - 1) < 1e-6 for h in hist)


@pytest.mark.parametrize("override,expected", [
    ("unlearn.forget.name=npoo", "unlearn.forget.name: 'npoo' is not allowed (allowed: ga, "),
    ("unlearn.method.name=sag0", "did you mean 'sago'?"),
    ("unlearn.lr=-0.001", "unlearn.lr: -0.001 is not allowed (Input should be greater than 0)"),
    ("unlearn.method.gama=2", "unlearn.method.gama: 'gama' is not allowed (allowed: gamma, alpha, alpha2); did you mean 'gamma'?"),
    ("unlearn.optimizer=adam", "unlearn.optimizer: 'adam' is not allowed"),
])
def test_bad_job_fields_exit_with_one_line(tmp_path, tofu_dir, capsys, override, expected):
    job = tiny_job(tmp_path, tofu_dir)
    res = raysweep_inproc(capsys, "run", str(job), "--set", override)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert expected in lines[0]


def test_missing_data_file_is_one_line(tmp_path, tofu_dir):
    empty = tmp_path / "data"
    empty.mkdir()
    job = tiny_job(tmp_path, tofu_dir)
    res = raysweep("run", str(job), "--set", f"data.path={empty}")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        f"raysweep: error: data.path: '{empty}' lacks the file 'full.jsonl' (a TOFU data folder)"]
    res = raysweep("run", str(tmp_path / "nope.yaml"))
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_eval_command_writes_json_and_prints_table(tmp_path, tofu_dir, shared_cache, capsys):
    job = tiny_job(tmp_path, tofu_dir, shared_cache)
    prep = raysweep_inproc(capsys, "prepare", str(job))
    info = json.loads(prep.stdout)
    out = tmp_path / "eval.json"
    res = raysweep_inproc(capsys, "eval", info["target"], "--benchmark", "tofu", "--job", str(job), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("forget_quality", "model_utility", "forget_rougeL_recall", "retain_truth_ratio",
                "real_authors_prob", "world_facts_rougeL_recall", "mia_loss_auc", "mia_min_k_auc", "privleak",
                "extraction_strength", "truncated_inputs"):
        assert key in metrics and key in res.stdout
    assert 0 <= metrics["forget_quality"] <= 1 and 0 <= metrics["model_utility"] <= 1
    # The retain reference against its own truth ratios: forget quality 1 by construction.
    ref = raysweep_inproc(capsys, "eval", info["retain_reference"], "--benchmark", "tofu", "--job", str(job),
                          "--out", str(tmp_path / "ref.json"))
    ref_metrics = json.loads((tmp_path / "ref.json").read_text())["metrics"]
    assert ref_metrics["forget_quality"] == pytest.approx(1.0)
    assert ref_metrics["privleak"] == pytest.approx(0.0, abs=1e-6)  # its own Min-K% AUC is the reference


def test_muse_prepare_recipe_and_metrics(tmp_path, capsys):
    muse_dir = REPO.parent / "shared" / "data" / "muse_news"
    job = {
        "data": {"benchmark": "muse", "path": str(muse_dir), "n_forget_texts": 2, "max_length": 96},
        "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                           "vocab_size": 500, "max_position_embeddings": 256}},
        "prepare": {"epochs": 1, "batch_size": 8},
        "unlearn": {"forget": {"name": "npo"}, "retain": {"name": "nll"}, "method": {"name": "sago"},
                    "steps": 2, "batch_size": 4},
        "eval": {"benchmarks": ["muse"], "max_questions": 3, "batch_size": 8},
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "muse.yaml"
    path.write_text(yaml.safe_dump(job))
    out = tmp_path / "r.json"
    res = raysweep_inproc(capsys, "run", str(path), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    after = json.loads(out.read_text())["after"]
    for key in ("muse_knowmem_forget_ou", "muse_knowmem_retain_ou", "muse_verbmem_forget_ou", "muse_extraction_strength",
                "muse_privleak_auc", "muse_privleak"):
        assert key in after
    assert 0 <= after["muse_privleak_auc"] <= 1 and 0 <= after["muse_verbmem_forget_ou"] <= 1  # open-unlearning's 0-1


@pytest.mark.slow  # the Ray Train path itself is in the default suite (tests/distributed)
@pytest.mark.timeout(600)
def test_run_on_ray_train_from_the_job_file(tmp_path, tofu_dir, shared_cache):
    """`train.workers: 2` in the job makes `raysweep run` a Ray Train run (2 gloo workers)."""
    job = tiny_job(tmp_path, tofu_dir, shared_cache, method={"name": "sago"})
    res = raysweep("run", str(job), "--set", "train.workers=2", "--storage", str(tmp_path / "ray"),
                   "--out", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["checkpoint"] and Path(result["checkpoint"], "model.safetensors").exists()
    assert result["after"]["forget_rougeL_recall"] >= 0 and "forget_rougeL_recall" in res.stdout


@pytest.mark.matrix(strategy="single", method="ngdiff", precision="fp32", lora="off", gradient_checkpointing="off", event="uninterrupted")
def test_ngdiff_autolr_through_a_trial(tmp_path, tofu_dir, shared_cache, capsys):
    job = tiny_job(tmp_path, tofu_dir, shared_cache, method={"name": "ngdiff", "autolr": True, "autolr_interval": 2},
                   optimizer="sgd", lr=0.5)
    out = tmp_path / "r.json"
    res = raysweep_inproc(capsys, "run", str(job), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    hist = json.loads(out.read_text())["history"]
    assert "autolr_probe_0" in hist[0] and "autolr_probe_0" not in hist[1] and "autolr_probe_0" in hist[2]
    assert hist[1]["lr"] == hist[0]["lr"]  # between probes the adapted rate is kept
