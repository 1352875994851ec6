"""The benchmark suite: one test per grid cell, one CSV row per cell (see bench/grid.py)."""

from __future__ import annotations

import gc
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import lstm_impls
from bench.grid import Cell, cell_rounds, is_d2l
from bench.instruments.flops import cell_flops, count_flops
from bench.instruments.measure import (
    Stopwatch,
    Subject,
    breakdown,
    cell_caches,
    make_probe,
    measure_memory,
    relative_rounds,
    release_memory,
    startup_ms,
    time_first_step,
    timed_rounds,
    warm_up,
)
from bench.instruments.memory import predicted_columns
from bench.instruments.peak import compute_dtype
from bench.instruments.profiling import memory_timeline, profiled_step, row_columns
from bench.instruments.what_ran import summarize
from bench.results import failure_status, one_line

if TYPE_CHECKING:
    from bench.conftest import Recorder


def measure(cell: Cell, benchmark, config: pytest.Config, full: bool = True, clock: Stopwatch | None = None,
            timelines: Path | None = None) -> dict:
    """Every column of an ok row: first call, warm-up, timed rounds, memory pass, FLOPs.

    The cell runs inside fresh compile caches, and its implementation is built and compiled anew, so its
    first-call cost is the same whatever ran before it; TorchScript's optimized plan alone is made once a process
    (measure.cell_caches), by its first scripted cell, which reports the first call. A worker that only
    times (not `full`: bench/workers.py) compiles from the cell's caches as the first worker left them
    (measure.cell_caches): its first call is not reported, and a warm cache spares the run minutes. `clock` sums
    the time of each phase (TIME_PHASES). With `timelines`, a training cell at the d2l sizes also writes the bytes
    alive through one step there (memory-<cell id>.json.gz: every report draws it).
    """
    clock = clock or Stopwatch()
    caches = cell_caches(cell, full)
    with clock.phase("caches"):
        caches.__enter__()
    try:
        with clock.phase("build"):
            subject = Subject(cell)
        try:
            return measure_subject(subject, benchmark, config, full, clock, timelines)
        finally:
            with clock.phase("release"):
                subject.release()
    finally:
        with clock.phase("caches"):
            caches.__exit__(None, None, None)


