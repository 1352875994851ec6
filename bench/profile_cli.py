"""`lstm-bench profile`: why a step takes what it takes, how far it is from the machine's limit, and the memory
through it, per cell (bench/instruments/profiling.py collects; bench/readers/profiling.py tables and draws).

Into --out: profile.csv (a row per cell, PROFILE_COLUMNS), profile.md (the tables), environment.json (the device's
GEMM peak beside the environment; a run directory's own is kept, the peak added), per cell a Chrome/Perfetto trace
(<cell id>.pt.trace.json.gz) and the bytes alive through a training step (memory-<cell id>.json.gz and .png; on CUDA
also memory-snapshot-<cell id>.pickle for pytorch.org/memory_viz). `lstm-bench report` of a directory holding them
shows them.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import sys
from pathlib import Path

from bench.grid import OPTIONS, PROFILE_COLUMNS, PROFILE_CSV, Cell, OptionError, Options, check_path, parse_options
from bench.results import ENV_NAME, OutputError, failure_status, one_line, read_json, writable_dir, write_environment

#: the grid options `profile` takes (where a run's rows go and sharding are the run's own)
PROFILE_GRID = [name for name in OPTIONS if name not in ("results-dir", "run-id", "shard")]
#: profiling every cell of a grid is slow: without sizes, the d2l config's
DEFAULT_SIZES = {"batch-sizes": "32", "hidden-sizes": "256"}
MEMORY_PNG = "memory-{}.png"


def add_parser(sub: argparse._SubParsersAction) -> None:
    profile = sub.add_parser("profile", help="a few steady steps of each cell under torch.profiler: where the step's "
                             "time goes, its distance to the device's GEMM peak, the memory through it")
    for name in PROFILE_GRID:
        default = DEFAULT_SIZES.get(name, OPTIONS[name][0])
        help_text = OPTIONS[name][1] + (" (default: every implementation that runs on the device)"
                                        if name == "impls" else f" (default: {default})")
        profile.add_argument(f"--{name}", default=None if name == "impls" else default, help=help_text)
    profile.add_argument("--tf32", action="store_true", help="allow TF32 in cuBLAS and cuDNN (pinned off by default)")
    profile.add_argument("--out", type=_path, required=True, help="the directory for its files (a run directory: its "
                         "report then shows them)")
    profile.add_argument("--steps", type=_count, default=3, help="profiled steps per cell, after one unrecorded "
                         "(default: 3)")
    profile.add_argument("--rounds", type=_count, default=20, help="unprofiled steps timed per cell, for the "
                         "profiler's overhead (default: 20)")
    profile.set_defaults(func=run)


def _count(text: str) -> int:
    """argparse type: a count from 1 to 1000 (profiled steps each hold every event in memory)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to 1000")
    return value


def _path(text: str) -> Path:
    """argparse type: a path (not empty, no NUL byte)."""
    try:
        return Path(check_path(text, "--out"))
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cells_to_profile(args: argparse.Namespace) -> tuple[list[Cell], Options]:
    """The grid's cells; an implementation named that does not run on the device is bad input (OptionError)."""
    import lstm_impls

    raw = {name: getattr(args, name.replace("-", "_")) for name in PROFILE_GRID}
    options = parse_options(lambda name: raw.get(name))
    cells = []
    for cell in options.cells():
        reason = lstm_impls.get(cell.impl).unsupported_reason(cell.device, cell.torch_dtype, **cell.config)
        if reason and args.impls is not None:
            raise OptionError(f"--impls {cell.impl}: does not run {cell.id}: {reason}")
        if not reason:
            cells.append(cell)
    if not cells:
        raise OptionError("no cell of the grid runs on this device")
    return cells, options


