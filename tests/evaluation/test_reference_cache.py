"""The retain reference's cached evaluation (forget truth ratios, Min-K% AUC, MUSE privleak AUC)
is read back only for the same rows, prompt and lengths (issue 24, items 1 and 9)."""

import json

import pytest

from raysweep.data.collate import QACollator
from raysweep.evaluation.suite import Evaluator, evaluation_key
from raysweep.models.build import build_tiny_llama, train_tokenizer
from raysweep.models.prepare import _probe, job_probe, load_job_data, prepare_key
from raysweep.spec import load_job
from tests.conftest import tiny_job

SMALL = {"eval.max_questions": 2, "eval.max_new_tokens": 2}
SENTINEL = {"tofu_forget_truth_ratios": [123.0], "tofu_mia_min_k_auc": 0.123}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tofu_dir):
    """A tiny model standing in for a retain reference (its own folder, as --reference gives)."""
    out = tmp_path_factory.mktemp("ref") / "retain_reference"
    job = load_job(tiny_job(tmp_path_factory.mktemp("job"), tofu_dir))
    tok = train_tokenizer(load_job_data(job).texts(), 400, out)
    build_tiny_llama(tok, out, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     max_position_embeddings=512, seed=0)
    return out, tok


def _evaluator(job, tok, ref):
    return Evaluator(job, load_job_data(job), tok, QACollator.for_job(job, tok), ref, ["tofu"])


def test_a_changed_prompt_rows_or_length_never_reads_the_cached_reference(reference, tmp_path, tofu_dir):
    ref, tok = reference
    path = tiny_job(tmp_path, tofu_dir)
    computed = _evaluator(load_job(path, SMALL), tok, ref).reference()
    (cache,) = ref.parent.glob("reference_eval_*.json")
    assert json.loads(cache.read_text()) == computed and len(computed["tofu_forget_truth_ratios"]) > 1
    # The same job reads the cache (made stale on purpose here) ...
    cache.write_text(json.dumps(SENTINEL))
    assert _evaluator(load_job(path, SMALL), tok, ref).reference() == SENTINEL
    # ... a change of any of these does not.
    for change in ({"model.template": "phi15"},                                # template
                   {"model.template": "llama2"},
                   {"model.template": "llama2", "model.system_prompt": "Be brief."},  # system prompt
                   {"data.subset.offset": 3},                                  # other rows
                   {"eval.max_length": 64}):                                   # eval.max_length
        fresh = _evaluator(load_job(path, {**SMALL, **change}), tok, ref).reference()
        assert fresh != SENTINEL and len(fresh["tofu_forget_truth_ratios"]) > 1, change
    assert len(list(ref.parent.glob("reference_eval_*.json"))) == 6


def test_keys_follow_the_rendered_chat_prompt(smol_tok, tmp_path, tofu_dir):
    """Same job fields, another chat template or system prompt: other evaluation and prepare keys."""
    path = tiny_job(tmp_path, tofu_dir)
    job = load_job(path, {"model.base": str(tmp_path / "smol")})
    data = load_job_data(job)
    smol_tok.save_pretrained(tmp_path / "smol")

    def keys(job, tok):
        return (_evaluator(job, tok, None)._reference_key(), prepare_key(job, data))

    base = keys(job, smol_tok)
    assert base[0] == evaluation_key(job, ["tofu"], data, job_probe(job))  # what the sweep driver looks up
    other = load_job(path, {"model.base": str(tmp_path / "smol"), "model.system_prompt": "Be brief."})
    assert keys(other, smol_tok)[0] != base[0] and keys(other, smol_tok)[1] != base[1]
    # Another chat template in the same model folder, the job unchanged.
    smol_tok.save_pretrained(tmp_path / "other")
    other_tok = type(smol_tok).from_pretrained(tmp_path / "other")
    other_tok.chat_template = smol_tok.chat_template.replace("<|im_start|>assistant\n", "<|im_start|>bot\n")
    other_tok.save_pretrained(tmp_path / "smol")
    _probe.cache_clear()  # the probe is rendered once per process and model
    assert keys(job, other_tok)[0] != base[0] and keys(job, other_tok)[1] != base[1]
