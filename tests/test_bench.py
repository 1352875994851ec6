"""The instruments and the suite: memory probe, breakdown, FLOPs, CSV schema, failure rows, options."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.grid import (
    COLUMNS,
    D2L,
    DEFAULT_BUDGET_S,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_PROCESSES,
    REPORT_RESERVE_S,
    Cell,
    parse_options,
)
from bench.instruments.flops import count_flops, step_flops
from bench.instruments.malloc import STEADY_TEXT, steady_unavailable
from bench.instruments.measure import (
    Subject,
    breakdown,
    cpu_peak_above_start,
    fresh_compile_caches,
    measure_memory,
    relative_rounds,
    saved_activation_bytes,
    startup_ms,
)
from bench.results import CsvRecorder, load_run
from bench.workers import rounds_options

TESTS = Path(__file__).resolve().parent
MiB = 1 << 20


def test_cpu_probe_measures_a_known_allocation_pattern_exactly():
    kept = []

    def pattern():
        kept.clear()  # frees 3 MiB the previous call kept: below the start, it lowers the baseline
        a = torch.empty(1 * MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(5 * MiB, dtype=torch.uint8)
        del b
        kept.append(torch.empty(3 * MiB, dtype=torch.uint8))
        del c

    # running sum from the start, in MiB: -3, -2, 0, -1, +4, +2, +5 (the peak), 0
    assert cpu_peak_above_start(pattern) == 5 * MiB


def test_cpu_probe_sees_a_single_large_temporary():
    assert cpu_peak_above_start(lambda: torch.ones(4 * MiB, dtype=torch.uint8).sum()) >= 4 * MiB


def d2l_cell(impl="scratch", mode="train", **kw) -> Cell:
    sizes = {"batch_size": 8, "hidden_size": 32, "seq_len": 10, "vocab_size": 28} | kw
    return Cell(impl, "cpu", "float32", mode, **sizes)


@pytest.mark.parametrize("impl", ["scratch", "cudnn"])
def test_breakdown_parts_add_up_and_match_the_tensors(impl):
    cell = d2l_cell(impl)
    subject = Subject(cell)
    for _ in range(2):
        subject.step()
    memory = measure_memory(subject)
    parts = breakdown(subject, memory.peak_bytes)
    B, T, V, H = cell.batch_size, cell.seq_len, cell.vocab_size, cell.hidden_size
    lstm_params = 4 * H * (V + H) + 4 * H * (1 if impl == "scratch" else 2)  # d2l: one bias per gate
    assert parts.param_bytes == 4 * (lstm_params + H * V + V)
    assert parts.grad_bytes == parts.param_bytes and parts.optimizer_bytes == 0  # plain SGD keeps no state
    assert parts.param_bytes + parts.grad_bytes + parts.optimizer_bytes + parts.activation_bytes \
        + parts.workspace_bytes == memory.peak_bytes
    assert parts.workspace_bytes > 0
    # backward needs at least each step's gate activations and cell state: 6 (B, H) tensors a step
    assert parts.activation_bytes >= 6 * T * B * H * 4
    assert memory.start_bytes >= parts.param_bytes + parts.grad_bytes


def test_forward_mode_saves_nothing_for_backward():
    subject = Subject(d2l_cell(mode="forward"))
    assert saved_activation_bytes(subject) == 0
    assert breakdown(subject, 10**9).grad_bytes == 0


@pytest.mark.parametrize("mode", ["train", "forward"])
def test_analytic_flops_equal_the_counted_for_scratch(mode):
    cell = d2l_cell(mode=mode)
    subject = Subject(cell)
    subject.step()  # the state is carried (detached) from here on, as in training
    assert count_flops(subject.step) == step_flops(mode, cell.seq_len, cell.batch_size, cell.vocab_size,
                                                   cell.hidden_size)


@pytest.mark.parametrize("mode", ["train", "forward"])
def test_analytic_flops_count_layers_directions_and_projections(mode):
    cell = Cell("scratch", "cpu", "float32", mode, 3, 6, 4, 5, num_layers=2, bidirectional=True, proj_size=4)
    subject = Subject(cell)
    subject.step()
    assert count_flops(subject.step) == step_flops(mode, cell.seq_len, cell.batch_size, cell.vocab_size,
                                                   cell.hidden_size, **cell.config)


def test_a_run_over_lstm_configurations(tmp_path):
    """--num-layers and --bidirectional are grid axes: a row each, ids that say so, unsupported where an
    implementation declares it, a report section per configuration with the fastest-implementation map."""
    proc = run_cli(tmp_path, "--impls", "scratch,fused,cudnn", "--batch-sizes", "2", "--hidden-sizes", "6",
                   "--seq-len", "3", "--device", "cpu", "--num-layers", "1,2", "--bidirectional", "false,true",
                   "--proj-size", "0,4", "--processes", "1", "--benchmark-max-time=0.001", "--benchmark-min-rounds=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "r" / "measurements.csv")
    assert len(df) == 3 * 2 * 2 * 2  # impls x layers x directions x projections
    unsupported = df[df.status == "unsupported"]
    assert set(unsupported.impl) == {"fused"} and (unsupported.proj_size == 4).all()
    ok = df[df.status == "ok"]
    assert set(zip(ok.num_layers, ok.bidirectional)) == {(1, False), (1, True), (2, False), (2, True)}
    scratch = ok[ok.impl == "scratch"]
    assert (scratch.flops_per_step == scratch.flops_counted).all()  # every layer, direction and projection
    # the memory model counts every row (cudnn with a projection on ATen's native kernels), within 5%
    assert ok.predicted_peak_bytes.notna().all()
    assert ((ok.predicted_peak_bytes - ok.peak_bytes).abs() <= 0.05 * ok.peak_bytes).all()
    report = (tmp_path / "r" / "report.md").read_text()
    assert "· 2 layers · bidirectional · proj 4" in report and "the fastest implementation per cell" in report
    assert (tmp_path / "r" / "plot-fastest-cpu-float32-train-T3-V28-L2-bi-P4.png").is_file()
    ids = {Cell.from_row(r).id for r in ok.to_dict("records")}
    assert "cudnn-cpu-float32-train-B2-H6-T3-V28-L2-bi-P4" in ids and "cudnn-cpu-float32-train-B2-H6-T3-V28" in ids


def test_a_run_over_packed_lengths_and_autocast(tmp_path):
    """--lengths and --amp are grid axes: packed rows count their real tokens (tokens/s from them, FLOPs scaled
    to them), autocast rows keep float32 parameters; the ids, the report's sections and a resume say so."""
    # (not cudnn: where oneDNN runs no bfloat16, nn.LSTM under bfloat16 autocast fails, oneDNN picked for float32)
    proc = run_cli(tmp_path, "--impls", "scratch,fused", "--batch-sizes", "4", "--hidden-sizes", "6", "--seq-len",
                   "5", "--device", "cpu", "--lengths", "full,uniform:0.4", "--amp", "none,bfloat16", "--dtype",
                   "float32,bfloat16", "--processes", "1", "--benchmark-max-time=0.001", "--benchmark-min-rounds=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "r" / "measurements.csv")
    assert len(df) == 2 * 2 * 3  # impls x lengths x (float32, float32 under autocast, bfloat16): no autocast of bf16
    assert set(zip(df.dtype, df.amp)) == {("float32", "none"), ("float32", "bfloat16"), ("bfloat16", "none")}
    assert (df.status == "ok").all(), df[["impl", "lengths", "amp", "error"]]
    full, packed = df[df.lengths == "full"], df[df.lengths == "uniform:0.4"]
    assert (full.real_tokens == 20).all() and (df.padded_tokens == 20).all()
    assert ((packed.real_tokens >= 4 * 2) & (packed.real_tokens < 20)).all()  # ceil(0.4 * 5) = 2 steps at least
    assert np.allclose(df.tokens_per_s, df.real_tokens / (df.step_ms_median / 1e3))
    scratch = df[df.impl == "scratch"].set_index(["lengths", "dtype", "amp"])
    ratio = scratch.flops_per_step / scratch.loc["full"].flops_per_step.reindex(scratch.index.droplevel(0)).values
    assert np.allclose(ratio, scratch.real_tokens / 20, rtol=1e-3)
    assert packed.predicted_peak_bytes.isna().all()  # the memory model does not count packed batches
    counted = full[full.amp == "bfloat16"]  # autocast cells are counted (bench/instruments/memory/autocast.py)
    assert ((counted.predicted_peak_bytes - counted.peak_bytes).abs() <= 0.05 * counted.peak_bytes).all()
    ids = {Cell.from_row(r).id for r in df.to_dict("records")}
    assert {"scratch-cpu-float32-train-B4-H6-T5-V28-len0.4", "fused-cpu-float32-train-B4-H6-T5-V28-amp-bfloat16",
            "scratch-cpu-float32-train-B4-H6-T5-V28-len0.4-amp-bfloat16"} <= ids
    report = (tmp_path / "r" / "report.md").read_text()
    assert "· lengths uniform:0.4" in report and "· autocast bfloat16" in report
    assert "## Packed against padded" in report
    assert "| scratch | float32 | bfloat16 | train | 4 | 6 | 5 | uniform:0.4 |" in report  # beside its padded cell
    again = run_cli(tmp_path, "--impls", "scratch,fused", "--batch-sizes", "4", "--hidden-sizes", "6", "--seq-len",
                    "5", "--device", "cpu", "--lengths", "full,uniform:0.4", "--amp", "none,bfloat16", "--dtype",
                    "float32,bfloat16", "--processes", "1")
    assert "12 recorded ok before: skipped" in again.stdout, again.stdout[-2000:]


def test_fused_lstm_is_counted_not_zero():
    subject = Subject(d2l_cell("cudnn", mode="forward"))
    c = subject.cell
    assert count_flops(subject.step) == step_flops("forward", c.seq_len, c.batch_size, c.vocab_size, c.hidden_size)


def test_recorder_writes_whole_rows_in_schema_order(tmp_path):
    path = tmp_path / "m.csv"
    rec = CsvRecorder(path)
    rec.write({"impl": "x", "step_ms_median": 0.000123456789, "error": 'a, "quoted"\nmessage', "peak_bytes": None})
    CsvRecorder(path).write({"impl": "y"})  # reopening appends, no second header
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS) and len(rows) == 3
    df = pd.read_csv(path)
    assert df.loc[0, "step_ms_median"] == 0.000123456789  # never rounded
    assert pd.isna(df.loc[0, "peak_bytes"])
    with pytest.raises(ValueError, match="not in the schema"):
        rec.write({"impl": "x", "step_time": 1})


