"""Bad input to every subcommand, and damaged run directories: each bad case is one line on stderr, exit code 2,
and nothing written anywhere; a torn run directory heals on resume; writes that fail end the run with one line.

The battery runs `bench.cli.main` in-process: every case must be refused before anything is measured. Being root
here, a directory that cannot be written is not made with chmod (root ignores permission bits): it is a path under
a regular file (mkdir fails with ENOTDIR for root too) or under /proc (a kernel filesystem that takes no new
entries from anyone)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.grid import COLUMNS, Cell
from bench.results import (
    CSV_NAME,
    ENV_NAME,
    GRID_NAME,
    JSON_NAME,
    CsvRecorder,
    load_run,
    prepare_run_dir,
    resume,
    write_environment,
)

ROOT = Path(__file__).resolve().parents[1]
HUGE = str(10**20)
ENV = {"device": "cpu", "torch": "2.13.0", "gpu_name": None, "cuda": None}


def cell(batch_size: int, hidden_size: int = 8) -> Cell:
    return Cell("scratch", "cpu", "float32", "train", batch_size, hidden_size, 3, 28)


def write_good_run(run_dir: Path, cells: list[Cell]) -> Path:
    """A run directory as the suite writes it: rows through CsvRecorder, benchmark.json with rounds, grid.json."""
    recorder = CsvRecorder(run_dir / CSV_NAME)
    for c in cells:
        recorder.write(c.columns() | {"status": "ok", "step_ms_median": 1.5, "step_ms_iqr": 0.1, "rounds": 3,
                                      "peak_bytes": 1000 + c.batch_size, "description": 'scratch, "quoted", ran',
                                      "run_id": run_dir.name, "threads": 1, "tf32": False})
    benchmarks = [{"name": f"test_cell[{c.id}]", "param": c.id, "stats": {"data": [1.4e-3, 1.5e-3, 1.6e-3]}}
                  for c in cells]
    (run_dir / JSON_NAME).write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}, indent=1))
    (run_dir / GRID_NAME).write_text(json.dumps(sorted(c.id for c in cells), indent=0) + "\n")
    write_environment(run_dir, ENV)
    return run_dir


#: damaged run directories: name -> what to do to a good one
DAMAGE = {
    "not a run directory": lambda d: shutil.rmtree(d) or d.mkdir(),
    "torn row": lambda d: _cut(d / CSV_NAME, -25),
    "torn header": lambda d: _cut(d / CSV_NAME, 40, keep_start=True),
    "torn benchmark.json": lambda d: _cut(d / JSON_NAME, -30),
    "torn environment.json": lambda d: _cut(d / ENV_NAME, -5),
    "environment.json not an object": lambda d: (d / ENV_NAME).write_text("[1, 2]\n"),
    "binary garbage": lambda d: (d / CSV_NAME).write_bytes(bytes(range(256)) * 4),
    "not UTF-8": lambda d: (d / CSV_NAME).write_bytes((d / CSV_NAME).read_bytes().replace(b"quoted", b"\xff\xfe")),
    "empty file": lambda d: (d / CSV_NAME).write_text(""),
    "unknown columns": lambda d: (d / CSV_NAME).write_text("when,what\n2026,x\n"),
    "damaged middle row": lambda d: _damage_middle_row(d / CSV_NAME),
    "csv is a directory": lambda d: (d / CSV_NAME).unlink() or (d / CSV_NAME).mkdir(),
}
#: what `run` and `ddp` heal rather than refuse (a killed run's leftovers); the rest they refuse too
HEALED = {"torn row", "torn header", "torn benchmark.json", "torn environment.json", "not a run directory",
          "empty file", "environment.json not an object"}  # (a run writes its environment.json anew)
#: what the readers refuse, and what `run --run-id` into such a directory refuses
READER_DAMAGE = sorted(DAMAGE)
RUN_DAMAGE = sorted(set(DAMAGE) - HEALED) + ["grid.json not a list"]


def _cut(path: Path, at: int, keep_start: bool = False) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:at] if keep_start or at < 0 else data[:at])


def _damage_middle_row(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].rstrip("\n") + ",extra,fields\n"
    path.write_text("".join(lines))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its size and modification time: what a command wrote shows as a change."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> dict[str, Path]:
    """Two good run directories and a damaged copy of each kind, deep enough that '../..' stays inside tmp_path;
    the command runs from a directory of its own."""
    inner = tmp_path / "outer" / "inner"
    runs = inner / "runs"
    good = write_good_run(runs / "good", [cell(2), cell(3)])
    other = write_good_run(runs / "other", [cell(4)])
    places = {"good": good, "other": other, "runs": runs, "file": inner / "a-file", "cwd": inner / "cwd"}
    places["file"].write_text("a regular file, not a directory\n")
    places["cwd"].mkdir()
    for name, damage in DAMAGE.items():
        bad = runs / name.replace(" ", "-")
        shutil.copytree(good, bad)
        damage(bad)
        places[name] = bad
    bad = runs / "grid.json-not-a-list"
    shutil.copytree(good, bad)
    (bad / GRID_NAME).write_text('{"a": 1}\n')
    places["grid.json not a list"] = bad
    (places["cwd"] / "tiny.txt").write_text("the time machine\n")
    (places["cwd"] / "empty.txt").write_text("")
    (places["cwd"] / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    (places["cwd"] / "latin1.txt").write_bytes("the time traveller, caf\xe9\n".encode("latin-1") * 200)
    (places["cwd"] / "only-digits.txt").write_text("1234 5678\n" * 100)
    monkeypatch.chdir(places["cwd"])
    return places


# The table: malformed values for each kind of option, then each subcommand's options given them.
# An argv holds {name} for a place of the sandbox; each case is (argv, a regex the one line must match).
RUN_IDS = [("../../x", "--run-id"), ("/tmp/absolute", "--run-id"), ("", "--run-id"), ("a/b", "--run-id"),
           (".", "--run-id"), ("..", "--run-id"), ("x\0y", "--run-id")]
UNWRITABLE = [("{file}/sub", "Not a directory"), ("/proc/lstm-bench-no", "cannot be written"),
              ("", "is not a path")]
SIZES = [HUGE, "-4", "0", "1.5", "x", ""]
GRID_OPTIONS = [("--batch-sizes", SIZES[:-1]), ("--hidden-sizes", SIZES[:-1]), ("--vocab-size", [HUGE, "-1", "x"]),
                ("--threads", [HUGE, "-1", "two"]), ("--impls", ["nope", "lstm_impls:Nothing", ","]),
                ("--dtype", ["float8", "float32,float8"]), ("--device", ["tpu", "cuda:x"]),
                ("--num-layers", ["0", "x"]), ("--bidirectional", ["yes", "maybe"]), ("--proj-size", ["-1", "x"]),
                ("--dropout", ["1", "-0.1", "x"]), ("--batch-first", ["2"]),
                ("--lengths", ["uniform:0", "uniform:1.5", "uniform:", "normal:0.5", "full,x"]),
                ("--amp", ["float8", "float32", "bfloat16,x"]), ("--malloc", ["jemalloc", "steady,default"])]


def at(place: str) -> str:
    """The argv placeholder of a sandbox place."""
    return "{" + place + "}"


#: what a reader (report, compare, merge) says of a damaged run directory
READER_REFUSAL = (r"not a run directory|damaged|cut off|not UTF-8|not a text file|empty|not a measurements file|"
                  r"not an object|no measurements.csv")


#: given first (a later option wins): a case the validation let through would measure one tiny cell, and fail fast
TINY_GRID = ["--device", "cpu", "--impls", "scratch", "--batch-sizes", "1", "--hidden-sizes", "1", "--seq-len", "1"]


TINY_CHECK = ["--impls", "scratch", "--seq-len", "1", "--batch-size", "1", "--hidden-size", "1"]
TINY_TRAIN = ["--epochs", "1", "--batch-size", "4", "--num-steps", "5", "--hidden-size", "2", "--device", "cpu"]
LATIN = [*TINY_TRAIN, "--data", "latin1.txt"]  # a readable corpus: the case's own option is what is wrong


def grid_cases(command: str) -> list[tuple[list[str], str]]:
    """run and ddp share the grid's options."""
    base = [command, "--results-dir", "{runs}", *TINY_GRID]
    cases = [(base + ["--run-id", value], what) for value, what in RUN_IDS]
    cases += [([command, "--results-dir", value, *TINY_GRID], what) for value, what in UNWRITABLE]
    cases += [(base + [option, value], option) for option, values in GRID_OPTIONS for value in values]
    cases += [(base + ["--run-id", place.replace(" ", "-")], r"damaged|not a measurements file|not UTF-8|"
               r"not a text file|is a directory|not a list") for place in RUN_DAMAGE]
    return cases


