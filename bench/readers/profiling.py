"""Reading the profiling half: where a step's time goes (a table and stacked bars), the distance to the device's GEMM
peak (the recurrence's floor, a roofline-style plot), the cost of one more time step, and the bytes alive through a
step by holder. `lstm-bench profile` and `lstm-bench report` both draw from here."""

from __future__ import annotations

import gzip
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..grid import CELL_KEY, D2L, TIME_PARTS, Cell
from ..instruments.peak import recurrence_floor_ms
from .plots import save
from .tables import md_table, sig

PART_LABELS = {
    "input_gemm": "input-projection GEMM", "recurrent_gemm": "recurrent GEMMs", "output_layer": "output layer",
    "rnn_library": "RNN library call", "pointwise": "pointwise math", "copies": "copies and casts",
    "optimizer": "optimizer", "other_ops": "other ops", "device_wait": "waiting for the GPU",
    "rest": "rest (Python, dispatch, autograd engine)",
}
PART_COLORS = {"input_gemm": "C0", "recurrent_gemm": "C1", "output_layer": "C2", "rnn_library": "C3",
               "pointwise": "C4", "copies": "C5", "optimizer": "C6", "other_ops": "C8", "device_wait": "C9",
               "rest": "C7"}
HOLDER_COLORS = {"parameters": "C0", "gradients": "C1", "optimizer state": "C2", "activations": "C3", "other": "C7"}
PART_COLUMNS = [f"part_{p}_ms" for p in TIME_PARTS]
MIB = 2**20
TIMELINES = "memory-*.json.gz"  # the bytes alive through a step (bench/instruments/profiling.py Timeline)


def labels(rows: pd.DataFrame) -> list[str]:
    """Each row's implementation, with what else varies between the rows (B, H, T, layers, lengths, autocast)."""
    marks = [(key, short) for key, short in (("batch_size", "B"), ("hidden_size", "H"), ("seq_len", "T"),
                                             ("num_layers", "L"), ("lengths", ""), ("amp", "amp "))
             if key in rows and rows[key].nunique() > 1]
    return [" ".join([str(r["impl"]), *(f"{short}{r[key]}" for key, short in marks)])
            for r in rows.to_dict("records")]


def scaled_parts(rows: pd.DataFrame, step_column: str) -> pd.DataFrame:
    """Each row's parts (ms) scaled so that they add up to its step_column (the unprofiled step): the profiler's
    overhead spread over the parts in proportion to their size."""
    parts = rows[PART_COLUMNS].astype(float).fillna(0.0)
    total = parts.sum(axis=1).replace(0.0, np.nan)
    return parts.mul(rows[step_column].astype(float) / total, axis=0)


def parts_table(rows: pd.DataFrame, step_column: str = "step_ms") -> str:
    """impl, step, each part in ms and share, op calls, verdict where there is one: Markdown."""
    parts = scaled_parts(rows, step_column)
    table = pd.DataFrame({"impl": labels(rows), "step (ms)": list(rows[step_column].map(sig))})
    for column, part in zip(PART_COLUMNS, TIME_PARTS):
        table[PART_LABELS[part]] = [f"{sig(v)} ({100 * v / s:.0f}%)" if s and pd.notna(v) else "–"
                                    for v, s in zip(parts[column], rows[step_column])]
    table["op calls"] = list(rows["op_calls_per_step"].map(lambda v: sig(v, 4)))
    if "profiler_overhead" in rows:  # profile's own rows: how much the profiler added, which the scaling took out
        table["profiled ÷ unprofiled"] = list(rows["profiler_overhead"].map(lambda v: f"{v:.2f}"))
    for column, label in (("kernel_ms", "GPU kernels (ms)"), ("gemm_kernel_ms", "GEMM kernels (ms)"),
                          ("kernels_per_step", "kernels"), ("gpu_idle_share", "GPU idle"), ("verdict", "bound by")):
        if column in rows and rows[column].notna().any():
            percent = column == "gpu_idle_share"
            table[label] = list(rows[column].map(lambda v, percent=percent: f"{v:.0%}" if isinstance(v, float)
                                                 and percent else sig(v, 4) if isinstance(v, float) else str(v)))
    head = "| " + " | ".join(table.columns) + " |\n| " + " | ".join("---" for _ in table.columns) + " |\n"
    return head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False))


