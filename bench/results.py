"""Where a run's results go: `RESULTS_DIR/<run-id>/` with measurements.csv, environment.json and
pytest-benchmark's benchmark.json. Rows are appended and flushed one at a time."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from pathlib import Path

from .grid import COLUMNS

CSV_NAME = "measurements.csv"


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


def _cell_text(value) -> str:
    """Full precision (repr), never rounded; None and NaN are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_environment(run_dir: Path, env: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2, default=str) + "\n")


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
