"""`lstm-bench compare` on synthetic run directories whose round timings come from known distributions,
the planted slowdown used to calibrate it, and the CI files that run it (workflows, tox env, GPU check)."""

import configparser
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode

import lstm_impls
from bench.cli import main
from bench.grid import Cell
from bench.readers import stats
from bench.readers.compare import SUITE_TEST, Thresholds, compare_runs, environment_differences
from bench.results import JSON_NAME, CsvRecorder, load_run, write_environment

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ENV = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu128", "cuda": "12.8",
       "cpu_capability": "AVX512", "malloc": "glibc steady", "git_commit": "abc",
       "time_utc": "2026-11-28T00:00:00+00:00"}
MiB = 1 << 20


def cell(impl="scratch", batch_size=32, hidden_size=256) -> Cell:
    return Cell(impl, "cuda", "float32", "train", batch_size, hidden_size, 35, 28)


def make_run(path: Path, cells: dict[Cell, dict], env: dict = ENV, seed: int = 0, probe_ms: float | None = None,
             machine: float = 1.0, machine_sigma: float = 0.0, processes: int = 1,
             process_sigma: float = 0.0) -> Path:
    """A run directory as the suite writes it. cells: Cell -> {median_ms, sigma (lognormal, relative),
    rounds, peak_bytes, first_step_ms, status}; rounds are drawn with a fixed seed. The machine is
    `machine` times slower than the baseline's, and its speed varies by machine_sigma from round to
    round; with probe_ms, a probe of that many milliseconds is timed before each round on that machine.
    With processes > 1 the run is `lstm-bench run`'s in worker processes: each process is slower or faster
    by its own lognormal(0, process_sigma) factor (what moves between processes), the row holds their medians."""
    if processes > 1:
        return make_process_run(path, cells, env, seed, processes, process_sigma, probe_ms)
    rng = np.random.default_rng(seed)
    recorder = CsvRecorder(path / "measurements.csv")
    benchmarks = []
    for c, spec in cells.items():
        row = c.columns() | {"status": spec.get("status", "ok"), "run_id": path.name, "threads": 1, "tf32": False}
        if row["status"] != "ok":
            recorder.write(row | {"error": "OutOfMemoryError: CUDA out of memory"})
            continue
        n = spec.get("rounds", 20)
        speed = machine * np.exp(machine_sigma * _drift(rng, n))  # the machine's slowness in each round
        rounds_s = spec.get("median_ms", 10.0) / 1e3 * speed * rng.lognormal(0.0, spec.get("sigma", 0.02), n)
        q25_s, median_s, q75_s = (float(q) for q in np.percentile(rounds_s, [25, 50, 75]))
        recorder.write(row | {"step_ms_median": median_s * 1e3, "step_ms_iqr": (q75_s - q25_s) * 1e3,
                              "step_ms_min": float(rounds_s.min()) * 1e3, "rounds": len(rounds_s),
                              "first_step_ms": spec.get("first_step_ms", 900.0), "startup_ms": 1500.0,
                              "peak_bytes": spec.get("peak_bytes", 100 * MiB)})
        extra = {"probe_s": (probe_ms / 1e3 * speed * rng.lognormal(0.0, 0.01, n)).tolist()} if probe_ms else {}
        benchmarks.append({"name": f"test_cell[{c.id}]", "param": c.id, "stats": {"data": rounds_s.tolist()},
                           "extra_info": extra})
    (path / JSON_NAME).write_text(json.dumps({"machine_info": {"lstm_bench": env}, "benchmarks": benchmarks}))
    write_environment(path, env)
    return path