def measure_subject(subject: Subject, benchmark, config: pytest.Config, full: bool = True,
                    clock: Stopwatch | None = None, timelines: Path | None = None) -> dict:
    """Time the rounds, each after the machine-speed probe; then (when `full`) what ran, memory and FLOPs."""
    cell, clock = subject.cell, clock or Stopwatch()
    with clock.phase("first call"):
        first_ms = time_first_step(subject.step)
    reused = subject.model.rnn.reused_compiled  # an earlier cell's plan: no compile in this first call
    first = full and not reused
    row = {"first_step_ms": first_ms if first else None, "real_tokens": subject.real_tokens,
           "padded_tokens": cell.padded_tokens,
           "notes": f"first call not measured: {cell.impl} ran the plan an earlier cell of its process compiled"
           if full and reused else None}
    with clock.phase("warm-up"):
        subject.settle_scaler()  # float16: the steps its GradScaler skips are not training steps
        warmup_s = warm_up(subject.step)
    row["warmup_steps"] = len(warmup_s)
    if full:
        with clock.phase("what ran"):  # one profiled step: what ran, its op calls and where its time went
            ran = profiled_step(subject)
            row["description"] = f"{subject.model.rnn.describe()}; ran: {summarize(ran.names)}"
            row |= row_columns(ran)
    benchmark.extra_info.update(cell.columns())
    probe, probe_s = make_probe(subject.device, cell.hidden_size), []
    min_rounds, max_time_s = cell_rounds(cell, int(config.getoption("benchmark_min_rounds")),
                                         float(config.getoption("benchmark_max_time")))
    rounds = timed_rounds(statistics.median(warmup_s[-3:]), max_time_s, min_rounds)
    step_phases = subject.timing_phases()  # the rounds' phases, from the same rounds: forward, backward, optimizer
    gc.collect()  # the rounds run with GC off (pytest-benchmark's disable_gc): start them with none pending
    # setup runs before each round, untimed by pytest-benchmark: the probe, timed by itself
    with clock.phase("timed rounds"):
        benchmark.pedantic(subject.step, setup=lambda: probe_s.append(probe()), rounds=rounds)
    clock.add("timed rounds", -sum(probe_s))
    clock.add("probe", sum(probe_s))
    subject.clock = None
    stats = benchmark.stats.stats if benchmark.stats is not None else None  # None: --benchmark-disable
    if stats is not None:
        probe_s.append(probe())  # and after the last round: each round has a probe before and after it
        benchmark.extra_info["probe_s"] = probe_s  # into benchmark.json beside the rounds
        row |= {"probe_ms_median": statistics.median(probe_s) * 1e3,
                "relative_step_median": statistics.median(relative_rounds(stats.data, probe_s))}
        row |= {"step_ms_median": stats.median * 1e3, "step_ms_iqr": stats.iqr * 1e3,
                "step_ms_min": stats.min * 1e3, "step_ms_mean": stats.mean * 1e3,
                "step_ms_stddev": stats.stddev * 1e3, "rounds": stats.rounds,
                "gc_in_rounds": not benchmark.stats.options["disable_gc"],
                "tokens_per_s": subject.real_tokens / stats.median}
        row |= {f"{phase}_ms_median": statistics.median(times) * 1e3
                for phase, times in step_phases.seconds.items() if times}
    steady_s = stats.median if stats is not None else statistics.median(warmup_s[-3:])
    row["startup_ms"] = startup_ms(first_ms, warmup_s, steady_s) if first else None
    diverged = subject.diverged()  # checked once the rounds are over: no sync inside them
    row |= {"status": "nonfinite", "error": diverged} if diverged else {"status": "ok"}
    if stats is not None:
        row |= {"processes": 1, "step_ms_processes": repr(row["step_ms_median"]),
                "relative_step_processes": repr(row["relative_step_median"])}
    if not full:
        return row
    with clock.phase("memory pass"):
        memory = measure_memory(subject)
        notes = "; ".join(filter(None, [row["notes"], memory.notes])) or None
        row |= vars(memory) | vars(breakdown(subject, memory.peak_bytes, memory.library_bytes)) | {"notes": notes}
        if timelines is not None and is_d2l(cell) and cell.mode == "train":
            memory_timeline(subject).write(timelines)
    with clock.phase("memory model"):
        row |= predicted_columns(cell)  # the memory model beside the measurement: every run checks it
    flops = cell_flops(cell, cell.mode, subject.real_tokens)
    with clock.phase("FLOP counting"):
        counted = count_flops(subject.step)
    row |= {"flops_per_step": flops, "flops_counted": counted,
            "achieved_gflops": flops / stats.median / 1e9 if stats is not None else None}
    return row


def test_cell(cell: Cell, benchmark, recorder: Recorder, run_info: dict, runtimes_started: None,
              full_worker: bool, stopwatch: Stopwatch, pytestconfig: pytest.Config,
              gemm_peaks: dict[str, float], run_dir: Path) -> None:
    row = cell.columns() | run_info
    reason = lstm_impls.get(cell.impl).unsupported_reason(cell.device, cell.torch_dtype, **cell.config)
    if reason:
        recorder.write(row | {"status": "unsupported", "error": reason})
        pytest.skip(reason)
    try:
        row |= measure(cell, benchmark, pytestconfig, full_worker, stopwatch, run_dir if full_worker else None)
        peak = gemm_peaks.get(compute_dtype(cell))
        if peak and row.get("achieved_gflops"):  # the distance to the limit: the share of the device's GEMM peak
            row["peak_share"] = row["achieved_gflops"] / peak
    except Exception as exc:
        status = failure_status(exc)
        release_memory()
        with stopwatch.phase("row"):
            recorder.write(row | {"status": status, "error": one_line(exc)})
        if status == "oom":
            pytest.skip(f"out of memory: {one_line(exc)}")
        raise
    with stopwatch.phase("row"):
        recorder.write(row)
    if row["status"] == "nonfinite":
        pytest.skip(row["error"])