def run(args: argparse.Namespace) -> int:
    """Profile each cell; write the files; print the table. Exit 1 when a cell failed, 2 on bad input."""
    import pandas as pd
    import torch

    import lstm_impls
    from bench.instruments.env import environment, pin_tf32
    from bench.instruments.flops import cell_flops
    from bench.instruments.malloc import set_malloc
    from bench.instruments.measure import compile_reset, settled_subject, start_runtimes
    from bench.instruments.peak import PEAK_SIZE, compute_dtype, gemm_peak_gflops
    from bench.instruments.profiling import memory_timeline, profile_subject
    from bench.readers.profiling import (
        cost_per_time_step,
        parts_table,
        plot_parts,
        profile_as_rows,
        terminal_table,
        write_timeline,
    )
    from bench.readers.tables import md_table

    cells, options = cells_to_profile(args)
    out = writable_dir(args.out, "--out")
    if options.threads:
        torch.set_num_threads(options.threads)
    pin_tf32(args.tf32)
    malloc = set_malloc(options.malloc)  # as the suite times: the C allocator's policy set before any cell
    device = torch.device(options.device)
    print(f"lstm-bench profile: {len(cells)} cells on {device}, into {out}", flush=True)
    start_runtimes(device, {lstm_impls.get(c.impl).runtime for c in cells})
    dtypes = dict.fromkeys(compute_dtype(c) for c in cells)
    peaks = {dtype: gemm_peak_gflops(options.device, dtype) for dtype in dtypes}
    print("measured GEMM peak: " + ", ".join(f"{d} {v:.4g} GFLOP/s" for d, v in peaks.items())
          + f" ({PEAK_SIZE[device.type]}-square matmul)", flush=True)
    env = read_json(out / ENV_NAME) or (environment(options.device) | {"malloc": malloc})  # a run's own is kept
    env.setdefault("gemm_peak_gflops", {})
    env["gemm_peak_gflops"] = {**peaks, **env["gemm_peak_gflops"]}
    env.setdefault("gemm_peak_size", PEAK_SIZE[device.type])
    write_environment(out, env)
    rows, failed = [], 0
    with open(out / PROFILE_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=PROFILE_COLUMNS, extrasaction="raise")
        writer.writeheader()
        for cell in cells:
            try:
                with compile_reset(), settled_subject(cell) as subject:
                    profiled = profile_subject(subject, steps=args.steps, rounds=args.rounds,
                                               trace=out / f"{cell.id}.pt.trace.json.gz",
                                               flops=cell_flops(cell, cell.mode, subject.real_tokens),
                                               peak_gflops=peaks.get(compute_dtype(cell)))
                    row = profiled.row()
                    timeline = memory_timeline(subject)
                    write_timeline(timeline, out)
                    snapshot = getattr(subject, "last_snapshot", None)
                    if snapshot is not None:  # CUDA: the allocator's history for pytorch.org/memory_viz
                        with open(out / f"memory-snapshot-{cell.id}.pickle", "wb") as snap:
                            pickle.dump(snapshot, snap)
            except (OutputError, OSError):
                raise
            except Exception as exc:  # a cell that fails (out of memory, an implementation's error) is a row
                failed += 1
                row = cell.columns() | {"status": failure_status(exc), "error": one_line(exc)}
                print(f"{cell.id}: {row['status']}: {row['error']}", file=sys.stderr, flush=True)
            writer.writerow({k: row.get(k) for k in PROFILE_COLUMNS})
            f.flush()
            rows.append(row)
            if row["status"] == "ok":
                print(f"{cell.id}: step {row['step_ms']:.3g} ms (profiled {row['profiled_step_ms']:.3g} ms, "
                      f"x{row['profiler_overhead']:.2f}), {row['op_calls_per_step']:.0f} op calls, "
                      f"{row['peak_share']:.2%} of peak: {row['verdict']}", flush=True)
    table = pd.DataFrame([r for r in rows if r["status"] == "ok"], columns=list(PROFILE_COLUMNS))
    md = ["# lstm-bench profile", "", f"{len(table)} cells on {device}; parts in ms scaled to the unprofiled step "
          "(docs/profiling.md).", ""]
    if not table.empty:
        print("\nwhere the time goes (ms per step, scaled to the unprofiled step):\n" + terminal_table(table))
        for (dtype, mode), part in table.groupby(["dtype", "mode"]):
            plot = plot_parts(part, "step_ms", f"{device} {dtype} {mode}",
                              out / f"plot-time-parts-{device.type}-{dtype}-{mode}.png")
            md += [f"## {dtype} {mode}", "", parts_table(part), "", f"![{plot.stem}]({plot.name})", ""]
    cost = cost_per_time_step(profile_as_rows(table)) if not table.empty else table
    if not cost.empty:  # several sequence lengths: the cost of one more time step, and the fixed cost
        print("\ncost per time step (a line through step time against T; ms):\n"
              + cost.round(4).to_string(index=False))
        shown = cost.assign(slope_ms=cost["slope_ms"].map("{:.3g}".format),
                            intercept_ms=cost["intercept_ms"].map("{:.3g}".format))
        md += ["## Cost per time step", "", md_table(shown.rename(columns={"slope_ms": "ms per time step",
                                                                         "intercept_ms": "fixed ms"})), ""]
    md += [f"![memory {c}]({MEMORY_PNG.format(c.id)})" for c in cells if (out / MEMORY_PNG.format(c.id)).exists()]
    (out / "profile.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"\nwrote {out / PROFILE_CSV}, {out / 'profile.md'}, traces (*.pt.trace.json.gz: ui.perfetto.dev, "
          "TensorBoard) and memory pictures (memory-*.png)")
    return 1 if failed else 0
