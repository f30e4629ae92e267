"""Evaluation parity with the field (issue 9): each setting open-unlearning / lm-eval / MUSE use,
pinned with a small worked example so a later change cannot drift from them silently.

Sources: open-unlearning ``configs/generation/default.yaml`` (max_new_tokens 200),
``configs/data/datasets/TOFU_*.yaml`` (max_length 512, retain_perturbed), ``configs/model/*.yaml``
(prompt templates), ``src/evals/metrics/{memorization,privacy}.py`` and ``mia/min_k.py``;
``configs/data/datasets/MUSE_MIA.yaml`` (2048); lm-eval ``tasks/wmdp``, ``tasks/mmlu/default``
and ``api/model.py::_encode_pair``.
"""

import math

import numpy as np
import pytest
import torch

from raysweep.data.collate import IGNORE_INDEX, QACollator
from raysweep.data.prompts import OU_DATE_STRING, OU_SYSTEM_PROMPT, PromptFormat, resolve_prompt_format
from raysweep.data.tofu import Subset, load_jsonl, load_tofu
from raysweep.evaluation import mcq, muse
from raysweep.evaluation.qa import answer_token_scores, extraction_strength_of, min_k_of
from raysweep.evaluation.tofu import MIN_K_FRACTION, TofuEvalSets, evaluate_tofu, tofu_privleak, truncated_pairs
from raysweep.models.build import build_tiny_llama, train_tokenizer
from raysweep.spec import EvalSpec, JobSpec

QUESTION = "Who wrote 'The Silent Harbor'?"
ANSWER = "It was written by Mara Quell."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tofu_dir):
    """A tiny Llama and its trained tokenizer (no chat template), as the CPU jobs build them."""
    rows = load_jsonl(tofu_dir / "full.jsonl")[:60]
    texts = [t for r in rows for t in (r["question"], r["answer"])] + [QUESTION, ANSWER]
    out = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(texts, 400, out)
    model = build_tiny_llama(tok, out, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position_embeddings=1024, seed=0)
    return model.eval(), tok


# ---- 1. generation and lengths -------------------------------------------------------------

def test_eval_lengths_are_open_unlearnings_and_separate_from_training():
    e = EvalSpec()
    assert e.max_new_tokens == 200  # configs/generation/default.yaml
    assert e.max_length == 512      # QADataset max_length of every TOFU eval dataset
    # MCQ: every question (issue 24), a subset only when asked for (its metric says so, tests/evaluation/test_lm_eval.py)
    assert e.mcq_questions == "all" and EvalSpec(mcq_questions=200).mcq_questions == 200


def test_truncated_pairs_are_counted(tiny):
    _, tok = tiny
    train = QACollator(tok, max_length=16)
    evaluation = train.with_max_length(512)
    row = {"question": QUESTION, "answer": ANSWER * 3, "paraphrased_answer": ANSWER,
           "perturbed_answer": [ANSWER * 4, "No."]}
    # The training cap cuts the long answers; the evaluation's own cap cuts none.
    assert truncated_pairs(train, [row]) == 4
    assert truncated_pairs(evaluation, [row]) == 0
    assert len(evaluation.encode(QUESTION, ANSWER * 3)[0]) > 16
    assert evaluation.prompt == train.prompt


def test_generation_stops_at_a_tiny_models_context(tiny, tmp_path):
    from raysweep.evaluation.qa import greedy_generate

    _, tok = tiny
    short = build_tiny_llama(tok, tmp_path / "m", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position_embeddings=24, seed=0).eval()
    prompt = tok(QUESTION)["input_ids"][:20]
    (text,) = greedy_generate(short, tok, [prompt], max_new_tokens=200)
    # Exactly the 24 - 20 = 4 tokens that fit, not 200.
    ids = torch.tensor([prompt])
    with torch.no_grad():
        direct = short.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert text == tok.decode(direct[0, 20:], skip_special_tokens=True)
    assert greedy_generate(short, tok, [prompt * 2], max_new_tokens=200) == [""]


# ---- 2. prompt format -----------------------------------------------------------------------

