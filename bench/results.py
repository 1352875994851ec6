"""A run directory, `RESULTS_DIR/<run-id>/`: measurements.csv, environment.json and pytest-benchmark's
benchmark.json. The suite writes it (rows appended and flushed one at a time); `load_run` reads it
back, checked, for every reader of results (report, compare, merge)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .grid import CELL_KEY, COLUMNS, Cell

if TYPE_CHECKING:
    import pandas as pd

CSV_NAME = "measurements.csv"
ENV_NAME = "environment.json"
JSON_NAME = "benchmark.json"  # a resumed run adds benchmark-2.json, benchmark-3.json, ...
GRID_NAME = "grid.json"  # the ids of the cells this run was asked to measure: what a merge expects
#: columns a file needs to be read as measurements; the others may be missing (older schema) and read as empty.
REQUIRED = ("impl", "device", "dtype", "mode", "batch_size", "hidden_size", "seq_len", "status")
TEXT_COLUMNS = ("impl", "device", "dtype", "mode", "status", "error", "description", "run_id", "notes")


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


class CsvRecorder:
    """Appends one complete row per finished cell: written, flushed and fsynced as one line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append(dict(zip(COLUMNS, COLUMNS)))

    def write(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"columns not in the schema: {sorted(unknown)}")
        self._append({k: _cell_text(v) for k, v in row.items()})

    def _append(self, row: dict) -> None:
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=COLUMNS, lineterminator="\n").writerow(row)
        with open(self.path, "a", newline="") as f:
            f.write(line.getvalue())  # one write of one whole line
            f.flush()
            os.fsync(f.fileno())


def failure_status(exc: BaseException) -> str:
    """oom for allocation failures (CUDA OutOfMemoryError; the CPU allocator's RuntimeError), else error."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text):
        return "oom"
    return "error"


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def row_key(row: dict) -> tuple:
    """A row's cell, as CELL_KEY values (strings, so a row read back from the CSV compares equal)."""
    defaults = {"world_size": "1"}  # rows written before the column existed were single-process
    return tuple(str(row[k]) if row.get(k) not in (None, "") else defaults.get(k, "") for k in CELL_KEY)


def cell_key(cell: Cell) -> tuple:
    return row_key(cell.columns())


def resume(csv_path: Path, cells: list[Cell]) -> list[Cell]:
    """The cells still to measure in a run directory that may hold an earlier attempt's rows.

    Cells recorded ok are done. The rows of the others (failures, or cells a killed run left
    unfinished) are dropped from the file, atomically, before they are measured again: a resumed
    run never holds two rows for one cell.
    """
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return cells
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames
    done = {row_key(r) for r in rows if r.get("status") == "ok"}
    todo = [c for c in cells if cell_key(c) not in done]
    again = {cell_key(c) for c in todo}
    kept = [r for r in rows if row_key(r) not in again]
    if len(kept) < len(rows) or header != list(COLUMNS):  # (an older schema is rewritten in this one)
        tmp = csv_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in kept)
        os.replace(tmp, csv_path)
    return todo


def benchmark_json_path(run_dir: Path) -> Path:
    """Where this session's pytest-benchmark JSON goes: benchmark.json, or the next free benchmark-N.json."""
    path, n = run_dir / JSON_NAME, 1
    while path.exists():
        n += 1
        path = run_dir / f"benchmark-{n}.json"
    return path


