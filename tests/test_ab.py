"""`lstm-bench ab`: the statistics on synthetic data, the sides, one real A/A run on a tiny cell, and a slowdown
committed in a fresh clone, measured from that clone by an lstm-bench installed elsewhere (editable or not).

The synthetic processes follow what was measured on this project's 2-core machine: each process draws
its own speed (thread placement, clocks, neighbours: a lognormal shift), and its rounds scatter little
around it. A test on the rounds of one process per side then takes a process's shift for a change.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from bench import ab
from bench.cli import main

ROUNDS = 20
ROOT = Path(__file__).resolve().parents[1]  # this project's checkout: the repository the in-process tests measure
INSTALLED = Path(ab.__file__).resolve().parents[1]  # where the lstm-bench under test was imported from


def process(rng: random.Random, true_ms: float, shift_sd: float, round_sd: float = 0.02) -> list[float]:
    """One fresh process's rounds: its own speed, then rounds around it."""
    speed = true_ms * np.exp(rng.gauss(0, shift_sd))
    return [speed * np.exp(rng.gauss(0, round_sd)) for _ in range(ROUNDS)]


def paired(rng: random.Random, base_ms: float, new_ms: float, pairs: int, shift_sd: float,
           drift_sd: float = 0.0) -> ab.CellAB:
    """Pairs of processes; drift_sd: a machine speed shared by both processes of a pair (the neighbours)."""
    cell = ab.CellAB("synthetic")
    for _ in range(pairs):
        drift = np.exp(rng.gauss(0, drift_sd))
        cell.base.append(float(np.median(process(rng, base_ms * drift, shift_sd))))
        cell.new.append(float(np.median(process(rng, new_ms * drift, shift_sd))))
    return cell


def test_per_process_shifts_a_rounds_test_flags_are_not_a_change():
    """A/A: one process a side, Mann-Whitney on the rounds, flags most pairs; the paired processes flag none."""
    rng = random.Random(1)
    flagged_by_rounds = 0
    verdicts = []
    for _ in range(40):
        a, b = process(rng, 30.0, 0.08), process(rng, 30.0, 0.08)
        ratio = np.median(b) / np.median(a)
        if mannwhitneyu(a, b).pvalue < 0.01 and ratio > 1.10:
            flagged_by_rounds += 1
        verdicts.append(paired(rng, 30.0, 30.0, pairs=10, shift_sd=0.08).verdict(0.10, final=True))
    assert flagged_by_rounds >= 5  # the overconfident test: a process's shift read as a regression
    assert "slower" not in verdicts and "faster" not in verdicts


def test_a_true_20_percent_change_is_slower_and_its_interval_holds_it():
    rng = random.Random(2)
    held = 0
    for _ in range(40):
        cell = paired(rng, 30.0, 36.0, pairs=8, shift_sd=0.04)
        low, high = cell.interval()
        assert cell.verdict(0.10) == "slower" and low > 1.0
        held += low < 1.2 < high
    assert held >= 34  # a 95% interval: about 38 of 40
    faster = paired(rng, 36.0, 30.0, pairs=8, shift_sd=0.04)
    assert faster.verdict(0.10) == "faster"


def test_a_shift_that_hits_both_processes_of_a_pair_cancels():
    """The machine slows for a while (a neighbour): both processes of the pair see it, the ratio does not.
    Dividing by a probe would correct only cells that slow like the probe; pairing needs no probe."""
    rng = random.Random(3)
    cell = paired(rng, 30.0, 30.0, pairs=10, shift_sd=0.02, drift_sd=0.30)
    assert max(cell.base) / min(cell.base) > 1.5  # the machine moved by half between pairs
    assert cell.verdict(0.10) == "unchanged"


def test_the_answer_waits_for_enough_pairs_and_the_interval_narrows():
    rng = random.Random(4)
    cell = paired(rng, 30.0, 30.0, pairs=2, shift_sd=0.08)
    assert cell.verdict(0.10) is None and cell.verdict(0.10, final=True) == "inconclusive"  # wide with 1 dof
    widths = []
    for n in (3, 10, 40):
        c = paired(random.Random(5), 30.0, 30.0, pairs=n, shift_sd=0.08)
        low, high = c.interval()
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert ab.clear([paired(random.Random(6), 30.0, 30.0, pairs=40, shift_sd=0.05)], 0.10, min_pairs=3)
    assert not ab.clear([paired(random.Random(6), 30.0, 30.0, pairs=2, shift_sd=0.05)], 0.10, min_pairs=3)


