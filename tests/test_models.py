"""Tokenizer training, the tiny Llama, offline save/load round trips, and `prepare` caching."""

import torch

from raysweep.models.build import build_tiny_llama, load_causal_lm, load_tokenizer, train_tokenizer


def test_tokenizer_and_tiny_llama_round_trip_offline(tmp_path):
    texts = ["Question: Who wrote it?\nAnswer: Basil Mahfouz Al-Kuwaiti wrote it."] * 20
    tok = train_tokenizer(texts, 300, tmp_path / "tok")
    model = build_tiny_llama(tok, tmp_path / "m", hidden_size=32, num_layers=2, num_heads=2,
                             intermediate_size=64, max_position_embeddings=64, seed=0)
    tok2 = load_tokenizer(tmp_path / "m")
    assert tok2("Basil wrote")["input_ids"] == tok("Basil wrote")["input_ids"]
    assert tok2.decode(tok2("Basil wrote it.")["input_ids"]) == "Basil wrote it."
    assert {tok2.pad_token, tok2.eos_token, tok2.bos_token} == {"<pad>", "</s>", "<s>"}
    loaded = load_causal_lm(tmp_path / "m")
    x = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(model(x).logits, loaded(x).logits)
    assert load_causal_lm(tmp_path / "m", dtype="bfloat16").dtype == torch.bfloat16
