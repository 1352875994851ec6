"""A run directory, `RESULTS_DIR/<run-id>/`: measurements.csv, environment.json and pytest-benchmark's
benchmark.json. The suite writes it (rows appended and flushed one at a time); `load_run` reads it
back, checked, for every reader of results (report, compare, merge). `prepare_run_dir` checks a run
directory can be written before a run starts, and heals what a killed run left torn."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .grid import CELL_KEY, COLUMNS, FULL_LENGTHS, KEY_DEFAULTS, Cell

if TYPE_CHECKING:
    import pandas as pd

CSV_NAME = "measurements.csv"
ENV_NAME = "environment.json"
JSON_NAME = "benchmark.json"  # a resumed run adds benchmark-2.json, benchmark-3.json, ...
PROCESSES_DIR = "processes"  # the worker processes' own run directories (bench/workers.py)
GRID_NAME = "grid.json"  # the ids of the cells this run was asked to measure: what a merge expects
#: columns a file needs to be read as measurements; the others may be missing (older schema) and read as empty.
REQUIRED = ("impl", "device", "dtype", "mode", "batch_size", "hidden_size", "seq_len", "status")
TEXT_COLUMNS = ("impl", "device", "dtype", "mode", "lengths", "amp", "status", "error", "description",
                "step_ms_processes", "relative_step_processes", "run_id", "notes")


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


class RunError(Exception):
    """A run directory that cannot be read; the message is one line for the user."""


class OutputError(Exception):
    """A place a command cannot write (a file where a directory should be, a read-only filesystem, a full
    disk); the message is one line for the user."""


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Make path (and its parents) if needed and prove a file can be made in it, before any work starts.

    The proof is a nameless temporary file (O_TMPFILE where the OS has it), so nothing is left
    behind; directories made here are removed again when the check fails. Permission bits alone
    would not do: root ignores them, and a read-only filesystem or /proc refuses root too.
    """
    path = Path(path)
    made = [p for p in [path, *path.parents] if not os.path.lexists(p)]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        for p in made:  # innermost first
            try:
                p.rmdir()
            except OSError:
                pass
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise OutputError(f"{what} {path}: cannot be written ({_os_reason(exc)}{where})") from None
    return path


def writable_file(path: str | Path, what: str = "output file") -> Path:
    """An existing path must be a writable regular file; a new one's directory is checked by writable_dir."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: cannot be written (permission denied)")
    writable_dir(path.parent, f"the directory of {what}")
    return path


class CsvRecorder:
    """Appends one complete row per finished cell: written, flushed and fsynced as one line.

    A write that fails (a full disk, a file made read-only) is undone (the file cut back to its last
    whole row) and raised as OutputError: the rows before it stay intact."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            empty = not self.path.exists() or self.path.stat().st_size == 0
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot be written ({_os_reason(exc)})") from None
        if empty:
            self._append(dict(zip(COLUMNS, COLUMNS)))

    def write(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"columns not in the schema: {sorted(unknown)}")
        self._append({k: cell_text(v) for k, v in row.items()})

    def _append(self, row: dict) -> None:
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=COLUMNS, lineterminator="\n").writerow(row)
        size = None
        try:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                size = f.tell()
                f.write(line.getvalue())  # one write of one whole line
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if size is not None:  # cut the part of the line that got in; cutting needs no space
                try:
                    os.truncate(self.path, size)
                except OSError:
                    pass  # left torn: the next run sets the piece aside (heal_csv)
            raise OutputError(f"{self.path}: a row could not be written ({_os_reason(exc)}); the rows before it "
                              "are intact") from None


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
    defaults = {k: str(v) for k, v in KEY_DEFAULTS.items()}  # rows written before a column existed: its default
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
    header, records, torn = read_records(csv_path)
    if torn:
        raise RunError(f"{csv_path}: the last row is cut off; heal_csv sets it aside first")
    rows = [dict(zip(header, record)) for record in records]
    done = {row_key(r) for r in rows if r.get("status") == "ok"}
    todo = [c for c in cells if cell_key(c) not in done]
    again = {cell_key(c) for c in todo}
    kept = [r for r in rows if row_key(r) not in again]
    if len(kept) < len(rows) or header != list(COLUMNS):  # (an older schema is rewritten in this one)
        write_rows(csv_path, kept)
    return todo


