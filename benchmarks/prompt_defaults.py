"""What ``model.template: auto`` changed (issue 24): one TOFU question on SmolLM2-135M-Instruct,
before (its chat template, no system prompt, no date_string) and now (open-unlearning's prompt:
system prompt "You are a helpful assistant.", date_string "10 Apr 2025"), and the quickstart job.

    python benchmarks/prompt_defaults.py [--job jobs/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    args = ap.parse_args()

    from raysweep.data.prompts import PromptFormat, resolve_prompt_format
    from raysweep.data.tofu import load_jsonl
    from raysweep.models.build import smollm2_tokenizer
    from raysweep.models.prepare import _PLAIN_PROBE, job_probe, load_job_data, prepare_key
    from raysweep.spec import default_cache_dir, load_job

    job = load_job(args.job)
    row = load_jsonl(Path(job.data.path) / "full.jsonl")[0]
    q, a = row["question"], row["answer"]
    tok = smollm2_tokenizer(default_cache_dir())
    # Before: auto was the chat template with no system turn (SmolLM2's reads no date_string).
    for label, fmt in (("before", PromptFormat("chat")), ("now", resolve_prompt_format(tok))):
        ids, n_prompt = fmt.pair_ids(tok, q, a)
        print(f"SmolLM2 auto {label}: {fmt}: {len(ids)} ids, {n_prompt} prompt ids")
        print(f"  prompt text: {tok.decode(ids[:n_prompt])!r}")
        print(f"  prompt ids:  {ids[:n_prompt]}")
    probe = job_probe(job)
    fmt = resolve_prompt_format(None, job.model.template, job.model.system_prompt)
    print(f"{Path(args.job).name} (model.base {job.model.base}): {fmt}; prompt unchanged: {probe == _PLAIN_PROBE}; "
          f"prepare key {prepare_key(job, load_job_data(job))}")


if __name__ == "__main__":
    main()