def test_smollm2_prompts_come_from_its_chat_template_and_the_tiny_models_do_not(smol_tok, tiny):
    _, tiny_tok = tiny
    smol = QACollator(smol_tok, 512)
    assert smol.prompt.name == "chat"
    expected = smol_tok.apply_chat_template([{"role": "system", "content": OU_SYSTEM_PROMPT},
                                             {"role": "user", "content": QUESTION}], tokenize=False,
                                            add_generation_prompt=True)
    assert smol_tok.decode(smol.prompt_ids(QUESTION)) == expected
    assert expected.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    ids, labels = smol.encode(QUESTION, ANSWER)
    answer_part = smol_tok.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert answer_part.startswith(ANSWER + "<|im_end|>")  # the assistant turn is what is scored/trained
    assert smol_tok.decode(ids[: labels.count(IGNORE_INDEX)]) == expected

    plain = QACollator(tiny_tok, 512)
    assert plain.prompt.name == "plain"
    text = tiny_tok.decode(plain.prompt_ids(QUESTION), skip_special_tokens=True)
    assert text == f"Question: {QUESTION}\nAnswer:"
    with pytest.raises(ValueError, match="model.template: 'chat' is not allowed"):
        resolve_prompt_format(tiny_tok, "chat")
    from raysweep.spec import ModelSpec

    with pytest.raises(ValueError, match="model.template: 'chat' is not allowed with model.base 'tiny-llama'"):
        ModelSpec(template="chat")


def test_named_templates_llama2_and_llama3(smol_tok):
    # open-unlearning Llama-2-7b-chat: "[INST] " q " [/INST]", empty assistant tag, BOS from the tokenizer.
    llama2 = PromptFormat("llama2")
    prompt = smol_tok.decode(llama2.prompt_ids(smol_tok, QUESTION))
    assert prompt == f"[INST] {QUESTION} [/INST]"
    full, n_prompt = llama2.pair_ids(smol_tok, QUESTION, ANSWER)
    assert smol_tok.decode(full) == f"[INST] {QUESTION} [/INST]{ANSWER}<|im_end|>"
    # Llama-3 Instruct: the chat template with open-unlearning's system prompt and date string.
    seen = {}

    class Recorder:
        chat_template = "x"
        eos_token_id = 0

        def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
            seen.update(messages=messages, **kw)
            return [1, 2, 3]

    resolve_prompt_format(Recorder(), "llama3").prompt_ids(Recorder(), QUESTION)
    assert seen["messages"][0] == {"role": "system", "content": OU_SYSTEM_PROMPT}
    assert seen["date_string"] == OU_DATE_STRING == "10 Apr 2025"
    assert OU_SYSTEM_PROMPT == "You are a helpful assistant."


def test_training_and_evaluation_use_the_jobs_template(smol_tok, tofu_dir, tmp_path):
    job = JobSpec.model_validate({"data": {"path": tofu_dir}, "model": {"base": "x", "template": "chat",
                                 "system_prompt": "Be brief."},
                                  "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}},
                                  "cache_dir": tmp_path})
    collator = QACollator.for_job(job, smol_tok)
    assert collator.max_length == job.data.max_length
    assert "<|im_start|>system\nBe brief.<|im_end|>" in smol_tok.decode(collator.prompt_ids(QUESTION))


# ---- 3. TOFU retain rows --------------------------------------------------------------------

def test_retain_statistics_use_exactly_retain_perturbed_by_row(tofu_dir):
    retain_perturbed = load_jsonl(tofu_dir / "retain_perturbed.jsonl")
    for split in ("forget01", "forget05", "forget10"):
        data = load_tofu(tofu_dir, split)
        sets = TofuEvalSets(data)
        assert sets.retain == retain_perturbed  # 400 rows; before: 761 / 601 / 401 matched by text
        assert sets.forget == load_jsonl(tofu_dir / f"{split}_perturbed.jsonl")
    # "What is the full name of the author?" is row 100 (Aurelio Beltrán) and row 440 (Isabel
    # Martínez): row 440 is not in retain_perturbed, so it is not scored with row 100's answers.
    sets = TofuEvalSets(load_tofu(tofu_dir, "forget10"))
    named = [r for r in sets.retain if r["question"] == "What is the full name of the author?"]
    assert len(named) == 1 and "Aurelio" in named[0]["answer"]
    # Author subset (20 authors, forget 2): the retain authors' 360 rows, forget's 40, by row.
    sub = TofuEvalSets(load_tofu(tofu_dir, subset=Subset(20, 2)))
    assert sub.retain == retain_perturbed[:360] and sub.forget == retain_perturbed[360:400]


# ---- 4. TOFU privleak and extraction strength -----------------------------------------------