def terminal_table(rows: pd.DataFrame) -> str:
    """The same for the terminal: a column per part (ms, scaled to the unprofiled step)."""
    parts = scaled_parts(rows, "step_ms").round(3)
    parts.columns = [c.removeprefix("part_").removesuffix("_ms") for c in parts.columns]
    cells = rows[["impl", "batch_size", "hidden_size", "seq_len"]].rename(
        columns={"batch_size": "B", "hidden_size": "H", "seq_len": "T"})
    for key in ("mode", "lengths", "amp"):  # where the rows differ in them
        if rows[key].nunique() > 1:
            cells[key] = rows[key]
    table = pd.concat([cells, rows[["step_ms"]].round(3), parts,
        rows[["op_calls_per_step", "profiler_overhead", "peak_share", "verdict"]].round(4)], axis=1)
    return table.to_string(index=False, na_rep="-")


def plot_parts(rows: pd.DataFrame, step_column: str, title: str, path: Path) -> Path:
    """Stacked bars, one per implementation: the step's time by part (ms)."""
    parts = scaled_parts(rows, step_column)
    fig = Figure(figsize=(max(5.0, 1.1 * len(rows) + 3), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for column, part in zip(PART_COLUMNS, TIME_PARTS):
        values = parts[column].fillna(0.0).to_numpy()
        ax.bar(x, values, bottom=bottom, color=PART_COLORS[part], label=PART_LABELS[part])
        bottom += values
    ax.set_xticks(x, labels(rows), rotation=20, ha="right")
    ax.set_ylabel("ms per step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path, tight=True)  # the legends sit outside the axes


def plot_roofline(rows: pd.DataFrame, peak_gflops: float, title: str, path: Path) -> Path:
    """Roofline-style: achieved GFLOP/s against FLOPs per op call (the work each dispatched op does), one point per
    row, the device's measured GEMM peak as the roof. Low work per op and a rate far below the roof: dispatch."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for i, (impl, part) in enumerate(rows.groupby("impl")):
        x = part["flops_per_step"].astype(float) / part["op_calls_per_step"].astype(float)
        ax.scatter(x, part["achieved_gflops"].astype(float), color=f"C{i % 10}", label=impl, s=18)
    ax.axhline(peak_gflops, color="k", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    low = float(rows["achieved_gflops"].astype(float).min())
    ax.set_ylim(min(low, peak_gflops) / 2, peak_gflops * 2)
    ax.text(0.01, peak_gflops, f"measured GEMM peak {peak_gflops:.3g} GFLOP/s", va="bottom", fontsize=7,
            transform=ax.get_yaxis_transform())
    ax.set_xlabel("FLOPs per op call (flops_per_step / op_calls_per_step)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path, tight=True)  # the legends sit outside the axes


def plot_memory(timeline: dict, path: Path) -> Path:
    """The bytes alive across one step, stacked by holder, the phases' starts as vertical lines, the memory model's
    predicted peak (and the model's own bytes) as horizontal ones."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    times = np.asarray(timeline["times_ms"])
    series = [np.asarray(timeline["bytes_by_holder"][h]) / MIB for h in HOLDER_COLORS]
    ax.stackplot(times, *series, labels=list(HOLDER_COLORS), colors=list(HOLDER_COLORS.values()), step="post",
                 alpha=0.85)
    top = max(sum(s[i] for s in series) for i in range(len(times))) if len(times) else 0.0
    for name, at in sorted(timeline.get("phases_ms", {}).items(), key=lambda kv: kv[1]):
        ax.axvline(at, color="k", linewidth=0.6, linestyle=":")
        ax.text(at, top * 0.99, f" {name}", fontsize=7, rotation=90, va="top")
    for key, label, style in (("predicted_peak_bytes", "model: peak", "--"),
                              ("predicted_model_bytes", "model: parameters + gradients + state", "-.")):
        if timeline.get(key):
            at = timeline.get("predicted_peak_at") if key == "predicted_peak_bytes" else None
            ax.axhline(timeline[key] / MIB, color="k", linestyle=style, linewidth=1,
                       label=label + ("\n" + textwrap.fill(f"({at})", 45) if at else ""))
    ax.set_xlabel("ms into the step")
    ax.set_ylabel("MiB alive")
    ax.set_title(f"{timeline['cell_id']}\nmeasured peak {timeline['peak_bytes'] / MIB:.3g} MiB; from "
                 f"{timeline['source']}", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path, tight=True)  # the legends sit outside the axes


def cost_per_time_step(ok: pd.DataFrame) -> pd.DataFrame:
    """Per implementation (and device, dtype, mode, batch, hidden) measured at two or more sequence lengths: a line
    fitted to step time against T: its slope (ms per extra time step) and intercept (the fixed cost, ms)."""
    key = [k for k in CELL_KEY if k in ok and k != "seq_len"]
    timed = ok[ok["step_ms_median"].notna()]
    out = []
    for values, part in timed.groupby(key, dropna=False):
        if part["seq_len"].nunique() < 2:
            continue
        slope, intercept = np.polyfit(part["seq_len"].astype(float), part["step_ms_median"].astype(float), 1)
        shown = {k: v for k, v in zip(key, values) if k in ("impl", "device", "dtype", "mode", "batch_size",
                                                              "hidden_size")}
        out.append(shown | {"T": ",".join(str(int(t)) for t in sorted(part["seq_len"])), "slope_ms": slope,
                            "intercept_ms": intercept})
    return pd.DataFrame(out)


def profile_as_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """profile.csv's rows read as measurements (their unprofiled step as the median step), for the same fits."""
    return rows.rename(columns={"step_ms": "step_ms_median"})


def _d2l_rows(ok: pd.DataFrame) -> pd.DataFrame:
    at = ok[(ok["batch_size"] == D2L["batch_size"]) & (ok["hidden_size"] == D2L["hidden_size"])
            & (ok["seq_len"] == D2L["seq_len"]) & (ok["input_size"] == D2L["vocab_size"])]
    return at if not at.empty else ok


def sections(runs: Sequence, ok: pd.DataFrame, out_dir: Path) -> list[str]:
    """report.md's profiling sections: where the time goes, the distance to the limit, the cost per time step, and
    memory through the step (from the runs' rows, their environment.json, profile.csv and memory-*.json.gz)."""
    md: list[str] = []
    profiled = [pd.read_csv(run.path / "profile.csv") for run in runs if (run.path / "profile.csv").is_file()]
    profiled = [p[p["status"] == "ok"] for p in profiled]
    have_parts = ok[ok["part_rest_ms"].notna()] if "part_rest_ms" in ok else ok.iloc[:0]
    if profiled or not have_parts.empty:
        md += ["", "## Where the time goes", "", "The step's wall time split into parts that do not overlap and add "
               "up to it, from the profiler's op tree: each top-level op counted once in the category of its "
               "outermost op; rest is the wall time inside no op (Python, dispatch, the autograd engine). The "
               "profiled times are scaled to the unprofiled step (`docs/profiling.md` has the rules)."]
    for k, rows in enumerate(profiled):
        for (device, dtype, mode), part in rows.groupby(["device", "dtype", "mode"]):
            title = f"{device} {dtype} {mode} (lstm-bench profile)"
            plot = plot_parts(part, "step_ms", title, out_dir / f"plot-time-parts-profile{k}-{device}-{dtype}-"
                                                                   f"{mode}.png".replace(":", ""))
            md += ["", f"### {title}", "", parts_table(part), "", f"![{plot.stem}]({plot.name})"]
    for (device, dtype, mode), part in have_parts.groupby(["device", "dtype", "mode"]):
        at = _d2l_rows(part).sort_values("impl")
        at = at[at["seq_len"] == at["seq_len"].iloc[0]]
        where = f"B{int(at['batch_size'].iloc[0])} H{int(at['hidden_size'].iloc[0])} T{int(at['seq_len'].iloc[0])}"
        title = f"{device} {dtype} {mode} at {where} (the run's what-ran step)"
        plot = plot_parts(at.drop_duplicates("impl"), "step_ms_median", title,
                          out_dir / f"plot-time-parts-{device}-{dtype}-{mode}.png".replace(":", ""))
        md += ["", f"### {title}", "", parts_table(at.drop_duplicates("impl"), "step_ms_median"), "",
               f"![{plot.stem}]({plot.name})"]
    md += _distance(runs, ok, out_dir)
    cost = pd.concat([cost_per_time_step(ok), *(cost_per_time_step(profile_as_rows(p)) for p in profiled)],
                     ignore_index=True)
    if not cost.empty:
        cost = cost.assign(slope_ms=cost["slope_ms"].map(sig), intercept_ms=cost["intercept_ms"].map(sig))
        md += ["", "## Cost per time step", "", "Step time against the sequence length T: a line fitted per "
               "implementation, its slope the cost of one more time step and its intercept the fixed cost (the "
               "output layer, the loss, the optimizer, the call itself). Measure it with `--seq-len 10,35,100`.", "",
               md_table(cost.rename(columns={"slope_ms": "ms per time step", "intercept_ms": "fixed ms"}))]
    md += _memory(runs, out_dir)
    return md


def _distance(runs: Sequence, ok: pd.DataFrame, out_dir: Path) -> list[str]:
    """The share of the measured GEMM peak, the recurrence's floor and each implementation's distance from it."""
    peaks: dict[str, dict] = {}
    for run in runs:
        env = run.environment or {}
        if env.get("gemm_peak_gflops"):
            peaks.setdefault(str(env.get("device", "")).split(":")[0], {}).update(env["gemm_peak_gflops"])
    if not peaks or "achieved_gflops" not in ok:
        return []
    md = ["", "## Distance to the limit", "", "The device's own GEMM peak, measured once per run (a "
          "large matmul in the dtype, timed as the suite times; environment.json `gemm_peak_gflops`): "
          + ", ".join(f"{device} {dtype} {v:.3g} GFLOP/s" for device, by in peaks.items() for dtype, v in by.items())
          + ". The recurrence's floor is the time the step's sequential (B, H) × (H, 4H) GEMMs alone would take "
          "at that peak (T forward, T − 1 backward into h); step ÷ floor is how far each implementation is from it."]
    for (device, dtype, mode), part in ok.groupby(["device", "dtype", "mode"]):
        peak = peaks.get(str(device).split(":")[0], {})
        at = _d2l_rows(part).sort_values("impl")
        rows = []
        for r in at.itertuples(index=False):
            cell = Cell.from_row(r._asdict())
            gflops = peak.get(r.amp if r.amp != "none" else dtype)
            floor = recurrence_floor_ms(cell, gflops) if gflops else None
            rows.append({"impl": r.impl, "B": int(r.batch_size), "H": int(r.hidden_size), "T": int(r.seq_len),
                         "step (ms)": sig(r.step_ms_median), "GFLOP/s": sig(r.achieved_gflops),
                         "share of peak": f"{r.achieved_gflops / gflops:.2%}" if gflops and pd.notna(
                             r.achieved_gflops) else "–",
                         "floor (ms)": sig(floor), "step ÷ floor": sig(r.step_ms_median / floor) if floor else "–"})
        md += ["", f"### {device} {dtype} {mode}", "", md_table(pd.DataFrame(rows))]
        gflops = peak.get(dtype)
        plotted = part[part["op_calls_per_step"].notna() & part["achieved_gflops"].notna()] if (
            "op_calls_per_step" in part) else part.iloc[:0]
        if gflops and not plotted.empty:
            plot = plot_roofline(plotted, gflops, f"{device} {dtype} {mode}",
                                 out_dir / f"plot-roofline-{device}-{dtype}-{mode}.png".replace(":", ""))
            md += ["", f"![{plot.stem}]({plot.name})"]
    return md


def _memory(runs: Sequence, out_dir: Path) -> list[str]:
    """One picture per timeline (memory-*.json.gz) in the runs' directories (or their first process's)."""
    found: dict[str, Path] = {}
    for run in runs:
        for path in sorted([*run.path.glob(TIMELINES), *run.path.glob(f"processes/0/{TIMELINES}")]):
            found.setdefault(path.name, path)
    if not found:
        return []
    md = ["", "## Memory through the step", "", "The bytes alive across one training step, by what holds them "
          "(on a CPU from the profiler's allocation events, on CUDA from the caching allocator's history), the "
          "phases' starts dotted, the memory model's predicted peak dashed where it counts the cell."]
    for name, path in found.items():
        plot = plot_memory(read_timeline(path), out_dir / name.replace(".json.gz", ".png"))
        md += ["", f"![{plot.stem}]({plot.name})"]
    return md


def write_timeline(timeline, out_dir: Path) -> tuple[Path, Path]:
    """A Timeline (bench/instruments/profiling.py) as memory-<cell id>.json.gz and its picture beside it."""
    path = timeline.write(out_dir)
    return path, plot_memory(read_timeline(path), out_dir / path.name.replace(".json.gz", ".png"))


def read_timeline(path: Path) -> dict:
    """A memory-<cell id>.json.gz, as Timeline.write wrote it."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)
