"""The device's own GEMM peak, measured once per run: how far a step is from what the machine can do.

A large square matmul in the cell's dtype, timed as the suite times a step (warm-up until times settle, then rounds,
their median). A vendor's datasheet peak is not what this process, these threads and this library reach; the
measured one is, so a share of it says how much of the machine the step used.
"""

from __future__ import annotations

import time

import torch

from ..grid import DTYPES
from .measure import sync, warm_up

#: the matmul's side: large enough that the library runs at its best, small enough to take under a second or so
PEAK_SIZE = {"cpu": 1024, "cuda": 8192}
PEAK_ROUNDS = 10


def gemm_peak_gflops(device: str, dtype: str, size: int | None = None, rounds: int = PEAK_ROUNDS) -> float:
    """GFLOP/s of an (n, n) x (n, n) matmul in dtype on device: 2 n^3 FLOPs over the fastest of `rounds` timed calls.
    The fastest: a peak is what the device can do, and a neighbour's load only slows a call (their median, taken
    beside another process, came out below what a cell achieved: a peak share of 1.17)."""
    dev = torch.device(device)
    n = size or PEAK_SIZE[dev.type]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dev, DTYPES[dtype]) for _ in range(2))

    def call() -> None:
        torch.mm(a, b)
        sync(dev)

    warm_up(call, max_steps=20, max_seconds=10.0)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def compute_dtype(cell) -> str:
    """The dtype a cell's GEMMs run in: autocast's where it is on, else the cell's."""
    return cell.amp if cell.amp != "none" else cell.dtype


def recurrence_floor_ms(cell, peak_gflops: float) -> float:
    """The time the step's sequential (B, H) x (H, 4H) GEMMs alone would take at the peak: T of them per layer and
    direction forward, and for a training step T - 1 more backward (the gradient into h, which the next step back
    waits for; the weights' gradients need not be sequential)."""
    per_gemm = 2 * cell.batch_size * (cell.proj_size or cell.hidden_size) * 4 * cell.hidden_size
    steps = cell.seq_len + (cell.seq_len - 1 if cell.mode == "train" else 0)
    chains = cell.num_layers * (2 if cell.bidirectional else 1)
    return chains * steps * per_gemm / (peak_gflops * 1e9) * 1e3
