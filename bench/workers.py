"""`lstm-bench run` in fresh worker processes: every cell timed in each, the row's figures between them.

Why: the rounds of one process do not sample what moves between runs (thread placement, clock
frequency, memory layout, the neighbours); one process's median can sit 10-50% from another's.
pyperf's answer is worker processes and the spread between them; Abedi & Brecht (ICPE 2017) show
that randomized multiple interleaved trials are what make results repeat on shared machines.

So a run starts `processes` fresh `pytest bench/` sessions, one after another, never side by side.
Each measures every cell of the grid (`--worker k/n`; worker 0 in the grid's order, each later one in
a random order of its own; past the first two, the cells a time budget leaves time for) into
RUN_DIR/processes/k/, a run directory of its own, row by row: a killed run resumes where it stopped.
Worker 0 measures everything (first call with cold compile caches, what ran, memory, FLOPs);
the others time only, with warm compile caches. The timed rounds are split between them: each gets
1/n of the rounds and of the time a single process would, but at least MIN_WORKER_ROUNDS and
MIN_WORKER_TIME_S. After each row a worker writes, the run's
measurements.csv is written anew from what the workers have so far (`combine`): worker 0's row, with
step_ms_median the median of every round of every worker (pooled; `between`), each worker's own in
`step_ms_processes`, their spread in `step_ms_between_pct` and the 95% interval in `step_ms_ci_low`/`_high`.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .console import Progress, split_row_line
from .grid import BUDGET_FREE_PROCESSES, MIN_ROUNDS, Cell, is_d2l
from .instruments.measure import COMPILE_CACHE_ENV, relative_rounds
from .readers import stats
from .results import (
    CSV_NAME,
    ENV_NAME,
    GRID_NAME,
    PROCESSES_DIR,
    cell_text,
    process_medians,
    read_json,
    read_records,
    read_rounds,
    row_key,
    write_environment,
    write_json,
    write_rows,
)

#: pytest-benchmark's --benchmark-max-time default (seconds of rounds per cell), split between the workers
RUN_MAX_TIME_S = 1.0
#: but a worker times at least this many rounds and seconds of rounds per cell: with a third of 20 rounds (7), a
#: process's median relative step had a sampling error of 3-4% of its own at H 512 (bootstrap over its rounds),
#: as large as the whole spread between processes there (three default runs with 10 and 0.5 s: 664-684 s)
MIN_WORKER_ROUNDS = 10
MIN_WORKER_TIME_S = 0.5


def worker_dir(run_dir: Path, k: int) -> Path:
    return run_dir / PROCESSES_DIR / str(k)


def rounds_options(count: int, given: list[str]) -> list[str]:
    """pytest-benchmark options that give one worker its share of a run's rounds, unless the user gave their own
    (then they hold per process)."""
    options = []
    if not any(a.startswith("--benchmark-min-rounds") for a in given):
        options.append(f"--benchmark-min-rounds={max(MIN_WORKER_ROUNDS, math.ceil(MIN_ROUNDS / count))}")
    if not any(a.startswith("--benchmark-max-time") for a in given):
        options.append(f"--benchmark-max-time={max(MIN_WORKER_TIME_S, RUN_MAX_TIME_S / count):g}")
    return options


def run_workers(run_dir: Path, count: int, suite_argv: list[str], log=print, max_count: int | None = None,
                cells: int = 0, verbose: bool = False, deadline: float | None = None) -> int:
    """Start `count` workers one after another on the suite's argv (the suite's directory first, then the grid
    options, no --results-dir/--run-id); combine after each. Then, up to `max_count` workers in all, one more
    at a time for the cells that have not settled (`unsettled`), timing only those, the least settled first and as
    many as fit before `deadline` (a time.time(); None: all of them) at what the earlier timing processes took
    (`plan_added`). Past the first BUDGET_FREE_PROCESSES, one of the first `count` that would not end before the
    deadline is cut the same way. Each worker's output goes to its directory's pytest.log; `log` gets a line per
    finished cell with the run's progress over `cells` cells a process (bench/console.py), and every line of the
    workers' with `verbose`. Returns the worst exit code (2 as soon as one was stopped: a failed write, ^C)."""
    code = 0
    started = time.time()
    load_start = os.getloadavg()
    max_count = max(count, max_count or count)
    suite, options = suite_argv[0], suite_argv[1:]
    extra: dict[int, int] = {}  # a worker that timed only some cells (the budget's) -> how many
    planned: dict[str, dict] = {}  # a budgeted worker -> its cells, the unsettled ones, its estimate, what it took (s)
    phases: dict[str, dict[str, float]] = {}  # a worker -> its time by phase (s)
    seconds: dict[int, dict[str, float]] = {}  # a worker -> a cell's id -> seconds from the worker's previous cell line
    walls: dict[int, float] = {}  # a worker that ran in this call -> its wall time (s)
    progress = Progress(cells, count)
    # each cell's compile caches for the run: cold in worker 0, warm in the others (measure.cell_caches)
    caches = tempfile.TemporaryDirectory(prefix="lstm-bench-compile-")
    worker_env = os.environ | {COMPILE_CACHE_ENV: caches.name}

    def write_how(finished: int) -> None:  # how the run was made so far, into its environment.json
        how = {"count": count, "max_count": max_count, "finished": finished, "extra_cells": extra,
               "budget_end_s": None if deadline is None else round(deadline - started, 1), "planned": planned,
               "cell_s": {str(j): {i: round(x, 2) for i, x in v.items()} for j, v in seconds.items()},
               "started_unix": started, "load_average_start": load_start, "load_average_end": os.getloadavg(),
               "wall_s": time.time() - started, "time_by_phase_s": phases}
        first = {key: v for key, v in (read_json(worker_dir(run_dir, 0) / ENV_NAME) or {}).items()
                 if key != "time_by_phase_s"}
        write_environment(run_dir, first | {"processes": how})

    with caches:
        for k in range(max_count):
            targets, ids, candidates = [suite], [], []
            budgeted = k >= count or (deadline is not None and k >= BUDGET_FREE_PROCESSES)
            if budgeted:  # past the first two: the cells that fit the budget, all of them where a first one fits
                costs = process_costs(seconds, walls, timing=[j for j in walls if j > 0] or list(walls))
                left_s = None if deadline is None else deadline - time.time()
                whole_s = costs.estimate_s(list(costs.cell_s)) if k < count and costs is not None else None
                if k < count and (left_s is None or whole_s is None or whole_s <= left_s):
                    budgeted = False  # a first process that fits: every cell, as planned
            if budgeted:
                candidates = unsettled(run_dir)
                ids, estimate_s = plan_added(candidates, costs, left_s)
                if not ids:
                    if candidates:
                        planned[str(k)] = {"cells": 0, "unsettled": len(candidates), "left_s": round(left_s, 1),
                                           "fixed_s": round(costs.fixed_s, 1)}
                        log(f"lstm-bench run: {len(candidates)} cells have not settled, but the time budget leaves "
                            f"{max(left_s, 0):.0f} s, too little for another process (its start-up alone ~"
                            f"{costs.fixed_s:.0f} s; --budget-s sets the budget)")
                        write_how(k)
                    break
                targets, extra[k] = [f"{Path(suite) / SUITE_FILE}::test_cell[{i}]" for i in ids], len(ids)
                planned[str(k)] = {"cells": len(ids), "unsettled": len(candidates), "estimate_s": estimate_s}
                progress.start_process(len(ids), added=k >= count)
            else:
                progress.start_process(cells)
            argv = [sys.executable, "-m", "pytest", *targets, *options, "--results-dir", str(run_dir / PROCESSES_DIR),
                    "--run-id", str(k), f"--worker={k}/{max_count}", *rounds_options(count, suite_argv)]
            if k < count and not ids:
                log(f"lstm-bench run: process {k + 1} of {count}" + (" (times, memory, FLOPs, first call)" if k == 0
                                                                      else " (times only)"))
            elif k < count:
                log(f"lstm-bench run: process {k + 1} of {count}: every cell would take ~{whole_s:.0f} s, more than "
                    f"the {left_s:.0f} s the time budget leaves: it times the {len(ids)} least settled of the "
                    f"{len(candidates)} cells whose processes have not settled (~{estimate_s:.0f} s)")
            elif len(ids) == len(candidates):
                log(f"lstm-bench run: process {k + 1} (of at most {max_count}): times only the {len(ids)} cells whose "
                    "processes have not settled")
            else:
                log(f"lstm-bench run: process {k + 1} (of at most {max_count}): times the {len(ids)} least settled of "
                    f"the {len(candidates)} cells whose processes have not settled, as many as the time budget leaves "
                    f"time for (~{estimate_s:.0f} s of {left_s:.0f} s)")
            mark = {"at": time.time()}
            worker_started = mark["at"]

            def on_line(line: str, k: int = k, mark: dict = mark) -> None:
                cell = _console(line, k, progress, log, verbose)
                if cell is not None:
                    now = time.time()
                    seconds.setdefault(k, {})[cell["id"]] = now - mark["at"]
                    mark["at"] = now

            returncode = _run_worker(argv, worker_env, worker_dir(run_dir, k), on_line)
            walls[k] = time.time() - worker_started
            if str(k) in planned:
                planned[str(k)]["took_s"] = round(walls[k], 1)
            if returncode == 2:  # stopped (a write failed, said on its stderr; or ^C): nothing more
                code = 2
                break
            if returncode:
                log(f"lstm-bench run: process {k + 1} exited with {returncode}: its output is in "
                    f"{worker_dir(run_dir, k) / LOG_NAME}")
            code = max(code, returncode)
            combine(run_dir)
            phases[str(k)] = (read_json(worker_dir(run_dir, k) / ENV_NAME) or {}).get("time_by_phase_s", {})
            write_how(k + 1)
            write_json(run_dir / GRID_NAME, read_json(worker_dir(run_dir, 0) / GRID_NAME) or [], indent=0)
    return code