def write_rows(csv_path: Path, rows: list[dict]) -> None:
    """Replace csv_path by these rows in the schema, atomically (a temporary file, then a rename)."""
    tmp = csv_path.with_suffix(".tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, csv_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{csv_path}: cannot be rewritten ({_os_reason(exc)}); it is unchanged") from None


def read_text(path: Path, error: type[Exception] = RunError, label: str | None = None) -> str:
    """A file's text: UTF-8, or `error` (one line, naming the file as `label`) for an unreadable, binary or
    non-UTF-8 file. Results files and the training corpus are read through it."""
    label = label or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{label}: cannot be read ({_os_reason(exc)})") from None
    if b"\0" in data:
        raise error(f"{label}: not a text file (it holds NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: not UTF-8 text (byte {exc.start})") from None


def check_header(header: list[str], csv_path: Path) -> None:
    """RunError unless header names the REQUIRED columns and no column outside the schema."""
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        what = f"lacks {', '.join(missing)}" if missing else f"has unknown columns {', '.join(unknown[:5])}"
        raise RunError(f"{csv_path}: not a measurements file ({what})")


def split_records(text: str) -> tuple[list[list[str]], int, str]:
    """CSV text -> (its whole records, the offset where they end, the torn rest).

    A record is whole when it ends in a newline outside quotes. A run killed in the middle of a
    row's one write leaves the start of that row, however far it got (a quoted field cut inside,
    a row that ends early), only at the end of the file: that is the torn rest."""
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    consumed = [0]

    def feed():
        for line in lines:
            consumed[0] += 1
            yield line

    records, end, used = [], 0, 0
    reader = csv.reader(feed(), strict=True)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error:  # an open quote at the end of the text
            break
        chunk = "".join(lines[used:consumed[0]])
        if not chunk.endswith("\n"):
            break
        records.append(record)
        end += len(chunk)
        used = consumed[0]
    return records, end, text[end:]


def read_records(csv_path: Path) -> tuple[list[str], list[list[str]], str]:
    """measurements.csv -> (header, rows as lists, the torn rest); RunError (one line) for a file that is
    not measurements or has a damaged row before its end."""
    records, _, torn = split_records(read_text(csv_path))
    if not records:
        if torn:
            return [], [], torn  # even the header is cut off
        raise RunError(f"{csv_path}: empty (not a measurements file)")
    header, rows = records[0], records[1:]
    check_header(header, csv_path)
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):  # a torn row is only ever the rest after the last newline: this is damage
            raise RunError(f"{csv_path}: damaged (line {number} has {len(row)} fields, the header {len(header)})")
    return header, rows, torn


def _side_path(path: Path) -> Path:
    """Where a torn piece of path is kept: PATH.torn, or PATH.torn-2, ... (never read as results)."""
    side, n = path.with_name(path.name + ".torn"), 1
    while side.exists():
        n += 1
        side = path.with_name(f"{path.name}.torn-{n}")
    return side


def set_aside(path: Path, text: str) -> Path:
    """Keep a torn piece of path in its side file; the side file's path."""
    side = _side_path(path)
    try:
        side.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{side}: cannot be written ({_os_reason(exc)})") from None
    return side


def heal_csv(csv_path: Path) -> str | None:
    """Set aside a torn last row of measurements.csv (its cell is then measured again); what was done."""
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return None
    header, rows, torn = read_records(csv_path)
    if not torn:
        return None
    side = set_aside(csv_path, torn)
    write_rows(csv_path, [dict(zip(header, row)) for row in rows])
    return (f"{csv_path}: the last row was cut off (a run killed while writing it); set aside in {side.name}, "
            "its cell is measured again")