def make_process_run(path: Path, cells: dict[Cell, dict], env: dict, seed: int, processes: int,
                     process_sigma: float, probe_ms: float | None = None) -> Path:
    """make_run's cells timed in `processes` worker processes, combined as bench/workers.py combines them."""
    from bench.workers import between

    rng = np.random.default_rng(seed)
    recorder = CsvRecorder(path / "measurements.csv")
    for c, spec in cells.items():
        row = c.columns() | {"status": "ok", "run_id": path.name, "threads": 1, "tf32": False,
                             "peak_bytes": spec.get("peak_bytes", 100 * MiB), "first_step_ms": 900.0}
        n, sigma = spec.get("rounds", 20), spec.get("sigma", 0.02)
        machine = rng.lognormal(0.0, spec.get("process_sigma", process_sigma), processes)  # the probe's too
        own = rng.lognormal(0.0, spec.get("own_sigma", 0.01), processes)  # what moves the step and not the probe
        rounds = [spec.get("median_ms", 10.0) / 1e3 * m * o * rng.lognormal(0.0, sigma, n)
                  for m, o in zip(machine, own)]
        per_process = {"step_ms_median": [1e3 * float(np.median(r)) for r in rounds]}
        if probe_ms:
            per_process["probe_ms_median"] = [probe_ms * m * float(rng.lognormal(0.0, 0.01)) for m in machine]
            per_process["relative_step_median"] = [ms / probe for ms, probe in
                                                   zip(per_process["step_ms_median"], per_process["probe_ms_median"])]
        relative = ([[1e3 * float(x) / probe for x in r] for r, probe in zip(rounds, per_process["probe_ms_median"])]
                    if probe_ms else [])
        recorder.write(row | between(per_process, [r.tolist() for r in rounds], relative, row))
    write_environment(path, env)
    return path


def _drift(rng: np.random.Generator, n: int, rho: float = 0.8) -> np.ndarray:
    """A machine's speed wanders: n steps of a unit-variance AR(1) process, neighbouring rounds alike."""
    z = np.empty(n)
    z[0] = rng.standard_normal()
    for k in range(1, n):
        z[k] = rho * z[k - 1] + np.sqrt(1 - rho**2) * rng.standard_normal()
    return z


def verdicts(base: Path, new: Path, **kw) -> dict[str, tuple[str, str]]:
    """cell id -> (time verdict, memory verdict)."""
    comparison = compare_runs(load_run(base), load_run(new), **kw)
    return {r.cell_id: (r.verdict, r.memory) for r in comparison.cells.itertuples()}


A, B, C = cell(batch_size=16), cell(batch_size=64), cell(hidden_size=1024)


def test_a_cell_20pct_slower_is_flagged_and_listed_for_the_rerun(tmp_path, capsys):
    base = make_run(tmp_path / "base", {A: {}, B: {}}, seed=1)
    new = make_run(tmp_path / "new", {A: {"median_ms": 12.0}, B: {}}, seed=2)
    rerun = tmp_path / "flagged.txt"
    assert main(["compare", str(base), str(new), "--json", "--rerun-list", str(rerun)]) == 1
    assert rerun.read_text() == f"{SUITE_TEST}[{A.id}]\n"
    report = json.loads((new / "compare.json").read_text())
    assert report["regressed"] and report["flagged"] == [A.id]
    slower = next(c for c in report["cells"] if c["cell_id"] == A.id)
    assert slower["verdict"] == "slower" and 1.15 < slower["time_ratio"] < 1.25 and slower["p_value"] < 1e-6
    assert "REGRESSION: 1 cell(s)" in (new / "compare.md").read_text()
    assert "REGRESSION" in capsys.readouterr().out


def test_per_process_shifts_that_a_rounds_test_flags_are_not_a_regression(tmp_path):
    # A/A pairs: every process of either run is 4% faster or slower than another by chance (the machine, thread
    # placement, memory layout), its rounds spread 2% within. One process a side and a test on the rounds (the
    # gate's old unit) finds most of these cells different at p < 0.01 and calls some slower; three processes a
    # side judged between processes call almost none slower or faster.
    trials, rounds_flagged, overconfident, processes_flagged, unchanged = 60, 0, 0, 0, 0
    for k in range(trials):
        runs = {}
        for side, count in (("one", 1), ("three", 3)):
            for label in ("base", "new"):
                seed = 1000 + 4 * k + (label == "new") + 2 * (count == 3)
                if count == 1:  # one process: its shift is in every one of its rounds
                    shift = float(np.random.default_rng(seed).lognormal(0.0, 0.04))
                    spec = {c: {"median_ms": 10.0 * shift} for c in (A, B, C)}
                    runs[side, label] = make_run(tmp_path / f"{k}-{side}-{label}", spec, seed=seed)
                else:
                    runs[side, label] = make_run(tmp_path / f"{k}-{side}-{label}", {A: {}, B: {}, C: {}},
                                                 seed=seed, processes=3, process_sigma=0.04)
        one = compare_runs(load_run(runs["one", "base"]), load_run(runs["one", "new"]))
        three = compare_runs(load_run(runs["three", "base"]), load_run(runs["three", "new"]))
        assert set(three.cells["timing"]) == {"between processes"} and set(one.cells["timing"]) == {"as measured"}
        rounds_flagged += int((one.cells["verdict"] == "slower").sum())
        overconfident += int((one.cells["p_value"] < 0.01).sum())
        processes_flagged += int(three.cells["verdict"].isin(["slower", "faster"]).sum())
        unchanged += int((three.cells["verdict"] == "unchanged").sum())
    assert overconfident >= 0.5 * 3 * trials  # most A/A cells "differ" at p < 0.01 on their rounds
    assert rounds_flagged >= 3  # and some beyond the threshold too: slower, by chance alone
    assert processes_flagged <= 1  # 1 in 180 at most: a 4-sigma draw, where a rounds test calls half different
    assert unchanged > 0  # and some A/A cells the interval already calls unchanged