LOG_NAME = "pytest.log"  # a worker's pytest output, in its directory


def _run_worker(argv: list[str], env: dict[str, str], where: Path, each_line) -> int:
    """One worker's pytest session, its output line by line into where/pytest.log and to each_line; its exit code."""
    where.mkdir(parents=True, exist_ok=True)
    with (where / LOG_NAME).open("a", encoding="utf-8") as log_file, subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
            preexec_fn=_die_with_parent) as proc:
        for line in proc.stdout:
            log_file.write(line)
            each_line(line.rstrip("\n"))
    return proc.returncode


def _console(line: str, k: int, progress: Progress, log, verbose: bool) -> dict | None:
    """What the console shows of a worker's line: a cell line with the run's progress, the worker's own messages
    (errors, notes), and everything else only when verbose. Returns the cell of a cell line, else None."""
    text, cell = split_row_line(line)
    # a worker's own messages, but not its "N cells to measure" (the console counts them), unless it resumed
    own = text.startswith(("lstm-bench", "ERROR", "Traceback")) and (
        "cells to measure" not in text or "recorded ok before" in text)
    if text.startswith("lstm-bench: error"):  # what stopped the worker: the run's error, on stderr
        print(text, file=sys.stderr, flush=True)
    elif text.strip() and (verbose or own):
        log(text)
    if cell is not None:
        log(progress.line(k, cell))
    return cell