#: what `ab --repo` refuses: no git repository there (its git's reason after the colon), or no path
REPOS = [("/nonexistent", "--repo /nonexistent: not a git repository"), ("{runs}", "--repo .*: not a git repository"),
         ("{file}", "--repo .*a-file: not a git repository"), ("/proc", "--repo /proc: not a git repository"),
         ("", "is not a path")]
#: ab's two sides, given first: a case the validation let through would measure one tiny cell twice
TINY_AB = ["--impls", "scratch,scratch", "--device", "cpu", "--batch-sizes", "1", "--hidden-sizes", "1", "--seq-len",
           "1", "--min-pairs", "2", "--max-pairs", "2", "--max-time", "0.01"]


CASES: dict[str, list[tuple[list[str], str]]] = {
    "ab": [(["ab", *TINY_AB, option, value], option) for option, values in GRID_OPTIONS if option != "--impls"
           for value in values]
    + [(["ab", *TINY_AB, "--impls", value], "--impls") for value in ("nope", "scratch", ",", "a:b", "x,y,z")]
    + [(["ab", "--base", value, "--impls", "scratch", "--device", "cpu", "--repo", str(ROOT)], what)
       for value, what in [("no-such-revision", "not a git revision"), ("", "not a git revision"),
                           ("HEAD~100000", "not a git revision")]]
    + [(["ab", "--base=--all", "--impls", "scratch", "--device", "cpu", "--repo", str(ROOT)], "not a git revision")]
    # the sandbox's directory is no git repository: ab measures the repository it runs in, or --repo DIR's
    + [(["ab", "--base", "HEAD", "--impls", "scratch", "--device", "cpu"], "/cwd is not in a git repository .*--repo")]
    + [(["ab", "--base", "HEAD", "--impls", "scratch", "--device", "cpu", "--repo", value], what)
       for value, what in REPOS]
    + [(["ab", *TINY_AB, "--repo", value], what) for value, what in REPOS]
    + [(["ab", "--base", "HEAD", "--cells", value, "--device", "cpu"], what) for value, what in [
        ("{file}", "node ids"), ("{runs}", "cannot be read"), ("no-such.txt", "cannot be read"), ("", "path")]]
    + [(["ab", *TINY_AB, option, value], option) for option in ("--budget-s", "--threshold", "--max-time")
       for value in ("-1", "0", "nan", "x")]
    + [(["ab", *TINY_AB, option, value], option) for option in ("--min-pairs", "--max-pairs")
       for value in ("0", "-1", "x", HUGE)]
    + [(["ab", *TINY_AB, "--min-pairs", "1"], "--min-pairs"), (["ab", *TINY_AB, "--seed", "-1"], "--seed"),
       (["ab", *TINY_AB, "--new", "HEAD"], "--base"), (["ab", *TINY_AB, "--cells", "{file}"], "--base"),
       (["ab", "--base", "HEAD", "--device", "cpu"], "--impls"), (["ab"], "--impls")],
    "run": grid_cases("run") + [
        (["run", "--results-dir", "{runs}", *TINY_GRID, "--shard", "5/2"], "--shard"),
        (["run", "--results-dir", "{runs}", *TINY_GRID, "--shard", f"0/{HUGE}"], "--shard"),
        (["run", "--results-dir", "{runs}", *TINY_GRID, "--mode", "backward"], "--mode"),
        (["run", "--results-dir", "{runs}", *TINY_GRID, "--seq-len", "-3"], "--seq-len"),
        (["run", "--results-dir", "{runs}", "--no-such-option"], "unrecognized arguments"),
        (["run", "--results-dir", "{runs}", *TINY_GRID, "--processes", "3", "--max-processes", "2"],
         "--max-processes"),
        (["run", "--results-dir", "{runs}", *TINY_GRID, "--max-processes", "0"], "--max-processes"),
    ] + [(["run", "--results-dir", "{runs}", *TINY_GRID, "--budget-s", value], "--budget-s")
         for value in ("-1", "nan", "inf", "x")],
    "ddp": grid_cases("ddp") + [
        (["ddp", "--results-dir", "{runs}", *TINY_GRID, "--world-sizes", value], "--world-sizes")
        for value in (HUGE, "0", "-2", "x", "")
    ] + [(["ddp", "--results-dir", "{runs}", *TINY_GRID, "--rounds", value], "--rounds")
         for value in (HUGE, "0", "-1", "x")],
    "check": [(["check", *TINY_CHECK, option, value], option)
              for option in ("--seq-len", "--batch-size", "--input-size", "--hidden-size")
              for value in (HUGE, "-1", "0", "x")]
    + [(["check", *TINY_CHECK, "--impls", value], "--impls") for value in ("nope", "", "a:b")]
    + [(["check", *TINY_CHECK, "--device", value], "--device") for value in ("tpu", "")]
    + [(["check", *TINY_CHECK, "--num-layers", value], "--num-layers") for value in (HUGE, "-1", "0", "x")]
    + [(["check", *TINY_CHECK, "--proj-size", value], "--proj-size") for value in (HUGE, "-1", "x", "1", "2")]
    + [(["check", *TINY_CHECK, "--bidirectional", "yes"], "unrecognized arguments: yes"),
       (["check", *TINY_CHECK, "--batch-first=1"], "--batch-first")]
    + [(["check", *TINY_CHECK, "--lengths", value], "--lengths") for value in ("uniform:0", "uniform:nan", "half")]
    + [(["check", *TINY_CHECK, "--accuracy", "--out", "{runs}/acc", option, value], option)
       for option, values in (("--precisions", ("float8", "")), ("--seq-lens", ("0", "x", HUGE))) for value in values]
    + [(["check", *TINY_CHECK, "--accuracy", "--out", value], what) for value, what in UNWRITABLE],
    "compare": [(["compare", "{good}", at(place)], READER_REFUSAL) for place in READER_DAMAGE]
    + [(["compare", at(place), "{good}"], READER_REFUSAL) for place in ("torn row", "binary garbage")]
    + [(["compare", "{good}", "{other}", "--out", value], what) for value, what in UNWRITABLE]
    + [(["compare", "{good}", "{other}", "--rerun-list", value], what)
       for value, what in [("{file}/sub/list.txt", "Not a directory"), ("{runs}", "is a directory"), ("", "path")]]
    + [(["compare", "{good}", "{other}", option, value], option) for option in ("--alpha", "--time-threshold",
                                                                                 "--memory-threshold", "--max-shift")
       for value in ("-1", "nan", "inf", "x", HUGE if option == "--alpha" else "0")]
    + [(["compare", "{good}", "{other}", "--match-impl", value], "--match-impl") for value in ("x", "=y", "x=")]
    + [(["compare", "{good}", "{runs}/nothing-here"], "not a run directory"), (["compare", "", "{good}"], "path")],
    "report": [(["report", at(place)], READER_REFUSAL) for place in READER_DAMAGE]
    + [(["report", "{good}", "--out", value], what) for value, what in UNWRITABLE]
    + [(["report", "{good}", "{other}"], "--out DIR"), (["report", "{good}", "{good}", "--out", "{runs}/o"], "twice"),
       (["report", ""], "path"), (["report", "{runs}/nothing-here"], "not a run directory")],
    "merge": [(["merge", "{good}", at(place), "--out", "{runs}/merged"], READER_REFUSAL)
              for place in READER_DAMAGE]
    + [(["merge", "{other}", "{grid.json not a list}", "--out", "{runs}/merged"], "not a list")]
    + [(["merge", "{good}", "{other}", "--out", value], what) for value, what in UNWRITABLE]
    + [(["merge", "{good}", "{good}", "--out", "{runs}/merged"], "more than once"),
       (["merge", "{good}", "{other}", "--out", "{other}"], "already holds"),
       (["merge", "{good}"], "--out")],
    "train": [(["train", *TINY_TRAIN, "--data", value], what) for value, what in [
        ("tiny.txt", "one minibatch of 4 x 5 needs"), ("empty.txt", "no letters"),
        ("garbage.bin", "not a text file"), ("latin1.txt", "not UTF-8"), ("only-digits.txt", "no letters"),
        ("{runs}", "no such data file"), ("", "path"), ("no-such.txt", "no such data file")]]
    + [(["train", "--data", "tiny.txt", "--batch-size", "32"], "one minibatch of 32 x 35 needs")]
    + [(["train", *LATIN, option, value], option) for option in ("--epochs", "--batch-size",
                                                                                 "--num-steps", "--hidden-size")
       for value in (HUGE, "-1", "0", "x")]
    + [(["train", *LATIN, "--seed", value], "--seed") for value in ("-1", str(2**64), "x")]
    + [(["train", *LATIN, "--max-tokens", value], "--max-tokens") for value in ("0", "-5", HUGE)]
    + [(["train", *LATIN, "--lr", value], "--lr") for value in ("nan", "-1", "inf")]
    + [(["train", *LATIN, "--curve", value], what) for value, what in [
        ("{file}/sub/c.csv", "Not a directory"), ("{runs}", "is a directory"), ("", "path")]]
    + [(["train", *TINY_TRAIN, "--impl", "nope"], "nope")]
    + [(["train", *LATIN, "--num-layers", value], "--num-layers") for value in (HUGE, "-1", "0", "x")]
    + [(["train", *TINY_TRAIN, "--data", "tiny.txt", "--impl", "broken_impl:CudaOnlyLSTM"], "does not run on cpu"),
       (["train", *TINY_TRAIN, "--data", "tiny.txt", "--impl", "broken_impl:CudaOnlyLSTM", "--device", "cuda",
         "--num-layers", "2"], "does not support num_layers|cuda")],
    "profile": [(["profile", "--out", "{runs}/p", *TINY_GRID, option, value], option)
                for option, values in GRID_OPTIONS for value in values]
    + [(["profile", *TINY_GRID, "--out", value], what) for value, what in UNWRITABLE]
    + [(["profile", "--out", "{runs}/p", *TINY_GRID, option, value], option) for option in ("--steps", "--rounds")
       for value in ("0", "-1", "x", HUGE)]
    + [(["profile", "--out", "{runs}/p", *TINY_GRID, "--impls", "triton"], "--impls triton: does not run"),
       (["profile", "--out", "{runs}/p", *TINY_GRID, "--run-id", "x"], "unrecognized arguments"),
       (["profile", *TINY_GRID], "--out")],
    "memory": [(["memory", option, value], option) for option in ("--batch-size", "--hidden-size", "--seq-len",
                                                                   "--vocab-size") for value in (HUGE, "-1", "0", "x")]
    + [(["memory", "--budget", value], "--budget") for value in ("1", "-1GiB", "", "8 lightyears", "1B", "nanGiB")]
    + [(["memory", option, value], option) for option, value in [
        ("--impls", "nope"), ("--dtype", "float8"), ("--mode", "x"), ("--optimizer", "lion"), ("--device", "tpu"),
        ("--dtype", "float32,float64"), ("--num-layers", "0"), ("--num-layers", "1,2"), ("--proj-size", "-1"),
        ("--proj-size", "256"), ("--dropout", "1"), ("--dropout", "0,0.5"), ("--dropout", "x")]]
    + [(["memory", "--impls", "scripted", "--seq-len", "5", "--num-layers", "2"], "T = 8")],
}


