"""TOFU loading, the author subset, QA tokenisation, and seeded paired sampling."""

import pytest
import torch

from raysweep.data.collate import QACollator
from raysweep.data.sampler import PairedSampler
from raysweep.data.tofu import DataError, Subset, load_jsonl, load_tofu


def test_subset_first_k_authors_forget_the_last_f(tofu_dir):
    d = load_tofu(tofu_dir, subset=Subset(authors=20, forget_authors=2))
    full = load_jsonl(tofu_dir / "full.jsonl")
    assert len(d.forget) == 40 and len(d.retain) == 360
    assert d.forget == full[360:400] and d.retain == full[:360]
    # Every subset question has paraphrased and perturbed answers for the truth ratio.
    assert all(r["question"] in d.perturbed for r in d.forget + d.retain)
    assert len(d.holdout) == 40 and len(d.refusals) == 100


def test_named_splits(tofu_dir):
    d = load_tofu(tofu_dir, forget_split="forget01")
    assert len(d.forget) == 40 and len(d.retain) == 3960
    with pytest.raises(DataError, match="forget_split"):
        load_tofu(tofu_dir, forget_split="forget02")
    with pytest.raises(DataError, match="forget_authors"):
        load_tofu(tofu_dir, subset=Subset(authors=2, forget_authors=2))


class CharTokenizer:
    """A minimal tokenizer with the HF call signature (one id per character)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 90) for c in text]}


def test_collator_masks_prompt_and_padding():
    c = QACollator(CharTokenizer(), max_length=64)
    rows = [{"question": "Q1?", "answer": "abc"}, {"question": "A longer question?", "answer": "x"}]
    batch = c(rows, [0, 1])
    prompt_len = 1 + len("Question: Q1?\nAnswer:")
    labels = batch["labels"][0]
    assert (labels[:prompt_len] == -100).all()
    n_answer = len(" abc") + 1  # answer tokens + eos
    assert (labels[prompt_len:prompt_len + n_answer] == batch["input_ids"][0][prompt_len:prompt_len + n_answer]).all()
    assert (labels[prompt_len + n_answer:] == -100).all()  # padding
    assert batch["attention_mask"][0].sum() == prompt_len + n_answer
    p = c.prompts(["Q1?", "A longer question?"])
    assert p["attention_mask"][0, 0] == 0 and p["attention_mask"][0, -1] == 1  # left padded


def test_idk_batches_are_deterministic_refusals():
    c = QACollator(CharTokenizer(), 64, refusals=["I don't know.", "No idea."], seed=3)
    rows = [{"question": "Q?", "answer": "a"}] * 4
    b1, b2 = c(rows, [0, 1, 2, 3], with_idk=True), c(rows, [0, 1, 2, 3], with_idk=True)
    assert torch.equal(b1["idk_input_ids"], b2["idk_input_ids"])
    assert "idk_labels" in b1


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_ranks_partition_each_epoch(world):
    n_forget, n_retain, batch = 40, 360, 8
    s = PairedSampler(n_forget, n_retain, batch, seed=5)
    for stream, n in (("forget", n_forget), ("retain", n_retain)):
        steps = n // batch
        seen = [i for step in range(steps) for r in range(world) for _, i in s.batch(step, stream, r, world)]
        assert sorted(seen) == list(range(n)), "one epoch covers the split with no duplicates"
    for step in range(5):
        per_rank = [tuple(i for _, i in s.batch(step, "retain", r, world)) for r in range(world)]
        assert len(set(per_rank)) == world and all(len(set(a) & set(b)) == 0 for a in per_rank for b in per_rank if a is not b)


def test_sampler_global_batch_is_independent_of_worker_count():
    s = PairedSampler(40, 360, 8, seed=1)
    one = [i for _, i in s.batch(3, "retain", 0, 1)]
    two = [i for r in range(2) for _, i in s.batch(3, "retain", r, 2)]
    assert one == two
    assert s.batch(3, "retain") != PairedSampler(40, 360, 8, seed=2).batch(3, "retain")
    with pytest.raises(ValueError, match="batch_size"):
        s.batch(0, "forget", 0, 3)


def test_subset_offset_keeps_a_later_block_of_authors(tofu_dir):
    full = load_jsonl(tofu_dir / "full.jsonl")
    d = load_tofu(tofu_dir, subset=Subset(authors=20, forget_authors=2, offset=180))
    assert d.retain == full[3600:3960] and d.forget == full[3960:4000]
    # Authors 180-199 are TOFU's forget10 authors: every question keeps its perturbed answers.
    assert all(r["question"] in d.perturbed for r in d.forget + d.retain)
    assert load_tofu(tofu_dir, subset=Subset(20, 2, 0)).forget == full[360:400]  # offset 0 = before


@pytest.mark.parametrize("offset", [-1, 181])
def test_subset_offset_out_of_range_is_a_one_line_error(tofu_dir, offset):
    with pytest.raises(DataError, match=rf"data.subset.offset: {offset} is not allowed \(0\.\.180 with authors=20"):
        load_tofu(tofu_dir, subset=Subset(authors=20, forget_authors=2, offset=offset))


def test_offset_without_perturbed_forget_answers_is_refused_by_tofu_eval(tofu_dir):
    from raysweep.evaluation.tofu import TofuEvalSets

    with pytest.raises(ValueError, match="forget authors must lie in 0-19 or 180-199"):
        TofuEvalSets(load_tofu(tofu_dir, subset=Subset(authors=20, forget_authors=2, offset=40)))
    sets = TofuEvalSets(load_tofu(tofu_dir, subset=Subset(authors=20, forget_authors=2, offset=170)))
    assert sets.sizes()["forget"] == 40 and sets.sizes()["retain"] == 160  # authors 180-187 only


def test_prior_knowledge_rows_are_the_real_authors_and_world_facts_qa(tofu_dir):
    from raysweep.data.tofu import prior_knowledge_rows

    rows = prior_knowledge_rows(tofu_dir)
    assert len(rows) == 100 + 117 and set(rows[0]) == {"question", "answer"}
    assert rows[0]["answer"] == "William Shakespeare"