SUITE_FILE = "test_suite.py"


def unsettled(run_dir: Path) -> list[str]:
    """The ids of the run's ok cells whose processes have not settled, the least settled first, judged on what
    `compare` judges (each process's step relative to the probe where the rows have it, else its step time) with
    the cell's spread pooled with the run's typical one (stats.pooled_settle_pct): three processes that agree by
    chance do not settle a cell. The d2l config's cells come first (their row is the answer), and among the others
    one timed by a single process."""
    header, records, _ = read_records(run_dir / CSV_NAME)
    figures, answer = {}, set()
    for row in (dict(zip(header, r)) for r in records):
        if row.get("status") == "ok":
            cell = Cell.from_row(row)
            figures[cell.id] = (process_medians(row.get("relative_step_processes"))
                                or process_medians(row.get("step_ms_processes")))
            if is_d2l(cell):
                answer.add(cell.id)
    typical = stats.typical_sd(list(figures.values()))
    pct = {i: stats.pooled_settle_pct(values, typical) for i, values in figures.items()}
    ids = [i for i, p in pct.items() if not p / 100 <= stats.SETTLED_WITHIN]  # NaN (one process): not settled
    return sorted(ids, key=lambda i: (i not in answer, -math.inf if math.isnan(pct[i]) else -pct[i]))


@dataclass(frozen=True)
class Costs:
    """What a process that times only costs: per cell (its id) and, once, its start-up and first-time costs (s)."""

    cell_s: dict[str, float]
    fixed_s: float

    def cell(self, cell_id: str) -> float:
        """A cell's seconds; a cell never timed, the median cell's."""
        return self.cell_s[cell_id] if cell_id in self.cell_s else statistics.median(self.cell_s.values())

    def estimate_s(self, ids: list[str]) -> float:
        return self.fixed_s + sum(map(self.cell, ids))