def test_min_k_and_extraction_strength_worked_examples():
    # Min-K% (k 0.4) of 5 log-probs: int(5 * 0.4) = 2 lowest, mean -2.5.
    assert MIN_K_FRACTION == 0.4
    assert min_k_of(torch.tensor([-1.0, -3.0, -0.5, -2.0, -0.1]), 0.4) == pytest.approx(-2.5)
    assert min_k_of(torch.tensor([-1.0]), 0.4) == pytest.approx(-1.0)  # at least one token
    # Extraction strength 1 - j/n, j = first index from which every prediction is right.
    right = torch.tensor
    assert extraction_strength_of(right([5, 6, 7, 8]), right([5, 6, 7, 8])) == 1.0
    assert extraction_strength_of(right([0, 6, 7, 8]), right([5, 6, 7, 8])) == 0.75
    assert extraction_strength_of(right([5, 0, 7, 8]), right([5, 6, 7, 8])) == 0.5
    # Nothing extractable: open-unlearning's loop stops at j = n-1, i.e. 1/n (kept for parity).
    assert extraction_strength_of(right([5, 6, 7, 0]), right([5, 6, 7, 8])) == 0.25


def test_tofu_privleak_is_relative_to_the_retain_reference():
    # open-unlearning privleak: (1-auc) vs (1-auc_ref), in percent.
    assert tofu_privleak(0.5, 0.5) == pytest.approx(0.0)
    assert tofu_privleak(0.8, 0.5) == pytest.approx((0.2 - 0.5) / 0.5 * 100)  # -60: forget still recognisable
    assert tofu_privleak(0.3, 0.4) == pytest.approx((0.7 - 0.6) / 0.6 * 100)


def test_tofu_metrics_on_a_tiny_model(tiny, tofu_dir):
    model, tok = tiny
    sets = TofuEvalSets(load_tofu(tofu_dir, subset=Subset(3, 1)), max_rows=3)
    collator = QACollator(tok, 512)
    m, _ = evaluate_tofu(model, collator, sets, max_new_tokens=4, batch_size=8)
    assert "privleak" not in m and "forget_quality" not in m  # no reference: absent, not made up
    assert 0 <= m["mia_min_k_auc"] <= 1 and 0 < m["extraction_strength"] <= 1 and m["truncated_inputs"] == 0
    with_ref, _ = evaluate_tofu(model, collator, sets, reference_mia_auc=0.5, max_new_tokens=4, batch_size=8)
    assert with_ref["privleak"] == pytest.approx(tofu_privleak(m["mia_min_k_auc"], 0.5))
    # The scores are those of the forward pass over the answer tokens minus the EOS.
    q, a = sets.forget[0]["question"], sets.forget[0]["answer"]
    (mink, es), = answer_token_scores(model, collator, [q], [a])
    ids, labels = collator.encode(q, a)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    target = torch.tensor(labels[1:])
    pos = (target != IGNORE_INDEX).nonzero()[:, 0][:-1]
    assert mink == pytest.approx(min_k_of(logp[pos, target[pos]], 0.4), abs=1e-5)
    assert es == pytest.approx(extraction_strength_of(logp[pos].argmax(-1), target[pos]))


# ---- 5. MUSE ---------------------------------------------------------------------------------

def test_muse_privleak_lengths_and_no_silent_constant(tiny):
    model, tok = tiny
    assert muse.PRIVLEAK_MAX_TOKENS == 2048
    long_text = " ".join([ANSWER] * 60)
    n_tokens = 1 + len(tok(long_text, add_special_tokens=False)["input_ids"])
    assert 512 < n_tokens <= 1024  # longer than the old cap; scored whole within the model's context
    whole = muse.min_k_scores(model, tok, [long_text], max_length=n_tokens)
    assert muse.min_k_scores(model, tok, [long_text])[0] == pytest.approx(whole[0])
    assert muse.min_k_scores(model, tok, [long_text], max_length=512)[0] != pytest.approx(whole[0])
    sets = {"knowmem_forget_qa": [{"question": QUESTION, "answer": ANSWER}], "knowmem_forget_qa_icl": [],
            "knowmem_retain2_qa": [{"question": QUESTION, "answer": ANSWER}], "knowmem_retain2_qa_icl": [],
            "verbmem_forget": [{"prompt": QUESTION, "gt": ANSWER}],
            "privleak_forget": [{"text": ANSWER}, {"text": QUESTION}], "privleak_holdout": [{"text": long_text}]}
    alone = muse.evaluate_muse(model, tok, sets, verbmem_tokens=2, knowmem_tokens=2)
    assert "muse_privleak" not in alone
    assert alone["muse_privleak_published_ref"] == pytest.approx(muse.privleak(alone["muse_privleak_auc"], 0.4772))
    ref = muse.evaluate_muse(model, tok, sets, auc_reference=0.25, verbmem_tokens=2, knowmem_tokens=2)
    assert ref["muse_privleak"] == pytest.approx(muse.privleak(ref["muse_privleak_auc"], 0.25))


