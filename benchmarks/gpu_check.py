"""One-shot GPU check (issue 26, part 3): what the project has never measured on a GPU, in one
command that fits in 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--out gpu_check] [--dry-run]

(a) the Ray path (``raysweep run --ray``) vs the bare worker loop, steady-state seconds per step,
    for a random-init ~1B Llama (TinyLlama's shape: hidden 2048, 22 layers, vocab 32000) in bf16,
    with and without gradient checkpointing;
(b) peak GPU memory of one unlearning step per strategy: ddp (one rank: the whole model), fsdp
    at world 1, LoRA;
(c) a 4-trial quickstart-shaped sweep (4 methods, GA/NPO, the quickstart's search space) on
    SmolLM2-135M-Instruct (the GGUF of the test extra, converted), TOFU evaluation at
    open-unlearning settings (every question, 200 new tokens, pairs up to 512 tokens): wall time
    and hypervolume;
(d) tokens/s of the evaluation's batched greedy generation (batch 64) on that target.

It writes ``gpu_check.json`` and ``gpu_check.md`` (a Markdown table) into ``--out``.

``--dry-run``: on CPU, validates everything (jobs, data, the GGUF's presence) and runs each part
for one step on a tiny model, no GPU needed (the default test suite runs it). The "1B" there is
the tiny model: its numbers say nothing about a GPU.

Every part is a fresh process (peak memory per strategy is then its own), except (d).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("RAYSWEEP_DATA", REPO.parent / "shared" / "data"))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}

ONE_B = {"hidden_size": 2048, "num_layers": 22, "num_heads": 32, "intermediate_size": 5632, "vocab_size": 32000}
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 400}
STRATEGIES = ("ddp", "fsdp", "lora")


def base_job(dry: bool, cache: Path, name: str) -> dict:
    """The quickstart's data and objectives; the model and sizes by mode."""
    return {
        "name": name, "seed": 0, "cache_dir": str(cache),
        # the dry run checks the plumbing, not the numbers: 4 authors keep its prepare and
        # evaluations to seconds (it runs in the default suite)
        "data": {"benchmark": "tofu", "path": str(DATA / "tofu"),
                 "subset": {"authors": 4, "forget_authors": 1} if dry else {"authors": 20, "forget_authors": 2},
                 "max_length": 64 if dry else 128},
        "model": {"base": "tiny-llama", "tiny": TINY if dry else ONE_B},
        # one epoch: a near-random-init target is all (a) and (b) need
        "prepare": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "retain_reference": False},
        "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}, "method": {"name": "sago"},
                    "steps": 1 if dry else 12, "batch_size": 4 if dry else 8},
        "eval": {"benchmarks": ["qa"], "max_questions": 2, "max_new_tokens": 2},
        "train": {"workers": 1, "use_gpu": not dry, "precision": "fp32" if dry else "bf16", "checkpoint_every": 0},
    }


def write_job(job: dict, folder: Path) -> Path:
    path = folder / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run(args: list[str], what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"gpu_check: {what} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res


# ---- (a), (b): the worker loop in a process of its own ---------------------------------------
def worker_main(job_paths: list[str]) -> None:
    """The trial's worker loop on this process's device (world 1), once per job in turn (FSDP's
    last: it needs a process group): one JSON line each, its steady-state step time and the peak
    memory of its run (on CPU the process's peak resident set, which never falls: dry run only)."""
    import gc
    import resource

    import torch
    import torch.distributed as dist

    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.spec import load_job

    for path in job_paths:
        job = load_job(path)
        cuda = job.train.use_gpu and torch.cuda.is_available()
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        if job.train.strategy == "fsdp" and not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out = run_worker(job, 0, 1, device, None,
                         WorkerOptions(evaluate=False, save_checkpoints=False, checkpoint_every=0), None)
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"job": path, "step_seconds_median": out.get("step_seconds_median"), "peak_bytes": peak,
                          "peak_of": "cuda max_memory_allocated" if cuda else "process max RSS (cpu)"}), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def step_jobs(dry: bool, cache: Path) -> dict[str, dict]:
    """(a)'s jobs (gradient checkpointing off, on) and (b)'s (one per strategy)."""
    jobs = {}
    for gc in (False, True):
        jobs[f"gc{int(gc)}"] = job = base_job(dry, cache, f"step_gc{int(gc)}")
        job["train"]["gradient_checkpointing"] = gc
    for strategy in STRATEGIES:
        jobs[strategy] = job = base_job(dry, cache, f"memory_{strategy}")
        if strategy == "lora":
            job["model"]["lora"] = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
        else:
            job["train"]["strategy"] = strategy
    return jobs


