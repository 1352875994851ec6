"""The `lstm-bench` command: `run` (the benchmark grid), `train` (the d2l chapter's training run) and
`check` (each implementation against nn.LSTM)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from bench.d2l.data import DEFAULT_MAX_TOKENS, DataError
from bench.grid import (
    ACCURACY_SEQ_LENS,
    BUDGET_FREE_PROCESSES,
    D2L,
    DEFAULT_BUDGET_S,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_PROCESSES,
    FULL_LENGTHS,
    MAX_SIZE,
    OPTIONS,
    PRECISIONS,
    REPORT_RESERVE_S,
    OptionError,
    check_path,
    draw_lengths,
    parse_device,
    parse_impl,
    parse_impls,
    parse_lengths,
    parse_options,
    parse_sizes,
)
from bench.memory_cli import add_parser as add_memory_parser
from bench.profile_cli import add_parser as add_profile_parser
from bench.results import PROCESSES_DIR, OutputError, RunError, writable_dir, writable_file


class _Parser(argparse.ArgumentParser):
    """Bad input: one line on stderr and exit code 2, never a traceback or a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an int > 0, at most MAX_SIZE (no size, count or epoch number past it makes sense)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {MAX_SIZE})")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (0 meaning none, as nn.LSTM's proj_size), at most MAX_SIZE."""
    if text.strip() == "0":
        return 0
    return positive_int(text)


def seed_int(text: str) -> int:
    """argparse type: a seed torch's generator takes, 0 <= seed < 2**63."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (0 to 2**63 - 1)")
    return value


def max_tokens_int(text: str) -> int:
    """argparse type: --max-tokens, a positive count or -1 (the whole book)."""
    if text.strip() == "-1":
        return -1
    return positive_int(text)


def path_arg(text: str) -> Path:
    """argparse type: a path (not empty, no NUL byte)."""
    try:
        return Path(check_path(text, "path"))
    except OptionError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a path") from exc


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number, 0 or more")
    return value


def probability(text: str) -> float:
    """argparse type: a significance level, 0 < alpha < 1."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 1 (a significance level)")
    return value


def _train(args: argparse.Namespace) -> int:
    """The d2l chapter's training run, with any implementation."""
    import torch

    import lstm_impls
    from bench.d2l.data import SeqDataLoader, load_corpus
    from bench.d2l.model import RNNModel, d2l_init_
    from bench.d2l.train import train

    device = torch.device(parse_device(args.device))
    parse_impl(args.impl)
    layers = {"num_layers": args.num_layers} if args.num_layers > 1 else {}  # a plug-in may predate the keywords
    reason = lstm_impls.get(args.impl).unsupported_reason(device, torch.float32, **layers)
    if reason:
        raise OptionError(reason)
    if args.curve is not None:
        writable_file(args.curve, "--curve")
    corpus, vocab = load_corpus(args.data, max_tokens=args.max_tokens)
    loader = SeqDataLoader(corpus, args.batch_size, args.num_steps, args.random_iter, seed=args.seed)
    model = d2l_init_(RNNModel(args.impl, len(vocab), args.hidden_size, num_layers=args.num_layers, device=device),
                      seed=args.seed)
    print(f"training {args.impl} ({model.rnn.describe()}) on {device}: {len(corpus)} tokens, vocab {len(vocab)}, "
          f"batch {args.batch_size} x {args.num_steps} steps, hidden {args.hidden_size} x {args.num_layers} "
          f"layer{'s' if args.num_layers > 1 else ''}, lr {args.lr}, "
          f"{args.epochs} epochs", flush=True)
    train(model, loader, vocab, lr=args.lr, num_epochs=args.epochs, device=device,
          use_random_iter=args.random_iter, curve=args.curve, log=lambda line: print(line, flush=True))
    return 0


