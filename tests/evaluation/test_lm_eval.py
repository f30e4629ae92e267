"""Multiple choice as the field scores it (issue 24): the built-in scorer against lm-eval-harness
itself (0.4.x, ``HFLM`` around the in-memory model) on the same MMLU/WMDP questions, with the BOS
rule of lm-eval 0.4.8 (open-unlearning's pin: no special tokens) by default; every question at the
final evaluation, a subset named as one; ``eval.benchmarks: [lm_eval]`` through the Evaluator and
the pre-flight's one-line error for a task that does not exist."""

import numpy as np
import pytest
import yaml

from raysweep.evaluation import mcq
from raysweep.evaluation.batching import model_context
from raysweep.evaluation.harness import local_tasks, run_lm_eval
from raysweep.spec import EvalSpec, JobSpecError, LmEvalSpec, load_job

from ..conftest import SHARED_DATA, tiny_job

N = 20  # the shared MMLU questions: the first 20 of the test file (lm-eval's limit takes the first N)


@pytest.fixture(scope="module")
def target(tmp_path_factory, tofu_dir, shared_cache):
    """The project's tiny-llama target, as a job prepares it (the session's shared cache)."""
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import prepare

    tmp = tmp_path_factory.mktemp("lm_eval")
    path = tiny_job(tmp, tofu_dir, shared_cache)
    prepared = prepare(load_job(path))
    return load_causal_lm(prepared.target).eval(), load_tokenizer(prepared.target), path


@pytest.fixture(scope="module")
def llama_style(target, tmp_path_factory):
    """The target's tokenizer made to add a BOS by default, as Llama-family tokenizers do (their
    tokenizer.json's TemplateProcessing post-processor); the tiny and SmolLM2 tokenizers add none."""
    from tokenizers.processors import TemplateProcessing

    from raysweep.models.build import load_tokenizer

    _, tok, _ = target
    out = tmp_path_factory.mktemp("llama_tok")
    tok.save_pretrained(out)
    llama = load_tokenizer(out)
    bos = llama.bos_token_id
    llama.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    assert llama("Answer:")["input_ids"][0] == bos and tok("Answer:")["input_ids"][0] != bos
    return llama


def lm_eval_loglikelihoods(model, tok, add_bos, task="raysweep_mmlu"):
    """lm-eval's per-question, per-letter log-likelihoods (its logged samples, in document order)."""
    out = run_lm_eval(model, tok, LmEvalSpec(tasks=[task], limit=N), SHARED_DATA, batch_size=16, add_bos=add_bos,
                      max_length=model_context(model), log_samples=True)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return np.array([[r[0] for r in s["filtered_resps"]] for s in samples]), out["results"][task]


def test_builtin_scorer_gives_lm_evals_loglikelihoods_with_its_bos_rule(target, llama_style):
    model, tok, _ = target
    rows = mcq.load_mcq(SHARED_DATA, "mmlu")[:N]
    for tokenizer in (tok, llama_style):
        # The default rule (eval.mcq_add_bos: false) is lm-eval 0.4.8's: no BOS, whatever the tokenizer.
        ours = mcq.choice_loglikelihoods(model, tokenizer, rows, batch_size=16, max_length=model_context(model)).numpy()
        theirs, result = lm_eval_loglikelihoods(model, tokenizer, add_bos=False)
        assert theirs.shape == (N, 4)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
        acc = float(np.mean(ours.argmax(1) == np.array([r["answer"] for r in rows])))
        assert acc == result["acc,none"]
    # With a BOS (eval.mcq_add_bos: true, lm-eval's add_bos_token=True) both score the BOS, and it
    # changes the numbers: the rule is not a no-op on a Llama-family tokenizer.
    with_bos = mcq.choice_loglikelihoods(model, llama_style, rows, batch_size=16, max_length=model_context(model),
                                         add_bos=True).numpy()
    np.testing.assert_allclose(with_bos, lm_eval_loglikelihoods(model, llama_style, add_bos=True)[0], atol=1e-5, rtol=0)
    assert np.abs(with_bos - ours).max() > 1e-3