def test_a_revision_is_a_worktree_that_goes_away_and_its_processes_import_it():
    """The worktree's packages come first for its measuring processes, the editable install's finder (which maps
    `bench` and `lstm_impls` to this checkout) notwithstanding: the worktree's own code is what they measure."""
    commit = ab.resolve(ROOT, "HEAD")
    with ab.revision_tree(ROOT, commit) as tree:
        assert (tree / ab.SUITE).is_file()
        listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
        assert str(tree) in listed
        ab.check_imports(ab.Side("base", "HEAD", tree, "scratch", commit))
        imported = subprocess.run([sys.executable, "-c", "import bench, lstm_impls; print(bench.__file__); "
                                   "print(lstm_impls.__file__)"], cwd=tree, env=ab.worker_env(tree),
                                  capture_output=True, text=True, check=True).stdout.split()
        assert [Path(f).parent.parent for f in imported] == [tree, tree]
    assert not tree.exists()
    with pytest.raises(ab.ABError, match="not a git revision"):
        ab.resolve(ROOT, "no-such-revision")


def test_where_impls_are_measured(tmp_path, monkeypatch):
    """--impls A,B: the working tree of the repository it runs in; outside any lstm-bench repository, the installed
    lstm-bench, and the first line says so; --repo must be an lstm-bench repository."""
    monkeypatch.chdir(ROOT / "tests")
    assert ab.impls_tree(None) == (ROOT, f"ab: repository {ROOT}, its working tree")
    monkeypatch.chdir(tmp_path)
    tree, where = ab.impls_tree(None)
    assert tree == INSTALLED and "not in a git repository" in where and f"the installed lstm-bench, {tree}" in where
    other = tmp_path / "other"
    subprocess.run(["git", "init", "--quiet", str(other)], check=True)
    monkeypatch.chdir(other)
    tree, where = ab.impls_tree(None)
    assert tree == INSTALLED and f"its repository {other.resolve()} has no bench/test_suite.py" in where
    with pytest.raises(ab.ABError, match="not an lstm-bench repository"):
        ab.impls_tree(other)
    with pytest.raises(ab.ABError, match="--repo .*: not a git repository"):
        ab.impls_tree(tmp_path / "nothing")
    with pytest.raises(ab.ABError, match="not a git revision"):
        ab.resolve(other, "HEAD")  # no commit yet
    with pytest.raises(ab.ABError, match="not an lstm-bench repository"):
        ab.resolve(other, None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ab.ABError, match=f"{tmp_path} is not in a git repository .*give --repo DIR"):
        ab.repository(None)


def test_a_side_whose_processes_would_import_another_copy_is_refused(tmp_path):
    with pytest.raises(ab.ABError, match="new: its processes would import lstm-bench from .*, not from"):
        ab.check_imports(ab.Side("new", "HEAD", tmp_path, "scratch"))