def _run(args: argparse.Namespace) -> int:
    """The benchmark grid, through the same pytest-benchmark suite as `pytest bench/ --benchmark-only`."""
    import pytest

    from bench.console import time_table
    from bench.launch import finish, join, rank_dir, torchrun_ranks
    from bench.results import CSV_NAME, ENV_NAME, new_run_id, prepare_run_dir, read_json, summary, write_environment
    from bench.workers import LOG_NAME

    called = time.time()  # the budget counts from here: the user waits for the whole of it
    raw = {name: getattr(args, name.replace("-", "_")) for name in OPTIONS}
    ranks = torchrun_ranks()
    if ranks and raw["shard"]:
        raise OptionError("--shard is taken from RANK/WORLD_SIZE under torchrun; give one or the other")
    options = parse_options(lambda name: raw[name])
    processes = 1 if ranks else (args.processes or DEFAULT_PROCESSES[torch_device_type(options.device)])
    if args.max_processes is not None and args.max_processes < processes:
        raise OptionError(f"--max-processes {args.max_processes} is below the {processes} processes the run starts")
    # --processes N alone: N; neither: the default's first processes, then up to the default's most
    max_processes = args.max_processes or (processes if args.processes
                                           else DEFAULT_MAX_PROCESSES[torch_device_type(options.device)])
    raw["run-id"] = raw["run-id"] or new_run_id()
    run_dir = Path(raw["results-dir"]) / raw["run-id"]
    if ranks:  # this process measures its shard in a directory of its own; rank 0 merges at the end
        raw["run-id"] = join(ranks, options.device, raw["run-id"])
        run_dir = Path(raw["results-dir"]) / raw["run-id"]
        raw |= {"shard": f"{ranks.rank}/{ranks.world_size}", "results-dir": str(rank_dir(run_dir, ranks.rank).parent),
                "run-id": rank_dir(run_dir, ranks.rank).name}
        options = parse_options(lambda name: raw[name])
    for note in prepare_run_dir(Path(raw["results-dir"]) / raw["run-id"]):  # checked before anything is measured
        print(f"lstm-bench: {note}", flush=True)
    print(f"lstm-bench run: {len(options.cells())} cells on {options.device}, results in {run_dir}"
          + (f" (rank {ranks.rank} of {ranks.world_size})" if ranks else ""), flush=True)
    # in worker processes (even one: the same console), but under torchrun each rank measures its shard itself, and a
    # run directory whose rows are at its top (one made in this process, before) is resumed as it was made
    in_process = bool(ranks) or ((run_dir / CSV_NAME).is_file() and not (run_dir / PROCESSES_DIR).is_dir())
    if not in_process and not args.verbose:
        print(f"lstm-bench run: each process's pytest output goes to {run_dir / PROCESSES_DIR / 'K' / LOG_NAME} "
              "(--verbose shows it here)", flush=True)
    argv = [str(Path(__file__).parent), "--benchmark-only", "-p", "no:cacheprovider", "-v", "--no-header",
            "--benchmark-columns=median,iqr,min,rounds", "--benchmark-sort=name"]
    grid_argv = [f"--{name}={value}" for name, value in raw.items() if value is not None]
    grid_argv += ["--tf32"] if args.tf32 else []
    started = time.perf_counter()
    if not in_process:  # fresh worker processes, one after another (bench/workers.py)
        from bench.workers import run_workers

        where = [a for a in grid_argv if not a.startswith(("--results-dir=", "--run-id="))]
        budget_s = DEFAULT_BUDGET_S[torch_device_type(options.device)] if args.budget_s is None else args.budget_s
        code = run_workers(run_dir, processes, argv + where + args.pytest_args, max_count=max_processes,
                           cells=len(options.cells()), verbose=args.verbose,
                           deadline=called + budget_s - REPORT_RESERVE_S if budget_s else None)
    else:
        code = pytest.main(argv + grid_argv + args.pytest_args)
    if ranks:
        missing = finish(ranks, run_dir)
        if missing is None:  # not rank 0: its rows are in its own directory, rank 0 reports
            return int(code)
        if missing:
            print(f"missing cells (a rank died? run again with --run-id {run_dir.name}): {', '.join(missing)}")
            code = code or 1
    measured_s = time.perf_counter() - started
    if code == pytest.ExitCode.INTERRUPTED:  # stopped (a write failed, said on stderr; or ^C): no report
        print(f"\nrun directory: {run_dir}  ({measured_s:.0f} s)")
        return 2
    if (run_dir / CSV_NAME).exists():
        print("\n" + summary(run_dir / CSV_NAME))
        from bench.readers.report import write_report

        try:
            report = write_report([run_dir])
        except RunError as exc:  # the measurements stand; say why there is no report
            print(f"lstm-bench: error: no report: {exc}", file=sys.stderr)
            return int(code) or 2
        report_s = time.perf_counter() - started - measured_s
        env = read_json(run_dir / ENV_NAME) or {}
        by_process = (env.get("processes") or {}).get("time_by_phase_s") or (
            {"0": env["time_by_phase_s"]} if "time_by_phase_s" in env else {})
        if by_process:
            write_environment(run_dir, env | {"report_s": round(report_s, 3)})
            print("\nwhere the time went (s):\n" + time_table(by_process, report_s))
        print(f"\nreport: {report}")
    print(f"run directory: {run_dir}  ({time.perf_counter() - started:.0f} s)")
    return int(code)