def test_a_true_20_percent_change_is_flagged_between_processes(tmp_path):
    # Processes spread 3% (this project's quiet 2-core machine at one thread); B is 20% slower in the new run.
    flagged = 0
    for k in range(40):
        base = make_run(tmp_path / f"b{k}", {A: {}, B: {}}, seed=2 * k, processes=3, process_sigma=0.03)
        new = make_run(tmp_path / f"n{k}", {A: {}, B: {"median_ms": 12.0}}, seed=2 * k + 1, processes=3,
                       process_sigma=0.03)
        comparison = compare_runs(load_run(base), load_run(new))
        by_id = comparison.cells.set_index("cell_id")
        flagged += by_id.loc[B.id, "verdict"] == "slower"
        assert by_id.loc[A.id, "verdict"] != "slower"
        assert by_id.loc[B.id, "ci_low"] < 1.2 * 1.15 and by_id.loc[B.id, "ci_high"] > 1.2 / 1.15
    assert flagged >= 38  # nearly always: the interval's low end lies above 1.05


def test_a_shift_that_hits_one_implementation_and_not_the_probe_is_that_implementations_alone(tmp_path):
    # The machine's speed moves 30% between processes, the probe's and every step's with it; in the new run cudnn
    # is 20% slower on top and the probe is not. Judged relative to the probe, cudnn alone is slower; judged on the
    # raw medians of the same processes the machine's 30% hides it.
    slow, plain = cell("cudnn", 32, 256), cell("scratch", 32, 256)
    base = make_run(tmp_path / "base", {slow: {}, plain: {}}, seed=5, processes=3, process_sigma=0.3, probe_ms=5.0)
    new = make_run(tmp_path / "new", {slow: {"median_ms": 12.0}, plain: {}}, seed=6, processes=3,
                   process_sigma=0.3, probe_ms=5.0)
    by_id = compare_runs(load_run(base), load_run(new)).cells.set_index("cell_id")
    assert set(by_id["timing"]) == {"between processes, relative to the probe"}
    assert by_id.loc[slow.id, "verdict"] == "slower" and by_id.loc[plain.id, "verdict"] == "unchanged"
    assert 1.15 < by_id.loc[slow.id, "time_ratio"] < 1.25
    raw = [[float(m) for m in load_run(r).measurements.set_index("impl").loc["cudnn", "step_ms_processes"].split(";")]
           for r in (base, new)]
    assert stats.judge(stats.unpaired(*raw), 0.10) != "slower"  # raw, the machine drowns the change


def test_compare_reads_a_real_run_in_worker_processes(tmp_path):
    # two tiny runs of `lstm-bench run --processes 2`: rows carry both processes' medians, compare judges on them
    grid = ["--impls", "scratch", "--batch-sizes", "2", "--hidden-sizes", "4", "--seq-len", "3", "--processes", "2",
            "--results-dir", str(tmp_path), "--benchmark-max-time=0.01"]
    for run_id in ("a", "b"):
        assert main(["run", *grid, "--run-id", run_id]) == 0
    row = load_run(tmp_path / "a").measurements.iloc[0]
    medians = [float(m) for m in row["step_ms_processes"].split(";")]
    rounds = np.concatenate([load_run(tmp_path / "a" / "processes" / k).rounds_s[Cell.from_row(row).id]
                             for k in "01"])
    assert len(medians) == row["processes"] == 2
    assert row["step_ms_median"] == pytest.approx(1e3 * float(np.median(rounds)))
    assert row["step_ms_ci_low"] < row["step_ms_median"] < row["step_ms_ci_high"] and row["peak_bytes"] > 0
    worker = load_run(tmp_path / "a" / "processes" / "1").measurements.iloc[0]
    assert worker["processes"] == 1 and pd.isna(worker["peak_bytes"]) and pd.isna(worker["first_step_ms"])
    comparison = compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"))
    assert list(comparison.cells["timing"]) == ["between processes, relative to the probe"]
    assert list(comparison.cells["base_processes"]) == [2]


