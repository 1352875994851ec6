"""Sweeps past one process: shards, torchrun ranks merged, merge's refusals, resume, the DDP step."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.grid import CELL_KEY, Cell, parse_options, shard
from bench.results import benchmark_json_path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TINY_GRID = ["--impls", "scratch,cudnn", "--batch-sizes", "2,4", "--hidden-sizes", "8", "--seq-len", "3",
             "--device", "cpu", "--benchmark-max-time=0.02"]  # the suite's 20 rounds, not a second of them


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout, cwd=ROOT)


def cells_of(run_dir: Path) -> set[tuple]:
    df = pd.read_csv(run_dir / "measurements.csv")
    return {tuple(r) for r in df[list(CELL_KEY) + ["status"]].astype(str).itertuples(index=False)}


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_are_disjoint_cover_the_grid_and_balance_by_cost(count):
    options = parse_options(lambda name: {"device": "cpu", "mode": "train,forward"}.get(name))
    grid = options.grid()
    parts = [shard(grid, i, count) for i in range(count)]
    assert sorted(c.id for part in parts for c in part) == sorted(c.id for c in grid)  # cover, no repeats
    assert parts == [shard(grid, i, count) for i in range(count)]  # deterministic
    costs = [sum(c.expected_cost_s() for c in part) for part in parts]
    # LPT's bound: no part exceeds the mean by more than the costliest single cell
    assert max(costs) <= sum(costs) / count + max(c.expected_cost_s() for c in grid) + 1e-9


def test_shards_balance_cost_not_count():
    """One compiled cell (a compile costs more than several small eager cells) against four eager ones."""
    cells = [Cell("compiled", "cpu", "float32", "train", 1, 8, 3, 28)]
    cells += [Cell("scratch", "cpu", "float32", "train", b, 8, 3, 28) for b in (1, 2, 3, 4)]
    assert [len(shard(cells, i, 2)) for i in (0, 1)] == [1, 4]


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_is_one_line_exit_2(text, capsys, tmp_path):
    assert main(["run", "--results-dir", str(tmp_path), f"--shard={text}"]) == 2
    err = capsys.readouterr().err
    assert "--shard" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One unsharded run and the same grid under torchrun with 2 ranks."""
    root = tmp_path_factory.mktemp("runs")
    whole = cli("run", *TINY_GRID, "--results-dir", str(root), "--run-id", "whole", "--processes", "1")
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "bench.cli", "run", *TINY_GRID, "--results-dir", str(root), "--run-id", "ranked"]
    ranked = subprocess.run(torchrun, capture_output=True, text=True, env=env(), timeout=600, cwd=ROOT)
    assert ranked.returncode == 0, ranked.stdout[-3000:] + ranked.stderr[-3000:]
    return root


def test_torchrun_ranks_merge_into_the_unsharded_runs_cells(runs):
    ranked = runs / "ranked"
    assert cells_of(ranked) == cells_of(runs / "whole")
    parts = [cells_of(ranked / "ranks" / f"rank-{r}") for r in (0, 1)]
    assert parts[0] and parts[1] and not parts[0] & parts[1]  # each rank measured its own shard
    environment = json.loads((ranked / "environment.json").read_text())
    assert [Path(p["path"]).name for p in environment["parts"]] == ["rank-0", "rank-1"]
    threads = {p["environment"]["torch_threads"] for p in environment["parts"]}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}  # the node's cores split between its ranks
    assert (ranked / "report.md").is_file()


