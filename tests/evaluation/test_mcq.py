"""MCQ accuracy: a tiny model taught the answers of a few WMDP questions beats chance on them;
an untrained one sits at chance within noise."""

import pytest
import torch

from raysweep.evaluation.mcq import LETTERS, choice_loglikelihoods, format_question, load_mcq, mcq_accuracy
from raysweep.models.build import build_tiny_llama, train_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tofu_dir):
    root = tofu_dir.parent
    rows = load_mcq(root, "wmdp_bio", n=200, seed=0)
    texts = [format_question(r) + " " + LETTERS[r["answer"]] for r in rows]
    tok = train_tokenizer(texts, 600, tmp_path_factory.mktemp("tok"))
    return root, rows, tok


def test_subset_is_fixed_and_seeded(setup):
    root, rows, _ = setup
    assert load_mcq(root, "wmdp_bio", n=200, seed=0) == rows
    assert load_mcq(root, "wmdp_bio", n=200, seed=1) != rows
    mmlu = load_mcq(root, "mmlu", n=5, seed=0)
    assert all(len(r["choices"]) == 4 and r["subject"] for r in mmlu)
    assert "The following are multiple choice questions (with answers) about" in format_question(mmlu[0])
    assert format_question(rows[0]).endswith("\nD. " + rows[0]["choices"][3] + "\nAnswer:")
    assert format_question(rows[0]).startswith("The following are multiple choice questions (with answers) about biology.\n\n")


def test_untrained_model_is_at_chance(setup, tmp_path):
    _, rows, tok = setup
    model = build_tiny_llama(tok, tmp_path / "m", hidden_size=32, num_layers=2, num_heads=2,
                             intermediate_size=64, max_position_embeddings=512, seed=0)
    acc = mcq_accuracy(model, tok, rows)
    assert 0.25 - 0.1 <= acc <= 0.25 + 0.1  # 200 questions: 2 sigma ~ 0.06


@pytest.mark.slow  # 60 teaching steps row by row (~80 s); the letter scoring itself is pinned in test_parity.py
def test_taught_model_beats_chance(setup, tmp_path):
    _, rows, tok = setup
    taught = rows[:12]
    model = build_tiny_llama(tok, tmp_path / "m", hidden_size=64, num_layers=2, num_heads=2,
                             intermediate_size=128, max_position_embeddings=512, seed=0)
    before = mcq_accuracy(model, tok, taught)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        ll = choice_loglikelihoods_grad(model, tok, taught)
        loss = torch.nn.functional.cross_entropy(ll, torch.tensor([r["answer"] for r in taught]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mcq_accuracy(model, tok, taught)
    assert after >= 0.75 and after > before


def choice_loglikelihoods_grad(model, tok, rows):
    """Training signal: the same letter log-likelihoods, with gradients (teaching the answers)."""
    with torch.enable_grad():
        out = []
        for r in rows:
            ctx = tok(format_question(r))["input_ids"]  # lm-eval: the tokenizer's own special tokens
            ids = torch.tensor([ctx])
            logp = torch.log_softmax(model(ids).logits[0, -1], -1)
            out.append(torch.stack([logp[tok(" " + l, add_special_tokens=False)["input_ids"][0]] for l in LETTERS]))
        return torch.stack(out)


def test_scoring_matches_a_direct_computation(setup, tmp_path):
    _, rows, tok = setup
    model = build_tiny_llama(tok, tmp_path / "m", hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, max_position_embeddings=512, seed=1)
    ll = choice_loglikelihoods(model, tok, rows[:3], batch_size=5)
    for i, r in enumerate(rows[:3]):
        ctx = tok(format_question(r))["input_ids"]
        for j, l in enumerate(LETTERS):
            cont = tok(" " + l, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cont])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            direct = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert float(ll[i, j]) == pytest.approx(direct, abs=1e-4)
