"""`lstm-bench ab`: is B faster than A? Measured in alternating fresh processes, judged on their spread.

The rounds of one process do not sample what moves between processes (thread placement, clock
frequency, memory layout, the neighbours), so a test on them alone is overconfident. Here each side is
measured in many short fresh processes (`pytest bench/ --benchmark-only` with the grid options), A and B
alternating in pairs whose order is randomized in balanced blocks of two (Abedi & Brecht, ICPE 2017:
randomized multiple interleaved trials), and the unit of the statistics is the process: per cell, the paired
difference of log median step times, d_k = log(B_k) - log(A_k), with a Student t interval over the pairs. Pairs are
added until every cell's answer is clear or `--budget-s` is spent (Kalibera & Jones, ISMM 2013: repeat
at the level whose variance dominates).

A side is a git revision (`--base REV --new REV`; `--new` defaults to the working tree) of the repository `ab`
is run in: the git top level of the current directory, or `--repo DIR`; never the checkout this module was
imported from, which may be another clone (an editable install) or no repository at all (a wheel). Each revision
runs from a temporary `git worktree` of that repository, first on its workers' PYTHONPATH, and a side whose workers
would import `bench` or `lstm_impls` from anywhere else is refused. Or a side is an implementation (`--impls A,B`,
`module:Class` allowed), measured in the working tree of that repository; outside any lstm-bench repository (and
without `--repo`), in the installed lstm-bench instead, as comparing two implementations needs no history. The
first line (on stderr as the pairs start, and atop the table) says which repository and commits, or which
installed copy, is measured. No repository where one is needed (not inside one, `--repo` not one, a revision
without the benchmark suite) is bad input. Verdict per cell, with threshold t:
- **slower**: the estimate of new/base lies above 1 + t and its whole 95% interval above 1 + t/2 (large,
  and significantly more than half the threshold: an A/A pair of processes whose speeds scatter by 8%
  is flagged in fewer than 1 of 5,000 cells at 10 pairs, a true 20% change nearly always);
- **faster**: the same below 1 / (1 + t) and 1 / (1 + t/2);
- **unchanged**: the whole interval lies within [1 / (1 + t), 1 + t];
- **inconclusive**: none of these when the budget is spent.
Exit 1 when a cell is slower, 0 otherwise, 2 on bad input.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .grid import CELL_KEY, KEY_DEFAULTS
from .readers import stats

SUITE = "bench/test_suite.py"  # what a tree must hold to be measured: lstm-bench's benchmark suite
KEY = tuple(k for k in CELL_KEY if k != "world_size")  # a cell, as `run` measures it (one process)
NAME_DEFAULTS = {k: v for k, v in KEY_DEFAULTS.items() if k in KEY}  # what a cell's name leaves out
VERDICTS = ("slower", "faster", "unchanged", "inconclusive")


class ABError(Exception):
    """A side that cannot be measured; the message is one line for the user."""


# ----------------------------------------------------------------------------- the statistics


@dataclass
class CellAB:
    """One cell's paired per-process medians (ms): base[k] and new[k] were measured in pair k."""

    name: str
    base: list[float] = field(default_factory=list)
    new: list[float] = field(default_factory=list)

    def estimate(self) -> stats.Estimate:
        """new / base from the pairs (Student t on the log ratios, bench/readers/stats.py)."""
        return stats.paired(self.base, self.new)

    def ratio(self) -> float:
        """new / base: the geometric mean of the pairs' ratios."""
        return self.estimate().ratio

    def interval(self) -> tuple[float, float]:
        """The 95% confidence interval of new / base; NaN below 2 pairs."""
        e = self.estimate()
        return e.low, e.high

    def between_process_spread(self) -> float:
        """max / min of the base side's per-process medians: what moves between runs of the same code."""
        return max(self.base) / min(self.base) if self.base else math.nan

    def verdict(self, threshold: float, final: bool = False) -> str | None:
        """slower, faster or unchanged once the interval says so; inconclusive when `final`, else None."""
        return stats.judge(self.estimate(), threshold) or ("inconclusive" if final else None)


