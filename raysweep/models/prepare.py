"""``raysweep prepare``: the *target* (fine-tuned on forget+retain) and the *retain reference*
(fine-tuned on retain only, needed for forget quality), cached under a key hashed from the data,
the model config and the training config. A second call reuses them and says so."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from raysweep.data.tofu import (PRIOR_KNOWLEDGE_FILES, QA_FIELDS, Subset, UnlearnData, load_jsonl, load_muse,
                                load_tofu, prior_knowledge_rows)
from raysweep.spec import JobSpec

if TYPE_CHECKING:  # torch and transformers load only when something is trained
    from raysweep.data.collate import QACollator

TINY = "tiny-llama"


@dataclass
class PreparedModels:
    target: Path
    retain_reference: Path | None  # None when the job skips it (prepare.retain_reference: false)
    tokenizer: Path
    key: str
    reused: bool


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(data: UnlearnData) -> str:
    return _hash([r.get("text") or [r["question"], r["answer"]] for r in data.forget + data.retain])


def load_job_data(job: JobSpec) -> UnlearnData:
    if job.data.benchmark == "corpus":
        from raysweep.data.corpus import load_corpus

        d = job.data
        return load_corpus(d.path, d.forget_file, d.retain_file, max_length=d.max_length, chunk_chars=d.chunk_chars,
                           heldout_fraction=d.heldout_fraction, n_forget_texts=d.n_forget_texts,
                           n_retain_texts=d.n_retain_texts)
    if job.data.benchmark == "muse":
        return load_muse(job.data.path, job.data.n_forget_texts)
    s = job.data.subset
    subset = Subset(s.authors, s.forget_authors, s.offset) if s else None
    return load_tofu(job.data.path, job.data.forget_split, subset)


def prepare_key(job: JobSpec, data: UnlearnData) -> str:
    payload = {
        "data": data_fingerprint(data),
        "max_length": job.data.max_length,
        # LoRA only changes unlearning: the target and reference are the same with or without it.
        "model": job.model.model_dump(mode="json", exclude={"lora", "template", "system_prompt"}),
        "prepare": _prepare_fields(job),
        # 2: a pair cut at max_length ends in EOS (open-unlearning's rule, issue 24), in
        # fine-tuning as in evaluation: a target fine-tuned before may differ.
        "version": 2,
    }
    # The prompt changes what is fine-tuned: the key holds the probe pair as rendered. The plain
    # format renders as it always did, so the tiny models' keys are those from before the probe.
    probe = job_probe(job)
    if probe != _PLAIN_PROBE:
        payload["prompt"] = probe
    return _hash(payload)


# PromptFormat("plain").probe() when prompt formats joined the key, written out: a change of the
# plain format moves the key too.
_PLAIN_PROBE = json.dumps({"format": "plain", "full": "Question: What genre is the author Jaime Vasquez known for?"
                           "\nAnswer: Jaime Vasquez is known for his work in the true crime genre.",
                           "prompt": "Question: What genre is the author Jaime Vasquez known for?\nAnswer:"},
                          sort_keys=True)


@functools.lru_cache(maxsize=32)
def _probe(base: str, template: str, system_prompt: str | None, cache_dir: Path) -> str:
    from raysweep.data.prompts import resolve_prompt_format

    # A tiny model's trained tokenizer has no chat template (the job cannot ask for one), so its
    # formats render without it; any other model's template comes from its tokenizer.
    tok = None if base == TINY else _base_tokenizer(base, cache_dir)
    return resolve_prompt_format(tok, template, system_prompt).probe(tok)


def job_probe(job: JobSpec) -> str:
    """The job's prompt format rendered on :data:`raysweep.data.prompts.PROBE` (cache keys)."""
    m = job.model
    return _probe(m.base, m.template, m.system_prompt, Path(job.cache_dir))


def _base_tokenizer(base: str, cache_dir: Path):
    from raysweep.models.build import SMOLLM2, load_tokenizer, smollm2_tokenizer

    # SmolLM2's tokenizer alone: converting the whole model only to read its template is minutes.
    return smollm2_tokenizer(cache_dir) if base == SMOLLM2 else load_tokenizer(base)


def _prepare_fields(job: JobSpec) -> dict:
    # prior_knowledge joins the key only when on, so that caches made before it existed still hit.
    new = {} if job.prepare.prior_knowledge else {"prior_knowledge", "prior_knowledge_rows"}
    return job.prepare.model_dump(mode="json", exclude=new)


def prior_rows(job: JobSpec) -> list[dict]:
    """The QA every prepared model also learns (prepare.prior_knowledge), else none."""
    p = job.prepare
    return prior_knowledge_rows(job.data.path, p.prior_knowledge_rows) if p.prior_knowledge else []


