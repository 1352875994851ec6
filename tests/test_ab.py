"""`lstm-bench ab`: the statistics on synthetic data, the sides, and one real A/A run on a tiny cell.

The synthetic processes follow what was measured on this project's 2-core machine: each process draws
its own speed (thread placement, clocks, neighbours: a lognormal shift), and its rounds scatter little
around it. A test on the rounds of one process per side then takes a process's shift for a change.
"""

from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from bench import ab
from bench.cli import main

ROUNDS = 20


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


def test_a_revision_is_a_worktree_that_goes_away():
    with ab.revision_tree("HEAD") as tree:
        assert (tree / "bench" / "ab.py").is_file() or (tree / "bench").is_dir()
        listed = subprocess.run(["git", "worktree", "list"], cwd=ab.ROOT, capture_output=True, text=True).stdout
        assert str(tree) in listed
    assert not tree.exists()
    with pytest.raises(ab.ABError, match="not a git revision"), ab.revision_tree("no-such-revision"):
        pass


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
def test_bad_input_is_one_line_and_exit_2(capsys, argv, says):
    try:
        code = main(["ab", *argv])
    except SystemExit as exc:  # argparse's own checks exit from inside the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_a_real_a_a_pair_on_a_tiny_cell(capsys):
    """Two fresh processes a pair, the same implementation on both sides: no cell is slower (exit 0). Two pairs of a
    tiny cell on a loaded machine can read as faster by chance (seen once, beside a second test run and compiles);
    that is no regression, so only "slower" fails here; the statistics are tested on synthetic data above."""
    code = main(["ab", "--impls", "scratch,scratch", "--batch-sizes", "2", "--hidden-sizes", "4", "--seq-len", "3",
                 "--device", "cpu", "--threads", "1", "--min-pairs", "2", "--max-pairs", "2", "--max-time", "0.02",
                 "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    (cell,) = data["cells"]
    assert code == 0 and cell["pairs"] == 2 and len(cell["base_ms"]) == len(cell["new_ms"]) == 2
    assert cell["verdict"] != "slower" and cell["batch_size"] == 2
    assert "pair 2" in err


def test_two_revisions_on_the_cells_compare_lists(tmp_path, capsys):
    """--base REV --cells FILE: what the nightly's confirmation runs (HEAD against HEAD here: an A/A pair)."""
    cells = tmp_path / "flagged.txt"
    cells.write_text("bench/test_suite.py::test_cell[scratch-cpu-float32-train-B2-H4-T3-V28]\n")
    code = main(["ab", "--base", "HEAD", "--new", "HEAD", "--cells", str(cells), "--batch-sizes", "2",
                 "--hidden-sizes", "4", "--seq-len", "3", "--device", "cpu", "--threads", "1", "--min-pairs", "2",
                 "--max-pairs", "2", "--max-time", "0.02"])
    out, _ = capsys.readouterr()
    assert code == 0 and "new (HEAD) / base (HEAD)" in out
    (line,) = [row for row in out.splitlines() if row.startswith("scratch cpu float32 train B2 H4 T3")]
    assert line.split()[-1] in ("unchanged", "inconclusive") and " 2 " in line


def test_pairs_come_in_blocks_of_both_orders():
    """Each block of two pairs runs base first once and new first once, the block's first order drawn at random;
    so does the stopping rule: it answers only after whole blocks."""
    rng, blocks = random.Random(3), []
    orders = [ab.pair_order(k, rng, blocks) for k in range(40)]
    assert all(orders[k] != orders[k + 1] for k in range(0, 40, 2))
    firsts = orders[::2]
    assert 0 < sum(firsts) < len(firsts)  # the first order of a block is drawn, not fixed
