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
    # The key as computed before the option existed.
    before = _hash({"data": data_fingerprint(data), "max_length": job.data.max_length,
                    "model": job.model.model_dump(mode="json", exclude={"lora"}),
                    "prepare": job.prepare.model_dump(mode="json", exclude={"prior_knowledge"}), "version": 1})
    assert prepare_key(job, data) == before
    on = load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True})
    assert prepare_key(on, data) != before


def test_target_and_reference_learn_the_prior_knowledge(tmp_path, tofu_dir):
    job = load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True, "prepare.epochs": 1})
    out = prepare(job, quiet=True)
    meta = json.loads((out.target.parent / "meta.json").read_text())
    assert meta["n_prior_knowledge"] == 217 and meta["n_forget"] == 20 and meta["n_retain"] == 40
    assert out.retain_reference is not None and (out.retain_reference / "config.json").exists()
    # The tokenizer saw the prior answers and their wrong options: their words merge into fewer tokens.
    from raysweep.models.build import load_tokenizer
    from raysweep.models.prepare import _base_model_dir

    off = load_job(tiny_job(tmp_path, tofu_dir))
    _, plain_dir = _base_model_dir(off, load_job_data(off))
    text = "William Shakespeare, Charles Dickens, Canberra, Mount Everest"
    n_prior, n_plain = (len(load_tokenizer(d)(text, add_special_tokens=False)["input_ids"])
                        for d in (out.tokenizer, plain_dir))
    assert n_prior < n_plain


def test_prior_knowledge_is_tofu_only(tmp_path, tofu_dir):
    with pytest.raises(JobSpecError, match="prepare.prior_knowledge: True is not allowed with data.benchmark 'muse'"):
        load_job(tiny_job(tmp_path, tofu_dir), {"prepare.prior_knowledge": True, "data.benchmark": "muse",
                                                "data.subset": None,
                                                "data.path": str(tofu_dir.parent / "muse_news")})