def parts_a_b(dry: bool, folder: Path, cache: Path) -> tuple[list[dict], list[dict]]:
    jobs = step_jobs(dry, cache)
    paths = {k: str(write_job(j, folder)) for k, j in jobs.items()}
    res = run([__file__, "--_worker", *paths.values()], "(a)/(b) the worker loop")
    got = {row["job"]: row for row in map(json.loads, res.stdout.strip().splitlines()[-len(paths):])}
    a = []
    for gc in (False, True):
        bare = got[paths[f"gc{int(gc)}"]]["step_seconds_median"]
        row = {"gradient_checkpointing": gc, "bare_s": bare, "ray_s": None, "ratio": None}
        if not (dry and gc):  # the dry run checks the Ray path once: the flag changes nothing in it
            out = folder / f"ray_gc{int(gc)}.json"
            run(["-m", "raysweep.cli", "run", paths[f"gc{int(gc)}"], "--ray", "--quiet", "--out", str(out)],
                f"(a) Ray path, gradient checkpointing {gc}")
            row["ray_s"] = json.loads(out.read_text())["step_seconds_median"]
            row["ratio"] = row["ray_s"] / bare
        a.append(row)
    b = [{"strategy": s if s != "fsdp" else "fsdp (world 1)", "peak_gib": got[paths[s]]["peak_bytes"] / 2**30,
          "peak_of": got[paths[s]]["peak_of"], "step_s": got[paths[s]]["step_seconds_median"]} for s in STRATEGIES]
    return a, b


# ---- (c), (d): the sweep and the generation speed --------------------------------------------
def sweep_job(dry: bool, folder: Path, cache: Path) -> dict:
    job = base_job(dry, cache, "sweep")
    space = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    if not dry:
        job["model"] = {"base": "smollm2-135m"}
        job["prepare"] = {"epochs": 5, "batch_size": 16, "lr": 1e-5}
        job["data"]["max_length"] = 512
    job["prepare"]["retain_reference"] = True  # forget quality is against the retain reference
    job["unlearn"]["steps"] = 1 if dry else 16
    # open-unlearning's evaluation: every question, 200 new tokens, pairs up to 512 tokens (the
    # job defaults); the dry run keeps 2 questions and 2 tokens
    job["eval"] = {"benchmarks": ["tofu"], **({"max_questions": 2, "max_new_tokens": 2} if dry else {})}
    job["sweep"] = {"search_space": str(folder / "space.yaml"), "sampler": "tpe", "num_trials": 1 if dry else 4,
                    "max_concurrent": 1, "seed": 0,
                    "objectives": {"forget_quality": "max", "model_utility": "max"},
                    "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "storage_path": str(folder / "runs")}
    return job


def part_c(dry: bool, folder: Path, cache: Path) -> dict:
    path = write_job(sweep_job(dry, folder, cache), folder)
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    t0 = time.time()
    prepare(load_job(path), quiet=True)  # the target and its retain reference, timed apart from the sweep
    prepared = time.time() - t0
    t0 = time.time()
    run(["-m", "raysweep.cli", "launch", str(path), "--name", "gpu-check"], "(c) the sweep", timeout=900)
    wall = time.time() - t0
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    uri = load_job(path).sweep.tracking_uri
    report = pareto_report(tracking.client(uri), uri, "gpu-check")
    return {"trials": report["n_finished"], "prepare_s": prepared, "sweep_s": wall, "hypervolume": report["hypervolume"],
            "front": len(report["front"]), "job": str(path)}


def part_d(dry: bool, job_path: str, batch: int = 64) -> dict:
    import torch

    from raysweep.data.collate import QACollator
    from raysweep.evaluation.qa import greedy_answers
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import load_job_data, prepare
    from raysweep.spec import load_job

    job = load_job(job_path)
    data = load_job_data(job)
    prepared = prepare(job, data, quiet=True)
    tok = load_tokenizer(prepared.tokenizer)
    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    model = load_causal_lm(prepared.target, "bfloat16" if device == "cuda" else job.model.dtype).to(device).eval()
    collator = QACollator.for_job(job, tok)
    questions = [r["question"] for r in (data.forget + data.retain)][: 4 if dry else 256]
    tokens = job.eval.max_new_tokens
    with torch.no_grad():
        greedy_answers(model, collator, questions[:batch], tokens, batch)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        answers = greedy_answers(model, collator, questions, tokens, batch)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    generated = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"questions": len(questions), "batch": batch, "max_new_tokens": tokens, "generated_tokens": generated,
            "seconds": seconds, "tokens_per_s": generated / seconds if seconds else float("nan"), "device": device}


