"""Numbers that match the field (issue 24): pairs cut by ``eval.max_length``, MUSE in its two
flavours, MUSE extraction strength, generation stop ids, ``truncated_inputs`` in the metrics.

Each expected number is computed here from the reference's own rule, re-implemented in a few lines
on a real tiny model's logits: open-unlearning ``src/data/utils.py::preprocess_chat_instance`` /
``preprocess_pretraining_instance``, ``src/evals/metrics/utils.py::evaluate_probability`` /
``tokenwise_logprobs`` / ``eval_text_similarity``, ``memorization.py::extraction_strength``,
``mia/min_k.py``; ``swj0419/muse_bench`` ``metrics/{verbmem,knowmem,logger}.py`` and ``eval.py``.
"""

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from raysweep.data.collate import IGNORE_INDEX, QACollator
from raysweep.data.tofu import load_jsonl
from raysweep.evaluation import muse
from raysweep.evaluation.qa import answer_token_scores, greedy_generate, normalised_answer_losses, qa_metrics
from raysweep.models.build import build_tiny_llama, train_tokenizer

@pytest.fixture(scope="module")
def memorised(tmp_path_factory, tofu_dir):
    """A tiny Llama trained until it recites a TOFU answer and a MUSE VerbMem text, so
    greedy answers, ROUGE and extraction strength are far from their random-model values."""
    from tests.conftest import SHARED_DATA

    rows = load_jsonl(tofu_dir / "full.jsonl")[:3]
    verb = load_jsonl(SHARED_DATA / "muse_news" / "verbmem_forget.jsonl")[:1]
    verb = [{"prompt": " ".join(verb[0]["prompt"].split()[-20:]), "gt": " ".join(verb[0]["gt"].split()[:40])}]
    out = tmp_path_factory.mktemp("memorised")
    tok = train_tokenizer([t for r in load_jsonl(tofu_dir / "full.jsonl")[:60] for t in (r["question"], r["answer"])]
                          + [verb[0]["prompt"], verb[0]["gt"]], 400, out)
    model = build_tiny_llama(tok, out, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                             max_position_embeddings=1024, seed=0)
    collator = QACollator(tok, 512)
    seqs = [collator.encode(rows[0]["question"], rows[0]["answer"])]
    text = [tok.bos_token_id] + tok(verb[0]["prompt"] + " " + verb[0]["gt"], add_special_tokens=False)["input_ids"]
    seqs.append((text, [IGNORE_INDEX] + text[1:]))
    batch = collator.pad(seqs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(80):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, rows, verb


# ---- reference rules, re-implemented ----------------------------------------------------------

def ou_cut_pair(full_ids: list[int], n_prompt: int, max_length: int, eos: int):
    """preprocess_chat_instance (no chat template): the ids tokenised with truncation at
    max_length, EOS appended when the last id is not EOS; labels -100 over the (truncated) prompt."""
    body = full_ids[:-1] if full_ids[-1] == eos else full_ids  # the tokenisation before its EOS
    chat_ids = body[:max_length]
    if chat_ids[-1] != eos:
        chat_ids = chat_ids + [eos]
    prompt_ids = body[:n_prompt][:max_length]
    return chat_ids, [IGNORE_INDEX] * len(prompt_ids) + chat_ids[len(prompt_ids):], prompt_ids


def ou_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def ou_probability(model, ids, labels) -> float:
    """evaluate_probability: summed cross-entropy over the shifted labels / label count, exp(-x)."""
    logits, shifted = ou_logits(model, ids)[:-1], torch.tensor(labels[1:])
    loss = torch.nn.functional.cross_entropy(logits, shifted, ignore_index=IGNORE_INDEX, reduction="sum")
    return float(torch.exp(-loss / (torch.tensor(labels) != IGNORE_INDEX).sum()))


def ou_tokenwise(model, ids, labels):
    """tokenwise_logprobs / tokenwise_vocab_logprobs: label positions but the last."""
    logp = torch.log_softmax(ou_logits(model, ids), -1)[:-1]
    lab = torch.tensor(labels)
    actual = (lab != IGNORE_INDEX).nonzero(as_tuple=True)[0][:-1]
    start, end = int(actual[0]), int(actual[-1])
    return logp[start - 1:end], lab[actual]


def ou_min_k(model, ids, labels, k=0.4) -> float:
    lp, labs = ou_tokenwise(model, ids, labels)
    target = lp.gather(-1, labs.unsqueeze(-1)).squeeze(-1).numpy()
    # min_k.py returns -mean (higher = non-member); raysweep keeps the sign (higher = member).
    return float(np.mean(np.sort(target)[:max(1, int(len(target) * k))]))


def ou_extraction_strength(model, ids, labels) -> float:
    lp, labs = ou_tokenwise(model, ids, labels)
    preds = lp.argmax(-1)
    for k in range(len(labs)):
        if torch.equal(preds[k:], labs[k:]):
            break
    return 1 - k / len(labs)


def ou_ground_truth(tok, chat_ids, prompt_ids) -> str:
    """eval_text_similarity: decode(labels) with the decoded prompt replaced away."""
    return tok.decode(chat_ids, skip_special_tokens=True).replace(tok.decode(prompt_ids, skip_special_tokens=True),
                                                                  "").strip()


# ---- 1. a pair cut by eval.max_length ----------------------------------------------------------

def test_a_cut_pair_is_scored_by_open_unlearnings_rule(memorised):
    model, tok, rows, _ = memorised
    q, a = rows[0]["question"], rows[0]["answer"]
    whole = QACollator(tok, 512)
    full, labels_full = whole.encode(q, a)
    n_prompt = labels_full.count(IGNORE_INDEX)
    cap = n_prompt + (len(full) - n_prompt) // 2  # half the answer survives
    cut = whole.with_max_length(cap)
    assert cut.truncated(q, a) and not whole.truncated(q, a)

    chat_ids, labels, prompt_ids = ou_cut_pair(full, n_prompt, cap, tok.eos_token_id)
    assert cut.encode(q, a) == (chat_ids, labels)  # cut, then EOS: cap + 1 tokens
    assert len(chat_ids) == cap + 1 and chat_ids[-1] == tok.eos_token_id

    # Probability over the cut answer and its EOS.
    loss = float(normalised_answer_losses(model, cut, [q], [a])[0])
    assert np.exp(-loss) == pytest.approx(ou_probability(model, chat_ids, labels), rel=1e-5)
    # Min-K% and extraction strength drop the appended EOS, not a real answer token.
    (mink, es), = answer_token_scores(model, cut, [q], [a])
    assert mink == pytest.approx(ou_min_k(model, chat_ids, labels), abs=1e-5)
    assert es == pytest.approx(ou_extraction_strength(model, chat_ids, labels))
    assert es > 0.5  # the model recites the answer: a real suffix is extracted

    # ROUGE-L recall against the cut answer decoded from the labels (rouge_score, stemmed).
    gt = ou_ground_truth(tok, chat_ids, prompt_ids)
    assert cut.reference_answer(q, a) == gt and len(gt) < len(a)
    (gen,) = greedy_generate(model, tok, [cut.prompt_ids(q)], 64)
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(gt, gen.strip())["rougeL"].recall
    got = qa_metrics(model, cut, rows[:1], max_new_tokens=64)
    assert got["rougeL_recall"] == pytest.approx(expected)
    assert expected > 0.9  # the memorised answer covers the cut reference (not the whole answer)
    assert got["truncated_inputs"] == 1.0


def test_tofu_split_scores_follow_the_cut_rule(memorised):
    """The TOFU forget split (probability, ROUGE) goes through the same rule."""
    from raysweep.evaluation.tofu import score_split

    model, tok, rows, _ = memorised
    row = {**rows[0], "paraphrased_answer": rows[0]["answer"], "perturbed_answer": [rows[1]["answer"]]}
    whole = QACollator(tok, 512)
    full, labels_full = whole.encode(row["question"], row["answer"])
    n_prompt = labels_full.count(IGNORE_INDEX)
    cap = n_prompt + (len(full) - n_prompt) // 2
    cut = whole.with_max_length(cap)
    s = score_split(model, cut, [row], normalise_prob=False, max_new_tokens=64, batch_size=4)
    chat_ids, labels, prompt_ids = ou_cut_pair(full, n_prompt, cap, tok.eos_token_id)
    assert s["prob"][0] == pytest.approx(ou_probability(model, chat_ids, labels), rel=1e-5)
    gt = ou_ground_truth(tok, chat_ids, prompt_ids)
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(gt, s["generated"][0])["rougeL"].recall
    assert s["rougeL_recall"][0] == pytest.approx(expected)


# ---- 2. MUSE flavours and extraction strength -------------------------------------------------

def test_muse_rouge_flavours_worked_example():
    ref, pred = "The dogs were running to the houses", "a dog runs to the house"
    ou = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    mb = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(ref, pred)["rougeL"].fmeasure
    assert ou != pytest.approx(mb)  # stemming matters here: dog/dogs, run/running, house/houses
    assert muse.rouge_f1(ref, pred, "open-unlearning") == pytest.approx(ou)       # 0-1
    assert muse.rouge_f1(ref, pred, "muse") == pytest.approx(100 * mb)            # x 100


def test_muse_flavours_and_extraction_strength_on_a_model(memorised):
    model, tok, _, verb = memorised
    row = verb[0]
    # The ground truth is longer than 128 tokens: the flavours' references differ.
    assert len(tok(row["gt"], add_special_tokens=False)["input_ids"]) > 128
    prompt_ids = [tok.bos_token_id] + tok(row["prompt"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=128, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    gen = tok.decode(out[0, len(prompt_ids):], skip_special_tokens=True)

    # open-unlearning: CompletionDataset(prefix "prompt", text "gt", insert_space, max_length 2048).
    full = [tok.bos_token_id] + tok(row["prompt"] + " " + row["gt"], add_special_tokens=False)["input_ids"]
    full = full[:len(prompt_ids) + 2048]
    labels = [IGNORE_INDEX] * len(prompt_ids) + full[len(prompt_ids):]
    gt_ou = tok.decode(full[len(prompt_ids):], skip_special_tokens=True).strip()
    ou = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(gt_ou, gen.strip())["rougeL"].fmeasure
    # muse_bench: tokenizer(gt) with its BOS, cut to 128 tokens, decoded; unstemmed; x 100.
    gt_mb = tok.decode(([tok.bos_token_id] + tok(row["gt"], add_special_tokens=False)["input_ids"])[:128],
                       skip_special_tokens=True)
    mb = 100 * rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(gt_mb, gen)["rougeL"].fmeasure

    sets = {"knowmem_forget_qa": [], "knowmem_forget_qa_icl": [], "knowmem_retain2_qa": [],
            "knowmem_retain2_qa_icl": [], "verbmem_forget": [row],
            "privleak_forget": [{"text": row["gt"]}], "privleak_holdout": [{"text": row["prompt"]}]}
    sets["knowmem_forget_qa"] = sets["knowmem_retain2_qa"] = [{"question": "Who?", "answer": "No one."}]
    got_ou = muse.evaluate_muse(model, tok, sets, knowmem_tokens=2)
    got_mb = muse.evaluate_muse(model, tok, sets, knowmem_tokens=2, flavour="muse")
    assert got_ou["muse_verbmem_forget_ou"] == pytest.approx(ou)
    assert got_mb["muse_verbmem_forget"] == pytest.approx(mb)
    assert ou > 0.5 and ou != pytest.approx(mb / 100)
    assert "muse_verbmem_forget" not in got_ou and "muse_knowmem_forget_ou" in got_ou
    assert "muse_knowmem_retain" in got_mb

    # Extraction strength: prefix + gt, labels on the gt, the last label dropped.
    es = ou_extraction_strength(model, full, labels)
    assert got_ou["muse_extraction_strength"] == pytest.approx(es) == got_mb["muse_extraction_strength"]
    assert es > 0.5


def test_muse_flavour_names_in_sweep_objectives(tofu_dir, tmp_path):
    from raysweep.spec import JobSpecError, benchmark_metrics, parse_job

    from raysweep.spec import EvalSpec

    assert "muse_verbmem_forget_ou" in benchmark_metrics("muse", EvalSpec())
    assert "muse_verbmem_forget" in benchmark_metrics("muse", EvalSpec(muse_flavour="muse"))
    assert "muse_extraction_strength" in benchmark_metrics("muse", EvalSpec(muse_flavour="muse"))
    space = tmp_path / "space.yaml"
    space.write_text("method: {graddiff: {}}\n")

    def job(metric, **eval_):
        return parse_job({"data": {"path": str(tofu_dir)}, "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}},
                          "eval": {"benchmarks": ["muse"], **eval_},
                          "sweep": {"search_space": str(space), "objectives": {metric: "min"}}})

    assert job("muse_verbmem_forget_ou").eval.muse_flavour == "open-unlearning"
    with pytest.raises(JobSpecError, match=r"metric 'muse_verbmem_forget' is not allowed.*eval.muse_flavour 'muse'"):
        job("muse_verbmem_forget")
    assert job("muse_verbmem_forget", muse_flavour="muse").eval.muse_flavour == "muse"
    with pytest.raises(JobSpecError, match="muse_flavour"):
        job("muse_verbmem_forget", muse_flavour="muse_bench")


# ---- 3. generation stops on every EOS id of the generation config ----------------------------

def test_generation_stops_on_every_eos_id_of_the_generation_config(memorised):
    model, tok, rows, _ = memorised
    prompt = QACollator(tok, 512).prompt_ids(rows[0]["question"])
    ids = list(prompt)
    with torch.no_grad():  # greedy by hand, 12 tokens
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    new = ids[len(prompt):]
    stop = next(t for i, t in enumerate(new) if i >= 2 and t not in new[:i] and t not in tok.all_special_ids)
    at = new.index(stop)
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [tok.eos_token_id, stop]  # e.g. Llama-3's three ids
        (text,) = greedy_generate(model, tok, [prompt], 12)
        # generate keeps the stop token itself (a plain token here) and nothing after it.
        assert text == tok.decode(new[:at + 1], skip_special_tokens=True)
        assert text != tok.decode(new, skip_special_tokens=True)
        from raysweep.evaluation.qa import stop_token_ids

        assert stop_token_ids(model, tok) == [tok.eos_token_id, stop]
        model.generation_config.eos_token_id = None
        assert stop_token_ids(model, tok) == [tok.eos_token_id]  # the tokenizer's when the config has none
    finally:
        model.generation_config.eos_token_id = saved


# ---- 4. truncated_inputs reaches the trial's metrics ------------------------------------------

def test_truncated_inputs_reach_the_trials_mlflow_metrics(tmp_path, tofu_dir, shared_cache):
    import yaml
    from mlflow.tracking import MlflowClient

    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.spec import load_job
    from raysweep.sweep.mlflow_log import MlflowStepLogger
    from tests.conftest import tiny_job

    from ..distributed.workers import Recorder

    path = tiny_job(tmp_path, tofu_dir, shared_cache)
    raw = yaml.safe_load(path.read_text())
    raw["eval"].update({"max_length": 24, "benchmarks": ["tofu"], "max_questions": 2})
    raw["unlearn"]["steps"] = 1
    (tmp_path / "space.yaml").write_text("method: {graddiff: {}}\n")
    raw["sweep"] = {"search_space": str(tmp_path / "space.yaml"), "objectives": {"forget_rougeL_recall": "min"}}
    path.write_text(yaml.safe_dump(raw))
    job = load_job(path)
    out = run_worker(job, 0, 1, torch.device("cpu"), Recorder(), WorkerOptions(save_checkpoints=False), None)

    # Independently: every scored pair of the evaluated rows whose tokens exceed 24.
    from raysweep.engine.trial import build_trial
    from raysweep.evaluation.tofu import TofuEvalSets

    parts = build_trial(job)
    sets = TofuEvalSets(parts.data, 2)
    whole = QACollator(parts.tokenizer, 10_000)
    count = 0
    for split in ("forget", "retain", "real_authors", "world_facts", "holdout"):
        for r in getattr(sets, split):
            answers = [r["answer"]] + ([r["paraphrased_answer"]] if "paraphrased_answer" in r else []) \
                + list(r.get("perturbed_answer", []))
            count += sum(len(whole.encode(r["question"], a)[0]) > 24 for a in answers)
    assert count > 0 and out["final/truncated_inputs"] == count

    # what a sweep trial's rank 0 does with the worker's last report: its MLflow sink logs final/*
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    run_id = c.create_run(c.create_experiment("t")).info.run_id
    sink = MlflowStepLogger(uri, run_id)
    sink.report(out)
    sink.close()
    assert c.get_run(run_id).data.metrics["final/truncated_inputs"] == count
