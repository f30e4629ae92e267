"""Models: tiny Llama + trained tokenizer, any HF causal LM from a directory, SmolLM2 GGUF."""

from raysweep.models.build import load_causal_lm, load_tokenizer, resolve_model_source

__all__ = ["load_causal_lm", "load_tokenizer", "resolve_model_source"]
