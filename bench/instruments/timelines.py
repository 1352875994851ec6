"""Allocation timelines: every CPU allocation and free of one measured step, per cell, to hold the memory
model to the machine that recorded them.

The memory model chooses its counts from what a CPU dispatches (bench.instruments.env.cpu_dispatch), and
CPUs of this project's machine kind differ (AVX2 only; AVX512; AVX512 with native bfloat16). A timeline
recorded on one kind lets the tests hold the model to that kind on any machine. Record this machine's:

    python -m bench.instruments.timelines --out tests/data/timelines/NAME.json.gz

The format is that of `../shared/data/cpu-avx512-bf16/alloc-timelines.json`: `meta` (the CPU, versions,
how) and `cells`, each the cell's sizes, dtype, `amp`, optimizer, `threads`, `start_bytes` (the storages alive
when the step begins), `peak_bytes` (what the suite's memory pass reports) and `events`, `[ns since the step began,
bytes (+ allocated, - freed), the op that made it]` in time order.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from ..grid import Cell
from .env import cpu_dispatch, cpu_model, git_commit

#: The cells recorded by default: every kernel, train and forward, float32 and bfloat16, each optimizer,
#: at small sizes (the tests' grid) and at the default grid's corners, none of which the model was
#: developed on beyond the tests' grid. (impl, dtype, mode, B, H, T, optimizer), V = 28.
DEFAULT_CELLS = [
    (impl, dtype, mode, B, H, T, opt)
    for impl in ("scratch", "scripted", "compiled", "fused", "fused_compiled", "cudnn")
    for dtype, mode, opt, (B, H, T) in [
        ("float32", "train", "sgd", (5, 24, 10)),
        ("float32", "train", "adam", (3, 40, 9)),
        ("float32", "forward", "sgd", (5, 24, 10)),
        ("bfloat16", "train", "sgd", (5, 24, 10)),
        ("bfloat16", "train", "adam", (3, 40, 9)),
        ("bfloat16", "train", "momentum", (40, 8, 10)),
        ("bfloat16", "forward", "sgd", (5, 24, 10)),
        ("float32", "train", "sgd", (32, 256, 35)),
        ("bfloat16", "train", "adam", (32, 256, 35)),
        ("bfloat16", "forward", "sgd", (16, 512, 35)),
    ]
    if impl not in ("compiled", "fused_compiled") or (B, H, T) == (5, 24, 10)  # a cold compile costs a minute
]

HOW = ("each cell: bench.instruments.measure.settled_subject(cell, optimizer) (a Subject after its settling "
       "steps: six for scripted, two for the others); start_bytes = storage_bytes("
       "live_tensors()); the next step under torch.profiler(profile_memory=True), run twice and the second "
       "kept (measure.cpu_allocation_timeline): peak_bytes = start_bytes + the running sum's peak; events = "
       "that step's CPU allocations in time order [ns from the step's start, bytes (+alloc, -free), the op]")


def record_cell(cell: Cell, optimizer: str) -> dict:
    """One cell's timeline, measured as the suite measures its memory."""
    import torch

    from .measure import cpu_allocation_timeline, running_peak, settled_subject, storage_bytes

    with settled_subject(cell, optimizer) as subject:
        start = storage_bytes(subject.live_tensors())
        events = cpu_allocation_timeline(subject.step)
    return {"impl": cell.impl, "dtype": cell.dtype, "amp": cell.amp, "mode": cell.mode, "batch_size": cell.batch_size,
            "hidden_size": cell.hidden_size, "seq_len": cell.seq_len, "vocab_size": cell.vocab_size,
            "optimizer": optimizer, "threads": torch.get_num_threads(), "start_bytes": start,
            "peak_bytes": start + running_peak(size for _, size, _ in events),
            "events": [list(e) for e in events]}


def meta() -> dict:
    """What decides the recorded numbers: the dispatch facts of this CPU, the versions, how."""
    import torch

    return cpu_dispatch().as_dict() | {"cpu_model": cpu_model(), "torch": torch.__version__,
                                       "threads": torch.get_num_threads(), "git_commit": git_commit(), "how": HOW}


def load(path: str | os.PathLike) -> dict:
    """A timelines file, plain JSON or gzipped (.gz); every cell has `amp` (autocast's dtype, "none" in files
    recorded before it was) and `threads` (torch's thread count it ran at, else the file's)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    for cell in data["cells"]:
        cell.setdefault("amp", "none")
        cell.setdefault("threads", data["meta"].get("threads"))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instruments.timelines", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the file to write (.json, or .json.gz to compress)")
    parser.add_argument("--impls", default=None, help="only these implementations (comma list)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():
        parser.error(f"--out {args.out}: the directory {out.parent} does not exist")
    impls = set(args.impls.split(",")) if args.impls else None
    cells = []
    for impl, dtype, mode, B, H, T, opt in DEFAULT_CELLS:
        if impls is None or impl in impls:
            cells.append(record_cell(Cell(impl, "cpu", dtype, mode, B, H, T, 28), opt))
            print(f"{impl} {dtype} {mode} B{B} H{H} T{T} {opt}: peak {cells[-1]['peak_bytes']} B", flush=True)
    text = json.dumps({"meta": meta(), "cells": cells})
    opener = gzip.open if out.suffix == ".gz" else open
    with opener(out, "wt", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
