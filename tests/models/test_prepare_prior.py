"""prepare.prior_knowledge: the target and the retain reference both learn TOFU's real-authors and
world-facts QA; off by default, with the cache keys of existing jobs unchanged."""

import json

import pytest

from raysweep.models.prepare import _hash, data_fingerprint, load_job_data, prepare, prepare_key
from raysweep.spec import JobSpecError, load_job
from tests.conftest import tiny_job


def test_off_by_default_and_old_cache_keys_still_hit(tmp_path, tofu_dir):
    job = load_job(tiny_job(tmp_path, tofu_dir))
    assert job.prepare.prior_knowledge is False
    data = load_job_data(job)
    # The key as computed before the option existed (version 2 since cut pairs end in EOS).
    before = _hash({"data": data_fingerprint(data), "max_length": job.data.max_length,
                    "model": job.model.model_dump(mode="json", exclude={"lora", "template", "system_prompt"}),
                    "prepare": job.prepare.model_dump(mode="json", exclude={"prior_knowledge", "prior_knowledge_rows"}),
                    "version": 2})
    assert prepare_key(job, data) == before
    on = load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True})
    assert prepare_key(on, data) != before
    capped = load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True, "prepare.prior_knowledge_rows": 5})
    assert prepare_key(capped, data) not in (before, prepare_key(on, data))


def test_target_and_reference_learn_the_prior_knowledge(tmp_path, tofu_dir):
    job = load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True, "prepare.epochs": 1,
                                                  "prepare.prior_knowledge_rows": 10})
    out = prepare(job, quiet=True)
    meta = json.loads((out.target.parent / "meta.json").read_text())
    assert meta["n_prior_knowledge"] == 10 + 10 and meta["n_forget"] == 20 and meta["n_retain"] == 40
    assert out.retain_reference is not None and (out.retain_reference / "config.json").exists()


def test_the_tokenizer_covers_the_prior_knowledge(tmp_path, tofu_dir):
    """Its questions, answers and wrong options (all rows, capped or not) join the tokenizer's corpus."""
    from raysweep.models.prepare import tokenizer_texts

    texts = {}
    for on in (False, True):
        job = load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": on, "prepare.prior_knowledge_rows": 1})
        texts[on] = set(tokenizer_texts(job, load_job_data(job)))
    added = texts[True] - texts[False]
    assert {"Who wrote the play 'Romeo and Juliet'?", "William Shakespeare", "Charles Dickens", "Canberra"} <= added
    assert texts[False] <= texts[True]


def test_prior_knowledge_is_tofu_only(tmp_path, tofu_dir):
    with pytest.raises(JobSpecError, match="prepare.prior_knowledge: True is not allowed with data.benchmark 'muse'"):
        load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True, "data.benchmark": "muse",
                                                "data.subset": None,
                                                "data.path": str(tofu_dir.parent / "muse_news")})