def _cell_text(value) -> str:
    """Full precision (repr), never rounded; None and NaN are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_environment(run_dir: Path, env: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ENV_NAME).write_text(json.dumps(env, indent=2, default=str) + "\n")


#: environment fields that must agree for two runs' rows to be read side by side (compared or merged),
#: or the difference measures the setup rather than the code
ENV_KEYS = ("device", "gpu_name", "torch", "cuda", "cpu_capability")  # ATen's vector kernels and oneDNN's by ISA
RECORDED_LATER = ("cpu_capability",)  # compared only where both runs recorded it


def environment_differences(baseline: dict, new: dict) -> dict[str, tuple]:
    """ENV_KEYS whose values differ: name -> (baseline's, new's). A device is compared by type (cuda:0 ~ cuda)."""
    def value(env: dict, key: str):
        v = env.get(key)
        return str(v).split(":")[0] if key == "device" and v is not None else v

    def differs(key: str) -> bool:  # a run made before cpu_capability was recorded does not know it
        a, b = value(baseline, key), value(new, key)
        return a != b and not (key in RECORDED_LATER and (a is None or b is None))

    return {k: (value(baseline, k), value(new, k)) for k in ENV_KEYS if differs(k)}


class RunError(Exception):
    """A run directory that cannot be read; the message is one line for the user."""


@dataclass
class Run:
    """One run directory, read back: its rows, its environment and pytest-benchmark's raw round times."""

    path: Path
    measurements: pd.DataFrame
    environment: dict = field(default_factory=dict)
    #: cell id (bench.grid.Cell.id) -> every timed round's seconds, from benchmark.json (empty without one)
    rounds_s: dict[str, list[float]] = field(default_factory=dict)
    #: cell id -> the machine-speed probe's seconds before each of those rounds and after the last (none in
    #: runs made before the probe)
    probe_s: dict[str, list[float]] = field(default_factory=dict)


def load_run(path: str | Path) -> Run:
    """Read and check a run directory; RunError (one line) when it is missing, not a measurements file, or damaged."""
    import pandas as pd

    path = Path(path)
    csv_path = path / CSV_NAME
    if not csv_path.is_file():
        raise RunError(f"{path}: no {CSV_NAME} (not a run directory)")
    text = csv_path.read_text(errors="replace")
    if text and not text.endswith("\n"):
        raise RunError(f"{csv_path}: the last row is cut off (a damaged or truncated file)")
    header = next(csv.reader(io.StringIO(text)), [])
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        what = f"lacks {', '.join(missing)}" if missing else f"has unknown columns {', '.join(unknown[:5])}"
        raise RunError(f"{csv_path}: not a measurements file ({what})")
    try:
        df = pd.read_csv(io.StringIO(text), dtype={c: "string" for c in TEXT_COLUMNS}, on_bad_lines="error")
    except (pd.errors.ParserError, ValueError) as exc:
        raise RunError(f"{csv_path}: damaged ({str(exc).strip().splitlines()[0]})") from None
    for column in COLUMNS:
        if column not in df:
            df[column] = pd.NA
    for column in set(COLUMNS) - set(TEXT_COLUMNS):
        try:
            df[column] = pd.to_numeric(df[column])
        except (ValueError, TypeError):
            raise RunError(f"{csv_path}: damaged (column {column} holds a value that is not a number)") from None
    df = df[list(COLUMNS)]
    environment = _read_json(path / ENV_NAME) or {}
    rounds, probes = {}, {}
    for json_path in sorted(path.glob("benchmark*.json"), key=lambda p: (len(p.name), p.name)):  # resumes last
        for bench in (_read_json(json_path) or {}).get("benchmarks", []):
            cell_id = bench.get("param") or bench.get("name", "")
            data = (bench.get("stats") or {}).get("data")
            if data:
                rounds[cell_id] = [float(x) for x in data]
                probe = (bench.get("extra_info") or {}).get("probe_s") or []
                if len(probe) in (len(data), len(data) + 1):  # + 1: the probe after the last round
                    probes[cell_id] = [float(x) for x in probe]
                else:
                    probes.pop(cell_id, None)  # a later measurement without a probe replaces one with it
    return Run(path=path, measurements=df, environment=environment, rounds_s=rounds, probe_s=probes)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: damaged JSON ({exc})") from None


def summary(csv_path: Path) -> str:
    """A short table of a run for the terminal."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    if df.empty:
        return "(no rows)"
    mib = 2**20
    table = pd.DataFrame({
        "impl": df["impl"], "mode": df["mode"], "dtype": df["dtype"], "B": df["batch_size"], "H": df["hidden_size"],
        "T": df["seq_len"], "status": df["status"],
        "step_ms": df["step_ms_median"].round(3), "tokens/s": df["tokens_per_s"].round(0),
        "first_ms": df["first_step_ms"].round(1), "peak_MiB": (df["peak_bytes"] / mib).round(3),
        "act_MiB": (df["activation_bytes"] / mib).round(3), "GFLOP/s": df["achieved_gflops"].round(2),
    })
    return table.to_string(index=False, na_rep="-")
