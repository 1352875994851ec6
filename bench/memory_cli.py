"""`lstm-bench memory`: how much memory the model takes, and a batch, per implementation (the memory model).

Predicts by counting (bench/instruments/memory/); `--measure` runs real steps beside it;
`--budget` gives the largest batch that fits, and with `--measure` checks it and the next one.
"""

from __future__ import annotations

import argparse
import json
import re

from bench.grid import (
    AMPS,
    D2L,
    DTYPES,
    MODES,
    Cell,
    OptionError,
    parse_counts,
    parse_fractions,
    parse_impls,
    parse_list,
    parse_sizes,
)
from bench.instruments.memory import (
    FITTED,
    IMPLS,
    OPTIMIZERS,
    NotModelled,
    Prediction,
    Sizes,
    largest_batch,
    per_sequence_bytes,
    predict_sizes,
)
from lstm_impls.base import CONFIG_DEFAULTS

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """'8GiB', '512 MB', '1.5GiB', '1000000B' -> bytes; OptionError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", text or "")
    unit = match.group(2).upper() if match else ""
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise OptionError(f"--budget {text!r} is not a size; give a number and a unit: B, KiB, MiB, GiB, KB, MB, GB "
                          "(e.g. 8GiB)")
    return int(float(match.group(1)) * UNITS[unit])


def human(nbytes: int | float | None) -> str:
    """Bytes in binary units, 3 significant digits."""
    if nbytes is None:
        return "-"
    sign, value = ("-" if nbytes < 0 else ""), abs(float(nbytes))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_memory_device(text: str) -> str:
    """cpu, cuda, cuda:N or auto; a CUDA prediction needs no GPU (only --measure does)."""
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise OptionError(f"--device {text!r} is not valid; choose auto, cpu, cuda or cuda:N")
    return text


def one(text: str, what: str) -> int:
    sizes = parse_sizes(text, what)
    if len(sizes) != 1:
        raise OptionError(f"{what} {text!r} is not valid; give one positive integer")
    return sizes[0]


def measure_cell(cell: Cell, optimizer: str, parts: bool = True) -> dict:
    """Run real steps of cell and measure its memory with the suite's own instruments, once it has
    settled (measure.settled_subject); `parts` adds the breakdown (one more step)."""
    from bench.instruments.measure import breakdown, measure_memory, settled_subject

    with settled_subject(cell, optimizer) as subject:
        memory = measure_memory(subject)
        library = getattr(memory, "library_bytes", 0) or 0
        row = {"peak_bytes": memory.peak_bytes, "library_bytes": library}
        if parts:
            try:
                split = breakdown(subject, memory.peak_bytes, library)
            except TypeError:  # a breakdown() without library_bytes
                split = breakdown(subject, memory.peak_bytes)
            row |= vars(split)
        return row


def fits_when_run(cell: Cell, optimizer: str, budget_bytes: int) -> tuple[bool, int | None]:
    """Whether a step of cell fits in the budget: CUDA by trying under a memory cap and catching the
    out-of-memory error (as a batch-size finder does); a CPU by comparing the measured peak."""
    import torch

    if torch.device(cell.device).type == "cuda":
        from bench.instruments.measure import Subject, release_memory

        device = torch.device(cell.device)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
        subject = None
        try:
            subject = Subject(cell, optimizer=optimizer)
            for _ in range(3):
                subject.step()
            return True, torch.cuda.max_memory_allocated(device)
        except torch.cuda.OutOfMemoryError:
            return False, None
        finally:
            if subject is not None:
                subject.release()
            release_memory()
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    peak = measure_cell(cell, optimizer, parts=False)["peak_bytes"]
    return peak <= budget_bytes, peak


def parse_config(args: argparse.Namespace, hidden_size: int) -> dict:
    """nn.LSTM's keywords from the options, one value each (CONFIG_DEFAULTS' keys)."""
    proj, dropout = parse_counts(args.proj_size, "--proj-size"), parse_fractions(args.dropout, "--dropout")
    if len(proj) != 1 or len(dropout) != 1:
        raise OptionError("--proj-size and --dropout take one value each")
    if proj[0] >= hidden_size:
        raise OptionError(f"--proj-size {proj[0]} must be below --hidden-size ({hidden_size}), as nn.LSTM requires")
    return {"num_layers": one(args.num_layers, "--num-layers"), "bidirectional": args.bidirectional,
            "proj_size": proj[0], "dropout": dropout[0], "batch_first": args.batch_first}


def _memory(args: argparse.Namespace) -> int:
    """The handler of `lstm-bench memory`."""
    impls = parse_impls(args.impls)
    if args.impls.strip() == "all":  # every registered implementation the model counts
        impls = tuple(name for name in impls if name in IMPLS)
    unknown = [name for name in impls if name not in IMPLS]
    if unknown:
        raise OptionError(f"--impls: the memory model counts {', '.join(IMPLS)}; no model for {', '.join(unknown)}")
    sizes = Sizes(one(args.batch_size, "--batch-size"), one(args.hidden_size, "--hidden-size"),
                  one(args.seq_len, "--seq-len"), one(args.vocab_size, "--vocab-size"))
    dtype = parse_list(args.dtype, tuple(DTYPES), "--dtype")
    mode = parse_list(args.mode, MODES, "--mode")
    optimizer = parse_list(args.optimizer, OPTIMIZERS, "--optimizer")
    amp = parse_list(args.amp, AMPS, "--amp")
    if len(dtype) != 1 or len(mode) != 1 or len(optimizer) != 1 or len(amp) != 1:
        raise OptionError("--dtype, --mode, --optimizer and --amp take one value each")
    if amp[0] != "none" and dtype[0] != "float32":
        raise OptionError(f"--amp {amp[0]} runs over float32 parameters; give --dtype float32, not {dtype[0]}")
    device = parse_memory_device(args.device)
    config = parse_config(args, sizes.hidden_size)
    options = {"device": device, "dtype": dtype[0], "mode": mode[0], "optimizer": optimizer[0], "config": config,
               "amp": amp[0]}
    budget = parse_bytes(args.budget) if args.budget is not None else None
    if args.measure:
        from bench.grid import parse_device

        parse_device(device)  # measuring on CUDA needs one

    rows: dict[str, dict] = {}
    skipped: dict[str, str] = {}  # with --impls all: an implementation the model does not count here, and why
    for impl in impls:
        try:
            p = predict_sizes(impl, sizes, **options)
        except NotModelled as exc:
            if args.impls.strip() != "all":
                raise OptionError(f"--impls {impl}: {exc}") from None
            skipped[impl] = str(exc)
            continue
        row: dict = {"prediction": p.as_dict(), "per_sequence_bytes": per_sequence_bytes(impl, sizes, **options)}
        if budget is not None:
            floor = p.model_bytes + p.library_bytes
            if budget < floor:
                raise OptionError(f"--budget {args.budget}: smaller than what the model itself takes with {impl} "
                                  f"({human(floor)}: parameters, gradients, optimizer state, libraries)")
            row["largest_batch"] = largest_batch(impl, budget, sizes, **options)
        rows[impl] = row
    if not rows:
        raise OptionError("the memory model counts none of these implementations here: "
                          + "; ".join(sorted(set(skipped.values()))))
    if args.measure:
        for impl in rows:
            cell = Cell(impl, device, options["dtype"], options["mode"], sizes.batch_size, sizes.hidden_size,
                        sizes.seq_len, sizes.vocab_size, **config, amp=amp[0])
            try:
                rows[impl]["measured"] = measure_cell(cell, options["optimizer"])
            except RuntimeError as exc:  # a step that cannot be measured (float16's scaler skipping every update)
                raise OptionError(f"--measure {impl}: {exc}") from None
            if budget is not None:
                checks = []
                for b in (rows[impl]["largest_batch"], rows[impl]["largest_batch"] + 1):
                    if b == 0:
                        continue
                    fits, peak = fits_when_run(Cell(impl, device, options["dtype"], options["mode"], b,
                                                    sizes.hidden_size, sizes.seq_len, sizes.vocab_size, **config,
                                                    amp=amp[0]),
                                               options["optimizer"], budget)
                    checks.append({"batch_size": b, "fits": fits, "measured_peak_bytes": peak})
                rows[impl]["budget_check"] = checks
    fitted = sorted({key for row in rows.values() for key in row["prediction"]["fitted"]})
    if args.json:
        print(json.dumps({"sizes": vars(sizes), **options, "budget_bytes": budget, "impls": rows,
                          "not_counted": skipped, "fitted": {key: FITTED[key] for key in fitted}}, indent=2))
        return 0
    print(render(sizes, options, budget, rows, fitted))
    for impl, why in skipped.items():
        print(f"{impl}: not counted: {why}")
    return 0


def render(sizes: Sizes, options: dict, budget: int | None, rows: dict[str, dict], fitted: list[str]) -> str:
    """The human table: implementations side by side."""
    impls = list(rows)
    preds = {name: Prediction(**{k: v for k, v in row["prediction"].items()
                                 if k not in ("model_bytes", "batch_bytes")}) for name, row in rows.items()}
    shown = "".join(f", {key} {value}" for key, value in options["config"].items() if value != CONFIG_DEFAULTS[key])
    autocast = f" under autocast {options['amp']}" if options.get("amp", "none") != "none" else ""
    lines = [f"memory of one {options['mode']} step, {options['dtype']}{autocast} on {options['device']}, "
             f"B={sizes.batch_size} H={sizes.hidden_size} T={sizes.seq_len} V={sizes.vocab_size}{shown}, "
             f"optimizer {options['optimizer']} (predicted by counting tensors)", ""]

    table: list[tuple[str, list[str]]] = []  # rows of the table, formatted once every cell is known

    def line(label: str, values: list[str]) -> None:
        table.append((label, values))

    line("", impls)
    line("kernel", [preds[n].kernel for n in impls])
    line("the model: parameters", [human(preds[n].param_bytes) for n in impls])
    line("           gradients", [human(preds[n].grad_bytes) for n in impls])
    line("           optimizer state", [human(preds[n].optimizer_bytes) for n in impls])
    line("           total", [human(preds[n].model_bytes) for n in impls])
    line("the batch: activations", [human(preds[n].activation_bytes) for n in impls])
    line("           workspace", [human(preds[n].workspace_bytes) for n in impls])
    line("           total", [human(preds[n].batch_bytes) for n in impls])
    if any(preds[n].library_bytes for n in impls):
        line("libraries (cuBLAS workspaces)", [human(preds[n].library_bytes) for n in impls])
    line("peak", [human(preds[n].peak_bytes) for n in impls])
    line("each extra sequence adds", [human(rows[n]["per_sequence_bytes"]) for n in impls])
    if budget is not None:
        line(f"largest batch in {human(budget)}", [str(rows[n]["largest_batch"]) for n in impls])
    if any("measured" in rows[n] for n in impls):
        measured = [rows[n]["measured"]["peak_bytes"] for n in impls]
        line("measured peak", [human(m) for m in measured])
        line("prediction error", [f"{100 * (preds[n].peak_bytes - m) / m:+.1f}%" for n, m in zip(impls, measured)])
        line("measured activations", [human(rows[n]["measured"]["activation_bytes"]) for n in impls])
        line("measured workspace", [human(rows[n]["measured"]["workspace_bytes"]) for n in impls])
    label_width = max(len(label) for label, _ in table) + 2
    widths = [max(len(values[i]) for _, values in table) + 2 for i in range(len(impls))]  # columns stay apart
    lines += [f"{label:<{label_width}}" + "".join(f"{v:>{w}}" for v, w in zip(values, widths))
              for label, values in table]
    if any("budget_check" in rows[n] for n in impls):
        for n in impls:
            for check in rows[n].get("budget_check", []):
                verdict = "fits" if check["fits"] else "does not fit"
                peak = check["measured_peak_bytes"]
                lines.append(f"  {n}: batch {check['batch_size']} {verdict} in {human(budget)}"
                             + (f" (measured peak {human(peak)})" if peak is not None else " (out of memory)"))
    lines.append("")
    for n in impls:
        lines.append(f"{n}: counted for {preds[n].path}")
    for n in impls:
        live = sorted(preds[n].peak_live.items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"{n}: peak {preds[n].peak_at}; largest then: "
                     + ", ".join(f"{k} {human(v)}" for k, v in live))
    for key in fitted:
        lines.append(f"uses a fitted constant: {key}: {FITTED[key]}")
    for note in sorted({note for n in impls for note in preds[n].notes}):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """The `memory` subcommand, for bench/cli.py's subparsers."""
    memory = sub.add_parser("memory", help="how much memory the model takes, and a batch (predicted; "
                            "--measure checks it; --budget gives the largest batch)")
    memory.add_argument("--impls", default="all", help=f"'all' or a comma list of {', '.join(IMPLS)}")
    memory.add_argument("--batch-size", default=str(D2L["batch_size"]))
    memory.add_argument("--hidden-size", default=str(D2L["hidden_size"]))
    memory.add_argument("--seq-len", default=str(D2L["seq_len"]))
    memory.add_argument("--vocab-size", default=str(D2L["vocab_size"]))
    memory.add_argument("--num-layers", default="1", help="stacked LSTM layers (nn.LSTM's num_layers)")
    memory.add_argument("--bidirectional", action="store_true", help="both directions (nn.LSTM's bidirectional)")
    memory.add_argument("--proj-size", default="0", help="LSTMP's projection of h, below --hidden-size; 0: none")
    memory.add_argument("--dropout", default="0", help="dropout between layers, in [0, 1) (nn.LSTM's dropout)")
    memory.add_argument("--batch-first", action="store_true", help="(B, T) inputs (nn.LSTM's batch_first)")
    memory.add_argument("--dtype", default="float32", help=", ".join(DTYPES))
    memory.add_argument("--mode", default="train", help=", ".join(MODES))
    memory.add_argument("--optimizer", default="sgd", help=", ".join(OPTIMIZERS))
    memory.add_argument("--amp", default="none", help="none, bfloat16, float16: torch.autocast's dtype over float32 "
                        "parameters (--dtype float32)")
    memory.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (CUDA predicts without a GPU)")
    memory.add_argument("--budget", default=None, help="memory to fit in, e.g. 8GiB (B, KiB, MiB, GiB, KB, MB, GB)")
    memory.add_argument("--measure", action="store_true", help="run real steps and print measured beside predicted")
    memory.add_argument("--json", action="store_true", help="print JSON for scripts")
    memory.set_defaults(func=_memory)
