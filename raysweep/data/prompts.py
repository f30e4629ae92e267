"""Prompt formats: how a question (and its answer) become tokens, the same in fine-tuning
(``prepare``), unlearning and evaluation (spec 1 and 9.1: "log-probabilities are conditioned on
the question in the model's chat format").

* ``auto`` (default): open-unlearning's prompt for a chat model (its ``configs/model/*.yaml``
  ``template_args``: Llama-3.x, Qwen2.5, Phi-3.5, zephyr): the tokenizer's chat template with
  the system prompt "You are a helpful assistant." (none where the template refuses a system
  turn, as gemma's does and OU's gemma config has none) and ``date_string`` "10 Apr 2025", so a
  template that prints today's date (Llama-3.x) prints a fixed one. Without a chat template:
  ``plain``.
* ``chat``: the tokenizer's own template as it is, the job's ``system_prompt`` only (a template's
  built-in default system prompt then shows, e.g. SmolLM2's), the same fixed ``date_string``.
  Both chat formats follow open-unlearning's ``preprocess_chat_instance``: the prompt with
  ``add_generation_prompt=True``, the answer as the assistant turn, EOS appended when the
  template does not end with it.
* ``llama3``: ``auto`` for a chat template (the name open-unlearning's Llama-3.x configs had here).
* ``plain``: raysweep's own format: BOS, ``Question: {q}\\nAnswer:``, then ``" " + answer``
  tokenised on its own, EOS. Every answer token is scored. Not open-unlearning's phi-1.5 format
  (that is ``phi15``).
* ``phi15``: open-unlearning's phi-1.5 (and Llama-2-7b/13b-hf) format exactly:
  ``"Question: {q}\\nAnswer: " + answer`` tokenised as one string with the tokenizer's own special
  tokens (no BOS for phi-1.5's), the prompt ``"Question: {q}\\nAnswer: "`` tokenised on its own. Its
  last token is a lone space that the joint tokenisation merges into the answer's first word, so
  that first answer token is masked too, and generation starts after the space token.
* ``llama2``: ``[INST] {q} [/INST]{answer}`` the same way (open-unlearning's Llama-2-7b-chat:
  ``apply_chat_template: False``, empty assistant tag); a system prompt goes in Llama-2's
  ``<<SYS>>`` block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

TEMPLATES = ("auto", "plain", "phi15", "chat", "llama2", "llama3")
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
# open-unlearning's template_args for its chat models.
OU_SYSTEM_PROMPT = "You are a helpful assistant."
OU_DATE_STRING = "10 Apr 2025"
# The non-chat formats as open-unlearning's (user_start_tag, user_end_tag, asst_start_tag).
TAGS = {"phi15": ("Question: ", "\n", "Answer: "), "llama2": ("[INST] ", " [/INST]", "")}
# A fixed pair rendered into the cache keys of prepared models and evaluations: a change of
# prompt (template, system prompt, the tokenizer's chat template, a default) changes the keys.
PROBE = ("What genre is the author Jaime Vasquez known for?",
         "Jaime Vasquez is known for his work in the true crime genre.")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(out) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns a list or (transformers 5) a BatchEncoding."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


@dataclass(frozen=True)
class PromptFormat:
    name: str  # resolved: plain | phi15 | llama2 | chat
    system_prompt: Optional[str] = None  # resolved: None is no system turn

    # ---- what a generated answer starts from ----------------------------------------------
    def prompt_ids(self, tok, question: str) -> list[int]:
        if self.name == "plain":
            return _bos(tok) + tok(PLAIN_TEMPLATE.format(question=question), add_special_tokens=False)["input_ids"]
        if self.name in TAGS:
            return tok(self._tagged_prompt(question), add_special_tokens=True)["input_ids"]
        return _ids(tok.apply_chat_template(self._messages(question), tokenize=True, add_generation_prompt=True,
                                            date_string=OU_DATE_STRING))

    # ---- a scored / trained pair: (ids, number of prompt tokens) ----------------------------
    def pair_ids(self, tok, question: str, answer: str) -> tuple[list[int], int]:
        prompt = self.prompt_ids(tok, question)
        if self.name == "plain":
            ans = tok(" " + answer, add_special_tokens=False)["input_ids"]
            return prompt + ans + _eos(tok), len(prompt)
        if self.name in TAGS:
            full = tok(self._tagged_prompt(question) + answer, add_special_tokens=True)["input_ids"]
        else:
            full = _ids(tok.apply_chat_template(self._messages(question, answer), tokenize=True,
                                                add_generation_prompt=False, date_string=OU_DATE_STRING))
        eos = getattr(tok, "eos_token_id", None)
        if eos is not None and (not full or full[-1] != eos):
            full = full + [eos]
        return full, min(len(prompt), len(full))

    # ---- the probe pair as text, for cache keys ----------------------------------------------
    def probe(self, tok=None) -> str:
        """The fixed :data:`PROBE` pair rendered: prompt and whole pair as text, with the format's
        name for how they are tokenised. ``tok`` is read only by the chat formats."""
        q, a = PROBE
        if self.name == "plain":
            prompt, full = PLAIN_TEMPLATE.format(question=q), PLAIN_TEMPLATE.format(question=q) + " " + a
        elif self.name in TAGS:
            prompt = self._tagged_prompt(q)
            full = prompt + a
        else:
            prompt = tok.apply_chat_template(self._messages(q), tokenize=False, add_generation_prompt=True,
                                             date_string=OU_DATE_STRING)
            full = tok.apply_chat_template(self._messages(q, a), tokenize=False, add_generation_prompt=False,
                                           date_string=OU_DATE_STRING)
        return json.dumps({"format": self.name, "prompt": prompt, "full": full}, sort_keys=True)

    # ---- helpers ---------------------------------------------------------------------------
    def _messages(self, question: str, answer: Optional[str] = None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": question})
        return msgs + ([{"role": "assistant", "content": answer}] if answer is not None else [])

    def _tagged_prompt(self, question: str) -> str:
        start, end, asst = TAGS[self.name]
        body = f"<<SYS>>\n{self.system_prompt}\n<</SYS>>\n\n{question}" if self.system_prompt else question
        return start + body + end + asst


def _bos(tok) -> list[int]:
    return [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []


def _eos(tok) -> list[int]:
    return [tok.eos_token_id] if getattr(tok, "eos_token_id", None) is not None else []


def resolve_prompt_format(tokenizer, template: str = "auto", system_prompt: Optional[str] = None) -> PromptFormat:
    """The job's ``model.template`` / ``model.system_prompt`` for this tokenizer (``None`` stands for
    a tokenizer without a chat template). ``system_prompt`` "" is no system turn."""
    if template not in TEMPLATES:
        raise ValueError(f"model.template: {template!r} is not allowed ({', '.join(TEMPLATES)})")
    chat = has_chat_template(tokenizer)
    if template == "auto":
        template = "llama3" if chat else "plain"
    if template in ("chat", "llama3") and not chat:
        raise ValueError(f"model.template: {template!r} is not allowed (this tokenizer has no chat template; "
                         "allowed: plain, phi15, llama2)")
    if template in ("plain", "phi15") and system_prompt:
        raise ValueError(f"model.system_prompt: not allowed with model.template {template!r} (it has no system turn)")
    if template in ("chat", "llama3") and not _accepts_system_turn(tokenizer):
        if system_prompt:
            raise ValueError(f"model.system_prompt: {system_prompt!r} is not allowed (this tokenizer's chat template "
                             "refuses a system turn; allowed: none)")
        return PromptFormat("chat")
    if template == "llama3":
        template, system_prompt = "chat", OU_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return PromptFormat(template, system_prompt or None)


def _accepts_system_turn(tok) -> bool:
    from jinja2.exceptions import TemplateError

    msgs = [{"role": "system", "content": OU_SYSTEM_PROMPT}, {"role": "user", "content": PROBE[0]}]
    try:
        tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, date_string=OU_DATE_STRING)
    except TemplateError:
        return False
    return True


def job_prompt_format(job, tokenizer) -> PromptFormat:
    return resolve_prompt_format(tokenizer, job.model.template, job.model.system_prompt)
