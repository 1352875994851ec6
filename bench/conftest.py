"""The pytest plugin behind `pytest bench/ --benchmark-only` and `lstm-bench run`: options, grid, results."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

import lstm_impls
from bench.grid import MIN_ROUNDS, OPTIONS, Cell, OptionError, parse_options, parse_worker
from bench.instruments.env import environment, pin_tf32
from bench.instruments.malloc import set_malloc
from bench.instruments.measure import Stopwatch, start_runtimes
from bench.results import (
    CSV_NAME,
    GRID_NAME,
    CsvRecorder,
    OutputError,
    RunError,
    benchmark_json_path,
    new_run_id,
    prepare_run_dir,
    read_json,
    resume,
    writable_file,
    write_environment,
    write_json,
)

_STATE = pytest.StashKey[dict]()  # the run's options, id, directory and environment


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lstm-bench", "lstm-bench grid")
    for name, (default, help_text) in OPTIONS.items():
        group.addoption(f"--{name}", default=default, help=f"{help_text} (default: {default})")
    group.addoption("--tf32", action="store_true", help="allow TF32 in cuBLAS and cuDNN (pinned off by default)")
    group.addoption("--worker", default=None, help="k/n: this session is worker k (0-based) of n fresh processes "
                    "that `lstm-bench run` starts (bench/workers.py): past worker 0, cells in a random order of its "
                    "own; only worker 0 measures memory, FLOPs and the first call (default: the only one)")


def _get(config: pytest.Config):
    return lambda name: config.getoption(name.replace("-", "_"))


def stop(config: pytest.Config, exc: Exception) -> None:
    """End the session on a write that failed: one line on stderr (past pytest's capture), exit code 2, and
    nothing more written (pytest-benchmark's JSON would fail the same way, with a traceback)."""
    message = f"lstm-bench: error: {exc}"
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        session.json = None
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # to the terminal's stderr, not into the test's captured output
        print(message, file=sys.stderr, flush=True)
    pytest.exit(message, returncode=pytest.ExitCode.INTERRUPTED)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Validate options (bad value: one line, exit code 2), make the run dir, point the JSON there."""
    try:
        options = parse_options(_get(config))
    except OptionError as exc:
        pytest.exit(f"lstm-bench: error: {exc}", returncode=2)
    given = config.invocation_params.args
    if not any(str(arg).startswith("--benchmark-min-rounds") for arg in given):
        config.option.benchmark_min_rounds = MIN_ROUNDS  # pytest-benchmark's 5 says little about a spread
    config.option.benchmark_disable_gc = True  # a collection inside a round would time the collector
    try:
        worker = parse_worker(config.getoption("worker"))
    except OptionError as exc:
        pytest.exit(f"lstm-bench: error: {exc}", returncode=2)
    run_id = config.getoption("run_id") or new_run_id()
    run_dir = Path(config.getoption("results_dir")) / run_id
    cells = options.cells()
    try:  # nothing is measured unless every file the run writes can be written
        healed = prepare_run_dir(run_dir)
        if not any(str(arg).startswith("--benchmark-storage") for arg in given):
            # --benchmark-save and --benchmark-autosave write into the run directory, not ./.benchmarks
            config.option.benchmark_storage = f"file://{(run_dir / '.benchmarks').resolve()}"
        if getattr(config.option, "benchmark_json", None) is None:
            config.option.benchmark_json = benchmark_json_path(run_dir)
        else:  # asked for elsewhere: written there, checked first
            writable_file(Path(config.option.benchmark_json), "--benchmark-json")
        grid_path = run_dir / GRID_NAME  # a resumed run with another grid asks for both sessions' cells
        asked = read_json(grid_path) or []  # a list of ids: prepare_run_dir checked it
        todo = resume(run_dir / CSV_NAME, cells)
        if worker[0] > 0:  # interleaved trials: each later process meets the cells in a random order of its own
            random.Random(worker[0]).shuffle(todo)  # (worker 0 in the grid's, which its rows keep for the run)
    except (OutputError, RunError) as exc:
        pytest.exit(f"lstm-bench: error: {exc}", returncode=2)
    pin_tf32(config.getoption("tf32"))
    if options.threads:
        torch.set_num_threads(options.threads)  # before the environment records torch_threads
    malloc = set_malloc(options.malloc)  # before any cell: the allocator's state then depends on no earlier one
    config.stash[_STATE] = {"options": options, "run_id": run_id, "run_dir": run_dir, "cells": cells,
                            "todo": todo, "env": environment(options.device) | {"malloc": malloc}, "healed": healed,
                            "worker": worker, "in_run": config.getoption("worker") is not None,
                            "stopwatch": Stopwatch()}
    try:
        write_json(grid_path, sorted(set(asked) | {c.id for c in cells}), indent=0)
        write_environment(run_dir, config.stash[_STATE]["env"])
    except OutputError as exc:
        pytest.exit(f"lstm-bench: error: {exc}", returncode=2)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """pytest-benchmark writes its JSON when the session ends: a write that fails there (a full disk) is one line
    on stderr and exit code 2, as a row that cannot be written is, never a traceback."""
    state = session.config.stash.get(_STATE, None)
    if state is not None and state["todo"]:  # where this session's time went, beside its environment
        try:
            write_environment(state["run_dir"], state["env"] | {"time_by_phase_s": state["stopwatch"].by_phase()})
        except OutputError as exc:
            print(f"lstm-bench: error: {exc}", file=sys.stderr, flush=True)
            session.exitstatus = pytest.ExitCode.INTERRUPTED
    try:
        return (yield)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lstm-bench: error: {where}the benchmark JSON could not be written ({exc.strerror or exc}); the "
              "rows in measurements.csv are intact", file=sys.stderr, flush=True)
        session.exitstatus = pytest.ExitCode.INTERRUPTED
        return None


def pytest_report_collectionfinish(config: pytest.Config) -> str:
    """After collection (shown under `lstm-bench run`'s --no-header too): what this session will measure."""
    state = config.stash[_STATE]
    done = len(state["cells"]) - len(state["todo"])
    resumed = f" ({done} recorded ok before: skipped)" if done else ""
    return [f"lstm-bench: {note}" for note in state["healed"]] + [
        f"lstm-bench: {len(state['todo'])} cells to measure{resumed}, results in {state['run_dir']}"]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["lstm_bench"] = config.stash[_STATE]["env"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" in metafunc.fixturenames:
        cells = metafunc.config.stash[_STATE]["todo"]
        metafunc.parametrize("cell", cells, ids=[c.id for c in cells])


@pytest.fixture(scope="session")
def run_info(request: pytest.FixtureRequest) -> dict:
    state = request.config.stash[_STATE]
    return {"run_id": state["run_id"], "tf32": torch.backends.cuda.matmul.allow_tf32,
            "threads": torch.get_num_threads()}


@pytest.fixture(scope="session")
def stopwatch(request: pytest.FixtureRequest) -> Stopwatch:
    """The session's time by phase (bench/instruments/measure.py TIME_PHASES), written into environment.json."""
    return request.config.stash[_STATE]["stopwatch"]


@pytest.fixture(scope="session")
def run_dir(request: pytest.FixtureRequest) -> Path:
    """This session's run directory (a worker's own under `lstm-bench run`: RUN_DIR/processes/K)."""
    return request.config.stash[_STATE]["run_dir"]


@pytest.fixture(scope="session")
def full_worker(request: pytest.FixtureRequest) -> bool:
    """Whether this process measures everything (memory, FLOPs, first call, what ran) or times only."""
    return request.config.stash[_STATE]["worker"][0] == 0


@pytest.fixture(scope="session")
def runtimes_started(request: pytest.FixtureRequest) -> None:
    """The device's libraries and the grid's compilers started once, before the first cell is timed."""
    state = request.config.stash[_STATE]
    with state["stopwatch"].phase("start-up"):
        start_runtimes(torch.device(state["options"].device), {lstm_impls.get(name).runtime
                                                                for name in state["options"].impls})


@pytest.fixture(scope="session")
def gemm_peaks(request: pytest.FixtureRequest, runtimes_started: None) -> dict[str, float]:
    """The device's own GEMM peak (GFLOP/s) per compute dtype of the grid, measured once per run by the process that
    measures everything (worker 0) and written into environment.json (gemm_peak_gflops); {} in the others."""
    from bench.instruments.peak import PEAK_SIZE, gemm_peak_gflops

    state = request.config.stash[_STATE]
    if state["worker"][0] != 0:
        return {}
    options = state["options"]
    dtypes = dict.fromkeys([*options.dtypes, *(amp for amp in options.amps if amp != "none")])
    with state["stopwatch"].phase("start-up"):
        peaks = {dtype: gemm_peak_gflops(options.device, dtype) for dtype in dtypes}
    size = PEAK_SIZE[torch.device(options.device).type]
    state["env"] |= {"gemm_peak_gflops": peaks, "gemm_peak_size": size}
    try:
        write_environment(state["run_dir"], state["env"])
    except OutputError as exc:
        stop(request.config, exc)
    return peaks


class Recorder:
    """The run's CsvRecorder; a row that cannot be written ends the session (stop) instead of failing each cell."""

    def __init__(self, config: pytest.Config):
        self.config = config
        try:
            self.csv = CsvRecorder(config.stash[_STATE]["run_dir"] / CSV_NAME)
        except OutputError as exc:
            stop(config, exc)

    def write(self, row: dict) -> None:
        state = self.config.stash[_STATE]
        try:
            self.csv.write(row)
            if state["in_run"]:  # one of `lstm-bench run`'s workers: the run's own CSV has the row too
                from bench.console import row_line
                from bench.workers import combine

                combine(state["run_dir"].parent.parent)
                capture = self.config.pluginmanager.getplugin("capturemanager")
                with capture.global_and_fixture_disabled():  # the run's console line for the cell (bench/console.py)
                    print(row_line(Cell.from_row(row).id, row), flush=True)
        except OutputError as exc:
            stop(self.config, exc)


@pytest.fixture(scope="session")
def recorder(request: pytest.FixtureRequest) -> Recorder:
    return Recorder(request.config)
