"""Prompt defaults match open-unlearning's, token for token, on any day (issue 24, items 1 and 7).

The expected ids are worked out here independently of raysweep: the literal text each format
renders (written out from the model's chat format) and a few-line re-implementation of
open-unlearning's ``src/data/utils.py::preprocess_chat_instance`` fed with the ``template_args``
of its ``configs/model/*.yaml``.
"""

from datetime import datetime
from pathlib import Path

import pytest

from raysweep.data.collate import IGNORE_INDEX, QACollator
from raysweep.data.prompts import resolve_prompt_format
from raysweep.data.tofu import load_jsonl
from raysweep.models.build import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"

# configs/model/Llama-3.2-1B-Instruct.yaml (and 3B, 3.1-8B); Qwen2.5-*-Instruct.yaml is the same
# minus date_string (ChatML, as SmolLM2's template); phi-1_5.yaml and Llama-2-7b-hf.yaml.
OU_LLAMA3 = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant.", "date_string": "10 Apr 2025"}
OU_QWEN25 = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant."}
OU_PHI15 = {"apply_chat_template": False, "user_start_tag": "Question: ", "user_end_tag": "\n",
            "asst_start_tag": "Answer: "}


def _list(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def ou_preprocess(tok, cfg, question, answer):
    """open-unlearning's preprocess_chat_instance for one pair: (ids, number of masked prompt ids)."""
    if cfg["apply_chat_template"]:
        chat = [{"role": "system", "content": cfg["system_prompt"]}] if cfg.get("system_prompt") else []
        chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        date = {"date_string": cfg["date_string"]} if cfg.get("date_string") is not None else {}
        ids = _list(tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=False, **date))
        prompt = _list(tok.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True, **date))
    else:
        wrapped = cfg["user_start_tag"] + question + cfg["user_end_tag"] + cfg["asst_start_tag"]
        ids = tok(wrapped + answer, add_special_tokens=True)["input_ids"]
        prompt = tok(wrapped, add_special_tokens=True)["input_ids"]
    if ids[-1] != tok.eos_token_id:
        ids = ids + [tok.eos_token_id]
    return ids, len(prompt)


@pytest.fixture(scope="module")
def tofu_pair(tofu_dir):
    row = load_jsonl(tofu_dir / "full.jsonl")[0]
    return row["question"], row["answer"]


@pytest.fixture(scope="module")
def llama3_tok(smol_tok, tmp_path_factory):
    """A byte-level BPE tokenizer with Llama-3's special tokens and Llama-3.2-Instruct's own chat
    template (fixtures/llama-3.2-instruct.jinja, the template text the model ships)."""
    out = tmp_path_factory.mktemp("llama3-tok")
    smol_tok.save_pretrained(out)
    tok = load_tokenizer(out)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tok.chat_template = (FIXTURES / "llama-3.2-instruct.jinja").read_text()
    return tok


@pytest.fixture
def clock(monkeypatch):
    """Sets the day transformers' chat templates read through ``strftime_now``."""
    import transformers.utils.chat_template_utils as ctu

    def set_day(day: datetime):
        class Fixed(datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(ctu, "datetime", Fixed)
    return set_day


def _encode(tok, question, answer, **job):
    c = QACollator(tok, 512, prompt=resolve_prompt_format(tok, **job))
    ids, labels = c.encode(question, answer)
    return ids, labels.count(IGNORE_INDEX), c.prompt_ids(question)


def test_auto_is_open_unlearnings_llama3_prompt_whatever_the_day(llama3_tok, tofu_pair, clock):
    q, a = tofu_pair
    tok = llama3_tok
    literal_prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                      "Cutting Knowledge Date: December 2023\nToday Date: 10 Apr 2025\n\n"
                      "You are a helpful assistant.<|eot_id|>"
                      f"<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    want_prompt = tok(literal_prompt, add_special_tokens=False)["input_ids"]
    want = tok(literal_prompt + a + "<|eot_id|>", add_special_tokens=False)["input_ids"]
    assert ou_preprocess(tok, OU_LLAMA3, q, a) == (want, len(want_prompt))
    seen = []
    for day in (datetime(2025, 4, 10), datetime(2031, 12, 24)):
        clock(day)
        ids, n_prompt, prompt = _encode(tok, q, a)  # model.template: auto
        assert (ids, n_prompt, prompt) == (want, len(want_prompt), want_prompt)
        # Without a date_string the template writes the day in (what "auto" did before).
        seen.append(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                            add_generation_prompt=True))
    assert "Today Date: 10 Apr 2025" in seen[0] and "Today Date: 24 Dec 2031" in seen[1]
    # The named template is the same prompt.
    assert _encode(tok, q, a, template="llama3")[:2] == (want, len(want_prompt))