def heal_json(path: Path) -> str | None:
    """Set aside a JSON file that does not parse (a run killed while writing it); what was done."""
    if not path.is_file():
        return None
    try:
        json.loads(read_text(path))
        return None
    except (json.JSONDecodeError, RunError):
        pass
    side = _side_path(path)
    try:
        os.replace(path, side)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be set aside ({_os_reason(exc)})") from None
    return f"{path}: damaged JSON (a run killed while writing it?); set aside as {side.name}"


def prepare_run_dir(run_dir: Path) -> list[str]:
    """Before a run measures anything: the run directory can be written (OutputError), and what an
    earlier, killed attempt left torn is set aside (measurements.csv's last row, benchmark*.json,
    grid.json, environment.json). Returns one line per thing set aside. Safe to call twice."""
    writable_dir(run_dir, "run directory")
    for name in (CSV_NAME, ENV_NAME, GRID_NAME):
        writable_file(run_dir / name, name)
    notes = [heal_csv(run_dir / CSV_NAME)]
    notes += [heal_json(p) for p in sorted(run_dir.glob("benchmark*.json")) + [run_dir / GRID_NAME, run_dir / ENV_NAME]]
    asked = read_json(run_dir / GRID_NAME)
    if asked is not None and not (isinstance(asked, list) and all(isinstance(i, str) for i in asked)):
        raise RunError(f"{run_dir / GRID_NAME}: damaged (not a list of cell ids)")
    return [note for note in notes if note]


def benchmark_json_path(run_dir: Path) -> Path:
    """Where this session's pytest-benchmark JSON goes: benchmark.json, or the next free benchmark-N.json."""
    path, n = run_dir / JSON_NAME, 1
    while path.exists():
        n += 1
        path = run_dir / f"benchmark-{n}.json"
    return path


def cell_text(value) -> str:
    """Full precision (repr), never rounded; None and NaN are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)  # float(): numpy's repr names its type


def write_environment(run_dir: Path, env: dict) -> None:
    write_json(run_dir / ENV_NAME, env, indent=2)


def write_json(path: Path, data, indent: int | None = 1) -> None:
    """JSON into path whole or not at all (a temporary file, then a rename): a kill leaves no torn file."""
    text = json.dumps(data, indent=indent, default=str) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot be written ({_os_reason(exc)})") from None


#: environment fields that must agree for two runs' rows to be read side by side (compared or merged),
#: or the difference measures the setup rather than the code
#: cpu_capability: ATen's vector kernels and oneDNN's by ISA; malloc: the C allocator (bench/instruments/malloc.py)
ENV_KEYS = ("device", "gpu_name", "torch", "cuda", "cpu_capability", "malloc")
RECORDED_LATER = ("cpu_capability", "malloc")  # compared only where both runs recorded it


def environment_differences(baseline: dict, new: dict) -> dict[str, tuple]:
    """ENV_KEYS whose values differ: name -> (baseline's, new's). A device is compared by type (cuda:0 ~ cuda)."""
    def value(env: dict, key: str):
        v = env.get(key)
        return str(v).split(":")[0] if key == "device" and v is not None else v

    def differs(key: str) -> bool:  # a run made before cpu_capability was recorded does not know it
        a, b = value(baseline, key), value(new, key)
        return a != b and not (key in RECORDED_LATER and (a is None or b is None))

    return {k: (value(baseline, k), value(new, k)) for k in ENV_KEYS if differs(k)}


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
    text = read_text(csv_path)
    records, _, torn = split_records(text)
    if torn:
        raise RunError(f"{csv_path}: the last row is cut off (a run killed while writing it); `lstm-bench run` with "
                       "the same --results-dir and --run-id sets it aside and measures its cell again")
    check_header(records[0] if records else [], csv_path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype={c: "string" for c in TEXT_COLUMNS}, on_bad_lines="error")
    except (pd.errors.ParserError, ValueError) as exc:
        raise RunError(f"{csv_path}: damaged ({str(exc).strip().splitlines()[0]})") from None
    for column in COLUMNS:
        if column not in df:
            df[column] = KEY_DEFAULTS.get(column, pd.NA)  # a key column from before it existed: its default
        elif column in KEY_DEFAULTS and df[column].isna().all():  # no row has it (or none at all): its default,
            df[column] = KEY_DEFAULTS[column]  # in the default's own type (a float column's fillna(False) warns)
        elif column in KEY_DEFAULTS:
            df[column] = df[column].fillna(KEY_DEFAULTS[column])
    for column in set(COLUMNS) - set(TEXT_COLUMNS):
        try:
            df[column] = pd.to_numeric(df[column])
        except (ValueError, TypeError):
            raise RunError(f"{csv_path}: damaged (column {column} holds a value that is not a number)") from None
    df = df[list(COLUMNS)]
    environment = _read_json(path / ENV_NAME) or {}
    rounds, probes = read_rounds(path)
    if not rounds:  # a run in worker processes (bench/workers.py): every process's rounds, pooled, and the probes
        timed_by: dict[str, int] = {}  # around them where one process timed the cell (pooled, they pair with none)
        for worker in sorted((path / PROCESSES_DIR).glob("*/")):
            worker_rounds, worker_probes = read_rounds(worker)
            for cell_id, data in worker_rounds.items():
                rounds.setdefault(cell_id, []).extend(data)
                timed_by[cell_id] = timed_by.get(cell_id, 0) + 1
            probes |= worker_probes
        probes = {cell_id: p for cell_id, p in probes.items() if timed_by.get(cell_id) == 1}
    return Run(path=path, measurements=df, environment=environment, rounds_s=rounds, probe_s=probes)


def read_rounds(path: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Cell id -> the timed rounds' seconds, and -> the probe's, from a directory's benchmark*.json."""
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
    return rounds, probes


