"""lstm-bench report: on a real run of the suite (tiny grid), on hand-written runs whose answers are known, and on
bad input (one line, exit code 2)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from bench.cli import main
from bench.grid import COLUMNS
from bench.readers.report import bytes_per_sequence, combine, hidden_growth, human_bytes
from bench.results import CSV_NAME, ENV_NAME

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The real suite on a tiny CPU grid, through `lstm-bench run` (which ends by writing the report)."""
    results = tmp_path_factory.mktemp("results")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--device", "cpu", "--impls", "scratch,cudnn",
         "--batch-sizes", "2,4", "--hidden-sizes", "8,16", "--seq-len", "3", "--results-dir", str(results),
         "--run-id", "x", "--benchmark-max-time=0.02", "--benchmark-min-rounds=3", "--processes", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results / "x"


def measurements(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / CSV_NAME)


def write_run(run_dir: Path, rows: list[dict], environment: dict | None = None) -> Path:
    """A run directory by hand: measurements.csv with the schema's columns (unset ones empty)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(run_dir / CSV_NAME, index=False)
    (run_dir / ENV_NAME).write_text(json.dumps(environment or {"device": "cpu", "torch": "2.13.0"}))
    return run_dir


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    height, width = imread(path).shape[:2]
    assert height > 200 and width > 200, path


def assert_fails_with_one_line(argv: list[str], capsys, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err


# ----------------------------------------------------------------------------- the real run


def test_run_ends_with_a_report_whose_plots_are_pngs(real_run):
    report = (real_run / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    names = {Path(name).name for name in images}
    group = "cpu-float32-train-T3-V28"
    assert {f"plot-{kind}-{group}.png" for kind in ("vs-batch", "vs-hidden", "relative", "breakdown", "first-call")
            } <= names
    for name in images:
        assert_png(real_run / name)
    assert "2.13" in report or "torch" in report  # the environment table
    assert "Every cell finished ok." in report


def test_pivot_csvs_hold_the_runs_numbers(real_run):
    df = measurements(real_run)
    step = pd.read_csv(real_run / "pivot-step-ms.csv")
    peak = pd.read_csv(real_run / "pivot-peak-mib.csv")
    tokens = pd.read_csv(real_run / "pivot-tokens-per-s.csv")
    assert len(step) == 4  # 2 impls x 2 batch sizes, a column per hidden size
    for row in df.itertuples():
        where = (step["impl"] == row.impl) & (step["batch_size"] == row.batch_size)
        column = f"H{row.hidden_size}"
        assert step.loc[where, column].item() == pytest.approx(row.step_ms_median)
        assert peak.loc[where, column].item() == pytest.approx(row.peak_bytes / MIB)
        assert tokens.loc[where, column].item() == pytest.approx(row.tokens_per_s)


def test_the_answer_quotes_the_nearest_cell_of_the_csv(real_run):
    report = (real_run / "report.md").read_text()
    assert "the cell nearest the d2l config (B32 H256 T35 V28), B4 H16 T3 V28" in report
    df = measurements(real_run)
    for row in df[(df["batch_size"] == 4) & (df["hidden_size"] == 16)].itertuples():
        model = row.param_bytes + row.grad_bytes + row.optimizer_bytes
        batch = row.activation_bytes + row.workspace_bytes
        assert (f"**{row.impl}**: the model takes **{human_bytes(model)}**" in report
                and f"takes **{human_bytes(batch)}**" in report), row.impl


def test_bytes_per_sequence_on_the_real_run_is_the_least_squares_line(real_run):
    run = combine([real_run])
    fits = bytes_per_sequence(run.rows[run.rows["status"] == "ok"], 16).set_index("impl")
    df = measurements(real_run)
    for impl in ("scratch", "cudnn"):
        rows = df[(df["impl"] == impl) & (df["hidden_size"] == 16)]
        slope, intercept = np.polyfit(rows["batch_size"], rows["peak_bytes"], 1)
        assert fits.loc[impl, "slope_bytes"] == pytest.approx(slope)
        assert fits.loc[impl, "intercept_bytes"] == pytest.approx(intercept)


def test_error_bars_come_from_the_raw_rounds(real_run):
    run = combine([real_run])
    data = {}  # every round of the run's two worker processes
    for worker in sorted((real_run / "processes").iterdir()):
        for b in json.loads((worker / "benchmark.json").read_text())["benchmarks"]:
            data.setdefault(b["param"], []).extend(b["stats"]["data"])
    for row in run.rows.itertuples():
        cell = f"{row.impl}-cpu-float32-train-B{row.batch_size}-H{row.hidden_size}-T3-V28"
        q1, q3 = np.percentile(data[cell], [25, 75])
        assert row.step_ms_q1 == pytest.approx(q1 * 1e3) and row.step_ms_q3 == pytest.approx(q3 * 1e3)
        # the row's median is that of the pooled rounds (bench/workers.py): inside them, and inside their IQR
        assert min(data[cell]) * 1e3 <= row.step_ms_median <= max(data[cell]) * 1e3
        assert row.step_ms_q1 <= row.step_ms_median <= row.step_ms_q3


def test_shards_of_a_run_combine_into_the_same_tables(real_run, tmp_path):
    df = measurements(real_run)
    shards = []
    for impl in ("scratch", "cudnn"):
        shard = tmp_path / impl
        shard.mkdir()
        df[df["impl"] == impl].to_csv(shard / CSV_NAME, index=False)
        shutil.copy(real_run / ENV_NAME, shard / ENV_NAME)
        shards.append(str(shard))
    assert main(["report", *shards, "--out", str(tmp_path / "combined")]) == 0
    for name in ("pivot-step-ms.csv", "pivot-peak-mib.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "combined" / name), pd.read_csv(real_run / name))
    report = (tmp_path / "combined" / "report.md").read_text()
    assert all(shard in report for shard in shards)


def test_colliding_runs_fail_with_one_line(real_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    measurements(real_run).head(1).to_csv(other / CSV_NAME, index=False)
    assert_fails_with_one_line(["report", str(real_run), str(other), "--out", str(tmp_path / "out")], capsys,
                               r"runs collide: cell scratch-cpu-float32-train-B2-H8-T3-V28")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- known answers


def synthetic_rows() -> list[dict]:
    """Exact data: parameters 16·H² bytes, activations 1000·B·H (cudnn 2000·B·H), workspace 5000·B + 7."""
    rows = []
    for impl, per_activation in (("scratch", 1000), ("cudnn", 2000)):
        for hidden in (64, 256):
            for batch in (8, 32, 64):
                params = 16 * hidden * hidden
                parts = {"param_bytes": params, "grad_bytes": params, "optimizer_bytes": 0,
                         "activation_bytes": per_activation * batch * hidden, "workspace_bytes": 5000 * batch + 7}
                step_ms = 1e-4 * batch * hidden * (5 if impl == "scratch" else 1)
                rows.append({"impl": impl, "device": "cpu", "dtype": "float32", "mode": "train", "batch_size": batch,
                             "hidden_size": hidden, "input_size": 28, "seq_len": 35, "status": "ok",
                             "step_ms_median": step_ms, "step_ms_iqr": 0.02 * step_ms,
                             "tokens_per_s": batch * 35 / step_ms * 1e3, "first_step_ms": 3 * step_ms,
                             "peak_bytes": sum(parts.values()), **parts,
                             "predicted_peak_bytes": 1.1 * sum(parts.values()) if impl == "scratch" else None})
    rows[0] = rows[0] | {"step_ms_iqr": 0.25 * rows[0]["step_ms_median"]}  # one noisy cell
    forward = {"impl": "scratch", "device": "cpu", "dtype": "float32", "mode": "forward", "input_size": 28,
               "seq_len": 35, "status": "ok", "step_ms_median": 1.0, "step_ms_iqr": 0.01, "tokens_per_s": 1.0,
               "first_step_ms": 2.0, "grad_bytes": 0, "optimizer_bytes": 0, "activation_bytes": 0}
    for batch in (16, 32):
        rows.append(forward | {"batch_size": batch, "hidden_size": 256, "param_bytes": 16 * 256**2,
                               "workspace_bytes": 100 * batch, "peak_bytes": 16 * 256**2 + 100 * batch})
    rows.append({"impl": "cudnn", "device": "cuda:0", "dtype": "float32", "mode": "train", "batch_size": 32,
                 "hidden_size": 256, "input_size": 28, "seq_len": 35, "status": "ok", "step_ms_median": 2.0,
                 "step_ms_iqr": 0.01, "tokens_per_s": 560000.0, "first_step_ms": 300.0, "peak_bytes": 28 * MIB,
                 "param_bytes": MIB, "grad_bytes": MIB, "optimizer_bytes": 0, "activation_bytes": 15 * MIB,
                 "workspace_bytes": 3 * MIB, "library_bytes": 8 * MIB, "peak_reserved_bytes": 40 * MIB,
                 "process_used_bytes": 340 * MIB, "context_bytes": 300 * MIB, "notes": "a synthetic GPU row"})
    for world_size, efficiency in ((1, 1.0), (2, 0.8)):
        rows.append(forward | {"mode": "ddp", "world_size": world_size, "batch_size": 16, "hidden_size": 64,
                               "param_bytes": 16 * 64**2, "workspace_bytes": 100, "peak_bytes": 16 * 64**2 + 100,
                               "scaling_efficiency": efficiency})
    rows.append({"impl": "scratch", "device": "cuda:0", "dtype": "float32", "mode": "train", "batch_size": 4096,
                 "hidden_size": 256, "input_size": 28, "seq_len": 35, "status": "oom",
                 "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"})
    return rows


DDP_CELL = "scratch-cpu-float32-ddp-B16-H64-T35-V28-W2"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("synthetic")
    rows = synthetic_rows()
    stale = rows[1] | {"peak_bytes": 1, "step_ms_median": 1e6}  # scratch B32 H64: the later row of a cell wins
    write_run(run_dir, [stale] + rows, {"device": "cpu", "cpu_model": "a synthetic CPU", "torch": "2.13.0"})
    rounds = {"benchmarks": [{"param": DDP_CELL, "stats": {"data": [0.001, 0.002, 0.003, 0.004, 0.005]}}]}
    (run_dir / "benchmark.json").write_text(json.dumps(rounds))
    assert main(["report", str(run_dir)]) == 0
    return run_dir


def test_bytes_per_sequence_and_growth_with_hidden_size_are_the_known_ones(synthetic):
    run = combine([synthetic])
    ok = run.rows[(run.rows["status"] == "ok") & (run.rows["device"] == "cpu") & (run.rows["mode"] == "train")]
    fits = bytes_per_sequence(ok, 256).set_index("impl")
    assert fits.loc["scratch", "slope_bytes"] == pytest.approx(1000 * 256 + 5000)
    assert fits.loc["cudnn", "slope_bytes"] == pytest.approx(2000 * 256 + 5000)
    assert fits.loc["scratch", "intercept_bytes"] == pytest.approx(2 * 16 * 256**2 + 7)
    assert fits.loc["scratch", "activation_slope_bytes"] == pytest.approx(1000 * 256)
    assert fits["r_squared"].to_list() == pytest.approx([1.0, 1.0])
    growth = hidden_growth(ok, 32).set_index("impl")
    assert growth["param_exponent"].to_list() == pytest.approx([2.0, 2.0])
    assert growth["activation_exponent"].to_list() == pytest.approx([1.0, 1.0])
    report = (synthetic / "report.md").read_text()
    assert f"**scratch**: {human_bytes(261000)} per sequence" in report
    assert "R² = 1.0000 over 3 batch sizes 8–64" in report
    assert "parameters 64 KiB→1 MiB (k = 2.00)" in report


def test_known_report_sections(synthetic):
    report = (synthetic / "report.md").read_text()
    assert "At **the d2l config, B32 H256 T35 V28**" in report
    assert "5× cudnn's time" in report  # scratch's step is 5 times cudnn's in every cell
    assert "**25.0%**" in report and "1 of 12 cells are noisier than 10%" in report
    gpu = report.split("## cuda:0 · float32 · train")[1].split("\n## ")[0]
    assert "the step peaks at 28 MiB (libraries' workspaces 8 MiB included)" in gpu
    assert "nvidia-smi shows 340 MiB for this process, while the step peaks at 28 MiB: the CUDA context" in gpu
    assert "300 MiB; the caching allocator's pool (peak reserved) 40 MiB" in gpu
    assert "nvidia-smi" not in report.split("## cuda:0")[0]  # not on a CPU
    assert "| scratch-cuda:0-float32-train-B4096-H256-T35-V28 | oom | OutOfMemoryError: CUDA out of memory." in report
    assert "- a synthetic GPU row (1 cell)" in report
    assert "1 rows were replaced by later rows of the same cell" in report
    step = pd.read_csv(synthetic / "pivot-step-ms.csv").set_index(["device", "mode", "impl", "batch_size"])
    assert step.loc[("cpu", "train", "scratch", 32), "H64"] == pytest.approx(synthetic_rows()[1]["step_ms_median"])
    forward = report.split("## cpu · float32 · forward")[1].split("\n## ")[0]
    assert "(parameters 1 MiB)" in forward  # forward mode: no gradients, no optimizer state


def test_every_group_gets_its_own_titled_plots(synthetic):
    report = (synthetic / "report.md").read_text()
    for title in ("cpu · float32 · train · T35 · V28", "cpu · float32 · forward · T35 · V28",
                  "cuda:0 · float32 · train · T35 · V28"):
        assert f"## {title}" in report
    expected = ["plot-vs-batch-cpu-float32-train-T35-V28", "plot-vs-hidden-cpu-float32-train-T35-V28",
                "plot-relative-cpu-float32-train-T35-V28", "plot-predicted-cpu-float32-train-T35-V28",
                "plot-vs-batch-cpu-float32-forward-T35-V28", "plot-breakdown-cuda0-float32-train-T35-V28"]
    for stem in expected:
        assert f"({stem}.png)" in report
        assert_png(synthetic / f"{stem}.png")
    assert not (synthetic / "plot-vs-hidden-cpu-float32-forward-T35-V28.png").exists()  # one hidden size
    noise = pd.read_csv(synthetic / "pivot-noise-pct.csv")
    assert set(noise["mode"]) == {"train", "forward", "ddp"} and set(noise["device"]) == {"cpu", "cuda:0"}
    assert set(noise["world_size"]) == {1, 2}


def test_ddp_rows_get_a_group_per_world_size_and_a_scaling_table(synthetic):
    report = (synthetic / "report.md").read_text()
    assert "## cpu · float32 · ddp · T35 · V28 · 2 ranks" in report and "## cpu · float32 · ddp · T35 · V28\n" in report
    assert "| cpu | float32 | scratch | 35 | 16 | 64 | 1.00 | 0.80 |" in report
    rows = combine([synthetic]).rows
    row = rows[(rows["mode"] == "ddp") & (rows["world_size"] == 2)].iloc[0]  # its rounds found by the W2 cell id
    assert (row["step_ms_q1"], row["step_ms_q3"]) == pytest.approx((2.0, 4.0))


# ----------------------------------------------------------------------------- bad input


def test_a_run_with_no_ok_rows_gets_a_report_that_says_so(tmp_path):
    rows = [{"impl": "scratch", "device": "cpu", "dtype": "float16", "mode": "train", "batch_size": 8,
             "hidden_size": 64, "input_size": 28, "seq_len": 35, "status": "unsupported",
             "error": "scratch does not run float16 on cpu"},
            {"impl": "cudnn", "device": "cpu", "dtype": "float32", "mode": "train", "batch_size": 8,
             "hidden_size": 64, "input_size": 28, "seq_len": 35, "status": "error", "error": "RuntimeError: boom"}]
    run_dir = write_run(tmp_path / "run", rows)
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "**No cell finished ok** (2 rows: 1 unsupported, 1 error)" in report
    assert "scratch does not run float16 on cpu" in report and "RuntimeError: boom" in report
    assert not list(run_dir.glob("*.png"))


@pytest.mark.parametrize("damage, match", [
    ("missing", r"no measurements.csv \(not a run directory\)"),
    ("no csv", r"no measurements.csv"),
    ("wrong columns", r"not a measurements file \(lacks impl"),
    ("truncated", r"the last row is cut off"),
    ("not a number", r"damaged \(column peak_bytes holds a value that is not a number\)"),
    ("extra field", r"damaged"),
    ("no batch size", r"row 3 of measurements.csv has no batch_size"),
    ("bad status", r"status 'fine', not one of ok, oom, error, unsupported"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, damage, match):
    good = write_run(tmp_path / "good", synthetic_rows()[:3])
    text = (good / CSV_NAME).read_text()
    table = pd.read_csv(good / CSV_NAME, dtype=str)
    run_dir = tmp_path / "bad"
    if damage != "missing":
        run_dir.mkdir()
    if damage == "wrong columns":
        (run_dir / CSV_NAME).write_text("when,what\n2026,x\n")
    elif damage == "truncated":
        (run_dir / CSV_NAME).write_text(text[:-30])
    elif damage == "extra field":
        (run_dir / CSV_NAME).write_text(text + text.splitlines()[1] + ",1,2\n")
    elif damage in ("not a number", "no batch size", "bad status"):
        column, value = {"not a number": ("peak_bytes", "lots"), "no batch size": ("batch_size", None),
                         "bad status": ("status", "fine")}[damage]
        table.loc[1, column] = value  # the second row: line 3 of the file
        table.to_csv(run_dir / CSV_NAME, index=False)
    assert_fails_with_one_line(["report", str(run_dir)], capsys, match)
    assert not (run_dir / "report.md").exists()


def test_several_runs_need_out_and_one_run_cannot_be_named_twice(synthetic, tmp_path, capsys):
    other = write_run(tmp_path / "other", [synthetic_rows()[0] | {"seq_len": 70}])
    assert_fails_with_one_line(["report", str(synthetic), str(other)], capsys, r"--out DIR")
    assert_fails_with_one_line(["report", str(synthetic), str(synthetic), "--out", str(tmp_path)], capsys,
                               r"named twice")


def test_the_ladder_lists_each_rung_in_order_with_its_ratio_to_cudnn(real_run):
    from bench.readers.report import sig

    text = (real_run / "report.md").read_text()
    section = text[text.index("### The optimization ladder at B4 H16"):].split("\n### ")[0]
    table = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in r] for r in table[2:]]  # after the header and its rule
    assert [r[0] for r in rows] == ["scratch", "cudnn"]  # the ladder's order, not the alphabet's
    df = measurements(real_run)
    at = df[(df.batch_size == 4) & (df.hidden_size == 16)].set_index("impl")
    ratio = at.loc["scratch", "step_ms_median"] / at.loc["cudnn", "step_ms_median"]
    assert rows[0][3] == f"{sig(ratio, 3)}×" and rows[1][3] == "1×"
    relative = at.loc["scratch", "relative_step_median"] / at.loc["cudnn", "relative_step_median"]
    assert "relative to the probe" in table[0][4] and rows[0][4] == f"{sig(relative, 3)}×" and rows[1][4] == "1×"


def test_the_environment_says_how_the_processes_ran_and_what_the_time_budget_left():
    from bench.readers.report import _env_value

    how = {"count": 3, "max_count": 5, "finished": 4, "extra_cells": {"3": 20}, "budget_end_s": 284.9,
           "planned": {"3": {"cells": 20, "unsettled": 25, "estimate_s": 40.0, "took_s": 41.0},
                       "4": {"cells": 0, "unsettled": 9, "left_s": 3.0, "fixed_s": 15.0}},
           "wall_s": 280.0, "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [1.0, 1.0, 1.0]}
    text = _env_value(how)
    assert text.startswith("3 of 3 fresh processes timing every cell, then 1 more timing only the least settled "
                           "cells (20 cells), then no more: the time budget left 9 cells unsettled")
    assert "those past the first 2 planned to end within 285 s: the time budget" in text
    assert "time budget left" not in _env_value(how | {"planned": {"3": how["planned"]["3"]}})
    # the third of the first processes cut by the budget to 12 cells, and none added
    cut = how | {"finished": 3, "extra_cells": {"2": 12}, "planned": {"2": {"cells": 12, "unsettled": 30,
                                                                          "estimate_s": 30.0, "took_s": 29.0}}}
    assert _env_value(cut).startswith("2 of 3 fresh processes timing every cell and 1 the time budget cut to the "
                                      "least settled cells (12 cells), one after another, in 280 s")