def test_merge_refuses_collisions_and_mixed_environments_and_names_missing_cells(runs, tmp_path, capsys):
    whole = runs / "whole"
    assert main(["merge", str(whole), str(whole), "--out", str(tmp_path / "twice")]) == 2
    err = capsys.readouterr().err
    assert "measured more than once" in err and len(err.strip().splitlines()) == 1

    other = tmp_path / "other-torch"
    shutil.copytree(runs / "ranked" / "ranks" / "rank-1", other)
    env_path = other / "environment.json"
    env_path.write_text(json.dumps(json.loads(env_path.read_text()) | {"torch": "0.0.0"}))
    rank0 = runs / "ranked" / "ranks" / "rank-0"
    assert main(["merge", str(rank0), str(other), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert "environments differ" in err and len(err.strip().splitlines()) == 1
    assert main(["merge", str(rank0), str(other), "--out", str(tmp_path / "mixed"), "--allow-mixed"]) == 0
    assert cells_of(tmp_path / "mixed") == cells_of(whole)
    other_cpu = tmp_path / "other-cpu"  # the same torch on a CPU whose ATen kernels are AVX2 ones
    shutil.copytree(runs / "ranked" / "ranks" / "rank-1", other_cpu)
    env = json.loads((rank0 / "environment.json").read_text())
    assert env["cpu_capability"]  # a run records it
    (other_cpu / "environment.json").write_text(json.dumps(env | {"cpu_capability": "AVX2" if env[
        "cpu_capability"] != "AVX2" else "AVX512"}))
    assert main(["merge", str(rank0), str(other_cpu), "--out", str(tmp_path / "mixed-cpu")]) == 2
    err = capsys.readouterr().err
    assert "environments differ" in err and "cpu_capability" in err and len(err.strip().splitlines()) == 1

    lost = tmp_path / "lost-a-row"  # a part whose last cell never finished (its rank died)
    shutil.copytree(rank0, lost)
    csv = lost / "measurements.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-1]))
    assert main(["merge", str(lost), str(runs / "ranked" / "ranks" / "rank-1"), "--out", str(tmp_path / "m")]) == 1
    out = capsys.readouterr().out
    assert "missing cells (1)" in out


def test_a_resumed_run_measures_failed_cells_again_without_duplicates(tmp_path):
    """Rows of a finished cell stay; a failed cell is measured again and its old row replaced."""
    grid = ["--impls", "scratch,broken_impl:BrokenLSTM", "--batch-sizes", "1,2,3", "--hidden-sizes", "4",
            "--seq-len", "3", "--device", "cpu", "--results-dir", str(tmp_path), "--run-id", "again",
            "--benchmark-max-time=0.02", "--processes", "1"]
    first = cli("run", *grid)
    assert first.returncode == 1  # the broken cells fail
    second = cli("run", *grid)
    assert "3 recorded ok before: skipped" in second.stdout, second.stdout[-2000:]
    df = pd.read_csv(tmp_path / "again" / "measurements.csv")
    assert len(df) == 6 and not df.duplicated(list(CELL_KEY)).any()
    assert (df[df.impl == "scratch"].status == "ok").all() and (df[df.impl != "scratch"].status == "error").all()


def test_a_resumed_session_keeps_the_earlier_sessions_rounds(tmp_path):
    assert benchmark_json_path(tmp_path) == tmp_path / "benchmark.json"
    (tmp_path / "benchmark.json").write_text("{}")
    assert benchmark_json_path(tmp_path) == tmp_path / "benchmark-2.json"


def test_a_diverged_cell_is_flagged_not_silently_timed(tmp_path):
    proc = cli("run", "--impls", "broken_impl:DivergingLSTM", "--batch-sizes", "2", "--hidden-sizes", "4",
               "--seq-len", "3", "--device", "cpu", "--results-dir", str(tmp_path), "--run-id", "nan",
               "--processes", "1")
    assert proc.returncode == 0, proc.stdout[-2000:]
    row = pd.read_csv(tmp_path / "nan" / "measurements.csv").iloc[0]
    assert row.status == "nonfinite" and "not finite" in row.error


def test_data_parallel_step_with_two_gloo_ranks(tmp_path):
    proc = cli("ddp", "--impls", "scratch", "--batch-sizes", "4", "--hidden-sizes", "16", "--seq-len", "5",
               "--device", "cpu", "--world-sizes", "1,2", "--rounds", "5", "--results-dir", str(tmp_path),
               "--run-id", "dp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "dp" / "measurements.csv").set_index("world_size")
    assert list(df.index) == [1, 2] and (df.status == "ok").all() and (df["mode"] == "ddp").all()
    assert df.loc[1, "scaling_efficiency"] == 1.0 and df.loc[2, "scaling_efficiency"] > 0
    assert df.loc[2, "tokens_per_s"] == pytest.approx(2 * 4 * 5 / (df.loc[2, "step_ms_median"] / 1e3))
    assert "per-rank peak bytes" in df.loc[2, "notes"] and (df.rounds == 5).all()
    assert df.loc[2, "grad_bytes"] >= df.loc[2, "param_bytes"]  # the gradients are DDP's bucket views
