"""`raysweep eval`'s traps (issue 24, item 9): --set without --job, and a job whose retain
reference is not prepared (evaluation never trains)."""

import json

import pytest

from raysweep.data.tofu import load_jsonl
from raysweep.models.build import build_tiny_llama, train_tokenizer

from .conftest import tiny_job
from .test_cli import raysweep_inproc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tofu_dir):
    out = tmp_path_factory.mktemp("model")
    rows = load_jsonl(tofu_dir / "full.jsonl")[:200]
    tok = train_tokenizer([t for r in rows for t in (r["question"], r["answer"])], 400, out)
    build_tiny_llama(tok, out, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     max_position_embeddings=512, seed=0)
    return out


def test_set_without_job_is_applied(model_dir, tofu_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", str(model_dir), "--benchmark", "qa", "--data", str(tofu_dir.parent), "--out", str(out)]
    res = raysweep_inproc(capsys, *args, "--set", "eval.batch_size=0")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "raysweep: error: eval.batch_size: 0 is not allowed (Input should be greater than 0)"]
    res = raysweep_inproc(capsys, *args, "--set", "data.subset.authors=2", "--set", "data.subset.forget_authors=1",
                          "--set", "eval.max_questions=2", "--set", "eval.max_new_tokens=2",
                          "--set", "model.template=phi15")
    assert res.returncode == 0, res.stderr[-2000:]
    settings = json.loads(out.read_text())["settings"]
    assert settings["template"] == "phi15" and settings["max_questions"] == 2 and settings["max_new_tokens"] == 2


def test_eval_never_trains_a_missing_retain_reference(model_dir, tofu_dir, tmp_path, capsys):
    job = tiny_job(tmp_path, tofu_dir)  # an empty cache: nothing prepared
    res = raysweep_inproc(capsys, "eval", str(model_dir), "--benchmark", "tofu", "--job", str(job))
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("raysweep: error: --reference: missing") and "never trains" in line
    assert not (tmp_path / "cache" / "prepared").exists() and not (tmp_path / "cache" / "base").exists()
