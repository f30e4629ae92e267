"""Prompt formats: how a question (and its answer) become tokens, the same in fine-tuning
(``prepare``), unlearning and evaluation (spec 1 and 9.1: "log-probabilities are conditioned on
the question in the model's chat format").

* ``plain``: ``Question: {q}\\nAnswer:`` then ``" " + answer``, BOS/EOS from the tokenizer's ids.
  The format of models without a chat template (the tiny models; open-unlearning's phi-1.5 config).
* ``chat``: the tokenizer's own ``apply_chat_template`` (optional system prompt), prompt with
  ``add_generation_prompt=True``, the answer as the assistant turn; EOS appended when the
  template does not end with it - open-unlearning's ``preprocess_chat_instance``.
* ``llama2``: ``[INST] {q} [/INST]{answer}`` through the tokenizer with its special tokens (BOS),
  open-unlearning's Llama-2-7b-chat config (``apply_chat_template: False``, empty assistant tag);
  a system prompt goes in Llama-2's ``<<SYS>>`` block.
* ``llama3``: the tokenizer's chat template with the system prompt "You are a helpful assistant."
  and ``date_string`` "10 Apr 2025" - open-unlearning's Llama-3.x Instruct configs.
* ``auto`` (default): ``chat`` when the tokenizer has a chat template, else ``plain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

TEMPLATES = ("auto", "plain", "chat", "llama2", "llama3")
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
LLAMA3_SYSTEM_PROMPT = "You are a helpful assistant."
LLAMA3_DATE_STRING = "10 Apr 2025"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(out) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns a list or (transformers 5) a BatchEncoding."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


@dataclass(frozen=True)
class PromptFormat:
    name: str  # resolved: plain | chat | llama2 | llama3
    system_prompt: Optional[str] = None

    # ---- what a generated answer starts from ----------------------------------------------
    def prompt_ids(self, tok, question: str) -> list[int]:
        if self.name == "plain":
            return _bos(tok) + tok(PLAIN_TEMPLATE.format(question=question), add_special_tokens=False)["input_ids"]
        if self.name == "llama2":
            return tok(self._llama2_prompt(question), add_special_tokens=True)["input_ids"]
        return _ids(tok.apply_chat_template(self._messages(question), tokenize=True, add_generation_prompt=True,
                                            **self._template_kwargs()))

    # ---- a scored / trained pair: (ids, number of prompt tokens) ----------------------------
    def pair_ids(self, tok, question: str, answer: str) -> tuple[list[int], int]:
        if self.name == "plain":
            prompt = self.prompt_ids(tok, question)
            ans = tok(" " + answer, add_special_tokens=False)["input_ids"]
            return prompt + ans + _eos(tok), len(prompt)
        if self.name == "llama2":
            prompt = self.prompt_ids(tok, question)
            full = tok(self._llama2_prompt(question) + answer, add_special_tokens=True)["input_ids"]
        else:
            prompt = self.prompt_ids(tok, question)
            msgs = self._messages(question) + [{"role": "assistant", "content": answer}]
            full = _ids(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False,
                                                **self._template_kwargs()))
        eos = getattr(tok, "eos_token_id", None)
        if eos is not None and (not full or full[-1] != eos):
            full = full + [eos]
        return full, min(len(prompt), len(full))

    # ---- helpers ---------------------------------------------------------------------------
    def _system(self) -> Optional[str]:
        if self.system_prompt is not None:
            return self.system_prompt or None
        return LLAMA3_SYSTEM_PROMPT if self.name == "llama3" else None

    def _messages(self, question: str) -> list[dict]:
        system = self._system()
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]

    def _template_kwargs(self) -> dict:
        return {"date_string": LLAMA3_DATE_STRING} if self.name == "llama3" else {}

    def _llama2_prompt(self, question: str) -> str:
        system = self._system()
        body = f"<<SYS>>\n{system}\n<</SYS>>\n\n{question}" if system else question
        return f"[INST] {body} [/INST]"


def _bos(tok) -> list[int]:
    return [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []


def _eos(tok) -> list[int]:
    return [tok.eos_token_id] if getattr(tok, "eos_token_id", None) is not None else []


def resolve_prompt_format(tokenizer, template: str = "auto", system_prompt: Optional[str] = None) -> PromptFormat:
    """The job's ``model.template`` / ``model.system_prompt`` for this tokenizer."""
    if template not in TEMPLATES:
        raise ValueError(f"model.template: {template!r} is not allowed ({', '.join(TEMPLATES)})")
    if template == "auto":
        template = "chat" if has_chat_template(tokenizer) else "plain"
    if template in ("chat", "llama3") and not has_chat_template(tokenizer):
        raise ValueError(f"model.template: {template!r} is not allowed (this tokenizer has no chat template; "
                         "allowed: plain, llama2)")
    if template == "plain" and system_prompt:
        raise ValueError("model.system_prompt: not allowed with model.template 'plain' (it has no system turn)")
    return PromptFormat(template, system_prompt)


def job_prompt_format(job, tokenizer) -> PromptFormat:
    return resolve_prompt_format(tokenizer, job.model.template, job.model.system_prompt)
