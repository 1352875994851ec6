"""The benchmark suite: one test per grid cell, one CSV row per cell (see bench/grid.py)."""

from __future__ import annotations

import pytest
import torch

import lstm_impls
from bench.grid import Cell
from bench.instruments.flops import count_flops, step_flops
from bench.instruments.measure import Subject, breakdown, measure_memory, release_memory, time_first_step, warm_up
from bench.results import CsvRecorder


def failure_status(exc: BaseException) -> str:
    """oom for allocation failures (CUDA OutOfMemoryError; the CPU allocator's RuntimeError), else error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text):
        return "oom"
    return "error"


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def measure(cell: Cell, benchmark) -> dict:
    """Every column of an ok row: first call, warm-up, timed rounds, memory pass, FLOPs."""
    torch.compiler.reset()  # every cell compiles afresh, so first_step_ms includes its compile
    subject = Subject(cell)
    try:
        row = {"description": subject.model.rnn.describe(), "first_step_ms": time_first_step(subject.step),
               "warmup_steps": warm_up(subject.step)}
        benchmark.extra_info.update(cell.columns())
        benchmark(subject.step)
        stats = benchmark.stats.stats if benchmark.stats is not None else None  # None: --benchmark-disable
        if stats is not None:
            row |= {"step_ms_median": stats.median * 1e3, "step_ms_iqr": stats.iqr * 1e3,
                    "step_ms_min": stats.min * 1e3, "step_ms_mean": stats.mean * 1e3,
                    "step_ms_stddev": stats.stddev * 1e3, "rounds": stats.rounds,
                    "tokens_per_s": cell.batch_size * cell.seq_len / stats.median}
        memory = measure_memory(subject)
        row |= vars(memory) | vars(breakdown(subject, memory.peak_bytes))
        flops = step_flops(cell.mode, cell.seq_len, cell.batch_size, cell.vocab_size, cell.hidden_size)
        row |= {"flops_per_step": flops, "flops_counted": count_flops(subject.step),
                "achieved_gflops": flops / stats.median / 1e9 if stats is not None else None}
        return row
    finally:
        subject.release()


def test_cell(cell: Cell, benchmark, recorder: CsvRecorder, run_info: dict) -> None:
    row = cell.columns() | run_info
    reason = lstm_impls.get(cell.impl).unsupported_reason(cell.device, cell.torch_dtype)
    if reason:
        recorder.write(row | {"status": "unsupported", "error": reason})
        pytest.skip(reason)
    try:
        row |= measure(cell, benchmark)
    except Exception as exc:
        status = failure_status(exc)
        release_memory()
        recorder.write(row | {"status": status, "error": one_line(exc)})
        if status == "oom":
            pytest.skip(f"out of memory: {one_line(exc)}")
        raise
    recorder.write(row | {"status": "ok"})
