"""`lstm-bench merge`: run directories (shards of one sweep, or runs from different machines) into one.

Each part keeps its environment: the merged environment.json holds what all parts share, and under
"parts" each part's own environment with the ids of the cells it measured. Cells measured twice
are refused (they would be averaged by nobody and trusted by everyone); so are parts whose device
type, GPU model, torch or CUDA differ, unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.grid import CELL_KEY, COLUMNS, Cell
from bench.results import (
    CSV_NAME,
    GRID_NAME,
    JSON_NAME,
    Run,
    RunError,
    environment_differences,
    load_run,
    read_json,
    writable_dir,
    write_environment,
    write_json,
)


class MergeError(RunError):
    """Parts that cannot be merged; the message is one line for the user."""


@dataclass
class Merged:
    out: Path
    rows: int
    missing: list[str]  # ids of cells some part was asked to measure and no part recorded


def cell_id(row: pd.Series) -> str:
    return Cell.from_row(row).id


def merge_runs(parts: list[Path], out: Path, *, allow_mixed: bool = False, replace: bool = False) -> Merged:
    """Write one run directory at out from parts: rows, every part's raw round times, environments.

    An out that holds measurements already is refused unless replace (torchrun's rank 0 merges its
    ranks into the run directory again when a run is resumed).
    """
    runs = [load_run(p) for p in parts]
    if not runs:
        raise MergeError("nothing to merge: give run directories")
    for run in runs[1:]:
        diffs = environment_differences(runs[0].environment, run.environment)
        if diffs and not allow_mixed:
            what = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diffs.items())
            raise MergeError(f"environments differ ({runs[0].path} and {run.path}: {what}); "
                             "--allow-mixed merges anyway")
    frames = [r.measurements.assign(world_size=r.measurements.world_size.fillna(1)) for r in runs]
    rows = pd.concat(frames, ignore_index=True)
    collisions = rows[rows.duplicated(list(CELL_KEY), keep=False)]
    if not collisions.empty:
        first = cell_id(collisions.iloc[0])
        where = [str(r.path) for r in runs if first in {cell_id(row) for _, row in r.measurements.iterrows()}]
        raise MergeError(f"cell {first} is measured more than once ({len(collisions)} colliding rows in all; "
                         f"in {', '.join(where)})")
    expected = set().union(*(_expected(r) for r in runs))  # read (and checked) before anything is written
    writable_dir(out, "--out")
    if (out / CSV_NAME).exists() and not replace:
        raise MergeError(f"{out} already holds a {CSV_NAME}; choose an empty --out")
    rows[list(COLUMNS)].to_csv(out / CSV_NAME, index=False)
    write_environment(out, merged_environment(runs))
    _merge_benchmark_json(runs, out / JSON_NAME)
    recorded = {cell_id(row) for _, row in rows.iterrows()}
    write_json(out / GRID_NAME, sorted(expected | recorded), indent=0)
    return Merged(out=out, rows=len(rows), missing=sorted(expected - recorded))


def merged_environment(runs: list[Run]) -> dict:
    """What every part's environment shares, plus each part's own under "parts"."""
    envs = [r.environment for r in runs]
    shared = {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}
    shared["parts"] = [{"path": str(r.path), "environment": r.environment,
                        "cells": sorted(cell_id(row) for _, row in r.measurements.iterrows())} for r in runs]
    return shared


def _expected(run: Run) -> set[str]:
    path = run.path / GRID_NAME
    ids = read_json(path)
    if ids is None:
        return set()
    if not isinstance(ids, list):
        raise MergeError(f"{path}: damaged (not a list of cell ids)")
    return set(map(str, ids))


def _merge_benchmark_json(runs: list[Run], path: Path) -> None:
    """One pytest-benchmark JSON holding every part's benchmarks (with their raw rounds)."""
    merged: dict | None = None
    for run in runs:
        for part in sorted(run.path.glob("benchmark*.json"), key=lambda p: (len(p.name), p.name)):
            data = read_json(part)
            if merged is None:
                merged = data
            else:
                merged["benchmarks"].extend(data.get("benchmarks", []))
    if merged is not None:
        write_json(path, merged, indent=1)