def run_cli(tmp_path, *args, run_id="r", timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    return subprocess.run([sys.executable, "-m", "bench.cli", "run", "--results-dir", str(tmp_path),
                           "--run-id", run_id, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_run_writes_ok_oom_error_and_unsupported_rows_and_goes_on(tmp_path):
    proc = run_cli(tmp_path, "--impls", "scratch,broken_impl:BrokenLSTM,broken_impl:CudaOnlyLSTM,cudnn",
                   "--batch-sizes", "2", "--hidden-sizes", "8,1048576", "--seq-len", "4", "--device", "cpu",
                   "--benchmark-min-rounds=40", "--benchmark-max-time=0.02",  # pytest-benchmark options pass
                   "--processes", "2")  # exactly two: none added for cells that have not settled
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the broken cells fail the run
    run_dir = tmp_path / "r"
    df = pd.read_csv(run_dir / "measurements.csv")
    assert list(df.columns) == list(COLUMNS)
    status = {(r.impl, r.hidden_size): r.status for r in df.itertuples()}
    assert status == {
        ("scratch", 8): "ok", ("cudnn", 8): "ok",
        ("scratch", 1048576): "oom", ("cudnn", 1048576): "oom",  # 4 TiB of weights: "can't allocate memory"
        ("broken_impl:BrokenLSTM", 8): "error", ("broken_impl:BrokenLSTM", 1048576): "oom",  # fails building
        ("broken_impl:CudaOnlyLSTM", 8): "unsupported", ("broken_impl:CudaOnlyLSTM", 1048576): "unsupported",
    }
    errors = df[df.status != "ok"]
    assert errors.error.str.len().gt(0).all() and not errors.error.str.contains("\n").any()
    assert "broken on purpose" in df[df.status == "error"].error.iloc[0]
    ok = df[df.status == "ok"]
    for column in ("step_ms_median", "step_ms_iqr", "step_ms_min", "step_ms_mean", "rounds", "tokens_per_s",
                   "first_step_ms", "peak_bytes", "param_bytes", "grad_bytes", "activation_bytes",
                   "flops_per_step", "flops_counted", "achieved_gflops"):
        assert ok[column].notna().all() and (ok[column] > 0).all(), column
    assert (ok.rounds >= 2 * 40).all() and (ok.processes == 2).all()  # --benchmark-min-rounds holds per process
    # the phases of the same rounds, timed apart (how close their sum comes to the step is timing, not asserted: a
    # 1 ms cell beside another test process summed to 0.66-1.86x its step)
    assert (ok[["forward_ms_median", "backward_ms_median", "optimizer_ms_median"]] > 0).all().all()
    assert ok.peak_reserved_bytes.isna().all() and ok.process_used_bytes.isna().all()  # CUDA-only figures
    assert (ok.param_bytes + ok.grad_bytes + ok.optimizer_bytes + ok.activation_bytes + ok.workspace_bytes
            == ok.peak_bytes).all()
    # the memory model's prediction stands beside each measurement (5%: tests/test_memory_model.py holds it)
    assert ((ok.predicted_peak_bytes - ok.peak_bytes).abs() <= 0.05 * ok.peak_bytes).all()
    assert ok.predicted_activation_bytes.notna().all()
    # two fresh processes timed each cell: the row's medians are of all their rounds, pooled (each relative to
    # the probes around it too); each process's own median is in step_ms_processes
    workers = [load_run(run_dir / "processes" / str(k)) for k in range(2)]
    for row in ok.to_dict("records"):
        cell_id, medians = Cell.from_row(row).id, [float(m) for m in row["step_ms_processes"].split(";")]
        rounds = [w.rounds_s[cell_id] for w in workers]
        assert [pytest.approx(1e3 * float(np.median(r))) for r in rounds] == medians
        assert row["step_ms_median"] == pytest.approx(1e3 * float(np.median(np.concatenate(rounds))))
        relative = [relative_rounds(w.rounds_s[cell_id], w.probe_s[cell_id]) for w in workers]
        assert row["relative_step_median"] == pytest.approx(float(np.median(np.concatenate(relative))))
        assert row["step_ms_ci_low"] <= row["step_ms_median"] <= row["step_ms_ci_high"]
        assert len(medians) == 2 and row["step_ms_between_pct"] >= 0
    for k in range(2):
        worker = pd.read_csv(run_dir / "processes" / str(k) / "measurements.csv")
        assert set(worker.status) == set(df.status) and (run_dir / "processes" / str(k) / "benchmark.json").is_file()
        assert worker[worker.status == "ok"].peak_bytes.notna().all() == (k == 0)  # memory: worker 0 alone
    assert (run_dir / "environment.json").is_file()
    assert "run directory:" in proc.stdout and "tokens/s" in proc.stdout
    # what decides the kernels is recorded, in environment.json and in pytest-benchmark's machine_info
    env = json.loads((run_dir / "environment.json").read_text())
    how = env["processes"]
    assert how["count"] == how["finished"] == 2 and len(how["load_average_end"]) == 3
    # where each process's time went, by phase, and the console a person reads: a line per cell each process finished
    # (8 cells, 2 processes), where the time went, no pytest or pytest-benchmark lines (they are in pytest.log)
    assert sorted(how["time_by_phase_s"]) == ["0", "1"] and env["report_s"] > 0
    for k, phases in how["time_by_phase_s"].items():
        assert {"build", "first call", "warm-up", "timed rounds", "probe", "other", "total"} <= set(phases), phases
        assert ("memory pass" in phases and "FLOP counting" in phases) == (k == "0")
        assert sum(v for p, v in phases.items() if p != "total") == pytest.approx(phases["total"], abs=0.01)
        assert "Name (time in" in (run_dir / "processes" / k / "pytest.log").read_text()
    progress = re.compile(r"\[ ?\d+/16 \d+:\d\d, ~\d+:\d\d left\] process [12]: ")
    cell_lines = [line for line in proc.stdout.splitlines() if progress.match(line)]
    assert len(cell_lines) == 16 and sum("scratch-cpu-float32-train-B2-H8-T4-V28" in line for line in cell_lines) == 2
    assert "where the time went (s):" in proc.stdout and "Name (time in" not in proc.stdout
    assert "PASSED" not in proc.stdout and "test_cell[" not in proc.stdout
    machine = json.loads((run_dir / "processes" / "0" / "benchmark.json").read_text())["machine_info"]["lstm_bench"]
    for recorded in (env, machine):
        assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert recorded["onednn_bf16"] == torch.ops.mkldnn._is_mkldnn_bf16_supported()
        assert recorded["onednn_version"] and recorded["blas"] and recorded["bf16_path"]
        assert "dispatch_env" in recorded and recorded["torch_threads"] >= 1
        assert recorded["malloc"] == (f"default ({steady_unavailable()})" if steady_unavailable() else STEADY_TEXT)


def test_environment_names_the_dispatch_variables_that_are_set():
    """ONEDNN_MAX_CPU_ISA is read when oneDNN starts: a process started with it records it and its effect."""
    code = ("import json; from bench.instruments.env import environment; e = environment('cpu'); "
            "print(json.dumps([e['dispatch_env'], e['onednn_bf16'], e['bf16_path']]))")
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent), ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    dispatch_env, bf16, path = json.loads(out.strip().splitlines()[-1])
    assert dispatch_env == {"ONEDNN_MAX_CPU_ISA": "AVX2"} and bf16 is False
    assert path.startswith("ATen's native kernels") and "ONEDNN_MAX_CPU_ISA" in path


def test_a_killed_run_keeps_every_finished_row(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--results-dir", str(tmp_path),
                             "--run-id", "k", "--impls", "scratch", "--batch-sizes", "1,2,3,4,5,6,7,8,9,10,11,12",
                             "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu", "--processes", "1",
                             "--benchmark-max-time=0.001", "--benchmark-min-rounds=3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    path = tmp_path / "k" / "measurements.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = path.read_text()
    assert text.endswith("\n")
    df = pd.read_csv(path)
    assert 2 <= len(df) < 12 and (df.status == "ok").all() and df.peak_bytes.notna().all()
    # the same command again finishes the run: every cell once
    subprocess.run(proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=600, check=True)
    df = pd.read_csv(path)
    assert sorted(df.batch_size) == list(range(1, 13)) and (df.status == "ok").all()


@pytest.mark.parametrize("args, message", [
    (["--impls", "nope"], "unknown LSTM implementation 'nope'"),
    (["--batch-sizes", "0"], "give positive integers"),
    (["--hidden-sizes", "x"], "give positive integers"),
    (["--seq-len", "-3"], "give positive integers"),
    (["--vocab-size", "2,3"], "give one positive integer"),
    (["--dtype", "float8"], "choose from float32, float64, bfloat16, float16"),
    (["--mode", "backward"], "choose from train, forward"),
    (["--device", "tpu"], "choose auto, cpu, cuda or cuda:N"),
    (["--threads", "0"], "--threads '0' is not valid"),
])
def test_run_bad_option_values_exit_2_with_one_line(args, message, capsys, tmp_path):
    assert main(["run", "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing run, nothing written


def test_pytest_suite_rejects_bad_values_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", str(TESTS.parent / "bench"), "--benchmark-only",
                           "--mode", "backward", "--results-dir", str(tmp_path), "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "choose from train, forward" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr


def test_pytest_suite_with_benchmarks_disabled_still_measures_memory(tmp_path):
    """`pytest bench/ --benchmark-disable` is a smoke run: one untimed call, memory and FLOPs still measured."""
    proc = subprocess.run([sys.executable, "-m", "pytest", str(TESTS.parent / "bench"), "--benchmark-disable",
                           "--impls", "scratch", "--batch-sizes", "2", "--hidden-sizes", "4", "--seq-len", "3",
                           "--device", "cpu", "--results-dir", str(tmp_path), "--run-id", "d",
                           "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    row = pd.read_csv(tmp_path / "d" / "measurements.csv").iloc[0]
    assert row.status == "ok" and pd.isna(row.step_ms_median) and row.peak_bytes > 0 and row.flops_per_step > 0


def test_fresh_compile_caches_make_every_compile_cold(tiny):
    """Each cell compiles into an empty Inductor cache of its own: nothing from an earlier compile, in this
    process or on disk, shortens its first call."""
    import os

    from lstm_impls import cell

    X, H, C = torch.randn(tiny["batch_size"], 4), torch.zeros(tiny["batch_size"], 6), torch.zeros(tiny["batch_size"], 6)
    params = [torch.randn(s) for s in [(4, 6), (6, 6), (6,)] * 4]
    dirs = []
    for _ in range(2):
        with fresh_compile_caches():
            cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
            assert not any(cache.iterdir())  # empty when the cell starts
            torch.compile(cell.lstm_cell)(X, H, C, params)
            assert any(cache.rglob("*.py")), "the compile wrote its code into the fresh cache"
            dirs.append(cache)
    assert dirs[0] != dirs[1] and not dirs[0].exists()


def test_rounds_default_to_twenty_without_gc_and_a_user_can_lower_them(tmp_path):
    grid = ["--impls", "scratch", "--batch-sizes", "2", "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu",
            "--benchmark-max-time=0.000001"]  # pytest-benchmark's time budget alone would give 1 round
    proc = run_cli(tmp_path, *grid, "--processes", "1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    row = pd.read_csv(tmp_path / "r" / "measurements.csv").iloc[0]
    assert row.rounds == 20 and not row.gc_in_rounds and row.processes == 1
    # the machine-speed probe ran before each round and after the last: its times sit beside the rounds
    run = load_run(tmp_path / "r")
    (cell_id,) = run.rounds_s
    probe_s, rounds_s = np.array(run.probe_s[cell_id]), np.array(run.rounds_s[cell_id])
    assert len(probe_s) == len(rounds_s) + 1 == 21 and probe_s.min() > 0
    assert row.probe_ms_median == pytest.approx(1e3 * float(np.median(probe_s)))
    relative = rounds_s / ((probe_s[:-1] + probe_s[1:]) / 2)  # each round over the probes around it
    assert row.relative_step_median == pytest.approx(float(np.median(relative)))
    assert row.warmup_steps >= 3 and pd.notna(row.startup_ms) and pd.notna(row.first_step_ms)
    assert row.description.endswith("ran: eager ATen ops") and row.library_bytes == 0 and pd.isna(row.notes)
    # a user's rounds hold per process, in the default 3 processes (up to 5 where they have not settled)
    lowered = run_cli(tmp_path, *grid, "--benchmark-min-rounds=3", "--threads", "2", run_id="lowered")
    assert lowered.returncode == 0, lowered.stdout[-3000:]
    row = pd.read_csv(tmp_path / "lowered" / "measurements.csv").iloc[0]
    assert DEFAULT_PROCESSES["cpu"] <= row.processes <= DEFAULT_MAX_PROCESSES["cpu"]
    assert row.rounds == 3 * row.processes and row.threads == 2
    # within the default budget, the report's time kept back; each added process with its estimate and its time
    how = json.loads((tmp_path / "lowered" / "environment.json").read_text())["processes"]
    assert how["budget_end_s"] == pytest.approx(DEFAULT_BUDGET_S["cpu"] - REPORT_RESERVE_S, abs=10)  # from its start
    assert set(how["extra_cells"]) <= set(how["planned"]) and set(how["cell_s"]) >= {"1", "2"}
    for added in how["planned"].values():  # one that ran, with its estimate; or the one the budget left out
        assert (added["estimate_s"] > 0 and added["took_s"] > 0 and 0 < added["cells"] <= added["unsettled"]
                or added["cells"] == 0 and added["left_s"] < added["fixed_s"] + max(how["cell_s"]["1"].values()))
    # by default a run's 20 rounds are split between its processes, but each times at least 10 (and 0.5 s)
    assert rounds_options(3, []) == ["--benchmark-min-rounds=10", "--benchmark-max-time=0.5"]
    assert rounds_options(1, []) == ["--benchmark-min-rounds=20", "--benchmark-max-time=1"]
    assert rounds_options(3, ["--benchmark-min-rounds=3"]) == ["--benchmark-max-time=0.5"]


def test_an_added_process_times_the_least_settled_cells_that_fit_the_budget():
    from bench.workers import Costs, plan_added, process_costs

    # worker 1 met TorchScript's passes (8 s) in cell "s1", worker 2 in "s2"; both paid 5 s of start-up in their first
    seconds = {1: {"a": 6.0, "s1": 9.0, "s2": 1.0, "b": 2.0}, 2: {"s2": 14.0, "b": 2.2, "a": 1.1, "s1": 1.2}}
    walls = {1: 20.0, 2: 21.0}
    costs = process_costs(seconds, walls, timing=[1, 2])
    assert costs.cell_s == {"a": 1.1, "s1": 1.2, "s2": 1.0, "b": 2.0}  # the least each took
    assert costs.fixed_s == pytest.approx((20.0 - 5.3 + 21.0 - 5.3) / 2)  # the median of what each took beyond
    assert process_costs(seconds, walls, timing=[]) is None and process_costs({}, {}, timing=[1]) is None
    # one worker alone: its start-up and TorchScript's passes landed in its first scripted cell, not in its cost
    ids = [f"{impl}-cpu-float32-train-B32-H{h}-T35-V28" for impl, h in
           (("scripted", 512), ("cudnn", 256), ("scripted", 256), ("scripted", 128), ("cudnn", 128))]
    alone = process_costs({1: dict(zip(ids, [28.0, 1.0, 1.5, 0.7, 0.8]))}, {1: 35.0}, timing=[1])
    assert alone.cell_s == dict(zip(ids, [1.5, 0.8, 1.5, 0.7, 0.8]))  # each implementation's first: its others' most
    assert alone.fixed_s == pytest.approx(35.0 - 5.3)
    costs = Costs({"a": 1.0, "b": 4.0, "c": 1.0}, fixed_s=10.0)
    assert plan_added(["b", "a", "c"], costs, left_s=100.0) == (["b", "a", "c"], 16.0)  # all fit, in their order
    assert plan_added(["b", "a", "c"], costs, left_s=15.0) == (["b", "a"], 15.0)  # the least settled first
    assert plan_added(["b", "a", "c"], costs, left_s=12.5) == (["a", "c"], 12.0)  # b passed over for what fits
    assert plan_added(["b", "a", "c"], costs, left_s=10.5) == ([], None)  # not even one cell beside the fixed part
    assert plan_added(["b", "a"], None, left_s=1.0) == (["b", "a"], None)  # no costs known: every candidate
    assert plan_added(["b", "a"], costs, left_s=None) == (["b", "a"], None)  # no budget
    assert costs.estimate_s(["x"]) == 10.0 + 1.0  # a cell never timed: the median cell's cost


def test_the_answers_cells_time_twice_the_rounds_and_come_first_in_an_added_process(tmp_path):
    from bench.grid import D2L_ROUNDS_FACTOR, cell_rounds, is_d2l
    from bench.results import write_rows
    from bench.workers import unsettled

    def cell(batch: int, hidden: int) -> Cell:
        return Cell(impl="scratch", device="cpu", dtype="float32", mode="train", batch_size=batch, hidden_size=hidden,
                    seq_len=D2L["seq_len"], vocab_size=D2L["vocab_size"])

    answer, wide, tight = cell(D2L["batch_size"], D2L["hidden_size"]), cell(16, 256), cell(64, 256)
    assert is_d2l(answer) and not is_d2l(wide) and D2L_ROUNDS_FACTOR > 1
    assert cell_rounds(answer, 10, 0.5) == (10 * D2L_ROUNDS_FACTOR, 0.5 * D2L_ROUNDS_FACTOR)
    assert cell_rounds(wide, 10, 0.5) == (10, 0.5)
    figures = {answer: "5.0;5.4;4.8", wide: "5.0;6.0;4.5", tight: "5.0;5.0001;5.0", cell(32, 128): "5.0;5.0;5.0001"}
    write_rows(tmp_path / "measurements.csv", [c.columns() | {"status": "ok", "relative_step_processes": f}
                                               for c, f in figures.items()])
    assert unsettled(tmp_path) == [answer.id, wide.id]  # the answer's first, though the other spreads wider


def test_three_processes_that_agree_by_chance_do_not_settle_a_cell_in_a_run_that_spreads():
    from bench.readers.stats import SETTLED_WITHIN, pooled_settle_pct, settle_pct, typical_sd

    spread = [[10.0, 10.6, 9.5], [5.0, 5.3, 4.8], [7.0, 7.3, 6.7]]  # about 5% between processes
    typical = typical_sd([*spread, [8.0, 8.01, 7.99]])
    assert typical == pytest.approx(np.std(np.log(spread[2]), ddof=1))  # the lower middle of the four cells' sds
    lucky = [8.0, 8.01, 7.99]
    assert settle_pct(lucky) / 100 < SETTLED_WITHIN < pooled_settle_pct(lucky, typical) / 100
    assert pooled_settle_pct(lucky, 0.0) < settle_pct(lucky)  # pooled with a run that does not spread: narrower
    own = [10.0, 10.6, 9.5, 10.2, 9.9]
    assert pooled_settle_pct(own, np.std(np.log(own), ddof=1)) == pytest.approx(settle_pct(own))
    assert np.isnan(pooled_settle_pct([8.0], typical)) and typical_sd([[1.0]]) == 0.0


def test_a_cell_settles_when_its_processes_pin_their_typical_figure():
    from bench.readers.stats import SETTLED_WITHIN, settled

    assert settled([10.0, 10.1, 9.9]) and settled([10.0] * 2)
    assert not settled([8.4, 8.8, 11.4])  # bimodal processes, as a fused_compiled cell measured: a median of 3 jumps
    assert not settled([10.0])  # one process pins nothing
    # two standard errors at the edge: sd of the logs s, 2 s / sqrt(n) against SETTLED_WITHIN
    for n in (3, 5):
        z = np.linspace(-1, 1, n) / np.std(np.linspace(-1, 1, n), ddof=1)  # sample sd 1
        sd = SETTLED_WITHIN * np.sqrt(n) / 2  # the widest spread that settles
        assert settled(list(np.exp(0.99 * sd * z))) and not settled(list(np.exp(1.01 * sd * z)))


def test_a_run_adds_processes_for_the_cells_that_have_not_settled(tmp_path):
    """Two processes time both cells; one cell's processes are made to disagree by 2x and the other's to agree
    exactly; the same run resumed with --max-processes 3 starts a third process that times only the first."""
    from bench.results import read_records, write_rows

    grid = ["--impls", "scratch", "--batch-sizes", "2,3", "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu",
            "--benchmark-max-time=0.001", "--benchmark-min-rounds=3", "--processes", "2"]
    assert run_cli(tmp_path, *grid).returncode == 0
    rows = {}
    for k in (0, 1):
        header, records, _ = read_records(tmp_path / "r" / "processes" / str(k) / "measurements.csv")
        rows[k] = [dict(zip(header, r)) for r in records]
    first = {row["batch_size"]: row for row in rows[0]}
    for second in rows[1]:  # in worker 1's own order
        factor = 2.0 if second["batch_size"] == "2" else 1.0
        for column in ("step_ms_median", "relative_step_median"):
            second[column] = repr(float(first[second["batch_size"]][column]) * factor)
    write_rows(tmp_path / "r" / "processes" / "1" / "measurements.csv", rows[1])
    again = run_cli(tmp_path, *grid, "--max-processes", "3")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "process 3 (of at most 3): times only the 1 cells whose processes have not settled" in again.stdout
    third = pd.read_csv(tmp_path / "r" / "processes" / "2" / "measurements.csv")
    assert list(third.batch_size) == [2] and (third.status == "ok").all()
    df = pd.read_csv(tmp_path / "r" / "measurements.csv").set_index("batch_size")
    assert df.loc[2, "processes"] == 3 and df.loc[3, "processes"] == 2
    assert len(df.loc[2, "relative_step_processes"].split(";")) == 3
    how = json.loads((tmp_path / "r" / "environment.json").read_text())["processes"]
    assert how["count"] == 2 and how["max_count"] == 3 and how["finished"] == 3 and how["extra_cells"] == {"2": 1}


def test_the_budget_binds_the_first_processes_past_the_second(tmp_path):
    """A budget that ends (less the report's reserve) a second after the run began: the first two processes run
    whatever it says, the third of --processes 3 does not fit and does not run."""
    grid = ["--impls", "scratch", "--batch-sizes", "2,3", "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu",
            "--benchmark-max-time=0.001", "--benchmark-min-rounds=3", "--processes", "3",
            "--budget-s", str(REPORT_RESERVE_S + 1)]
    proc = run_cli(tmp_path, *grid)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 2 of 3" in proc.stdout and "process 3" not in proc.stdout
    assert sorted(d.name for d in (tmp_path / "r" / "processes").iterdir()) == ["0", "1"]
    assert (pd.read_csv(tmp_path / "r" / "measurements.csv").processes == 2).all()
    how = json.loads((tmp_path / "r" / "environment.json").read_text())["processes"]
    assert how["finished"] == 2 and how["extra_cells"] == {}
    assert all(p["cells"] == 0 and p["left_s"] < 0 for p in how["planned"].values())


def test_the_progress_line_counts_a_first_process_the_budget_cut():
    from bench.console import Progress

    progress = Progress(cells=10, processes=3)
    progress.start_process(10)
    progress.start_process(10)
    progress.start_process(4)  # the third, cut to 4 cells
    progress.start_process(2, added=True)
    assert progress.total == 10 + 10 + 4 + 2 and progress.processes_left == 0


def test_the_grids_centre_runs_first_and_pays_torchscripts_plan_once_a_process(tmp_path):
    """The centre's cells run first; scripted's first cell there scripts and reports its first call, and the
    scripted cell after it runs that plan at its own shape: no first call reported, a note says why."""
    options = parse_options(lambda name: {"device": "cpu"}.get(name))
    centre = (D2L["batch_size"], D2L["hidden_size"])
    grid = options.grid()
    at_centre = [(c.batch_size, c.hidden_size) == centre for c in grid]
    assert at_centre == sorted(at_centre, reverse=True) and at_centre[0]  # the centre's, then the rest
    proc = run_cli(tmp_path, "--impls", "scripted", "--batch-sizes", "3,2", "--hidden-sizes", "4", "--seq-len", "3",
                   "--device", "cpu", "--processes", "1", "--benchmark-max-time=0.001")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, second = pd.read_csv(tmp_path / "r" / "measurements.csv").itertuples()
    assert (first.batch_size, second.batch_size) == (2, 3)  # the centre (the lower middle, 2), though listed second
    assert pd.notna(first.first_step_ms) and pd.notna(first.startup_ms) and pd.isna(first.notes)
    assert pd.isna(second.first_step_ms) and pd.isna(second.startup_ms)
    assert second.notes.startswith("first call not measured: scripted ran the plan an earlier cell")
    assert "leaked" not in proc.stdout + proc.stderr  # start-up's objects, frozen out of collections, freed at exit


def test_startup_is_the_first_call_and_warm_up_beyond_steady_steps():
    # a 900 ms first call, then 300 and 120 ms warm-up steps, at a steady 100 ms: 800 + 200 + 20 ms beyond steady
    assert startup_ms(900.0, [0.300, 0.120], 0.100) == pytest.approx(1020.0)


def test_a_cell_survives_its_csv_row():
    """Every key column comes back to its own field (dropout and batch_first were once swapped)."""
    cell = Cell("scratch", "cpu", "float32", "train", 2, 4, 3, 28, num_layers=2, bidirectional=True, proj_size=1,
                dropout=0.2, batch_first=True, lengths="uniform:0.5", amp="bfloat16")
    text = {k: str(v) for k, v in cell.columns().items()}  # as read back from measurements.csv
    assert Cell.from_row(text) == cell and Cell.from_row(cell.columns()) == cell
    assert cell.id.endswith("-L2-bi-P1-D0.2-bf-len0.5-amp-bfloat16")


def test_packed_flops_count_the_real_tokens():
    """The RNN kernels' FLOP formula takes a packed batch's (tokens, I) data as T * B tokens."""
    from bench.instruments.flops import _rnn_flops, lstm_flops

    assert _rnn_flops((5, 3, 7), 8) == lstm_flops(5, 3, 7, 8) == _rnn_flops((15, 7), 8)