def clear(cells: Sequence[CellAB], threshold: float, min_pairs: int) -> bool:
    """Every cell has its answer (and at least min_pairs pairs): measuring more would not change it."""
    return all(len(c.base) >= min_pairs and c.verdict(threshold) is not None for c in cells)


# ----------------------------------------------------------------------------- the sides


@dataclass
class Side:
    """What one side runs: a source tree (imported first) and the implementation(s) to measure there."""

    label: str  # base or new
    what: str  # in words: the revision and its commit, the working tree, or the implementation
    root: Path
    impls: str
    commit: str | None = None  # the revision's commit; None: a working tree (or the installed copy)


def git(repo: Path, *argv: str) -> subprocess.CompletedProcess:
    """`git -C repo ARGV`, its output captured; a git that cannot be started is bad input (one line)."""
    try:
        return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ABError("git is not installed: ab measures the revisions of a git repository") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise ABError(f"git {argv[0]} in {repo} failed ({exc.__class__.__name__})") from None


def _why(done: subprocess.CompletedProcess) -> str:
    """git's own reason, one line (the last it wrote)."""
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def repository(repo: Path | None = None) -> Path:
    """The git top level of `repo` (--repo), or of the current directory: the repository `ab` measures."""
    try:
        where = Path.cwd() if repo is None else repo
    except OSError:
        raise ABError("the current directory is gone: no git repository to measure (--repo DIR)") from None
    done = git(where, "rev-parse", "--show-toplevel")
    if done.returncode or not done.stdout.strip():
        if repo is not None:
            raise ABError(f"--repo {repo}: not a git repository ({_why(done)})")
        raise ABError(f"{where} is not in a git repository ({_why(done)}): run ab inside one, or give --repo DIR")
    return Path(done.stdout.strip())


def resolve(repo: Path, rev: str | None) -> str | None:
    """The commit `rev` names in repo (None: the working tree), refused unless it holds the benchmark suite."""
    if rev is None:
        if not (repo / SUITE).is_file():
            raise ABError(f"the working tree of {repo} has no {SUITE}: not an lstm-bench repository")
        return None
    # a revision that starts with "-" would be read as an option of git's
    done = None if rev.startswith("-") else git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done is None or done.returncode or not done.stdout.strip():
        raise ABError(f"{rev!r} is not a git revision of {repo}")
    commit = done.stdout.strip()
    if git(repo, "cat-file", "-e", f"{commit}:{SUITE}").returncode:
        raise ABError(f"{rev} ({commit[:7]}) of {repo} has no {SUITE}: not a revision of lstm-bench")
    return commit


def installed_tree() -> Path:
    """The directory holding the `bench` package this process imported: the installed lstm-bench (a checkout for
    an editable install, site-packages for a wheel). Only `--impls A,B` outside any lstm-bench repository uses it."""
    return Path(__file__).resolve().parents[1]


def impls_tree(repo: Path | None) -> tuple[Path, str]:
    """Where `--impls A,B` measures, and the first line's words for it: the working tree of --repo DIR (which must
    be an lstm-bench repository), else of the current directory's repository if it is one, else the installed
    lstm-bench: two implementations need no history, so a user outside any checkout can still compare them."""
    if repo is not None:
        top = repository(repo)
        resolve(top, None)
        return top, f"ab: repository {top}, its working tree"
    try:
        top = repository()
    except ABError:
        reason = "not in a git repository"
    else:
        if (top / SUITE).is_file():
            return top, f"ab: repository {top}, its working tree"
        reason = f"its repository {top} has no {SUITE}"
    tree = installed_tree()
    return tree, f"ab: no lstm-bench repository here ({reason}): the installed lstm-bench, {tree}"


def revisions_line(repo: Path, revs: Sequence[str | None], commits: Sequence[str | None]) -> str:
    """The first line of a compare of two revisions: the repository, and each side's commit and revision."""
    base, new = (f"{label} {commit[:7]} ({rev})" if commit else f"{label}: the working tree"
                 for label, rev, commit in zip(("base", "new"), revs, commits))
    return f"ab: repository {repo}, {base}, {new}"