# ---- checks, table ---------------------------------------------------------------------------
def validate(dry: bool, folder: Path, cache: Path) -> str:
    """Everything the run needs, before anything heavy starts: the jobs parse, the data is there,
    the device (or, for the real run, the GGUF of SmolLM2)."""
    from raysweep.spec import load_job

    if not (DATA / "tofu").is_dir():
        raise SystemExit(f"gpu_check: TOFU data not found at {DATA / 'tofu'} (set RAYSWEEP_DATA to the data root)")
    for job in [base_job(dry, cache, "check"), sweep_job(dry, folder, cache)]:
        load_job(write_job(job, folder))
    if dry:
        return "cpu (dry run)"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (run with --dry-run to check the script on CPU)")
    from raysweep.models.build import smollm2_gguf_file

    smollm2_gguf_file()  # a clear error when the test extra is missing
    return torch.cuda.get_device_name(0)


def markdown(result: dict) -> str:
    lines = [f"GPU check on **{result['device']}** ({result['date']}, torch {result['torch']}, "
             f"{'dry run, tiny model: not a GPU measurement' if result['dry_run'] else 'bf16'}); "
             f"total {result['seconds']:.0f} s", "",
             "| (a) ~1B Llama, per step | bare (s) | Ray path (s) | Ray / bare |", "|---|---|---|---|"]
    for r in result["a_step_time"]:
        ray = "not run (dry run)" if r["ray_s"] is None else f"{r['ray_s']:.4f} | {r['ratio']:.3f}"
        lines.append(f"| gradient checkpointing {'on' if r['gradient_checkpointing'] else 'off'} | {r['bare_s']:.4f} | "
                     f"{ray if r['ray_s'] is not None else ray + ' | -'} |")
    lines += ["", "| (b) strategy | peak memory (GiB) | measured as |", "|---|---|---|"]
    lines += [f"| {r['strategy']} | {r['peak_gib']:.3f} | {r['peak_of']} |" for r in result["b_memory"]]
    c, d = result["c_sweep"], result["d_generation"]
    lines += ["", "| (c) sweep | trials | prepare (s) | sweep (s) | front | hypervolume |", "|---|---|---|---|---|---|",
              f"| SmolLM2-135M-Instruct, TOFU at open-unlearning settings | {c['trials']} | {c['prepare_s']:.0f} | "
              f"{c['sweep_s']:.0f} | {c['front']} | {c['hypervolume']:.4g} |",
              "", "| (d) batched greedy generation | questions | batch | new tokens (max) | tokens/s |", "|---|---|---|---|---|",
              f"| {d['device']} | {d['questions']} | {d['batch']} | {d['max_new_tokens']} | {d['tokens_per_s']:.0f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--dry-run", action="store_true", help="on CPU, a tiny model, one step per part")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--_worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        return worker_main(args._worker)
    import torch

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(args.work or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cache = folder / "cache"
        device = validate(args.dry_run, folder, cache)
        print(f"gpu_check on {device}", flush=True)
        result = {"device": device, "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d"),
                  "torch": torch.__version__, "python": platform.python_version()}
        result["a_step_time"], result["b_memory"] = parts_a_b(args.dry_run, folder, cache)
        print(f"(a), (b) done at {time.time() - t0:.0f} s", flush=True)
        result["c_sweep"] = part_c(args.dry_run, folder, cache)
        print(f"(c) done at {time.time() - t0:.0f} s", flush=True)
        result["d_generation"] = part_d(args.dry_run, result["c_sweep"]["job"])
        result["seconds"] = time.time() - t0
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
