"""A data-parallel training step: the d2l model under DistributedDataParallel, timed on every rank.

`measure_ddp(cell, world_size)` starts world_size processes (gloo on a CPU, NCCL on CUDA; a file
store in a temporary directory, so no port is opened), each with its own minibatch of the cell's
batch size (so the global batch grows with the world: weak scaling) and, on a CPU, its share of
the cores. Each rank warms up, then times the same rounds; a round lasts as long as its slowest
rank (DDP's all-reduce in backward ties them together). Memory is measured on every rank.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytest_benchmark.stats import Stats

from ..grid import DDP_MODE, Cell
from .flops import cell_flops
from .measure import Subject, breakdown, measure_memory

DEFAULT_ROUNDS = 20
WARMUP_STEPS = 5  # eager DDP settles in a step or two; the ranks cannot each decide when they are warm


def _rank_main(rank: int, cell: Cell, world_size: int, rounds: int, store: str, out: str,
               threads: int | None) -> None:
    """One rank: join the group, build its DDP subject, warm up, time the rounds, measure memory."""
    device = torch.device(cell.device)
    if device.type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}",
                            rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    try:
        subject = Subject(replace(cell, device=str(device)), seed=rank)  # a different minibatch per rank
        subject.runner = torch.nn.parallel.DistributedDataParallel(
            subject.model, device_ids=[rank] if device.type == "cuda" else None,
            gradient_as_bucket_view=True)  # gradients live in the all-reduce buckets: counted once, as grads
        for _ in range(WARMUP_STEPS):  # a fixed count: every rank must take the same steps, or DDP deadlocks
            subject.step()
        times = []
        for _ in range(rounds):
            dist.barrier()
            started = time.perf_counter()
            subject.step()  # returns once the device is done
            times.append(time.perf_counter() - started)
        slowest = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # gloo and NCCL both reduce CPU/GPU tensors as given
        memory = measure_memory(subject)
        parts = breakdown(subject, memory.peak_bytes, memory.library_bytes)
        mine = {"rank": rank, "peak_bytes": memory.peak_bytes, "memory": vars(memory), "breakdown": vars(parts),
                "diverged": subject.diverged(), "threads": torch.get_num_threads(), "real_tokens": subject.real_tokens,
                "description": subject.model.rnn.describe()}
        gathered: list[dict] = [{}] * world_size
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            Path(out).write_text(json.dumps({"round_s": slowest.tolist(), "ranks": gathered}))
        # DDP sits in a reference cycle; left to interpreter teardown, its reducer's gloo work can abort
        # the process ("terminate called without an active exception", 3 of 20 two-rank runs here)
        del subject
        gc.collect()
    finally:
        dist.destroy_process_group()


def measure_ddp(cell: Cell, world_size: int, rounds: int = DEFAULT_ROUNDS, threads: int | None = None) -> dict:
    """The CSV columns of one data-parallel cell (mode "ddp") at world_size ranks; on a CPU each rank takes
    `threads` threads, by default its share of the cores."""
    if cell.device.startswith("cuda") and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"world size {world_size} needs {world_size} GPUs; {torch.cuda.device_count()} here")
    cell = replace(cell, mode=DDP_MODE, world_size=world_size)
    with tempfile.TemporaryDirectory(prefix="lstm-bench-ddp-") as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_rank_main, args=(cell, world_size, rounds, str(Path(tmp) / "store"), str(out), threads),
                           nprocs=world_size, start_method="spawn")
        result = json.loads(out.read_text())
    stats = Stats()
    for seconds in result["round_s"]:
        stats.update(seconds)
    ranks = sorted(result["ranks"], key=lambda r: r["rank"])
    first = ranks[0]
    peaks = [r["peak_bytes"] for r in ranks]  # alike, but for the minibatch each rank draws
    diverged = next((r["diverged"] for r in ranks if r["diverged"]), None)
    real = sum(r["real_tokens"] for r in ranks)  # each rank draws its own lengths when packed
    padded = world_size * cell.padded_tokens
    flops = cell_flops(cell, "train", real)
    memory = first["memory"]
    return cell.columns() | memory | first["breakdown"] | {
        "status": "nonfinite" if diverged else "ok", "error": diverged,
        "description": f"{first['description']}; DistributedDataParallel, {world_size} ranks",
        "step_ms_median": stats.median * 1e3, "step_ms_iqr": stats.iqr * 1e3, "step_ms_min": stats.min * 1e3,
        "step_ms_mean": stats.mean * 1e3, "step_ms_stddev": stats.stddev * 1e3, "rounds": stats.rounds,
        "gc_in_rounds": True, "threads": first["threads"],
        "tokens_per_s": real / stats.median, "real_tokens": real, "padded_tokens": padded,
        "flops_per_step": flops, "achieved_gflops": flops / stats.median / 1e9,
        "notes": "; ".join(filter(None, [memory["notes"], f"per-rank peak bytes {peaks}; peak_bytes and its "
                                                          "breakdown are rank 0's"])),
    }


def scaling_efficiency(tokens_per_s: float, world_size: int, single_rank_tokens_per_s: float) -> float:
    """Global tokens/s over world_size times what one rank alone achieved: 1.0 is perfect scaling."""
    return tokens_per_s / (world_size * single_rank_tokens_per_s)
