"""`lstm-bench merge`: run directories (shards of one sweep, or runs from different machines) into one.

Each part keeps its environment: the merged environment.json holds what all parts share, and under
"parts" each part's own environment with the ids of the cells it measured. Cells measured twice
are refused (they would be averaged by nobody and trusted by everyone); so are parts whose device
type, GPU model, torch or CUDA differ, unless asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.grid import CELL_KEY, COLUMNS, Cell
from bench.results import CSV_NAME, GRID_NAME, JSON_NAME, Run, RunError, load_run, write_environment

#: environment keys that must agree for rows to be read side by side
ENV_MUST_MATCH = ("device_type", "gpu_name", "torch", "cuda")


class MergeError(RunError):
    """Parts that cannot be merged; the message is one line for the user."""


@dataclass
class Merged:
    out: Path
    rows: int
    missing: list[str]  # ids of cells some part was asked to measure and no part recorded


def env_signature(env: dict) -> dict:
    """The environment facts that must agree, device type derived from the device ("cuda:1" -> "cuda")."""
    device = str(env.get("device", ""))
    return {"device_type": device.split(":")[0], **{k: env.get(k) for k in ENV_MUST_MATCH[1:]}}


def cell_id(row: pd.Series) -> str:
    """bench.grid.Cell.id of a row (input_size is the vocabulary)."""
    world = int(row["world_size"]) if pd.notna(row["world_size"]) else 1
    return Cell(row["impl"], row["device"], row["dtype"], row["mode"], int(row["batch_size"]),
                int(row["hidden_size"]), int(row["seq_len"]), int(row["input_size"]), world).id


def merge_runs(parts: list[Path], out: Path, *, allow_mixed: bool = False, replace: bool = False) -> Merged:
    """Write one run directory at out from parts: rows, every part's raw round times, environments.

    An out that holds measurements already is refused unless replace (torchrun's rank 0 merges its
    ranks into the run directory again when a run is resumed).
    """
    runs = [load_run(p) for p in parts]
    if not runs:
        raise MergeError("nothing to merge: give run directories")
    signatures = {json.dumps(env_signature(r.environment), sort_keys=True): r.path for r in runs}
    if len(signatures) > 1 and not allow_mixed:
        a, b = list(signatures.items())[:2]
        raise MergeError(f"environments differ ({a[1]}: {a[0]}; {b[1]}: {b[0]}); --allow-mixed merges anyway")
    frames = [r.measurements.assign(world_size=r.measurements.world_size.fillna(1)) for r in runs]
    rows = pd.concat(frames, ignore_index=True)
    collisions = rows[rows.duplicated(list(CELL_KEY), keep=False)]
    if not collisions.empty:
        first = cell_id(collisions.iloc[0])
        where = [str(r.path) for r in runs if first in {cell_id(row) for _, row in r.measurements.iterrows()}]
        raise MergeError(f"cell {first} is measured more than once ({len(collisions)} colliding rows in all; "
                         f"in {', '.join(where)})")
    out.mkdir(parents=True, exist_ok=True)
    if (out / CSV_NAME).exists() and not replace:
        raise MergeError(f"{out} already holds a {CSV_NAME}; choose an empty --out")
    rows[list(COLUMNS)].to_csv(out / CSV_NAME, index=False)
    write_environment(out, merged_environment(runs))
    _merge_benchmark_json(runs, out / JSON_NAME)
    expected = set().union(*(_expected(r) for r in runs))
    recorded = {cell_id(row) for _, row in rows.iterrows()}
    (out / GRID_NAME).write_text(json.dumps(sorted(expected | recorded), indent=0) + "\n")
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
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise MergeError(f"{path}: damaged JSON ({exc})") from None


def _merge_benchmark_json(runs: list[Run], path: Path) -> None:
    """One pytest-benchmark JSON holding every part's benchmarks (with their raw rounds)."""
    merged: dict | None = None
    for run in runs:
        for part in sorted(run.path.glob("benchmark*.json"), key=lambda p: (len(p.name), p.name)):
            data = json.loads(part.read_text())
            if merged is None:
                merged = data
            else:
                merged["benchmarks"].extend(data.get("benchmarks", []))
    if merged is not None:
        path.write_text(json.dumps(merged, indent=1) + "\n")
