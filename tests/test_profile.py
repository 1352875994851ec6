"""lstm-bench profile and the profiling half of a run: the step's parts add up to its profiled wall time, the trace
opens as JSON with the phases' ranges, the memory picture is written, the CSV columns, the report's sections; the
CUDA path runs on a GPU and skips elsewhere with its reason. Tiny shapes throughout."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.grid import COLUMNS, PROFILE_COLUMNS, PROFILE_CSV, TIME_PARTS, Cell
from bench.instruments.flops import cell_flops
from bench.instruments.measure import settled_subject
from bench.instruments.profiling import (
    PHASE_RANGES,
    STEP,
    device_figures,
    memory_timeline,
    profile_subject,
    profiled_step,
    row_columns,
)
from bench.readers.profiling import cost_per_time_step, read_timeline, write_timeline

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CUDA_REASON = "CUDA: kernel time, kernels per step, GPU idle share and the allocator's history need a GPU"


def tiny(impl: str, device: str = "cpu", mode: str = "train") -> Cell:
    return Cell(impl, device, "float32", mode, 3, 16, 4, 28)  # B, H, T, V: no two of B, H, 4H, T*B, V alike


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("impl, expect", [("fused", ("input_gemm", "recurrent_gemm", "pointwise")),
                                          ("scratch", ("input_gemm", "recurrent_gemm", "pointwise")),
                                          ("cudnn", ("rnn_library",))])
def test_parts_add_up_to_the_profiled_step(impl, expect, tmp_path):
    cell = tiny(impl)
    with settled_subject(cell) as subject:
        profiled = profile_subject(subject, steps=2, rounds=4, trace=tmp_path / "t.json.gz",
                                   flops=cell_flops(cell, cell.mode, subject.real_tokens), peak_gflops=10.0)
        one = profiled_step(subject)
    for step in [*profiled.steps, one]:
        assert set(step.parts_ms) == set(TIME_PARTS)
        assert sum(step.parts_ms.values()) == pytest.approx(step.wall_ms, rel=1e-9, abs=1e-9)
        assert all(v >= 0 for v in step.parts_ms.values())
        assert step.op_calls >= step.top_level_ops > 0
        assert step.kernel_ms is None  # no GPU figures on a CPU
    parts = profiled.parts_ms()
    assert all(parts[name] > 0 for name in expect), parts
    assert parts["output_layer"] > 0 and parts["optimizer"] > 0 and parts["rest"] > 0
    row = profiled.row()
    assert set(row) <= set(PROFILE_COLUMNS) and row["verdict"] in ("launches/dispatch", "arithmetic", "memory traffic")
    assert row["scale"] == pytest.approx(row["step_ms"] / row["profiled_step_ms"])
    assert set(row_columns(one)) <= set(COLUMNS)  # what a run's row gets
    assert "ran: " not in one.names  # names counted, what_ran's summary reads them
    # the trace: Chrome/Perfetto JSON, the step and its phases as named ranges
    with gzip.open(tmp_path / "t.json.gz", "rt") as f:
        trace = json.load(f)
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {STEP, *PHASE_RANGES} <= names


def test_forward_mode_has_forward_and_loss_only():
    cell = tiny("fused", mode="forward")
    with settled_subject(cell) as subject:
        step = profiled_step(subject)
    assert sum(step.parts_ms.values()) == pytest.approx(step.wall_ms)
    assert step.parts_ms["optimizer"] == 0 and step.names["forward"] == 1 and step.names["backward"] == 0


def test_memory_through_the_step_by_holder(tmp_path):
    cell = tiny("cudnn")
    with settled_subject(cell) as subject:
        params = sum(p.untyped_storage().nbytes() for p in subject.model.parameters())
        timeline = memory_timeline(subject)
    held = timeline.bytes_by_holder
    assert all(len(v) == len(timeline.times_ms) for v in held.values())
    assert held["parameters"][0] == params and max(held["activations"]) > 0 and held["gradients"][-1] == params
    assert timeline.peak_bytes > params and set(timeline.phases_ms) == set(PHASE_RANGES)
    path, png = write_timeline(timeline, tmp_path)
    assert read_timeline(path)["peak_bytes"] == timeline.peak_bytes
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_profile_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["profile", "--device", "cpu", "--impls", "fused", "--batch-sizes", "3", "--hidden-sizes", "16",
                 "--seq-len", "4", "--steps", "3", "--rounds", "3", "--malloc", "default", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "where the time goes" in printed and "measured GEMM peak" in printed
    df = pd.read_csv(out / PROFILE_CSV)
    assert list(df.columns) == list(PROFILE_COLUMNS) and list(df["status"]) == ["ok"]
    parts = df[[f"part_{p}_ms" for p in TIME_PARTS]].sum(axis=1)
    assert parts.iloc[0] == pytest.approx(df["profiled_step_ms"].iloc[0], rel=1e-6)  # three steps: their mean
    assert df["peak_share"].iloc[0] > 0 and df["recurrence_floor_ms"].iloc[0] > 0  # share: timing, not asserted below 1
    cell_id = tiny("fused").id
    for name in (f"{cell_id}.pt.trace.json.gz", f"memory-{cell_id}.png", "profile.md",
                 "plot-time-parts-cpu-float32-train.png"):
        assert (out / name).is_file(), name
    env = json.loads((out / "environment.json").read_text())
    assert env["gemm_peak_gflops"]["float32"] > 0


def test_cost_per_time_step_is_a_line_fit():
    ok = pd.DataFrame({"device": "cpu", "dtype": "float32", "mode": "train", "batch_size": 32, "hidden_size": 256,
                       "impl": "x", "seq_len": [10, 35, 100], "step_ms_median": [3.0 + 0.5 * t for t in (10, 35, 100)]})
    fit = cost_per_time_step(ok).iloc[0]
    assert fit["slope_ms"] == pytest.approx(0.5) and fit["intercept_ms"] == pytest.approx(3.0)


def test_profile_device_figures_on_cpu_are_empty():
    """device_figures reads the profiler's own device events: none on a CPU (the API is the one CUDA uses)."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(STEP):
            torch.ones(3).sum()
    from bench.instruments.profiling import StepParts

    parts = [StepParts(1.0, {}, 1, 1)]
    device_figures(prof, parts)
    assert parts[0].kernel_ms == 0 and parts[0].kernels == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
