"""Corpus unlearning on the MUSE-News texts as the stand-in corpus: chunking to the context, held-out
documents for perplexity, a trial that trains on the chunks and reports MCQ accuracy and held-out
perplexity before and after."""

import math
import re

import pytest
import torch

from raysweep.data.corpus import chunk_words, load_corpus, split_heldout
from raysweep.data.tofu import DataError, load_jsonl

from ..conftest import SHARED_DATA

MUSE = SHARED_DATA / "muse_news"


@pytest.mark.parametrize("max_chars", [7, 40, 300])
def test_chunks_fit_and_keep_every_word(max_chars):
    text = "Alpha beta  gamma,\n\ndelta " * 30 + "x" * 20 + " tail."
    chunks = chunk_words(text, max_chars)
    assert all(0 < len(c) <= max_chars for c in chunks)
    assert "".join(re.split(r"\s+", " ".join(chunks))) == "".join(re.split(r"\s+", text))
    if max_chars >= 20:  # words are never split unless longer than a chunk
        assert [w for c in chunks for w in c.split()] == text.split()


def test_heldout_split_takes_the_last_documents():
    assert split_heldout(list("abcdefghij"), 0.2) == (list("abcdefgh"), ["i", "j"])
    assert split_heldout(list("abc"), 0.01) == (["a", "b"], ["c"])  # at least one when asked
    assert split_heldout(list("abc"), 0.0) == (list("abc"), [])


def test_muse_texts_load_as_a_corpus():
    data = load_corpus(MUSE, "raw_forget.jsonl", "privleak_retain2.jsonl", max_length=64, heldout_fraction=0.25,
                       n_forget_texts=8, n_retain_texts=8)
    forget_docs = [r["text"] for r in load_jsonl(MUSE / "raw_forget.jsonl")][:8]
    assert all(len(r["text"]) <= 4 * 64 for r in data.forget + data.retain)
    assert len(data.forget) > 8  # long articles become several chunks
    # the held-out forget chunks come from the last 2 documents only, never trained on
    held = " ".join(r["text"] for r in data.heldout["forget"])
    assert held.split() == " ".join(forget_docs[6:]).split()
    trained = {r["text"] for r in data.forget}
    assert not trained & {r["text"] for r in data.heldout["forget"]}
    with pytest.raises(DataError, match="data.forget_file"):
        load_corpus(MUSE, "knowmem_forget_qa.jsonl", "privleak_retain2.jsonl", max_length=64)


def corpus_job(tmp_path, cache):
    import yaml

    job = {
        "name": "corpus-test",
        "data": {"benchmark": "corpus", "path": str(MUSE), "forget_file": "raw_forget.jsonl",
                 "retain_file": "privleak_retain2.jsonl", "n_forget_texts": 6, "n_retain_texts": 6,
                 "max_length": 64, "heldout_fraction": 0.3},
        "model": {"base": "tiny-llama", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                   "intermediate_size": 64, "vocab_size": 400}},
        "prepare": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "retain_reference": False},
        "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}, "method": {"name": "graddiff", "alpha": 0.0},
                    "steps": 3, "batch_size": 4, "lr": 3e-3},
        "eval": {"benchmarks": ["corpus", "wmdp_bio"], "mcq_questions": 8, "batch_size": 8},
        "cache_dir": str(cache),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_corpus_trial_reports_mcq_and_heldout_perplexity(tmp_path, shared_cache):
    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.engine.trial import build_trial
    from raysweep.spec import load_job

    from ..distributed.workers import Recorder

    job = load_job(corpus_job(tmp_path, shared_cache))
    rec = Recorder()
    out = run_worker(job, 0, 1, torch.device("cpu"), rec, WorkerOptions(evaluate_before=True, save_checkpoints=False),
                     None)
    for when in ("before", "final"):
        for split in ("forget", "retain"):
            assert out[f"{when}/{split}_heldout_ppl"] == pytest.approx(math.exp(out[f"{when}/{split}_heldout_loss"]))
            assert 1.0 < out[f"{when}/{split}_heldout_ppl"] < 1e6
        assert 0.0 <= out[f"{when}/wmdp_bio_acc_sub8"] <= 1.0  # an 8-question subset, named as one
    # pure gradient ascent (alpha 0) on forget text raises the loss on held-out text of the same source
    assert out["final/forget_heldout_loss"] > out["before/forget_heldout_loss"]

    # the perplexity is exp(HF's own mean token loss) on the held-out chunks
    from raysweep.evaluation.perplexity import heldout_perplexity

    parts = build_trial(job)
    rows = parts.data.heldout["retain"][:3]
    ppl, loss = heldout_perplexity(parts.model.eval(), parts.collator, rows, batch_size=2)
    batch = parts.collator.pad([parts.collator.encode_row(r) for r in rows])
    with torch.no_grad():
        logits = parts.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    hf = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert loss == pytest.approx(float(hf), rel=1e-5)
    assert ppl == pytest.approx(math.exp(float(hf)), rel=1e-5)