@contextlib.contextmanager
def revision_tree(repo: Path, commit: str | None) -> Iterator[Path]:
    """The source tree of a commit of repo (a temporary worktree, removed after), or repo's working tree (None)."""
    if commit is None:
        yield repo
        return
    with tempfile.TemporaryDirectory(prefix="lstm-bench-ab-") as tmp:
        tree = Path(tmp) / "tree"
        done = git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        if done.returncode:
            raise ABError(f"git worktree add {commit[:7]} in {repo} failed: {_why(done)}")
        try:
            yield tree
        finally:
            git(repo, "worktree", "remove", "--force", str(tree))


def worker_env(root: Path) -> dict[str, str]:
    """A measuring process's environment: the side's tree first on PYTHONPATH, ahead of site-packages (an
    editable install's finder comes after every sys.path entry, a wheel's copy after PYTHONPATH)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(root), *rest])}


def check_imports(side: Side) -> None:
    """Refuse a side whose measuring processes would import `bench` or `lstm_impls` from outside its tree (a copy
    put ahead of PYTHONPATH, as an old setuptools develop install does): they would measure other code. Asked of
    a process started as the workers are, without importing the packages (find_spec: cheap, no torch)."""
    code = ("import importlib.util as u\n"
            "for name in ('bench', 'lstm_impls'):\n"
            "    spec = u.find_spec(name)\n"
            "    print(spec.origin if spec and spec.origin else 'nowhere')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=side.root, env=worker_env(side.root),
                          capture_output=True, text=True, timeout=120)
    origins = done.stdout.splitlines()
    root = side.root.resolve()
    outside = [o for o in origins if not Path(o).resolve().is_relative_to(root)]
    if done.returncode or len(origins) != 2 or outside:
        found = ", ".join(outside) or _why(done)
        raise ABError(f"{side.label}: its processes would import lstm-bench from {found}, not from {root}")


def trial(side: Side, grid: Sequence[str], out: Path, run_id: str, max_time_s: float,
          cells: Sequence[str] = ()) -> dict[tuple, float]:
    """One fresh process measuring the side's cells (the grid, or these pytest node ids of bench/test_suite.py):
    {cell key (KEY): median step ms}."""
    from .results import RunError, load_run

    targets = list(cells) or [str(side.root / "bench")]
    argv = [sys.executable, "-m", "pytest", *targets, "--benchmark-only", "-q", "-p",
            "no:cacheprovider", "--impls", side.impls, *grid, "--results-dir", str(out), "--run-id", run_id,
            f"--benchmark-max-time={max_time_s}"]
    done = subprocess.run(argv, cwd=side.root, env=worker_env(side.root), capture_output=True, text=True)
    try:
        rows = load_run(out / run_id).measurements
    except RunError as exc:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise ABError(f"{side.label}: the measuring process left no readable rows ({exc}; exit {done.returncode}: "
                      f"{tail[0]})") from None
    ok = rows[rows["status"] == "ok"]
    return {tuple(r[k] for k in KEY): float(r["step_ms_median"]) for _, r in ok.iterrows()}


def cell_name(key: tuple) -> str:
    parts = dict(zip(KEY, key))
    impl = f"{parts['impl']} " if parts["impl"] else ""
    config = "".join(f" {k}={parts[k]}" for k, default in NAME_DEFAULTS.items() if parts[k] != default)
    return (f"{impl}{parts['device']} {parts['dtype']} {parts['mode']} B{parts['batch_size']} H{parts['hidden_size']} "
            f"T{parts['seq_len']}{config}")


def pair_order(k: int, rng: random.Random, first_of_block: list[bool]) -> bool:
    """Whether pair k runs base first: pairs come in blocks of two, the block's first pair's order drawn at random
    and the second pair the other way round, so a cost that falls on the first (or second) process of a pair
    whichever side it is (a load decaying, caches the first one warms) cancels in every block instead of
    landing on one side by chance (an A/A `ab` of three pairs, right after a busy spell, read x1.62, 1.27-2.07:
    one side's processes were slowed in every pair; its pairs' orders were not kept)."""
    if k % 2 == 0:
        first_of_block.append(rng.random() < 0.5)
    return first_of_block[k // 2] == (k % 2 == 0)


def measure(base: Side, new: Side, grid: Sequence[str], *, budget_s: float, threshold: float, min_pairs: int,
            max_pairs: int, max_time_s: float, seed: int, cells_ids: Sequence[str] = (),
            log=print) -> dict[tuple, CellAB]:
    """Pairs of fresh processes in blocks of two opposite orders (pair_order), until the answers are clear after a
    whole block or the budget is spent. Cells that either side did not measure ok in a pair are left out of that
    pair."""
    rng, blocks = random.Random(seed), []
    cells: dict[tuple, CellAB] = {}
    by_impl = base.impls == new.impls  # two revisions: each implementation its own cell; two implementations: one

    def same_cell(key: tuple) -> tuple:
        return key if by_impl else ("", *key[1:])

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lstm-bench-ab-runs-") as tmp:
        for k in range(max_pairs):
            order = [base, new] if pair_order(k, rng, blocks) else [new, base]
            got = {side.label: {same_cell(key): ms for key, ms in trial(
                side, grid, Path(tmp), f"{side.label}-{k}", max_time_s, cells_ids).items()} for side in order}
            for key in got[base.label].keys() & got[new.label].keys():
                c = cells.setdefault(key, CellAB(cell_name(key)))
                c.base.append(got[base.label][key])
                c.new.append(got[new.label][key])
            elapsed = time.monotonic() - started
            log(f"pair {k + 1} ({order[0].label} first): {len(cells)} cells, {elapsed:.0f} s")
            if not cells:
                raise ABError("no cell was measured ok by both sides (see their rows: unsupported, error?)")
            per_pair = elapsed / (k + 1)
            if (k % 2 and clear(cells.values(), threshold, min_pairs)) or elapsed + per_pair > budget_s:
                break
    return cells


def render(cells: dict[tuple, CellAB], base: Side, new: Side, threshold: float, about: str = "") -> str:
    """The table, after `about` (what was measured: the first line): per cell new/base with its 95% interval, the
    pairs, the base side's spread and the verdict."""
    width = max(len("cell"), *(len(c.name) for c in cells.values()))
    lines = [about] if about else []
    lines += [f"new ({new.what}) / base ({base.what}): step time, the ratio of paired fresh processes' medians "
              f"(threshold {threshold:.0%})", "",
              f"{'cell':<{width}}  {'ratio':>6}  {'95% interval':>15}  {'pairs':>5}  {'spread':>6}  verdict"]
    for key in sorted(cells):
        c = cells[key]
        low, high = c.interval()
        lines.append(f"{c.name:<{width}}  {c.ratio():>6.3f}  {f'{low:.3f}-{high:.3f}':>15}  {len(c.base):>5}  "
                     f"{c.between_process_spread():>6.3f}  {c.verdict(threshold, final=True)}")
    lines += ["", "spread: max / min of the base side's per-process medians (what moves between processes)"]
    return "\n".join(lines)


def as_json(cells: dict[tuple, CellAB], threshold: float, base: Side, new: Side, about: str = "") -> str:
    """The table for scripts, with what was measured: the first line, each side's words and commit (null: a
    working tree)."""
    sides = {side.label: {"what": side.what, "commit": side.commit} for side in (base, new)}
    return json.dumps({"about": about, **sides, "threshold": threshold, "cells": [
        {"cell": c.name, **dict(zip(KEY, map(_plain, key))), "ratio": c.ratio(), "interval_95": c.interval(),
         "pairs": len(c.base), "base_ms": c.base, "new_ms": c.new, "verdict": c.verdict(threshold, final=True)}
        for key, c in sorted(cells.items())]}, indent=2)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