def torch_device_type(device: str) -> str:
    import torch

    return torch.device(device).type


def _check(args: argparse.Namespace) -> int:
    """Max abs error of each implementation against nn.LSTM (float64) of the same configuration, outputs and
    gradients; an implementation that does not run the configuration prints its reason."""
    import torch

    import lstm_impls
    from bench.instruments.equality import max_abs_errors

    impls = parse_impls(args.impls)
    device = torch.device(parse_device(args.device))
    if args.accuracy:
        return _accuracy(args, impls, str(device))
    T, B, I, H = args.seq_len, args.batch_size, args.input_size, args.hidden_size
    fraction = parse_lengths(args.lengths)
    if args.proj_size >= H:
        raise OptionError(f"--proj-size {args.proj_size} must be below --hidden-size ({H}), as nn.LSTM requires")
    config = {"num_layers": args.num_layers, "bidirectional": args.bidirectional, "proj_size": args.proj_size,
              "batch_first": args.batch_first}
    # only what differs from the defaults: a plug-in written before these keywords still answers
    config = {key: value for key, value in config.items() if value != lstm_impls.CONFIG_DEFAULTS[key]}
    drawn = draw_lengths(args.lengths, T, B, torch.Generator().manual_seed(0))  # as the suite draws them (seed 0 here)
    lengths = None if drawn is None else drawn.tolist()
    shown = " ".join(f"{key}={value}" for key, value in config.items())
    packed = f", packed at lengths {lengths} (uniform:{fraction:g})" if lengths else ""
    print(f"max abs error against nn.LSTM in float64; T={T} B={B} I={I} H={H}{' ' + shown if shown else ''}, "
          f"float32 on {device}{packed}")
    width = max(14, *(len(name) + 1 for name in impls))  # a long module:Class name keeps the columns apart
    print(f"{'impl':<{width}} {'outputs/state':>14} {'gradients':>10}  worst")
    for name in impls:
        reason = lstm_impls.get(name).unsupported_reason(device, torch.float32, **config)
        if reason:  # e.g. triton on a CPU, fused with proj_size
            print(f"{name:<{width}} unsupported: {reason}")
            continue
        errors = max_abs_errors(name, T, B, I, H, device=device, lengths=lengths, **config)
        forward = max(errors[k] for k in ("y", "h", "c"))
        backward = max(v for k, v in errors.items() if k.endswith(".grad"))
        print(f"{name:<{width}} {forward:>14.3g} {backward:>10.3g}  {max(errors, key=errors.get)}")
    return 0