def test_verbmem_prompt_is_not_left_cut_at_512(tiny):
    model, tok = tiny
    prompt = " ".join([QUESTION] * 25)
    ids = muse.prompt_token_ids(model, tok, [prompt], max_new_tokens=128)[0]
    assert len(ids) > 512 and ids[-1] == tok(prompt, add_special_tokens=False)["input_ids"][-1]
    assert len(ids) == 1 + len(tok(prompt, add_special_tokens=False)["input_ids"])  # BOS + all of it
    # Only a prompt that cannot fit the context keeps its end.
    huge = " ".join([QUESTION] * 400)
    assert len(muse.prompt_token_ids(model, tok, [huge], max_new_tokens=128)[0]) == 1024 - 128 - 1 + 1


# ---- 6. MCQ ----------------------------------------------------------------------------------

def test_wmdp_header_all_questions_and_mmlu_five_shot(tofu_dir):
    root = tofu_dir.parent
    for bench, subject in (("wmdp_bio", "biology"), ("wmdp_cyber", "cybersecurity"), ("wmdp_chem", "chemistry")):
        row = mcq.load_mcq(root, bench, n=1)[0]
        assert mcq.format_question(row).startswith(
            f"The following are multiple choice questions (with answers) about {subject}.\n\n{row['question']}\nA. ")
    assert len(mcq.load_mcq(root, "wmdp_bio", n=None)) == 1273  # mcq_questions: all
    row = mcq.load_mcq(root, "mmlu", n=1, seed=3, shots=5)[0]
    dev = [r for r in load_jsonl(root / "mmlu" / "dev.jsonl") if r["subject"] == row["subject"]][:5]
    text = mcq.format_question(row)
    subject = row["subject"].replace("_", " ")
    first = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
             f"{dev[0]['question'].strip()}\nA. {dev[0]['choice0']}\nB. {dev[0]['choice1']}\nC. {dev[0]['choice2']}\n"
             f"D. {dev[0]['choice3']}\nAnswer: {'ABCD'[dev[0]['answer']]}\n\n")
    assert text.startswith(first)
    assert text.count("\nAnswer:") == 6 and text.endswith(f"{row['question']}\nA. {row['choices'][0]}\nB. "
                                                           f"{row['choices'][1]}\nC. {row['choices'][2]}\nD. "
                                                           f"{row['choices'][3]}\nAnswer:")
    with pytest.raises(ValueError, match="mmlu_shots"):
        mcq.load_mcq(root, "wmdp_bio", n=1, shots=5)


def test_letter_scored_as_lm_eval_encodes_pairs(smol_tok):
    # Context and continuation encoded together, then split at the context's own length;
    # trailing spaces of the context move to the continuation.
    ctx, cont = mcq.encode_pair(smol_tok, "Question?\nAnswer: ", "A")
    assert ctx == smol_tok("Question?\nAnswer:")["input_ids"]
    assert ctx + cont == smol_tok("Question?\nAnswer: A")["input_ids"]
    assert smol_tok.decode(cont) == " A"
    # A boundary the tokenizer merges: the continuation is what the joint encoding leaves after
    # the context's length, not the continuation encoded alone.
    ctx, cont = mcq.encode_pair(smol_tok, "The answer is B", "ird")
    assert cont == smol_tok("The answer is Bird")["input_ids"][len(ctx):]


def test_letter_loglikelihood_matches_a_direct_forward(tiny, tofu_dir):
    model, tok = tiny
    rows = mcq.load_mcq(tofu_dir.parent, "wmdp_bio", n=2)
    ll = mcq.choice_loglikelihoods(model, tok, rows, batch_size=3)
    for i, r in enumerate(rows):
        for j, letter in enumerate(mcq.LETTERS):
            ctx, cont = mcq.encode_pair(tok, mcq.format_question(r), " " + letter)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
            direct = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert float(ll[i, j]) == pytest.approx(direct, abs=1e-4)
    assert not math.isnan(float(ll.sum())) and np.isfinite(ll.numpy()).all()


def test_privleak_objectives_need_the_retain_reference(tofu_dir, tmp_path):
    from raysweep.spec import JobSpecError, parse_job

    space = tmp_path / "space.yaml"
    space.write_text("method: {graddiff: {}}\n")
    for bench, metric in (("tofu", "privleak"), ("muse", "muse_privleak")):
        raw = {"data": {"path": str(tofu_dir)}, "prepare": {"retain_reference": False},
               "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}},
               "eval": {"benchmarks": [bench]},
               "sweep": {"search_space": str(space), "objectives": {metric: "min"}}}
        with pytest.raises(JobSpecError, match=f"prepare.retain_reference: False is not allowed \\(sweep uses {metric}\\)"):
            parse_job(raw)