def tokenizer_texts(job: JobSpec, data: UnlearnData) -> list[str]:
    if not job.prepare.prior_knowledge:
        return data.texts()
    # Every prior row, capped or not: the tokenizer should not depend on how much is learnt; and
    # the wrong options too, which the utility truth ratio scores. Each file is read once.
    files = [load_jsonl(job.data.path / name, QA_FIELDS) for name in PRIOR_KNOWLEDGE_FILES]
    extra = [t for rows in files for r in rows for t in (r["question"], r["answer"])]
    extra += [p for rows in files for r in rows for p in r["perturbed_answer"]]
    return data.texts() + extra


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def finetune(model, collator: "QACollator", rows: list[dict], *, epochs: int, batch_size: int, lr: float,
             weight_decay: float, warmup_ratio: float, seed: int, label: str) -> float:
    """Plain supervised fine-tuning on answer tokens with linear warm-up and decay."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(rows) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    warmup = max(1, int(warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    gen = torch.Generator().manual_seed(seed)
    step, start, loss_ema = 0, time.time(), None
    report_every = max(1, total // 10)
    for epoch in range(epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            batch = collator([rows[i] for i in idx], idx)
            out = model(input_ids=batch["input_ids"].to(model.device),
                        attention_mask=batch["attention_mask"].to(model.device),
                        labels=batch["labels"].to(model.device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
            loss = float(out.loss.detach())
            loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
            step += 1
            if step % report_every == 0 or step == total:
                eta = (time.time() - start) / step * (total - step)
                _log(f"  prepare {label}: epoch {epoch + 1}/{epochs} step {step}/{total} "
                     f"loss {loss_ema:.3f} (eta {eta:.0f}s)")
    model.eval()
    return float(loss_ema)


def _base_model_dir(job: JobSpec, data: UnlearnData) -> tuple[Path, Path]:
    """Directory of the untrained/pretrained base model and of its tokenizer."""
    from raysweep.models.build import build_tiny_llama, resolve_model_source, train_tokenizer

    if job.model.base != TINY:
        src = Path(resolve_model_source(job.model.base, job.cache_dir))
        return src, src
    tiny = job.model.tiny
    texts = tokenizer_texts(job, data)
    key = _hash({"texts": _hash(texts), "tiny": tiny.model_dump(), "seed": job.prepare.seed, "v": 1})
    out = job.cache_dir / "base" / f"tiny-llama-{key}"
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tok = train_tokenizer(texts, tiny.vocab_size, tmp)
        build_tiny_llama(tok, tmp, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                         num_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size,
                         max_position_embeddings=tiny.max_position_embeddings, seed=job.prepare.seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    return out, out


def cached_preparation(job: JobSpec, data: UnlearnData | None = None) -> PreparedModels | None:
    """The prepared models if they are in the cache (a lookup: nothing heavy is imported)."""
    data = data or load_job_data(job)
    key = prepare_key(job, data)
    root = job.cache_dir / "prepared" / key
    if not (root / "meta.json").exists():
        return None
    return PreparedModels(root / "target", _reference_dir(root), root / "target", key, True)


def prepare(job: JobSpec, data: UnlearnData | None = None, force: bool = False, quiet: bool = False) -> PreparedModels:
    """``quiet``: say nothing when the cache answers (trials look the models up at every start)."""
    data = data or load_job_data(job)
    key = prepare_key(job, data)
    root = job.cache_dir / "prepared" / key
    done = root / "meta.json"
    if done.exists() and not force:
        if not quiet:
            _log(f"prepare: reusing cached target and retain reference ({root})")
        return PreparedModels(root / "target", _reference_dir(root), root / "target", key, True)

    base_dir, tok_dir = _base_model_dir(job, data)
    from raysweep.data.collate import QACollator
    from raysweep.models.build import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    collator = QACollator.for_job(job, tokenizer, seed=job.prepare.seed)
    p = job.prepare
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    prior = prior_rows(job)
    meta = {"key": key, "base": str(base_dir), "n_forget": len(data.forget), "n_retain": len(data.retain),
            "n_prior_knowledge": len(prior)}
    # Prior knowledge is learnt alongside the TOFU QA by both models, so the reference differs
    # from the target only by the forget set.
    plan = [("target", data.forget + data.retain + prior)]
    if p.retain_reference:
        plan.append(("retain_reference", data.retain + prior))
    for label, rows in plan:
        _log(f"prepare: fine-tuning the {label.replace('_', ' ')} on {len(rows)} QA "
             f"({p.epochs} epochs, batch {p.batch_size})")
        t0 = time.time()
        # On a GPU machine the fine-tuning runs there (a 1B target is days of CPU time).
        model = load_causal_lm(base_dir, job.model.dtype, device=_prepare_device())
        final_loss = finetune(model, collator, rows, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                              weight_decay=p.weight_decay, warmup_ratio=p.warmup_ratio, seed=p.seed, label=label)
        model.save_pretrained(tmp / label)
        tokenizer.save_pretrained(tmp / label)
        meta[label] = {"final_loss": final_loss, "seconds": round(time.time() - t0, 1)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    _log(f"prepare: cached under {root}")
    return PreparedModels(root / "target", _reference_dir(root), root / "target", key, False)


def _prepare_device():
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _reference_dir(root: Path):
    ref = root / "retain_reference"
    return ref if ref.exists() else None