def _accuracy(args: argparse.Namespace, impls: tuple[str, ...], device: str) -> int:
    """`check --accuracy`: accuracy.csv (each row written as it is measured), accuracy.png and accuracy.md in
    --out; `lstm-bench report` of a run directory holding them shows them."""
    import csv

    from bench.grid import ACCURACY_COLUMNS, ACCURACY_CSV, PRECISIONS, parse_list
    from bench.instruments.accuracy import accuracy_row
    from bench.readers.accuracy import render_accuracy

    precisions = parse_list(args.precisions, PRECISIONS, "--precisions")
    seq_lens = parse_sizes(args.seq_lens, "--seq-lens")
    out = writable_dir(args.out, "--out")
    B, I, H = args.batch_size, args.input_size, args.hidden_size
    print(f"lstm-bench check --accuracy: {len(impls)} implementations x {len(precisions)} precisions x T "
          f"{','.join(map(str, seq_lens))} (B={B} I={I} H={H} on {device}) against nn.LSTM in float64, into {out}")
    print(f"{'impl':<16} {'precision':<18} {'T':>5}  {'outputs max':>11} {'mean':>8}  {'grads max':>9} {'mean':>8}")
    with open(out / ACCURACY_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ACCURACY_COLUMNS)
        writer.writeheader()
        for name in impls:
            for precision in precisions:
                for T in seq_lens:
                    row = accuracy_row(name, precision, T, B, I, H, device=device)
                    writer.writerow(row)
                    f.flush()
                    if row["status"] != "ok":
                        print(f"{name:<16} {precision:<18} {T:>5}  {row['status']}: {row['error']}")
                        break  # the same at every length
                    print(f"{name:<16} {precision:<18} {T:>5}  {row['outputs_max_rel']:>11.2e} "
                          f"{row['outputs_mean_rel']:>8.1e}  {row['grads_max_rel']:>9.2e} "
                          f"{row['grads_mean_rel']:>8.1e}")
    plot, md = render_accuracy(out)
    print(f"wrote {out / ACCURACY_CSV}, {plot} and {md}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Two run directories, cell by cell: exit 1 on a regression (time: large and significant; memory)."""
    from bench.readers import compare as cmp
    from bench.results import load_run

    try:
        impl_map = cmp.parse_impl_map(args.match_impl)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    baseline, new = load_run(args.baseline), load_run(args.new)
    writable_dir(args.out or new.path, "--out")  # before the work: where its files go can be written
    if args.rerun_list is not None:
        writable_file(args.rerun_list, "--rerun-list")
    if not args.allow_env_mismatch:
        try:
            cmp.check_environments(baseline, new)
        except cmp.EnvironmentMismatch as exc:
            print(f"lstm-bench compare: {exc}", file=sys.stderr)
            return 2
    given = {"time_ratio": args.time_threshold, "alpha": args.alpha, "memory_ratio": args.memory_threshold,
             "max_median_error": args.max_median_error, "max_shift": args.max_shift,
             "judge_shift": False if args.no_shift else None}
    thresholds = cmp.Thresholds(**{k: v for k, v in given.items() if v is not None})  # unset: its default
    comparison = cmp.compare_runs(baseline, new, thresholds, impl_map)
    print(comparison.table())
    written = cmp.write_outputs(comparison, args.out or new.path, json_too=args.json, rerun_list=args.rerun_list)
    print("wrote " + ", ".join(map(str, written)))
    return 1 if comparison.regressed else 0


def _report(args: argparse.Namespace) -> int:
    """report.md, PNG plots and pivot CSVs from one or more run directories (bench/readers/report.py)."""
    from bench.readers.report import write_report

    started = time.perf_counter()
    path = write_report(args.run_dirs, args.out)
    print(f"wrote {path}, its plots and pivot CSVs ({time.perf_counter() - started:.1f} s)")
    return 0


def _merge(args: argparse.Namespace) -> int:
    """Run directories into one (shards, or runs from different machines); the report runs on the result."""
    from bench.readers.merge import merge_runs
    from bench.readers.report import write_report

    merged = merge_runs(args.run_dirs, args.out, allow_mixed=args.allow_mixed)
    print(f"merged {len(args.run_dirs)} run directories into {merged.out}: {merged.rows} rows")
    if merged.missing:
        print(f"missing cells ({len(merged.missing)}): {', '.join(merged.missing)}")
    print(f"report: {write_report([merged.out])}")
    return 1 if merged.missing else 0


def _ddp(args: argparse.Namespace) -> int:
    """The d2l training step under DistributedDataParallel at each world size; rows as `run` writes them."""
    from bench.instruments.ddp import measure_ddp, scaling_efficiency
    from bench.instruments.env import environment
    from bench.results import (
        CSV_NAME,
        CsvRecorder,
        failure_status,
        new_run_id,
        one_line,
        prepare_run_dir,
        summary,
        write_environment,
    )

    raw = {name: getattr(args, name.replace("-", "_"), None) for name in OPTIONS} | {"mode": "train"}
    options = parse_options(lambda name: raw[name])
    world_sizes = sorted(parse_sizes(args.world_sizes, "--world-sizes"))
    run_dir = Path(raw["results-dir"]) / (raw["run-id"] or new_run_id())
    for note in prepare_run_dir(run_dir):
        print(f"lstm-bench: {note}", flush=True)
    env = environment(options.device)
    write_environment(run_dir, env)
    recorder = CsvRecorder(run_dir / CSV_NAME)
    print(f"lstm-bench ddp: {len(options.cells())} cells x world sizes {world_sizes}, results in {run_dir}",
          flush=True)
    failed = False
    for cell in options.cells():
        single_rank_tokens_per_s = None
        for world_size in world_sizes:
            try:
                row = measure_ddp(cell, world_size, rounds=args.rounds, threads=options.threads)
            except Exception as exc:  # recorded, and the sweep goes on
                row = cell.columns() | {"mode": "ddp", "world_size": world_size, "status": failure_status(exc),
                                        "error": one_line(exc)}
            if row.get("status") == "ok" and world_size == 1:
                single_rank_tokens_per_s = row["tokens_per_s"]
            if row.get("status") == "ok" and single_rank_tokens_per_s:
                row["scaling_efficiency"] = scaling_efficiency(row["tokens_per_s"], world_size,
                                                               single_rank_tokens_per_s)
            failed |= row["status"] != "ok"
            recorder.write(row | {"run_id": run_dir.name, "tf32": env["tf32_matmul"]})
            print(f"  {cell.impl} B{cell.batch_size} H{cell.hidden_size} world {world_size}: {row['status']}",
                  flush=True)
    print(summary(run_dir / CSV_NAME))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstm-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="measure the grid (time, memory, FLOPs) into RESULTS_DIR/<run-id>/; "
                         "pytest-benchmark's --benchmark-* options pass through")
    for name, (default, help_text) in OPTIONS.items():
        run.add_argument(f"--{name}", default=default, help=f"{help_text} (default: {default})")
    run.add_argument("--tf32", action="store_true", help="allow TF32 in cuBLAS and cuDNN (pinned off by default)")
    run.add_argument("--processes", type=positive_int, default=None,
                     help="fresh processes that each time every cell, one after another, cells in a random order "
                          "of their own; a row's time is the median of theirs, with their spread (default: "
                          f"{DEFAULT_PROCESSES['cpu']}; 1 measures in this process; under torchrun 1 per rank)")
    run.add_argument("--max-processes", type=positive_int, default=None,
                     help="then more processes, one at a time, each timing only the cells whose processes have not "
                          "settled (about 2 standard errors of their typical figure within 2.5%%, their spread "
                          "pooled with the run's), the least settled first, as many as --budget-s leaves time for, "
                          "up to this many "
                          f"in all (default: {DEFAULT_MAX_PROCESSES['cpu']}; with --processes N alone: N, none "
                          "added)")
    run.add_argument("--budget-s", type=non_negative_float, default=None,
                     help=f"the seconds the run plans for: the first {BUDGET_FREE_PROCESSES} processes always run; "
                          "each later one times every cell where they fit in what is left, else the least settled "
                          "cells that fit, at what the earlier processes took, with "
                          f"{REPORT_RESERVE_S:g} s kept for the report (default: {DEFAULT_BUDGET_S['cpu']:g} on a CPU, "
                          f"{DEFAULT_BUDGET_S['cuda']:g} on a GPU; 0: no budget, up to --max-processes)")
    run.add_argument("-v", "--verbose", action="store_true", help="show the worker processes' pytest output (pytest's "
                     "lines and pytest-benchmark's tables), not only a line per cell; it is in each process's "
                     f"{PROCESSES_DIR}/K/pytest.log either way")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="each implementation's max abs error against nn.LSTM (float64)")
    check.add_argument("--impls", default="all", help="'all' or a comma list of names / module:Class")
    check.add_argument("--seq-len", type=positive_int, default=D2L["seq_len"])
    check.add_argument("--batch-size", type=positive_int, default=D2L["batch_size"])
    check.add_argument("--input-size", type=positive_int, default=D2L["vocab_size"])
    check.add_argument("--hidden-size", type=positive_int, default=D2L["hidden_size"])
    check.add_argument("--num-layers", type=positive_int, default=1, help="stacked layers, as nn.LSTM's num_layers")
    check.add_argument("--bidirectional", action="store_true", help="both directions, as nn.LSTM's bidirectional")
    check.add_argument("--proj-size", type=non_negative_int, default=0,
                       help="LSTMP's projection of h (nn.LSTM's proj_size; below --hidden-size); 0: none")
    check.add_argument("--batch-first", action="store_true", help="inputs and outputs (B, T, ...)")
    check.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    check.add_argument("--lengths", default=FULL_LENGTHS, help="full, or uniform:F: the batch packed at lengths "
                       "drawn from F*T to T, as `run --lengths` draws them (default: full)")
    check.add_argument("--accuracy", action="store_true", help="instead: how the error (normwise relative, max and "
                       "mean) grows along the sequence, per precision; writes accuracy.csv, .png and .md into --out")
    check.add_argument("--seq-lens", default=",".join(map(str, ACCURACY_SEQ_LENS)),
                       help="with --accuracy: the sequence lengths (default: %(default)s)")
    check.add_argument("--precisions", default="all", help=f"with --accuracy: comma list of {', '.join(PRECISIONS)} "
                       "('autocast-X': float32 weights under torch.autocast in X; default: all)")
    check.add_argument("--out", type=path_arg, default=Path("results") / "accuracy",
                       help="with --accuracy: the directory for its files (default: results/accuracy); a run "
                       "directory, and its report shows them")
    check.set_defaults(func=_check)

    ab = sub.add_parser("ab", help="is new faster than base? two git revisions or two implementations measured "
                        "in alternating fresh processes until the answer is clear; exit 1 when a cell is slower")
    ab.add_argument("--base", default=None, help="a git revision of the repository ab is run in (see --repo; with "
                    "--impls: what to measure)")
    ab.add_argument("--new", default=None, help="a git revision (default: the working tree)")
    ab.add_argument("--impls", default=None, help="with --base: the implementations to measure; without: A,B, "
                    "two implementations (names or module:Class) to compare in the repository's working tree (outside "
                    "any lstm-bench repository and without --repo: in the installed lstm-bench)")
    ab.add_argument("--repo", type=path_arg, default=None, help="the lstm-bench git repository whose revisions (or "
                    "working tree) are measured, each revision from a temporary git worktree of it (default: the one "
                    "the current directory is in, not the installed lstm-bench's); the first line names it and the "
                    "commits")
    for name in AB_GRID:
        ab.add_argument(f"--{name}", default=None, help=OPTIONS[name][1])
    ab.add_argument("--cells", type=path_arg, default=None, help="with --base: measure these cells (pytest node "
                    "ids, one a line: compare --rerun-list's file) instead of a grid")
    ab.add_argument("--budget-s", type=positive_float, default=300.0, help="stop adding pairs after this long "
                    "(default: 300)")
    ab.add_argument("--threshold", type=positive_float, default=0.10, help="slower beyond x(1 + this), faster "
                    "below its inverse (default: 0.10)")
    ab.add_argument("--min-pairs", type=positive_int, default=4, help="pairs of processes before any answer "
                    "(default: 4, two blocks of both orders; at least 2)")
    ab.add_argument("--max-pairs", type=positive_int, default=50, help="pairs at most (default: 50)")
    ab.add_argument("--max-time", type=positive_float, default=0.5, help="seconds of timed rounds per cell in "
                    "each process, at least 20 rounds (default: 0.5)")
    ab.add_argument("--seed", type=seed_int, default=0, help="the pairs' random order (default: 0)")
    ab.add_argument("--json", action="store_true", help="print JSON for scripts")
    ab.set_defaults(func=_ab)

    compare = sub.add_parser("compare", help="compare two run directories cell by cell; exit 1 on a regression")
    compare.add_argument("baseline", type=path_arg, help="the baseline run directory")
    compare.add_argument("new", type=path_arg, help="the run directory to judge")
    # Threshold defaults live in bench.readers.compare.Thresholds (imported only when comparing: scipy is slow).
    compare.add_argument("--time-threshold", type=positive_float, default=None,
                         help="slower when the median step time grew by more than this fraction "
                              "and the Mann-Whitney test is significant (default: 0.10, i.e. x1.10)")
    compare.add_argument("--alpha", type=probability, default=None,
                         help="significance level of the Mann-Whitney U test on the raw rounds, below 1 "
                              "(default: 0.01)")
    compare.add_argument("--memory-threshold", type=positive_float, default=None,
                         help="memory grew when peak_bytes rose by more than this fraction (default: 0.02)")
    compare.add_argument("--max-median-error", type=positive_float, default=None,
                         help="noisy, not judged on time, when either run's median round is uncertain by more than "
                              "this fraction (standard error from the rounds' IQR and count) (default: 0.10)")
    compare.add_argument("--max-shift", type=positive_float, default=None,
                         help="regressed as a whole when the median time ratio of all cells exceeds 1 + this "
                              "(default: 0.10)")
    compare.add_argument("--no-shift", action="store_true",
                         help="do not judge the run as a whole (comparing re-measured flagged cells, which moved by "
                              "selection)")
    compare.add_argument("--match-impl", action="append", default=[], metavar="NEW=BASE",
                         help="compare the new run's impl NEW with the baseline's impl BASE (repeatable)")
    compare.add_argument("--allow-env-mismatch", action="store_true",
                         help="compare runs whose device, GPU model, torch or CUDA differ")
    compare.add_argument("--out", type=path_arg, default=None, help="directory for compare.md (default: NEW)")
    compare.add_argument("--json", action="store_true", help="also write compare.json")
    compare.add_argument("--rerun-list", type=path_arg, default=None,
                         help="write the flagged cells' pytest node ids here, one a line, to measure them again")
    compare.set_defaults(func=_compare)

    report = sub.add_parser("report", help="report.md, PNG plots and pivot CSVs from run directories "
                            "(several combine when their cells differ)")
    report.add_argument("run_dirs", type=path_arg, nargs="+", metavar="RUN_DIR", help="run directories to report on")
    report.add_argument("--out", type=path_arg, default=None,
                        help="directory for the report (default: the run directory; required for several)")
    report.set_defaults(func=_report)

    merge = sub.add_parser("merge", help="run directories (shards, runs from several machines) into one")
    merge.add_argument("run_dirs", type=path_arg, nargs="+", metavar="RUN_DIR", help="run directories to merge")
    merge.add_argument("--out", type=path_arg, required=True, help="the merged run directory (new or empty)")
    merge.add_argument("--allow-mixed", action="store_true",
                       help="merge runs whose device type, GPU model, torch or CUDA differ")
    merge.set_defaults(func=_merge)

    ddp = sub.add_parser("ddp", help="the d2l training step under DistributedDataParallel at several world sizes "
                         "(gloo on a CPU, NCCL on CUDA): step time, per-rank memory, scaling efficiency")
    for name, (default, help_text) in OPTIONS.items():
        if name not in ("mode", "shard"):
            ddp.add_argument(f"--{name}", default=default, help=f"{help_text} (default: {default})")
    ddp.add_argument("--world-sizes", default="1,2", help="comma list of process counts (default: 1,2)")
    ddp.add_argument("--rounds", type=positive_int, default=20, help="timed steps per cell (default: 20)")
    ddp.set_defaults(func=_ddp)

    train = sub.add_parser("train", help="the d2l chapter's training run on The Time Machine")
    train.add_argument("--impl", default="scratch", help="implementation name or module:Class (scratch)")
    train.add_argument("--epochs", type=positive_int, default=500)
    train.add_argument("--batch-size", type=positive_int, default=D2L["batch_size"])
    train.add_argument("--num-steps", type=positive_int, default=D2L["seq_len"])
    train.add_argument("--hidden-size", type=positive_int, default=D2L["hidden_size"])
    train.add_argument("--num-layers", type=positive_int, default=1,
                       help="stacked LSTM layers (the book's deep LSTM: 2, with --lr 2)")
    train.add_argument("--lr", type=positive_float, default=1.0)
    train.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    train.add_argument("--data", type=path_arg, default=None, help="timemachine.txt to use instead of the download")
    train.add_argument("--max-tokens", type=max_tokens_int, default=DEFAULT_MAX_TOKENS,
                       help=f"train on the first N characters, as d2l does ({DEFAULT_MAX_TOKENS}); -1: the whole book")
    train.add_argument("--random-iter", action="store_true", help="random sampling instead of sequential")
    train.add_argument("--seed", type=seed_int, default=0, help="seed for the initial weights and data offsets")
    train.add_argument("--curve", type=path_arg, default=None, help="write per-epoch perplexity, tokens/s to this CSV")
    train.set_defaults(func=_train)

    add_memory_parser(sub)  # `lstm-bench memory`: bench/memory_cli.py
    add_profile_parser(sub)  # `lstm-bench profile`: bench/profile_cli.py
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `run` passes pytest-benchmark's own options (--benchmark-max-time=0.5, ...) through to the suite.
    bad = [a for a in extra if not (args.command == "run" and a.startswith("--benchmark-"))]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.pytest_args = extra
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is seen here, not at exit
        return code
    except BrokenPipeError:
        return closed_pipe()
    except (OptionError, DataError, RunError, OutputError) as exc:
        print(f"lstm-bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that failed after the checks (a full disk, permissions taken away)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lstm-bench: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def _ab(args: argparse.Namespace) -> int:
    """`lstm-bench ab`: two revisions or two implementations in alternating fresh processes (bench/ab.py)."""
    from bench import ab

    grid = {name: getattr(args, name.replace("-", "_")) for name in AB_GRID}
    impls: tuple[str, ...] = ()
    if args.impls and args.base is None:  # two sides, the same implementation twice allowed (an A/A pair)
        impls = tuple(parse_impl(name.strip(), "--impls") for name in args.impls.split(",") if name.strip())
    elif args.impls:
        impls = parse_impls(args.impls)
    if args.base is None:
        if len(impls) != 2 or args.new is not None:
            raise OptionError("give --base REV (and --new REV, default the working tree), or --impls A,B: two "
                              "implementations to compare")
    elif not impls and args.cells is None:
        raise OptionError("--base REV: say what to measure: --impls (a comma list), or --cells FILE")
    cells_ids: list[str] = []
    if args.cells is not None:
        if args.base is None:
            raise OptionError("--cells FILE measures two revisions' cells: give --base REV")
        try:
            cells_ids = args.cells.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise OptionError(f"--cells {args.cells}: cannot be read ({exc.__class__.__name__})") from None
        if not cells_ids or not all(c.startswith("bench/test_suite.py::test_cell[") for c in cells_ids):
            raise OptionError(f"--cells {args.cells}: give pytest node ids, bench/test_suite.py::test_cell[...], "
                              "one a line (what compare --rerun-list writes)")
        impls = impls or ("all",)
    parse_options(lambda name: grid.get(name) if name != "impls" else ",".join(impls))  # one line, exit 2
    if args.min_pairs < 2 or args.max_pairs < args.min_pairs:
        raise OptionError("--min-pairs must be at least 2 (an interval needs two pairs) and at most --max-pairs")
    argv = [a for name, value in grid.items() if value is not None for a in (f"--{name}", value)]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        with contextlib.ExitStack() as stack:
            if args.base is None:  # two implementations: one tree, the repository's working tree or the installed one
                tree, where = ab.impls_tree(args.repo)
                about = f"{where}: base {impls[0]}, new {impls[1]}"
                log(about)
                base = ab.Side("base", impls[0], tree, impls[0])
                new = ab.Side("new", impls[1], tree, impls[1])
            else:  # two revisions of the repository ab runs in (or --repo), each from a worktree of its own
                repo = ab.repository(args.repo)
                revs = (args.base, args.new)
                commits = [ab.resolve(repo, rev) for rev in revs]
                about = ab.revisions_line(repo, revs, commits)
                log(about)  # before the worktrees: says at once what is compared
                trees = [stack.enter_context(ab.revision_tree(repo, commit)) for commit in commits]
                names = ",".join(impls)
                base, new = (ab.Side(label, f"{rev}, {commit[:7]}" if commit else "the working tree", tree, names,
                                     commit) for label, rev, commit, tree in zip(("base", "new"), revs, commits, trees))
            for side in (base, new):
                ab.check_imports(side)
            cells = ab.measure(base, new, argv, budget_s=args.budget_s, threshold=args.threshold,
                               min_pairs=args.min_pairs, max_pairs=args.max_pairs, max_time_s=args.max_time,
                               seed=args.seed, cells_ids=cells_ids, log=log)
    except ab.ABError as exc:
        raise OptionError(str(exc)) from None
    print(ab.as_json(cells, args.threshold, base, new, about) if args.json
          else ab.render(cells, base, new, args.threshold, about))
    return 1 if any(c.verdict(args.threshold, final=True) == "slower" for c in cells.values()) else 0


#: The grid options `ab` passes to its measuring processes (OPTIONS less where results go and sharding).
AB_GRID = [name for name in OPTIONS if name not in ("impls", "results-dir", "run-id", "shard")]


def closed_pipe() -> int:
    """stdout's reader went away (`lstm-bench compare A B | head`): end quietly, as a process killed by SIGPIPE
    would (exit 128 + 13), with stdout pointed at /dev/null so the interpreter's last flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured in-process): nothing to redirect
        pass
    finally:
        os.close(devnull)
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