def test_profile_on_cuda_has_kernels_idle_share_and_a_snapshot(tmp_path):
    out = tmp_path / "p"
    assert main(["profile", "--device", "cuda", "--impls", "cudnn,fused", "--batch-sizes", "3", "--hidden-sizes",
                 "16", "--seq-len", "4", "--steps", "2", "--rounds", "3", "--malloc", "default",
                 "--out", str(out)]) == 0
    df = pd.read_csv(out / PROFILE_CSV)
    assert (df["status"] == "ok").all() and (df["kernels_per_step"] > 0).all()
    assert (df["part_device_wait_ms"] > 0).all() and (df["gemm_kernel_ms"] <= df["kernel_ms"]).all()
    assert ((df["gpu_idle_share"] >= 0) & (df["gpu_idle_share"] <= 1)).all()
    for impl in ("cudnn", "fused"):
        cell_id = tiny(impl, "cuda").id
        assert (out / f"memory-snapshot-{cell_id}.pickle").is_file()
        assert (out / f"memory-{cell_id}.png").read_bytes()[:8] == PNG_MAGIC


def test_every_run_has_op_calls_the_peak_share_the_parts_and_memory_through_the_step(tmp_path):
    """`lstm-bench run` at the d2l sizes (cudnn: the fastest to build): the row's new columns, the GEMM peak in
    environment.json, and the report's profiling sections with their PNGs."""
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--device", "cpu", "--impls", "cudnn",
                           "--batch-sizes", "32", "--hidden-sizes", "256", "--processes", "1", "--results-dir",
                           str(tmp_path), "--run-id", "r", "--benchmark-max-time=0.02", "--benchmark-min-rounds=3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "r"
    row = pd.read_csv(run_dir / "measurements.csv").iloc[0]
    assert row.status == "ok" and row.op_calls_per_step > 0 and row.peak_share > 0  # below 1 on a quiet machine
    assert row.part_rnn_library_ms > 0 and row.part_rest_ms >= 0
    env = json.loads((run_dir / "environment.json").read_text())
    assert row.peak_share == pytest.approx(row.achieved_gflops / env["gemm_peak_gflops"]["float32"])
    report = (run_dir / "report.md").read_text()
    for section in ("## Where the time goes", "## Distance to the limit", "## Memory through the step"):
        assert section in report, section
    cell_id = Cell("cudnn", "cpu", "float32", "train", 32, 256, 35, 28).id
    assert (run_dir / "processes" / "0" / f"memory-{cell_id}.json.gz").is_file()  # worker 0's, as in every run
    for name in (f"memory-{cell_id}.png", "plot-time-parts-cpu-float32-train.png",
                 "plot-roofline-cpu-float32-train.png"):
        assert f"({name})" in report and (run_dir / name).read_bytes()[:8] == PNG_MAGIC, name