def process_costs(seconds: dict[int, dict[str, float]], walls: dict[int, float], timing: list[int]) -> Costs | None:
    """The costs of an added process from the `timing` workers that ran in this call (each cell's seconds from the
    worker's previous cell line, and each worker's wall time): a cell's, the least any of them took for it; the fixed
    part, the median over them of what each took beyond its cells'. Once-a-process costs (start-up, TorchScript's
    optimizing passes) land in whichever cell came first, which the workers' random orders make another cell in
    another: the least takes them out of a cell, and so does `once_costs_out` within each worker, and every worker's
    part beyond its cells holds them (and what its cells took beyond their least: the most of two workers' held all
    of that, and an added process planned at 21.6 s took 13.3). None when no worker ran in this call (a resumed run
    whose first processes ran before)."""
    ran = [k for k in timing if seconds.get(k) and k in walls]
    if not ran:
        return None
    cell_s: dict[str, float] = {}
    for k in ran:
        for i, s in once_costs_out(seconds[k]).items():
            cell_s[i] = min(cell_s.get(i, math.inf), s)
    fixed_s = statistics.median(walls[k] - sum(cell_s[i] for i in seconds[k]) for k in ran)
    return Costs(cell_s, max(fixed_s, 0.0))


def once_costs_out(seconds: dict[str, float]) -> dict[str, float]:
    """One worker's seconds per cell (keyed by cell id, in its order), the first cell of each implementation given no
    more than the most of that implementation's others: the once-a-process costs (the worker's start-up, TorchScript's
    optimizing passes, Inductor's first use) land in it, and one worker alone cannot tell them from the cell's own
    (the third default process is planned from the second alone: its first cell, `scripted` at H512, took 28 s)."""
    by_impl: dict[str, list[str]] = {}
    for i in seconds:
        by_impl.setdefault(i.split("-", 1)[0], []).append(i)
    out = dict(seconds)
    for ids in by_impl.values():
        if len(ids) > 1:
            out[ids[0]] = min(seconds[ids[0]], max(seconds[i] for i in ids[1:]))
    return out


def plan_added(candidates: list[str], costs: Costs | None, left_s: float | None) -> tuple[list[str], float | None]:
    """The cells an added process times, and its estimated seconds: the candidates (least settled first) that fit in
    `left_s` at `costs`, in their order, a costly one passed over for later ones that fit; all of them with no budget
    or no costs (the estimate then None)."""
    if left_s is None or costs is None:
        return list(candidates), None
    chosen, spent = [], costs.fixed_s
    for i in candidates:
        if spent + costs.cell(i) <= left_s:
            chosen.append(i)
            spent += costs.cell(i)
    return chosen, spent if chosen else None


def _die_with_parent() -> None:
    """In the worker, before it starts (Linux): the kernel kills it when the run that started it dies, so a
    killed run leaves no worker behind to write beside the run that resumes it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def worker_dirs(run_dir: Path) -> list[Path]:
    """The run's worker directories that hold rows, in worker order."""
    found = [d for d in (run_dir / PROCESSES_DIR).glob("*") if d.name.isdigit() and (d / CSV_NAME).is_file()]
    return sorted(found, key=lambda d: int(d.name))


def combine(run_dir: Path) -> int:
    """RUN_DIR/measurements.csv from the workers' directories so far (after each row a worker writes, and after
    each worker); returns the rows written. A cell's row is worker 0's; its time is between the workers that
    measured it ok. Rounds are pooled from the workers' benchmark.json, which each writes when it ends."""
    if not (worker_dir(run_dir, 0) / CSV_NAME).is_file():
        return 0
    dirs = worker_dirs(run_dir)
    medians: dict[tuple, dict[str, list[float]]] = {}  # cell -> column -> one value a worker
    rounds: dict[tuple, list[list[float]]] = {}  # cell -> each worker's rounds (s), where its benchmark.json has them
    relative: dict[tuple, list[list[float]]] = {}  # cell -> each worker's rounds relative to their probes
    worker_rows = []
    for d in dirs:
        header, records, _ = read_records(d / CSV_NAME)  # rows as the CSV holds them: text, never re-typed
        rows = [dict(zip(header, r)) for r in records]
        worker_rows.append(rows)
        rounds_s, probes_s = read_rounds(d)  # its benchmark.json; the CSV is read above, once
        for row in rows:
            if row.get("status") == "ok" and row.get("step_ms_median"):
                key, cell_id = row_key(row), Cell.from_row(row).id
                for column in PER_PROCESS:
                    if row.get(column):
                        medians.setdefault(key, {}).setdefault(column, []).append(float(row[column]))
                if cell_id in rounds_s:
                    rounds.setdefault(key, []).append(rounds_s[cell_id])
                    if cell_id in probes_s:
                        relative.setdefault(key, []).append(relative_rounds(rounds_s[cell_id], probes_s[cell_id]))
    combined = []
    for row in worker_rows[0]:
        key = row_key(row)
        if row.get("status") == "ok" and key in medians:
            row = row | {k: cell_text(v) for k, v in between(medians[key], rounds.get(key, []),
                                                              relative.get(key, []), row).items()}
        combined.append(row)
    write_rows(run_dir / CSV_NAME, combined)
    return len(combined)