def test_compare_says_when_the_machine_ran_at_another_speed_in_one_run(tmp_path):
    # the new run's probe (and its steps with it) 1.3x slower: the relative figures agree, and a note says the
    # machine's speed differed, which cells unlike the probe do not divide out; at one speed, no note
    cells = {cell("scratch", 32, 256): {}, cell("scratch", 32, 512): {}}
    base = make_run(tmp_path / "base", cells, seed=1, processes=3, process_sigma=0.02, probe_ms=5.0)
    slow = make_run(tmp_path / "slow", {c: {"median_ms": 13.0} for c in cells}, seed=2, processes=3,
                    process_sigma=0.02, probe_ms=6.5)
    same = make_run(tmp_path / "same", cells, seed=3, processes=3, process_sigma=0.02, probe_ms=5.0)
    moved = compare_runs(load_run(base), load_run(slow))
    assert moved.cells["probe_ratio"].median() == pytest.approx(1.3, rel=0.05)
    assert re.search(r"note: the machine-speed probe ran x1\.[23]\d slower in the new run", moved.table())
    assert "machine-speed probe ran" in moved.markdown()
    assert "machine-speed probe ran" not in compare_runs(load_run(base), load_run(same)).table()


IMPLS = ("scratch", "scripted", "compiled", "cudnn", "fused")
GRID = [cell(impl, b, h) for b in (16, 64) for h in (256, 1024) for impl in IMPLS]


def drifted(grid: list[Cell], shape_drift: dict[tuple[int, int], float], slower: dict[Cell, float] | None = None
            ) -> dict:
    """Run specs: every cell of a shape (B, H) moved by the machine's drift then, some cells slower on top."""
    return {c: {"median_ms": 10.0 * shape_drift.get((c.batch_size, c.hidden_size), 1.0) * (slower or {}).get(c, 1.0)}
            for c in grid}


def test_the_probe_before_each_round_cancels_the_machine_and_keeps_the_code(tmp_path):
    # The second run's machine is 1.5x slower and its speed jumps by ~20% from round to round; one cell
    # is 1.2x slower on top. Timed relative to the probe before each round, only that cell moved.
    slow_cell = cell("scripted", 64, 256)
    base = make_run(tmp_path / "base", drifted(GRID, {}), seed=25, probe_ms=5.0, machine_sigma=0.2)
    new = make_run(tmp_path / "new", drifted(GRID, {}, {slow_cell: 1.2}), seed=26, probe_ms=5.0, machine=1.5,
                   machine_sigma=0.2)
    comparison = compare_runs(load_run(base), load_run(new), Thresholds())
    by_id = comparison.cells.set_index("cell_id")
    assert set(by_id["timing"]) == {"relative to the probe"} and 1.3 < by_id["probe_ratio"].median() < 1.7
    assert list(comparison.flagged()["cell_id"]) == [slow_cell.id] and not comparison.shifted
    assert 1.12 < by_id.loc[slow_cell.id, "time_ratio"] < 1.28 and by_id.loc[slow_cell.id, "p_value"] < 1e-3
    assert (by_id.drop(slow_cell.id)["verdict"] == "unchanged").all()  # relative rounds spread little: not noisy
    # the same rounds without the probe: the machine's 1.5x shows as most cells slower, and the run as moved
    bare = make_run(tmp_path / "bare", drifted(GRID, {}), seed=25, machine_sigma=0.2)
    bare_new = make_run(tmp_path / "bare_new", drifted(GRID, {}, {slow_cell: 1.2}), seed=26, machine=1.5,
                        machine_sigma=0.2)
    as_measured = compare_runs(load_run(bare), load_run(bare_new), Thresholds())
    assert set(as_measured.cells["timing"]) == {"as measured"} and as_measured.shifted
    assert (as_measured.cells["verdict"] == "slower").sum() > len(GRID) / 2