def read_json(path: Path):
    """A JSON file's content, None when there is none; RunError (one line) when it is damaged."""
    if not path.is_file():
        return None
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: damaged JSON ({exc}); `lstm-bench run` with the same --results-dir and --run-id "
                       "sets it aside") from None


def _read_json(path: Path) -> dict | None:
    """A JSON object file (environment.json, benchmark.json); RunError when it is damaged or not an object."""
    data = read_json(path)
    if data is not None and not isinstance(data, dict):
        raise RunError(f"{path}: damaged JSON (not an object)")
    return data


def process_medians(text) -> list[float]:
    """A row's step_ms_processes ('12.5;13.1;12.8': each worker process's median step ms) or
    relative_step_processes as floats; [] when there is none (a run from before the column, a cell not timed)."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text) in ("", "<NA>", "nan"):
        return []
    return [float(x) for x in str(text).split(";") if x.strip()]


def summary(csv_path: Path) -> str:
    """The run's answer for the terminal, a row per cell: its step (median ms, and relative to the machine-speed probe
    with the spread between processes, the figure `compare` judges), tokens/s, first call, peak and what of it is the
    batch's (activations), and the status."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    if df.empty:
        return "(no rows)"
    mib = 2**20

    def column(name: str) -> pd.Series:
        return df[name] if name in df else pd.Series([float("nan")] * len(df))

    table = pd.DataFrame({
        "impl": df["impl"], "mode": df["mode"], "dtype": df["dtype"], "B": df["batch_size"], "H": df["hidden_size"],
        "T": df["seq_len"], "status": df["status"],
        "step_ms": df["step_ms_median"].round(2), "x_probe": column("relative_step_median").round(3),
        "±%": column("relative_between_pct").round(1), "tokens/s": df["tokens_per_s"].round(0),
        "first_ms": df["first_step_ms"].round(1), "peak_MiB": (df["peak_bytes"] / mib).round(2),
        "act_MiB": (df["activation_bytes"] / mib).round(2),
    })
    for name, default in (("lengths", FULL_LENGTHS), ("amp", "none")):  # after T, where a run varies them
        if name in df and (df[name].fillna(default) != default).any():
            table.insert(table.columns.get_loc("status"), name, df[name].fillna(default))
    for name in ("mode", "dtype"):  # one value for every row: said once, not per row
        if table[name].nunique() == 1:
            table = table.drop(columns=name)
    return table.to_string(index=False, na_rep="-")