def test_final_evaluation_scores_every_question_and_a_subset_is_named_as_one(target, tmp_path):
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator, during_job
    from raysweep.models.prepare import load_job_data

    model, tok, path = target
    assert EvalSpec().mcq_questions == "all" and EvalSpec().mcq_add_bos is False
    job = load_job(path, {"eval.benchmarks": ["wmdp_bio"], "eval.every": 2, "eval.during_mcq_questions": 8})
    data = load_job_data(job)
    final = Evaluator(job, data, tok, QACollator.for_job(job, tok))
    assert len(final.mcq_rows("wmdp_bio")) == 1273  # every question of wmdp-bio.jsonl
    dj = during_job(job)
    during = Evaluator(dj, data, tok, QACollator.for_job(dj, tok), benchmarks=dj.eval.benchmarks)
    scores = during(model, progress=False)
    assert list(scores) == ["wmdp_bio_acc_sub8"] and scores["wmdp_bio_acc_sub8"] in {k / 8 for k in range(9)}
    # An objective names the questions it was measured on; the full benchmark's is another metric.
    raw = yaml.safe_load(path.read_text())
    space = tmp_path / "space.yaml"
    space.write_text("method: {graddiff: {}}\n")
    raw["sweep"] = {"search_space": str(space), "objectives": {"wmdp_bio_acc": "min"}}
    raw["eval"] = {"benchmarks": ["wmdp_bio"], "mcq_questions": 8}
    (tmp_path / "sub.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(JobSpecError, match="metric 'wmdp_bio_acc' is not allowed .*did you mean 'wmdp_bio_acc_sub8'"):
        load_job(tmp_path / "sub.yaml")
    raw["eval"] = {"benchmarks": ["wmdp_bio"], "every": 2, "during_mcq_questions": 8}
    (tmp_path / "during.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(JobSpecError, match="eval.during_mcq_questions: 8 is not allowed"):
        load_job(tmp_path / "during.yaml")


def test_lm_eval_benchmark_through_the_evaluator_matches_the_builtin_accuracy(target):
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.prepare import load_job_data

    model, tok, path = target
    job = load_job(path, {"eval.benchmarks": ["lm_eval"], "eval.mcq_data": str(SHARED_DATA),
                          "eval.lm_eval": {"tasks": ["raysweep_wmdp_bio"], "limit": 12}})
    scores = Evaluator(job, load_job_data(job), tok, QACollator.for_job(job, tok))(model, progress=False)
    first12 = mcq.load_mcq(SHARED_DATA, "wmdp_bio")[:12]
    builtin = mcq.mcq_accuracy(model, tok, first12, max_length=model_context(model))
    assert scores["lm_eval/raysweep_wmdp_bio/acc_sub12"] == pytest.approx(builtin, abs=1e-12)
    assert scores["lm_eval/raysweep_wmdp_bio/acc_stderr_sub12"] > 0


def test_an_unknown_lm_eval_task_is_one_line_before_anything_starts(target, tmp_path, capsys):
    import ray

    from raysweep.cli import main

    _, _, path = target
    assert local_tasks() == ["raysweep_mmlu", "raysweep_wmdp_bio", "raysweep_wmdp_chem", "raysweep_wmdp_cyber"]
    code = main(["run", str(path), "--dry-run", "--set", "eval.benchmarks=[lm_eval]",
                 "--set", "eval.lm_eval={tasks: [raysweep_wmdp_boi]}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "eval.lm_eval.tasks[0]: 'raysweep_wmdp_boi' is not allowed" in err[0]
    assert "did you mean 'raysweep_wmdp_bio'?" in err[0]
    assert not ray.is_initialized()
    # A benchmark named without its task list is the spec's own one-line error.
    with pytest.raises(JobSpecError, match="eval.lm_eval: missing"):
        load_job(path, {"eval.benchmarks": ["lm_eval"]})
    # A sweep metric the task does not produce (its metric_list has acc only).
    from raysweep.preflight import check_lm_eval
    from raysweep.validation import InputError

    space = tmp_path / "space.yaml"
    space.write_text("method: {graddiff: {}}\n")
    job = load_job(path, {"eval.benchmarks": ["lm_eval"], "eval.lm_eval": {"tasks": ["raysweep_mmlu"]},
                          "sweep": {"search_space": str(space), "objectives": {"lm_eval/raysweep_mmlu/acc_norm": "max"}}})
    with pytest.raises(InputError, match="metric 'lm_eval/raysweep_mmlu/acc_norm' is not allowed .*"
                                         "did you mean 'lm_eval/raysweep_mmlu/acc'"):
        check_lm_eval(job)
