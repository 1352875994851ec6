"""What `lstm-bench run` prints while it runs: one line per cell as a worker finishes it, with the run's progress,
and at the end where the run's time went.

The workers' pytest sessions (bench/workers.py) write everything they print into their directory's `pytest.log`;
the console shows only their cell lines (ROW_MARK) and their own `lstm-bench` messages, or every line with
`--verbose`. Each line is whole and plain, so a file or a pipe reads as the terminal does.
"""

from __future__ import annotations

import json
import time

from .instruments.measure import TIME_PHASES

#: how a worker marks the line it prints for each cell it finished (a JSON object follows)
ROW_MARK = "lstm-bench-row "
ROW_FIELDS = ("status", "error", "step_ms_median", "step_ms_iqr", "relative_step_median", "peak_bytes")
MIB = 2**20


def row_line(cell_id: str, row: dict) -> str:
    """A worker's line for one finished cell: what the console shows of it."""
    return ROW_MARK + json.dumps({"id": cell_id} | {k: row.get(k) for k in ROW_FIELDS}, default=str)


def parse_row_line(line: str) -> dict | None:
    """The cell of a worker's line, or None when the line is not a cell line."""
    if not line.startswith(ROW_MARK):
        return None
    try:
        return json.loads(line[len(ROW_MARK):])
    except json.JSONDecodeError:
        return None


def split_row_line(line: str) -> tuple[str, dict | None]:
    """A worker's line -> the text before a cell line that pytest left unfinished (its verbose test name), and the
    cell, or (line, None)."""
    at = line.find(ROW_MARK)
    return (line, None) if at < 0 else (line[:at], parse_row_line(line[at:]))


def minutes(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Cells done of all the run's processes, the time since the run began, and an estimate of what is left (at the
    pace of the process now running, for its cells and the processes still to come)."""

    def __init__(self, cells: int, processes: int):
        self.total, self.done, self.started = cells * processes, 0, time.time()
        self.process_started, self.process_done, self.process_cells = self.started, 0, cells
        self.processes_left, self.grid_cells = processes, cells

    def start_process(self, cells: int, added: bool = False) -> None:
        """A worker begins on `cells` cells (added: one the run adds past its first processes; else one of those,
        which the time budget may have cut to fewer than the grid's)."""
        if added:
            self.total += cells
        else:
            self.processes_left -= 1
            self.total -= self.grid_cells - cells
        self.process_started, self.process_done, self.process_cells = time.time(), 0, cells

    def line(self, k: int, cell: dict) -> str:
        """The console's line for a cell worker k (0-based) finished."""
        self.done += 1
        self.process_done += 1
        now = time.time()
        pace = (now - self.process_started) / self.process_done
        left = pace * (self.process_cells - self.process_done + self.processes_left * self.process_cells)
        done = f"{self.done:>{len(str(self.total))}}/{self.total}"
        return f"[{done} {minutes(now - self.started)}, ~{minutes(left)} left] process {k + 1}: {cell_text(cell)}"


def cell_text(cell: dict) -> str:
    """A finished cell in words: its step (median, with the rounds' IQR in %), relative to the probe, peak, status."""
    parts = [f"{cell['id']:<44}"]
    ms, iqr = cell.get("step_ms_median"), cell.get("step_ms_iqr")
    if ms:
        parts.append(f"{ms:9.2f} ms" + (f" (IQR {100 * iqr / ms:4.1f}%)" if iqr is not None else ""))
    if cell.get("relative_step_median"):
        parts.append(f"{cell['relative_step_median']:6.2f}x probe")
    if cell.get("peak_bytes"):
        parts.append(f"peak {cell['peak_bytes'] / MIB:8.2f} MiB")
    status = cell.get("status") or "?"
    parts.append(status if status == "ok" else f"{status}: {cell.get('error') or ''}".strip())
    return "  ".join(parts)


def time_table(by_process: dict[str, dict[str, float]], report_s: float | None = None) -> str:
    """Where the run's time went: seconds by phase (bench/instruments/measure.py TIME_PHASES), a row per process."""
    phases = [p for p in TIME_PHASES if any(p in v for v in by_process.values())]
    lines = [f"{'':<12}" + "".join(f"{p:>{max(len(p), 6) + 2}}" for p in phases) + f"{'total':>9}"]
    for k in sorted(by_process, key=int):
        row = by_process[k]
        lines.append(f"{'process ' + str(int(k) + 1):<12}"
                     + "".join(f"{row.get(p, 0):>{max(len(p), 6) + 2}.1f}" for p in phases)
                     + f"{row.get('total', sum(row.get(p, 0) for p in phases)):>9.1f}")
    if report_s is not None:
        lines.append(f"{'report':<12}" + " " * sum(max(len(p), 6) + 2 for p in phases) + f"{report_s:>9.1f}")
    return "\n".join(lines)