def real_tokens(row: dict) -> int:
    """A row's real tokens per step (B * T in a row from before the column)."""
    value = row.get("real_tokens")
    return int(float(value)) if value not in (None, "") else int(row["batch_size"]) * int(row["seq_len"])


#: a worker's own figures that the run's row takes the median of
PER_PROCESS = ("step_ms_median", "relative_step_median", "probe_ms_median", "forward_ms_median",
               "backward_ms_median", "optimizer_ms_median")


def pooled_median(rounds: list[list[float]], process_medians: list[float]) -> float:
    """The median of every process's rounds pooled, where each process's rounds are at hand; else (a worker that
    has not yet written its benchmark.json) the median of the processes' medians."""
    if len(rounds) == len(process_medians):
        return statistics.median([x for process in rounds for x in process])
    return statistics.median(process_medians)


def between(per_process: dict[str, list[float]], rounds_s: list[list[float]], relative: list[list[float]],
            row: dict) -> dict:
    """A row's time columns from its processes' own figures (PER_PROCESS: step ms, step / probe, probe ms), and
    from their rounds (s; each round relative to its probes) where every process's are at hand.

    The row's step and relative-step medians are those of every round of every process, pooled: over three
    sets of three default runs they agreed between runs at least as well as the median of the processes' medians
    (cells within 5% of each other: 47, 50, 54 of 54 against 43, 50, 52). Until each process has written its
    benchmark.json (when it ends) they are the median of the processes' medians."""
    medians = per_process["step_ms_median"]
    ms_by_process = [[1e3 * s for s in process] for process in rounds_s]
    ms = sorted(x for process in ms_by_process for x in process)
    median = pooled_median(ms_by_process, medians)
    low, high = stats.typical_interval(medians)
    cols = {"step_ms_median": median, "processes": len(medians),
            "step_ms_processes": ";".join(repr(float(m)) for m in medians),
            "step_ms_between_pct": stats.between_pct(medians), "step_ms_ci_low": low, "step_ms_ci_high": high,
            "tokens_per_s": real_tokens(row) / (median / 1e3)}
    per_relative = per_process.get("relative_step_median", [])
    if len(per_relative) == len(medians):
        cols |= {"relative_step_median": pooled_median(relative, per_relative),
                 "relative_step_processes": ";".join(repr(float(r)) for r in per_relative),
                 "relative_between_pct": stats.between_pct(per_relative),
                 "probe_ms_median": statistics.median(per_process["probe_ms_median"])}
    cols |= {column: statistics.median(values) for column, values in per_process.items()
             if column.endswith("ms_median") and column != "step_ms_median" and len(values) == len(medians)}
    if ms:  # every round of every process: their spread within and between
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], ms[0], ms[0])
        cols |= {"step_ms_min": ms[0], "step_ms_mean": statistics.fmean(ms), "step_ms_iqr": q3 - q1,
                 "step_ms_stddev": statistics.stdev(ms) if len(ms) > 1 else 0.0, "rounds": len(ms)}
    if row.get("flops_per_step"):
        cols["achieved_gflops"] = float(row["flops_per_step"]) / (median / 1e3) / 1e9
        if row.get("peak_share") and row.get("achieved_gflops"):  # the same peak, the pooled median's rate
            cols["peak_share"] = float(row["peak_share"]) * cols["achieved_gflops"] / float(row["achieved_gflops"])
    return cols