def _argv(template: list[str], places: dict[str, Path]) -> list[str]:
    """The template with each {place} replaced by its path."""
    argv = []
    for arg in template:
        for name, path in places.items():
            arg = arg.replace(at(name), str(path))
        argv.append(arg)
    return argv


BATTERY = [pytest.param(command, argv, match, id=f"{command}-{i}") for command, cases in CASES.items()
           for i, (argv, match) in enumerate(cases)]


@pytest.mark.parametrize("command, template, match", BATTERY)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(command, template, match, sandbox, tmp_path, capsys):
    import re

    argv = _argv(template, sandbox)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))  # argparse's own errors exit from inside main
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (argv, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert re.search(match, err), (argv, err)
    assert snapshot(tmp_path) == before, argv  # nothing written: not inside the directories given, not outside
    assert not (tmp_path.parent / "x").exists()


def test_the_battery_covers_every_subcommand():
    from bench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(CASES) == set(sub.choices)
    assert all(len(cases) >= 10 for cases in CASES.values())


# ----------------------------------------------------------------------------- torn files heal


def _tear_and_heal(run_dir: Path, cells: list[Cell]) -> tuple[list[str], list[Cell]]:
    """What a resumed run does before it measures: prepare the directory, then find the cells still to do."""
    notes = prepare_run_dir(run_dir)
    return notes, resume(run_dir / CSV_NAME, cells)


def _readable_by_every_reader(run_dir: Path, other: Path, tmp_path: Path) -> None:
    load_run(run_dir)
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert main(["compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "compare")]) in (0, 1)
    shutil.rmtree(tmp_path / "merged", ignore_errors=True)
    assert main(["merge", str(run_dir), str(other), "--out", str(tmp_path / "merged")]) in (0, 1)


def test_a_csv_torn_at_any_byte_heals_and_its_cell_is_measured_again(tmp_path, capsys):
    cells = [cell(2), cell(3), cell(5)]
    template = write_good_run(tmp_path / "template", cells)
    other = write_good_run(tmp_path / "other", [cell(4)])
    data = (template / CSV_NAME).read_bytes()
    header_end = data.index(b"\n") + 1
    row_ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    quote = data.index(b'"quoted"', row_ends[-2])  # inside the last row's quoted field
    offsets = [1, header_end - 1, header_end, header_end + 5, row_ends[1] - 1, row_ends[1], quote + 3,
               len(data) - 1]
    for at in offsets:
        run_dir = tmp_path / f"torn-{at}"
        shutil.copytree(template, run_dir)
        (run_dir / CSV_NAME).write_bytes(data[:at])
        kept = [e for e in row_ends if e <= at]  # whole lines left: the header and the rows before the tear
        torn = data[kept[-1] if kept else 0:at]
        if torn:
            assert main(["report", str(run_dir)]) == 2  # refused until healed, in one line
            assert "the last row is cut off" in capsys.readouterr().err
        notes, todo = _tear_and_heal(run_dir, cells)
        assert len(notes) == bool(torn) and all(str(run_dir / CSV_NAME) in n for n in notes), (at, notes)
        side = run_dir / (CSV_NAME + ".torn")
        assert side.read_bytes() == torn if torn else not side.exists(), at
        whole_rows = max(len(kept) - 1, 0)
        assert [c.batch_size for c in todo] == [c.batch_size for c in cells[whole_rows:]], at
        if whole_rows:
            _readable_by_every_reader(run_dir, other, tmp_path)
        assert _tear_and_heal(run_dir, cells)[0] == []  # healed once: a second look finds nothing
    capsys.readouterr()


@pytest.mark.parametrize("name", [JSON_NAME, GRID_NAME, ENV_NAME])
def test_a_torn_json_file_is_set_aside_at_any_byte(name, tmp_path):
    cells = [cell(2), cell(3)]
    template = write_good_run(tmp_path / "template", cells)
    other = write_good_run(tmp_path / "other", [cell(4)])
    data = (template / name).read_bytes()
    for at in (0, 1, len(data) // 3, len(data) // 2, len(data) - 3):
        run_dir = tmp_path / f"{name}-{at}"
        shutil.copytree(template, run_dir)
        (run_dir / name).write_bytes(data[:at])
        notes, todo = _tear_and_heal(run_dir, cells)
        assert len(notes) == 1 and f"set aside as {name}.torn" in notes[0], (at, notes)
        assert (run_dir / f"{name}.torn").read_bytes() == data[:at] and not (run_dir / name).exists()
        assert todo == []  # the rows stand: nothing to measure again
        if name == ENV_NAME:  # a run writes its environment anew
            write_environment(run_dir, ENV)
        _readable_by_every_reader(run_dir, other, tmp_path)


def test_a_resumed_run_sets_the_torn_row_aside_and_measures_its_cell(tmp_path):
    """End to end: the real suite, a torn last row, the same command again."""
    argv = [sys.executable, "-m", "bench.cli", "run", "--device", "cpu", "--impls", "scratch", "--batch-sizes", "2,3",
            "--hidden-sizes", "4", "--seq-len", "3", "--results-dir", str(tmp_path), "--run-id", "r",
            "--benchmark-max-time=0.001", "--benchmark-min-rounds=3", "--processes", "2"]
    first = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    worker = tmp_path / "r" / "processes" / "0"  # the rows are written one by one in the worker processes' files
    data = (worker / CSV_NAME).read_bytes()
    (worker / CSV_NAME).write_bytes(data[:-40])  # worker 0 killed while writing its second row
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "the last row was cut off" in again.stdout and "set aside in measurements.csv.torn" in again.stdout
    assert "1 cells to measure (1 recorded ok before: skipped)" in again.stdout
    assert "0 cells to measure (2 recorded ok before: skipped)" in again.stdout  # the other workers had finished
    run = load_run(tmp_path / "r")
    assert sorted(run.measurements.batch_size) == [2, 3] and (run.measurements.status == "ok").all()
    assert (run.measurements.processes == 2).all()
    assert (tmp_path / "r" / "report.md").is_file() and (worker / (CSV_NAME + ".torn")).is_file()
    assert (worker / ".benchmarks").is_dir()  # pytest-benchmark's storage: in the run directory, not ./


# ----------------------------------------------------------------------------- writes that fail later


def test_a_row_that_cannot_be_written_ends_the_run_with_one_line_and_the_rows_intact(tmp_path):
    """A file-size limit (RLIMIT_FSIZE binds root too, and Python ignores SIGXFSZ, so a write past it fails with
    EFBIG) stands in for a full disk: the next row does not fit, the rows before it stay as they were."""
    run_dir = tmp_path / "r"
    write_good_run(run_dir, [cell(2, 4)] + [cell(b, 64) for b in range(1, 12)])  # rows of other cells fill the file
    before = (run_dir / CSV_NAME).read_bytes()
    limit = len(before) + 120  # room for the environment and grid files, not for a measured row
    assert limit > (run_dir / ENV_NAME).stat().st_size + 600

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--device", "cpu", "--impls", "scratch",
                           "--batch-sizes", "2,3", "--hidden-sizes", "4", "--seq-len", "3", "--results-dir",
                           str(tmp_path), "--run-id", "r", "--benchmark-max-time=0.001", "--processes", "1",
                           "--benchmark-min-rounds=3"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=cap, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "a row could not be written" in proc.stderr and "the rows before it are intact" in proc.stderr
    assert (run_dir / CSV_NAME).read_bytes() == before
    assert not list(run_dir.glob("benchmark-*.json"))
    assert load_run(run_dir).measurements.shape[1] == len(COLUMNS)


# ----------------------------------------------------------------------------- output


def test_memory_table_keeps_its_columns_apart(capsys):
    import re

    assert main(["memory", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = lines[2].split()
    table = lines[3:lines.index("", 3)]
    for line in table:  # label, then one value a column: two spaces at least between any two
        assert len(re.split(r"\s{2,}", line.strip())) == 1 + len(names), line
    assert "  fused, eager steps  " in table[0]


@pytest.mark.parametrize("argv", [["memory", "--device", "cpu"], ["compare", "{good}", "{other}"]])
def test_writing_into_a_closed_pipe_ends_quietly(argv, sandbox):
    args = _argv(argv, sandbox)
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -c 0`: the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err
