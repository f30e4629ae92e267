"""Peak memory per rank of one unlearning step, in units of one fp32 copy of the model, measured in
one run for: fp32 DDP (whole model everywhere), bf16 FSDP2 (sharded), fp32 FSDP2 at 1 and 2 ranks
(how the sharded parts fall with the rank count) and LoRA (fp32, DDP).

    python benchmarks/memory.py [--hidden 768 --layers 10 --vocab 16000] [--steps 3] [--seq 64]

Every rank is a local process in a gloo group (the same engine as a trial, AdamW, SAGO, GA + NLL,
two task backwards per step). Memory is the process's resident set (``/proc/self/statm``), sampled
every millisecond by a thread during the training steps, minus the resident set measured after the
imports and the process group, before the model exists (glibc is told to mmap every tensor-sized
allocation, so freed memory leaves the resident set). The model is built whole on every rank and
then sharded (as the worker does), so the load transient is excluded: the figure is the training
peak. Parameters are initialised from one seed, so all ranks start equal.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    def __init__(self, every: float = 0.001):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.every)

    def __enter__(self):
        self.peak = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def batch(vocab: int, rows: int, seq: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, seq), generator=g)
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def measure(rank, world, mode, args):
    import gc

    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from raysweep.distributed import fsdp
    from raysweep.distributed.collectives import TaskGradReducer, sum_scalars
    from raysweep.engine.engine import UnlearningEngine
    from raysweep.models.lora import apply_lora
    from raysweep.objectives import ObjectiveContext, build_objective
    from raysweep.spec import LoraSpec
    from raysweep.synthesis import build_synthesis

    gc.collect()
    base = rss()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    kw: dict = dict(sum_across_ranks=sum_scalars, world_size=world)
    precision = "bf16" if mode == "fsdp-bf16" else "fp32"
    if mode.startswith("fsdp"):
        model = fsdp.shard_model(model, torch.device("cpu"), precision)
        kw.update(reduce_sum=sum_scalars, grad_to_local=fsdp.grad_to_local, grad_from_local=fsdp.grad_from_local)
    else:
        if mode == "lora":
            model = apply_lora(model, LoraSpec(r=args.lora_r, alpha=2 * args.lora_r))
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model)
        holder = {}
        kw["reduce_task_grads"] = lambda grads: holder["r"](grads)
    model.train()
    gc.collect()
    engine = UnlearningEngine(model, build_objective("ga"), [build_objective("nll")], build_synthesis("sago"),
                              ObjectiveContext(), lr=1e-5, optimizer="adamw", precision=precision, **kw)
    if "reduce_task_grads" in kw:
        holder["r"] = TaskGradReducer(engine.params)
    trainable = sum(p.numel() for p in engine.params)
    rows = args.rows // world  # the same global batch at every rank count
    times = []
    with PeakSampler() as sampler:
        for step in range(args.steps):
            t0 = time.time()
            fb = batch(args.vocab, rows, args.seq, 1000 * step + rank)
            rb = batch(args.vocab, rows, args.seq, 1000 * step + 500 + rank)
            engine.step([(fb, rb)])
            times.append(time.time() - t0)
    dist.barrier()
    return {"peak": sampler.peak - base, "n_params": n_params, "trainable": trainable, "step_s": min(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rows", type=int, default=4, help="global batch rows per task")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--modes", default="ddp-fp32:2,fsdp-fp32:1,fsdp-fp32:2,fsdp-bf16:2,lora:2")
    args = ap.parse_args()

    # glibc keeps freed heap pages unless allocations are mmap'd: a fixed mmap threshold returns
    # every freed tensor to the OS, so the resident set follows the live tensors (set before the
    # ranks are spawned; they inherit it).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "65536")
    from raysweep.distributed.local import run_ranks

    rows = []
    for item in args.modes.split(","):
        mode, world = item.split(":")
        results = run_ranks(measure, int(world), mode, args, timeout=3600)
        copy = 4 * results[0]["n_params"]
        peak = max(r["peak"] for r in results)
        rows.append((mode, int(world), peak / copy, peak / 2**20, results[0]["trainable"] / results[0]["n_params"],
                     results[0]["step_s"]))
        print(f"  {mode:10s} x{world}: peak {peak / 2**20:8.0f} MiB = {peak / copy:5.2f} fp32 copies", flush=True)
    n = results[0]["n_params"]
    print(f"\nmodel: Llama h{args.hidden} x{args.layers} layers, vocab {args.vocab}: {n / 1e6:.1f}M params, "
          f"one fp32 copy = {4 * n / 2**20:.0f} MiB; global batch {args.rows} rows x {args.seq} tokens per task")
    print(f"{'mode':12s} {'ranks':>5s} {'peak/rank (fp32 copies)':>24s} {'MiB':>8s} {'trainable':>10s} {'step s':>7s}")
    for mode, world, units, mib, frac, step_s in rows:
        print(f"{mode:12s} {world:5d} {units:24.2f} {mib:8.0f} {frac:10.4f} {step_s:7.2f}")
    by = {(m, w): u for m, w, u, *_ in rows}
    if ("fsdp-fp32", 1) in by and ("fsdp-fp32", 2) in by:
        print(f"\nfsdp-fp32 per-rank peak, 2 ranks / 1 rank: {by[('fsdp-fp32', 2)] / by[('fsdp-fp32', 1)]:.2f}")
    if ("ddp-fp32", 2) in by:
        for other in (("fsdp-bf16", 2), ("lora", 2)):
            if other in by:
                print(f"{other[0]} / ddp-fp32 at 2 ranks: {by[other] / by[('ddp-fp32', 2)]:.2f}")


if __name__ == "__main__":
    main()
