"""Acceptance on real TOFU (first 20 authors, forget the last 2) with the shipped CPU job.

The target must memorise the forget authors (ROUGE-L recall >= 0.8) while the retain reference,
which never saw them, stays at least 0.3 below; GradDiff must then at least halve forget ROUGE-L
while retain ROUGE-L drops less than forget ROUGE-L does.
"""

import json

import pytest

from raysweep.data.collate import QACollator
from raysweep.distributed.single import format_table, run_trial
from raysweep.evaluation.qa import qa_metrics
from raysweep.models.build import load_causal_lm, load_tokenizer
from raysweep.models.prepare import load_job_data, prepare
from raysweep.spec import load_job

from ..conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job():
    return load_job(REPO / "jobs" / "tofu_tiny.yaml")


def test_target_memorises_and_retain_reference_does_not(job):
    data = load_job_data(job)
    prepared = prepare(job, data)
    tok = load_tokenizer(prepared.tokenizer)
    collator = QACollator(tok, job.data.max_length)
    scores = {}
    for label, path in (("target", prepared.target), ("retain_reference", prepared.retain_reference)):
        model = load_causal_lm(path)
        scores[label] = qa_metrics(model, collator, data.forget, max_new_tokens=job.eval.max_new_tokens)
    print(json.dumps(scores, indent=2))
    assert scores["target"]["rougeL_recall"] >= 0.8
    assert scores["retain_reference"]["rougeL_recall"] <= scores["target"]["rougeL_recall"] - 0.3


def test_graddiff_halves_forget_rouge_and_spares_retain(job):
    result = run_trial(job)
    print(format_table(result))
    b, a = result["before"], result["after"]
    forget_drop = b["forget_rougeL_recall"] - a["forget_rougeL_recall"]
    retain_drop = b["retain_rougeL_recall"] - a["retain_rougeL_recall"]
    assert a["forget_rougeL_recall"] <= 0.5 * b["forget_rougeL_recall"]
    assert retain_drop < forget_drop
