"""CPU time of one LoRA unlearning step of SmolLM2-135M-Instruct (issue 27, item 5, sizing only).

    python jobs/study/smollm2_step_time.py [--steps 3] [--batch 8] [--length 96] [--threads 2]

One step as GradDiff under NPO costs it: forward + backward of a forget batch and of a retain
batch through the LoRA model (r 8 on every projection, raysweep's default), and one forward of
the frozen reference for NPO. Token ids are drawn at random (the cost does not depend on them).
Prints the GGUF conversion / load time and the mean and max step time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    import torch

    from raysweep.models.build import load_causal_lm, resolve_model_source
    from raysweep.models.lora import apply_lora
    from raysweep.spec import LoraSpec, default_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, every core)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    src = resolve_model_source("smollm2-135m", default_cache_dir())
    ref = load_causal_lm(src).eval()
    model = apply_lora(load_causal_lm(src), LoraSpec())
    print(f"convert + load: {time.time() - t0:.0f}s; torch threads {torch.get_num_threads()}", flush=True)
    vocab = ref.config.vocab_size
    times = []
    for _ in range(args.steps):
        t = time.time()
        for _side in ("forget", "retain"):
            ids = torch.randint(0, vocab, (args.batch, args.length))
            model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            ref(input_ids=torch.randint(0, vocab, (args.batch, args.length)))
        times.append(time.time() - t)
        print(f"step {len(times)}: {times[-1]:.1f}s", flush=True)
    print(f"LoRA step (batch {args.batch} x {args.length} tokens): mean {sum(times) / len(times):.1f}s, "
          f"max {max(times):.1f}s over {len(times)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