@pytest.mark.parametrize("argv,says", [
    (["--impls", "scratch"], "two implementations"),
    (["--impls", "scratch,nope"], "nope"),
    (["--base", "HEAD"], "--impls"),
    (["--base", "no-such-revision", "--impls", "scratch"], "not a git revision"),
    (["--impls", "scratch,cudnn", "--batch-sizes", "0"], "--batch-sizes"),
    (["--impls", "scratch,cudnn", "--min-pairs", "1"], "--min-pairs"),
    (["--impls", "scratch,cudnn", "--budget-s", "-5"], "--budget-s"),
    (["--impls", "scratch,cudnn", "--new", "HEAD"], "--base"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, argv, says):
    monkeypatch.chdir(ROOT)  # the revisions are this checkout's
    try:
        code = main(["ab", *argv])
    except SystemExit as exc:  # argparse's own checks exit from inside the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_a_real_a_a_pair_on_a_tiny_cell(capsys):
    """Two fresh processes a pair, the same implementation on both sides: each pair's medians reach the cell and the
    exit code follows the verdict. Which verdict is not asserted: two pairs of a ~1 ms cell beside another test
    process read x1.54 (1.11-2.16) "slower" in CI, and alone their per-process medians span 1.2-2.0 ms; that is
    timing, which tests do not assert on. The statistics are tested on synthetic data above."""
    code = main(["ab", "--impls", "scratch,scratch", "--batch-sizes", "2", "--hidden-sizes", "4", "--seq-len", "3",
                 "--device", "cpu", "--threads", "1", "--min-pairs", "2", "--max-pairs", "2", "--max-time", "0.02",
                 "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    (cell,) = data["cells"]
    assert cell["pairs"] == 2 and len(cell["base_ms"]) == len(cell["new_ms"]) == 2 and cell["batch_size"] == 2
    assert cell["verdict"] in ab.VERDICTS and code == (cell["verdict"] == "slower")
    assert "pair 2" in err


def test_two_revisions_on_the_cells_compare_lists(tmp_path, capsys):
    """--base REV --cells FILE: what the nightly's confirmation runs (HEAD against HEAD here: an A/A pair, whose
    verdict is timing and not asserted, only that the exit code follows it)."""
    cells = tmp_path / "flagged.txt"
    cells.write_text("bench/test_suite.py::test_cell[scratch-cpu-float32-train-B2-H4-T3-V28]\n")
    head = ab.resolve(ROOT, "HEAD")[:7]  # before the run, as ab resolves it: a commit made meanwhile moves HEAD
    code = main(["ab", "--base", "HEAD", "--new", "HEAD", "--cells", str(cells), "--impls", "scratch",
                 "--batch-sizes", "2", "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu", "--threads", "1",
                 "--min-pairs", "2", "--max-pairs", "2", "--max-time", "0.02", "--repo", str(ROOT / "tests")])
    out, err = capsys.readouterr()
    about = f"ab: repository {ROOT}, base {head} (HEAD), new {head} (HEAD)"
    assert out.splitlines()[0] == err.splitlines()[0] == about, out + err
    assert f"new (HEAD, {head}) / base (HEAD, {head})" in out
    (line,) = [row for row in out.splitlines() if row.startswith("scratch cpu float32 train B2 H4 T3")]
    verdict = line.split()[-1]
    assert verdict in ab.VERDICTS and code == (verdict == "slower") and " 2 " in line, out


def test_pairs_come_in_blocks_of_both_orders():
    """Each block of two pairs runs base first once and new first once, the block's first order drawn at random;
    so does the stopping rule: it answers only after whole blocks."""
    rng, blocks = random.Random(3), []
    orders = [ab.pair_order(k, rng, blocks) for k in range(40)]
    assert all(orders[k] != orders[k + 1] for k in range(0, 40, 2))
    firsts = orders[::2]
    assert 0 < sum(firsts) < len(firsts)  # the first order of a block is drawn, not fixed


# ----------------------------------------------------------------------------- a slowdown committed in another clone

#: what the slowed commit's ScratchLSTM.run spends besides the loop: a tiny cell's step takes about 3 ms on this
#: project's 2-core machine, so the sequence becomes about ten times slower (a ratio of 11.7 measured)
SLOWDOWN_S = 0.025
#: the CLI as a console script runs it: sys.path[0] is the script's folder, so `bench` comes from the installed
#: lstm-bench (PYTHONPATH here) and not from the clone the command runs in (`python -m` would put the cwd first)
LAUNCHER = """import sys
import bench
from bench.cli import main
try:
    code = main()
finally:
    print(f"lstm-bench imported from {bench.__file__}", file=sys.stderr)
sys.exit(code)
"""
#: small and cheap: fresh processes of about 6 s each; two pairs usually answer, and where a tiny cell's base side
#: moves between processes (medians of 1.6 and 2.7 ms, seen beside other work) a third pair ends it: its 2-dof
#: interval is narrow enough for a ratio near 10 (two more pairs would cost 25 s)
TINY_SLOW = ["ab", "--base", "HEAD~1", "--new", "HEAD", "--impls", "scratch", "--batch-sizes", "8", "--hidden-sizes",
             "16", "--seq-len", "5", "--device", "cpu", "--threads", "1", "--min-pairs", "2", "--max-pairs", "3",
             "--max-time", "0.02", "--budget-s", "120"]


def git(cwd: Path, *argv: str) -> str:
    """git's output, with an identity of its own for the test's commits."""
    return subprocess.run(["git", "-c", "user.name=lstm-bench tests", "-c", "user.email=tests@lstm-bench.invalid",
                           "-c", "commit.gpgsign=false", *argv], cwd=cwd, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


@pytest.fixture(scope="module")
def slowed_clone(tmp_path_factory) -> tuple[Path, str, str]:
    """A fresh `git clone` of this project (not the installed checkout) with one more commit that makes scratch's
    sequence several times slower: (the clone, HEAD~1's commit, HEAD's commit)."""
    if subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip(f"{ROOT} is not a git checkout with a commit: there is nothing to clone")
    clone = (tmp_path_factory.mktemp("ab-clone") / "clone").resolve()
    git(ROOT, "clone", "--quiet", str(ROOT), str(clone))
    scratch = clone / "lstm_impls" / "scratch.py"
    source = scratch.read_text()
    doc = '        """The loop itself; subclasses change only how it runs."""\n'
    assert source.count(doc) == 1, "ScratchLSTM.run changed: plant the slowdown elsewhere"
    busy = (f"        import time\n        end = time.perf_counter() + {SLOWDOWN_S}\n"
            "        while time.perf_counter() < end:  # busy work: the planted slowdown\n            pass\n")
    scratch.write_text(source.replace(doc, doc + busy))
    git(clone, "commit", "--quiet", "-am", "scratch: a planted slowdown")
    return clone, git(clone, "rev-parse", "HEAD~1"), git(clone, "rev-parse", "HEAD")


def run_ab_in(clone: Path, pythonpath: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """`lstm-bench ab` run in the clone, with the lstm-bench installed at `pythonpath` (not the clone's own)."""
    launcher = tmp_path / "lstm_bench_cli.py"
    launcher.write_text(LAUNCHER)
    env = os.environ | {"PYTHONPATH": str(pythonpath), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, str(launcher), *TINY_SLOW, *extra], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ab_measures_the_repository_it_runs_in_not_the_installed_checkout(slowed_clone, tmp_path):
    """The issue's case: lstm-bench installed (editable) from this checkout, run in a clone whose last commit slows
    scratch: the clone's two commits are measured (slower, exit 1), not this checkout's HEAD~1 and HEAD."""
    clone, before, after = slowed_clone
    done = run_ab_in(clone, INSTALLED, tmp_path)
    about = f"ab: repository {clone}, base {before[:7]} (HEAD~1), new {after[:7]} (HEAD)"
    assert done.stderr.splitlines()[0] == about, done.stderr
    assert done.stderr.splitlines()[-1] == f"lstm-bench imported from {INSTALLED / 'bench' / '__init__.py'}"
    out = done.stdout.splitlines()
    assert out[0] == about and out[1].startswith(f"new (HEAD, {after[:7]}) / base (HEAD~1, {before[:7]})"), out
    (row,) = [line for line in out if line.startswith("scratch cpu float32 train B8 H16 T5")]
    assert row.split()[-1] == "slower" and float(row.split()[-5]) > 1.5 and done.returncode == 1, done.stdout
    (listed,) = git(clone, "worktree", "list").splitlines()  # the two worktrees went away: the clone's own is left
    assert listed.startswith(f"{clone} ")


def test_ab_from_a_non_editable_install_measures_the_repository_it_runs_in(slowed_clone, tmp_path):
    """lstm-bench installed as pip installs a wheel (--target: a copy of the packages, no repository anywhere near):
    run in the clone, it measures the clone's commits all the same; --json says which."""
    # asked of a child: importing pip here imports the stdlib's distutils, after which setuptools' distutils shim
    # fails every later Inductor compile in this process (its C++ builder imports setuptools)
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, timeout=120).returncode:
        pytest.skip("the non-editable install is made with pip, which this interpreter lacks")
    clone, before, after = slowed_clone
    sources = tmp_path / "sources"  # pip builds in the source tree (build/, egg-info): a copy, not this checkout
    sources.mkdir()
    for name in ("bench", "lstm_impls"):
        shutil.copytree(INSTALLED / name, sources / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(INSTALLED / name, sources / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(sources)], check=True, capture_output=True, timeout=300)
    assert (site / "bench" / "ab.py").is_file() and not (site / ".git").exists()
    done = run_ab_in(clone, site, tmp_path, "--json")
    about = f"ab: repository {clone}, base {before[:7]} (HEAD~1), new {after[:7]} (HEAD)"
    assert done.stderr.splitlines()[0] == about, done.stderr
    assert done.stderr.splitlines()[-1] == f"lstm-bench imported from {site / 'bench' / '__init__.py'}"
    data = json.loads(done.stdout)
    assert data["about"] == about and data["base"]["commit"] == before and data["new"]["commit"] == after
    (cell,) = data["cells"]
    assert cell["verdict"] == "slower" and cell["ratio"] > 1.5 and done.returncode == 1, done.stdout


@pytest.mark.parametrize("argv,where,says", [
    (["--base", "HEAD", "--impls", "scratch"], "nowhere", "is not in a git repository"),
    (["--base", "HEAD", "--impls", "scratch", "--repo", "/nonexistent"], "nowhere", "--repo /nonexistent: not a git"),
    (["--impls", "scratch,scratch", "--repo", "/nonexistent"], "nowhere", "--repo /nonexistent: not a git"),
    (["--base", "HEAD", "--impls", "scratch"], "other", "has no bench/test_suite.py"),
])
def test_no_repository_is_one_line_and_exit_2_from_the_command(tmp_path, argv, where, says):
    """The command itself, in a directory that is no git repository (or in a repository that is not lstm-bench):
    one line on stderr, exit 2, no traceback."""
    cwd = tmp_path / where
    cwd.mkdir()
    if where == "other":
        git(cwd, "init", "--quiet")
        git(cwd, "commit", "--quiet", "--allow-empty", "-m", "not lstm-bench")
    done = subprocess.run([sys.executable, "-m", "bench.cli", "ab", *argv, "--device", "cpu"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