def test_auto_is_open_unlearnings_chatml_prompt_on_smollm2(smol_tok, tofu_pair, clock):
    q, a = tofu_pair
    literal_prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    want_prompt = smol_tok(literal_prompt, add_special_tokens=False)["input_ids"]
    # The template ends the turn with "<|im_end|>\n"; EOS (<|im_end|>) is appended after it.
    want = smol_tok(literal_prompt + a + "<|im_end|>\n<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ou_preprocess(smol_tok, OU_QWEN25, q, a) == (want, len(want_prompt))
    for day in (datetime(2025, 4, 10), datetime(2031, 12, 24)):
        clock(day)
        assert _encode(smol_tok, q, a) == (want, len(want_prompt), want_prompt)
    # An explicit system prompt replaces it; "" means none (the template's own default then).
    ids, _, _ = _encode(smol_tok, q, a, system_prompt="Be brief.")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in smol_tok.decode(ids)
    ids, _, _ = _encode(smol_tok, q, a, system_prompt="")
    assert "named SmolLM" in smol_tok.decode(ids)
    # "chat": the tokenizer's template as it is (no system prompt added), the date still fixed.
    ids, _, _ = _encode(smol_tok, q, a, template="chat")
    assert "named SmolLM" in smol_tok.decode(ids)


def test_auto_adds_no_system_turn_where_the_template_refuses_one(smol_tok, tofu_pair, tmp_path):
    """open-unlearning's gemma-7b-it config has no system prompt: gemma's template raises on one."""
    q, a = tofu_pair
    smol_tok.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                         "{% endif %}{% for m in messages %}<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
                         "{% if add_generation_prompt %}<turn>model\n{% endif %}")
    ids, n_prompt, _ = _encode(tok, q, a)
    assert (ids, n_prompt) == ou_preprocess(tok, {"apply_chat_template": True}, q, a)
    with pytest.raises(ValueError, match="model.system_prompt: 'Be brief.' is not allowed"):
        resolve_prompt_format(tok, "auto", "Be brief.")


def test_phi15_is_open_unlearnings_format_and_plain_is_not(smol_tok, tofu_pair):
    q, a = tofu_pair
    want, n_want = ou_preprocess(smol_tok, OU_PHI15, q, a)
    ids, n_prompt, prompt = _encode(smol_tok, q, a, template="phi15")
    assert (ids, n_prompt) == (want, n_want)
    # The prompt ends in a lone-space token that the answer's first word never uses, so the
    # first answer token is masked too; generation starts after the space.
    assert smol_tok.convert_ids_to_tokens(prompt[-1]) == "Ġ" and len(prompt) == n_want
    assert want[:n_want - 1] == prompt[:-1] and want[n_want - 1] != prompt[-1]
    assert smol_tok.decode(want[n_want:]) == " " + a.split(" ", 1)[1] + smol_tok.eos_token  # "The" is masked
    # plain: "Answer:" then " " + answer tokenised on its own (every answer token scored).
    ids, n_prompt, _ = _encode(smol_tok, q, a, template="plain")
    assert smol_tok.decode(ids[n_prompt:]) == " " + a + smol_tok.eos_token
    assert ids != want
    with pytest.raises(ValueError, match="model.system_prompt: not allowed with model.template 'phi15'"):
        resolve_prompt_format(smol_tok, "phi15", "Be brief.")
