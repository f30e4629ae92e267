"""Run a function on W local processes joined by a gloo process group, without Ray.

Used by the data-parallel tests and the step-time benchmark: the same worker loop as Ray Train
runs, minus the cluster machinery. ``fn(rank, world, *args)`` must be importable (spawn)."""

import os
import pickle
import queue as queue_module
import socket
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, queue, threads):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        # Plain pickle bytes: tensors copied, not shared through file descriptors that die with us.
        queue.put((rank, "ok", pickle.dumps(fn(rank, world, *args))))
    except Exception:  # noqa: BLE001 - shipped back to the test
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world, *args, timeout=600, threads=1):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, queue, threads)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(world):
        try:
            rank, status, value = queue.get(timeout=timeout)
        except queue_module.Empty:  # a rank hangs (a collective the others never join): end them all
            status, value = "timeout", None
        if status != "ok":
            for p in procs:
                p.kill()
            if status == "timeout":
                raise TimeoutError(f"ranks {sorted(set(range(world)) - set(results))} did not finish in {timeout} s")
            raise RuntimeError(f"rank {rank} failed:\n{value}")
        results[rank] = pickle.loads(value)
    for p in procs:
        p.join(timeout=60)
    return [results[r] for r in range(world)]
