"""Runs spread over processes: under torchrun each rank measures its shard of the grid, rank 0 merges.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT) starts one `lstm-bench run` per GPU, on one node or several. Each rank pins its GPU (on
a CPU, takes its share of the node's cores), measures shard RANK/WORLD_SIZE of the grid into
RUN_DIR/ranks/rank-R/ (a run directory of its own, written row by row), and waits at a barrier
(gloo); rank 0 then merges the ranks' directories into RUN_DIR. A rank that dies leaves its rows;
torchrun stops the others; running the same command with the same --run-id finishes what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .grid import OptionError

# A barrier waits for the slowest rank's whole shard: allow a long sweep.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def torchrun_ranks() -> Ranks | None:
    """This process's place among torchrun's workers, or None when it was not started by a launcher."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        ranks = Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])),
                      int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    except ValueError:
        raise OptionError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers") from None
    return ranks if ranks.world_size > 1 else None


def join(ranks: Ranks, device: str, run_id: str) -> str:
    """Join the ranks' group (gloo, rendezvous from torchrun's environment), pin this rank's GPU or
    cores, and agree on rank 0's run id (each rank's default is its own clock's). Returns the run id."""
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world_size))
    agreed = [run_id]
    dist.broadcast_object_list(agreed, src=0)
    return agreed[0]


def rank_dir(run_dir: Path, rank: int) -> Path:
    return run_dir / "ranks" / f"rank-{rank}"


def finish(ranks: Ranks, run_dir: Path) -> list[str] | None:
    """Wait for every rank; rank 0 merges their directories into run_dir and returns the missing cells."""
    dist.barrier()
    try:
        if ranks.rank != 0:
            return None
        from .readers.merge import merge_runs

        parts = [rank_dir(run_dir, r) for r in range(ranks.world_size)]
        return merge_runs([p for p in parts if p.is_dir()], run_dir, replace=True).missing
    finally:
        dist.destroy_process_group()
