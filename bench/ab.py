"""`lstm-bench ab`: is B faster than A? Measured in alternating fresh processes, judged on their spread.

The rounds of one process do not sample what moves between processes (thread placement, clock
frequency, memory layout, the neighbours), so a test on them alone is overconfident. Here each side is
measured in many short fresh processes (`pytest bench/ --benchmark-only` with the grid options), A and B
alternating in pairs whose order is randomized in balanced blocks of two (Abedi & Brecht, ICPE 2017:
randomized multiple interleaved trials), and the unit of the statistics is the process: per cell, the paired
difference of log median step times, d_k = log(B_k) - log(A_k), with a Student t interval over the pairs. Pairs are
added until every cell's answer is clear or `--budget-s` is spent (Kalibera & Jones, ISMM 2013: repeat
at the level whose variance dominates).

A side is a git revision of this checkout (`--base REV --new REV`; `--new` defaults to the working
tree; each revision runs from a `git worktree`, imported first through PYTHONPATH) or an implementation
(`--impls A,B`, `module:Class` allowed). Verdict per cell, with threshold t:
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

ROOT = Path(__file__).resolve().parents[1]
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
    what: str  # in words: the revision or the implementation
    root: Path
    impls: str


@contextlib.contextmanager
def revision_tree(rev: str | None) -> Iterator[Path]:
    """The source tree of a git revision of this checkout (a temporary worktree), or the working tree (None)."""
    if rev is None:
        yield ROOT
        return
    try:
        commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        raise ABError(f"{rev!r} is not a git revision of this checkout ({ROOT})") from None
    with tempfile.TemporaryDirectory(prefix="lstm-bench-ab-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit], cwd=ROOT,
                       capture_output=True, check=True, timeout=120)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True,
                           timeout=120)


def trial(side: Side, grid: Sequence[str], out: Path, run_id: str, max_time_s: float,
          cells: Sequence[str] = ()) -> dict[tuple, float]:
    """One fresh process measuring the side's cells (the grid, or these pytest node ids of bench/test_suite.py):
    {cell key (KEY): median step ms}."""
    from .results import RunError, load_run

    targets = list(cells) or [str(side.root / "bench")]
    argv = [sys.executable, "-m", "pytest", *targets, "--benchmark-only", "-q", "-p",
            "no:cacheprovider", "--impls", side.impls, *grid, "--results-dir", str(out), "--run-id", run_id,
            f"--benchmark-max-time={max_time_s}"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(side.root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(argv, cwd=side.root, env=env, capture_output=True, text=True)
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


def render(cells: dict[tuple, CellAB], base: Side, new: Side, threshold: float) -> str:
    """The table: per cell new/base with its 95% interval, the pairs, the base side's spread and the verdict."""
    width = max(len("cell"), *(len(c.name) for c in cells.values()))
    lines = [f"new ({new.what}) / base ({base.what}): step time, the ratio of paired fresh processes' medians "
             f"(threshold {threshold:.0%})", "",
             f"{'cell':<{width}}  {'ratio':>6}  {'95% interval':>15}  {'pairs':>5}  {'spread':>6}  verdict"]
    for key in sorted(cells):
        c = cells[key]
        low, high = c.interval()
        lines.append(f"{c.name:<{width}}  {c.ratio():>6.3f}  {f'{low:.3f}-{high:.3f}':>15}  {len(c.base):>5}  "
                     f"{c.between_process_spread():>6.3f}  {c.verdict(threshold, final=True)}")
    lines += ["", "spread: max / min of the base side's per-process medians (what moves between processes)"]
    return "\n".join(lines)


def as_json(cells: dict[tuple, CellAB], threshold: float) -> str:
    return json.dumps({"threshold": threshold, "cells": [
        {"cell": c.name, **dict(zip(KEY, map(_plain, key))), "ratio": c.ratio(), "interval_95": c.interval(),
         "pairs": len(c.base), "base_ms": c.base, "new_ms": c.new, "verdict": c.verdict(threshold, final=True)}
        for key, c in sorted(cells.items())]}, indent=2)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