def test_a_run_that_moved_as_a_whole_is_said_so_and_measured_again_whole(tmp_path):
    base = make_run(tmp_path / "base", drifted(GRID, {}), seed=23)
    everything = {(b, h): 1.6 for b in (16, 64) for h in (256, 1024)}
    new = make_run(tmp_path / "new", drifted(GRID, everything), seed=24)
    comparison = compare_runs(load_run(base), load_run(new))
    assert comparison.shifted and comparison.regressed and 1.55 < comparison.common_ratio() < 1.65
    assert "the whole run moved x1.6" in comparison.summary_line()
    assert len(comparison.rerun_ids()) == len(GRID)  # all of it again
    # a re-measurement of a few flagged cells moved by selection: the run as a whole is not judged on it
    few = make_run(tmp_path / "few", drifted(GRID[:6], everything), seed=27)
    assert not compare_runs(load_run(base), load_run(few)).shifted
    assert not compare_runs(load_run(base), load_run(new), Thresholds(judge_shift=False)).shifted  # --no-shift


def test_a_faster_cell_passes_the_gate(tmp_path):
    base = make_run(tmp_path / "base", {A: {}, B: {}}, seed=1)
    new = make_run(tmp_path / "new", {A: {"median_ms": 7.0}, B: {}}, seed=2)
    assert verdicts(base, new) == {A.id: ("faster", "same"), B.id: ("unchanged", "same")}
    assert main(["compare", str(base), str(new), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "compare.md").is_file() and not (new / "compare.md").exists()


def test_noise_is_not_a_regression(tmp_path):
    # A: same distribution; B: +50% median but 3 rounds a side (the test cannot reach alpha);
    # C: 4% slower, very significant, but under the 10% threshold.
    spec = {A: {}, B: {"rounds": 3}, C: {"sigma": 0.005}}
    base = make_run(tmp_path / "base", spec, seed=3)
    new = make_run(tmp_path / "new", spec | {B: {"rounds": 3, "median_ms": 15.0}, C: {"sigma": 0.005,
                                                                                      "median_ms": 10.4}}, seed=4)
    comparison = compare_runs(load_run(base), load_run(new))
    by_id = comparison.cells.set_index("cell_id")
    assert set(by_id["verdict"]) == {"unchanged"} and not comparison.regressed
    assert by_id.loc[B.id, "time_ratio"] > 1.3 and by_id.loc[B.id, "p_value"] > 0.05
    assert 1.02 < by_id.loc[C.id, "time_ratio"] < 1.06 and by_id.loc[C.id, "p_value"] < 1e-6
    # the same 4% counts once the threshold is lowered below it
    assert verdicts(base, new, thresholds=Thresholds(time_ratio=0.02))[C.id] == ("slower", "same")


def test_a_cell_whose_rounds_spread_wider_than_the_threshold_is_noisy_not_slower(tmp_path):
    # rounds spread ~80% (IQR) within each run: a busy machine; 30 rounds leave the median uncertain by ~14%.
    # Twice as slow, and significant, but not judged.
    base = make_run(tmp_path / "base", {A: {"sigma": 0.6, "rounds": 30}, B: {}}, seed=16)
    new = make_run(tmp_path / "new", {A: {"sigma": 0.6, "rounds": 30, "median_ms": 20.0}, B: {}}, seed=17)
    comparison = compare_runs(load_run(base), load_run(new))
    noisy = comparison.cells.set_index("cell_id").loc[A.id]
    assert noisy["verdict"] == "noisy" and noisy["time_ratio"] > 1.4 and noisy["p_value"] < 0.01
    assert min(noisy["base_iqr_pct"], noisy["new_iqr_pct"]) > 55
    assert "1 cell(s) noisy" in comparison.table()
    assert main(["compare", str(base), str(new)]) == 0
    assert main(["compare", str(base), str(new), "--max-median-error", "1"]) == 1  # judged anyway: slower


def test_memory_growth_beyond_the_tolerance_fails_the_gate(tmp_path):
    base = make_run(tmp_path / "base", {A: {}, B: {}, C: {}}, seed=5)
    new = make_run(tmp_path / "new", {A: {"peak_bytes": 105 * MiB}, B: {"peak_bytes": 101 * MiB},
                                      C: {"peak_bytes": 80 * MiB}}, seed=6)
    assert verdicts(base, new) == {A.id: ("unchanged", "grew"), B.id: ("unchanged", "same"),
                                   C.id: ("unchanged", "shrank")}
    assert main(["compare", str(base), str(new)]) == 1
    assert main(["compare", str(base), str(new), "--memory-threshold", "0.1"]) == 0


def test_missing_new_and_failed_cells(tmp_path):
    base = make_run(tmp_path / "base", {A: {}, B: {}, C: {}}, seed=7)
    D = cell(hidden_size=2048)
    new = make_run(tmp_path / "new", {A: {}, C: {"status": "oom"}, D: {}}, seed=8)
    assert verdicts(base, new) == {A.id: ("unchanged", "same"), B.id: ("missing", ""), C.id: ("failed", ""),
                                   D.id: ("new", "")}
    assert main(["compare", str(base), str(new)]) == 1  # ok before, out of memory now
    only_gone = make_run(tmp_path / "only", {A: {}, D: {}}, seed=9)
    assert main(["compare", str(base), str(only_gone)]) == 0  # missing and new cells do not gate


def test_match_impl_compares_a_stand_in_with_the_baselines_impl(tmp_path):
    stand_in = "slow_impl:SlowScratchLSTM"
    base = make_run(tmp_path / "base", {A: {}, cell("cudnn"): {}}, seed=10)
    new = make_run(tmp_path / "new", {A: {"median_ms": 9.0}, cell(stand_in, batch_size=16): {"median_ms": 12.0},
                                      cell("cudnn"): {}}, seed=11)
    found = verdicts(base, new, impl_map={stand_in: "scratch"})
    # the stand-in takes scratch's place; the new run's own scratch cell is set aside
    assert found == {cell(stand_in, batch_size=16).id: ("slower", "same"), cell("cudnn").id: ("unchanged", "same")}
    assert main(["compare", str(base), str(new), "--match-impl", f"{stand_in}=scratch"]) == 1
    assert main(["compare", str(base), str(new), "--match-impl", "nonsense"]) == 2


def test_match_impl_within_one_run_compares_only_the_two_implementations(tmp_path):
    stand_in = "slow_impl:SlowScratchLSTM"
    side_by_side = make_run(tmp_path / "run", {A: {}, cell(stand_in, batch_size=16): {"median_ms": 12.0},
                                               cell("cudnn"): {}}, seed=18)
    found = verdicts(side_by_side, side_by_side, impl_map={stand_in: "scratch"})
    assert found == {cell(stand_in, batch_size=16).id: ("slower", "same")}


@pytest.mark.parametrize("key, value", [("torch", "2.14.0+cu128"), ("gpu_name", "NVIDIA A100-SXM4-40GB"),
                                        ("cuda", "13.0"), ("device", "cpu"), ("cpu_capability", "AVX2"),
                                        ("malloc", "default")])
def test_runs_from_different_environments_are_refused(tmp_path, capsys, key, value):
    base = make_run(tmp_path / "base", {A: {}}, seed=12)
    new = make_run(tmp_path / "new", {A: {}}, env=ENV | {key: value}, seed=13)
    assert main(["compare", str(base), str(new)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and key in err and value in err and "--allow-env-mismatch" in err
    assert not (new / "compare.md").exists()
    assert main(["compare", str(base), str(new), "--allow-env-mismatch"]) == 0
    assert f"Environments differ in {key}" in (new / "compare.md").read_text()


def test_same_environment_on_another_device_index_is_accepted():
    assert environment_differences(ENV, ENV | {"device": "cuda:0", "git_commit": "def"}) == {}


@pytest.mark.parametrize("key", ["cpu_capability", "malloc"])
def test_a_run_made_before_a_key_was_recorded_is_not_refused_for_it(key):
    older = {k: v for k, v in ENV.items() if k != key}
    assert environment_differences(older, ENV) == {} == environment_differences(ENV, older)


def test_an_unreadable_run_directory_is_one_line_and_exit_2(tmp_path, capsys):
    base = make_run(tmp_path / "base", {A: {}}, seed=14)
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(base), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run directory" in err
    damaged = make_run(tmp_path / "damaged", {A: {}}, seed=15)
    (damaged / JSON_NAME).write_text("{not json")
    assert main(["compare", str(base), str(damaged)]) == 2
    assert "damaged JSON" in capsys.readouterr().err


class SigmoidCount(TorchFunctionMode):
    """Counts torch.sigmoid calls: three per LSTM time step (input, forget and output gates)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.sigmoid
        return func(*args, **(kwargs or {}))


def test_the_planted_slowdown_computes_what_scratch_computes_with_more_work():
    torch.manual_seed(0)
    slow = lstm_impls.create("slow_impl:SlowScratchLSTM", 5, 7)
    scratch = lstm_impls.create("scratch", 5, 7)
    scratch.load_state_dict(slow.state_dict())
    x = torch.randn(10, 3, 5)
    outputs, sigmoids = [], []
    for module in (slow, scratch):
        with SigmoidCount() as counter:
            outputs.append(module(x))
        sigmoids.append(counter.calls)
        y, (h, c) = outputs[-1]
        (y.sum() + h.sum() + c.sum()).backward()
    (y_slow, (h_slow, c_slow)), (y, (h, c)) = outputs
    assert torch.equal(y_slow, y) and torch.equal(h_slow, h) and torch.equal(c_slow, c)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(slow.params(), scratch.params()))
    # the forward runs 3 of its 10 time steps twice; autograd keeps the same graph (the extra steps' is dropped)
    assert sigmoids == [3 * 13, 3 * 10]
    assert _graph_size(y_slow) == _graph_size(y)


def _graph_size(tensor: torch.Tensor) -> int:
    """Nodes in the autograd graph behind tensor."""
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(fn for fn, _ in node.next_functions)
    return len(seen)


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") + str(step.get("uses", "")) for step in job["steps"])


def test_the_nightly_workflow_gates_on_a_repeated_regression():
    wf = _workflow("nightly-gpu.yml")
    assert set(wf["on"]) == {"schedule", "workflow_dispatch"} and wf["on"]["schedule"][0]["cron"]
    (job,) = wf["jobs"].values()
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    steps = {step.get("id"): step for step in job["steps"] if step.get("id")}
    text = _runs(job)
    for needed in ("pytest tests/", "bench.cli run --device cuda", "--processes 3 --max-processes 5",
                   "lstm-bench compare", "--rerun-list", "GITHUB_STEP_SUMMARY", "bench.cli report",
                   "actions/upload-artifact"):
        assert needed in text, needed
    assert steps["baseline"]["uses"].startswith("dawidd6/action-download-artifact@")
    assert steps["baseline"]["with"]["workflow_conclusion"] == "success"
    # the confirmation runs only when the first comparison flagged cells, and the gate reads its verdict
    assert "steps.compare.outputs.exit == '1'" in steps["confirm"]["if"]
    assert "steps.confirm.outputs.exit" in str(steps["gate"])
    # ... the flagged cells with the baseline's commit against this one, by lstm-bench ab (alternating processes)
    assert "lstm-bench ab --base" in steps["confirm"]["run"] and "--cells flagged.txt" in steps["confirm"]["run"]
    order = [step.get("id") for step in job["steps"]]
    assert order.index("grid") < order.index("compare") < order.index("confirm") < order.index("gate")
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and all(s.get("if") == "always()" for s in uploads)
    assert uploads[0]["with"]["name"] == steps["baseline"]["with"]["name"]  # what it uploads, it fetches next night


def test_the_push_workflow_runs_the_ci_script():
    wf = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    (job,) = wf["jobs"].values()
    assert "bash .ci/run" in _runs(job)


def test_tox_has_a_gpu_env_that_runs_the_cuda_grid():
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    commands = tox["testenv:gpu"]["commands"]
    assert "pytest tests/" in commands and "pytest bench/ --benchmark-only" in commands and "--device cuda" in commands


def test_the_gpu_check_script_parses_and_runs_every_part():
    script = ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needed in ("pytest tests/", "bench.cli check --device cuda", "bench.cli run --device cuda", "--impls all",
                   "bench.cli report"):
        assert needed in text, needed
