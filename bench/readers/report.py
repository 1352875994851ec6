"""`lstm-bench report`: one or more run directories -> report.md, PNG plots and pivot CSVs.

The report answers the chapter's question with the run's own numbers (what the model takes, what a
batch takes, how fast each implementation is) and shows how each implementation scales with batch
and hidden size. Run directories are read only through bench.results.load_run, so bad input is a
RunError (one line) before anything is written.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter
from scipy.stats import linregress

from bench.grid import BUDGET_FREE_PROCESSES, CELL_KEY, D2L, DDP_MODE, DTYPES, MODES, STATUSES, Cell, at_d2l_sizes
from bench.readers.accuracy import accuracy_tables, plot_accuracy, read_accuracy
from bench.readers.plots import colors as impl_colors
from bench.readers.plots import save as save_figure
from bench.readers.profiling import sections as profiling_sections
from bench.readers.stats import SETTLED_WITHIN, settle_pct, typical_interval
from bench.readers.tables import human_bytes, md_table, sig
from bench.results import Run, RunError, load_run, process_medians, writable_dir
from lstm_impls.base import CONFIG_DEFAULTS

REPORT_NAME = "report.md"
#: a cell: what must differ between rows of runs that are combined
KEY = CELL_KEY
#: rows that share these are plotted together (one set of plots, one set of tables per group)
#: what else makes a section of its own: nn.LSTM's configuration, packed lengths, autocast
SECTION_KEYS = (*CONFIG_DEFAULTS, "lengths", "amp")
GROUP = ("device", "dtype", "mode", "seq_len", "input_size", "world_size", *SECTION_KEYS)
#: the parts of peak_bytes, bottom to top (library_bytes: CUDA library workspaces, 0 on a CPU)
PARTS = ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes", "workspace_bytes", "library_bytes")
PART_LABELS = {"param_bytes": "parameters", "grad_bytes": "gradients", "optimizer_bytes": "optimizer state",
               "activation_bytes": "activations", "workspace_bytes": "workspace", "library_bytes": "libraries"}
NOISY_FRACTION = 0.10  # IQR / median above this marks a cell of one process as noisy
#: a cell's processes ran the machine-speed probe this far apart (max / min): the machine's speed moved during the run
PROBE_MOVED = 1.05
MIB = 2**20
REFERENCE_IMPL = "cudnn"
MAX_NOTES = 20  # distinct notes listed in the report


# ----------------------------------------------------------------------------- reading


@dataclass
class Combined:
    """Every row of the runs, one per cell, with the run each came from."""

    rows: pd.DataFrame  # the COLUMNS, `source` (index into runs) and step_ms_q1/q3 from the raw rounds
    runs: list[Run]
    superseded: int  # rows replaced by a later row of the same cell in the same run (a resumed run)


def combine(run_dirs: Sequence[str | Path]) -> Combined:
    """Load the runs and join them; RunError (one line) when two runs hold the same cell."""
    named = [Path(path).resolve() for path in run_dirs]
    twice = [path for i, path in enumerate(run_dirs) if named[i] in named[:i]]
    if twice:
        raise RunError(f"{twice[0]}: the same run directory is named twice")
    runs = [load_run(path) for path in run_dirs]
    frames, superseded = [], 0
    for index, run in enumerate(runs):
        df = run.measurements
        for column in ("impl", "device", "dtype", "mode", "batch_size", "hidden_size", "seq_len"):
            empty = df.index[df[column].isna()]
            if len(empty):
                raise RunError(f"{run.path}: row {empty[0] + 2} of measurements.csv has no {column}")
        bad = df.index[~df["status"].isin(STATUSES)]
        if len(bad):
            raise RunError(f"{run.path}: row {bad[0] + 2} of measurements.csv has status {df['status'][bad[0]]!r}, "
                           f"not one of {', '.join(STATUSES)}")
        df = df.assign(world_size=df["world_size"].fillna(1))  # runs written before the column: one process
        unique = df.drop_duplicates(list(KEY), keep="last")  # appended rows: the newest wins
        superseded += len(df) - len(unique)
        frames.append(unique.assign(source=index))
    rows = pd.concat(frames, ignore_index=True)
    clash = rows[rows.duplicated(list(KEY), keep=False)]
    if not clash.empty:
        first = clash.iloc[0]
        same = clash[(clash[list(KEY)] == first[list(KEY)]).all(axis=1)]
        sources = [str(runs[source].path) for source in same["source"]]
        raise RunError(f"runs collide: cell {cell_name(first)} is in both {' and '.join(sources)} "
                       f"({len(clash.drop_duplicates(list(KEY)))} cells in all); combine runs whose cells differ")
    quartiles = [np.percentile(runs[r.source].rounds_s.get(cell_name(r), [np.nan]), [25, 75]) * 1e3
                 for _, r in rows.iterrows()]
    rows[["step_ms_q1", "step_ms_q3"]] = np.array(quartiles).reshape(len(rows), 2)
    return Combined(rows=rows, runs=runs, superseded=superseded)


# ----------------------------------------------------------------------------- formatting


def cell_name(row: pd.Series) -> str:
    """impl-device-dtype-mode-B..-H..-T..-V..[-W..]: bench.grid.Cell.id, the key of the raw rounds."""
    world = f"-W{_int(row['world_size'])}" if pd.notna(row["world_size"]) and row["world_size"] != 1 else ""
    name = (f"{row['impl']}-{row['device']}-{row['dtype']}-{row['mode']}-B{_int(row['batch_size'])}"
            f"-H{_int(row['hidden_size'])}-T{_int(row['seq_len'])}-V{_int(row['input_size'])}{world}")
    if pd.isna(row["input_size"]):
        return name
    return Cell.from_row(row).id  # the configuration, lengths and autocast too


def _int(value) -> str:
    return "?" if pd.isna(value) else str(int(value))


@dataclass(frozen=True)
class Group:
    """One (device, dtype, mode, seq_len, input_size, world_size): the rows plotted and tabulated together."""

    device: str
    dtype: str
    mode: str
    seq_len: int
    input_size: float  # NaN for runs written before the column
    world_size: int = 1  # ddp rows: processes training data-parallel
    # nn.LSTM's configuration: each its own section (the chapter's one-layer LSTM unmarked)
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dropout: float = 0.0
    batch_first: bool = False
    lengths: str = "full"  # packed batches of sequences of their own lengths, and autocast: sections of their own
    amp: str = "none"

    def _config(self, sep: str) -> str:
        marks = [(f"{self.num_layers} layers", f"L{self.num_layers}", self.num_layers != 1),
                 ("bidirectional", "bi", self.bidirectional), (f"proj {self.proj_size}", f"P{self.proj_size}",
                                                               self.proj_size),
                 (f"dropout {self.dropout:g}", f"D{self.dropout:g}", self.dropout),
                 ("batch-first", "bf", self.batch_first),
                 (f"lengths {self.lengths}", f"len{self.lengths.removeprefix('uniform:')}", self.lengths != "full"),
                 (f"autocast {self.amp}", f"amp-{self.amp}", self.amp != "none")]
        return "".join(f"{sep}{words if sep == ' · ' else short}" for words, short, on in marks if on)

    @property
    def title(self) -> str:
        world = f" · {self.world_size} ranks" if self.world_size != 1 else ""
        return (f"{self.device} · {self.dtype} · {self.mode} · T{self.seq_len} · V{_int(self.input_size)}{world}"
                f"{self._config(' · ')}")

    @property
    def slug(self) -> str:
        world = f"-W{self.world_size}" if self.world_size != 1 else ""
        return (f"{self.device}-{self.dtype}-{self.mode}-T{self.seq_len}-V{_int(self.input_size)}{world}"
                f"{self._config('-')}").replace(":", "")

    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        same = ((rows["device"] == self.device) & (rows["dtype"] == self.dtype) & (rows["mode"] == self.mode)
                & (rows["seq_len"] == self.seq_len) & (rows["world_size"] == self.world_size))
        for key in SECTION_KEYS:
            same &= rows[key] == getattr(self, key)
        same &= rows["input_size"].isna() if pd.isna(self.input_size) else rows["input_size"] == self.input_size
        return rows[same]


def groups(rows: pd.DataFrame) -> list[Group]:
    """The groups present, device first, then dtype and mode in the grid's order."""
    found = {Group(r.device, r.dtype, r.mode, int(r.seq_len), r.input_size, int(r.world_size), int(r.num_layers),
                   bool(r.bidirectional), int(r.proj_size), float(r.dropout), bool(r.batch_first), str(r.lengths),
                   str(r.amp))
             for r in rows[list(GROUP)].drop_duplicates().itertuples(index=False)}
    dtype_order, mode_order = list(DTYPES), list(MODES)
    return sorted(found, key=lambda g: (g.device, dtype_order.index(g.dtype) if g.dtype in dtype_order else 99,
                                        mode_order.index(g.mode) if g.mode in mode_order else 99, g.seq_len,
                                        -1 if pd.isna(g.input_size) else g.input_size, g.world_size,
                                        tuple(getattr(g, key) for key in SECTION_KEYS)))


# ----------------------------------------------------------------------------- the numbers


def d2l_cell(ok: pd.DataFrame) -> tuple[int, int]:
    """(batch, hidden) of the d2l config, or of the cell nearest it (log scale) that most implementations ran."""
    shapes = ok.groupby(["batch_size", "hidden_size"]).size().rename("impls").reset_index()
    shapes["distance"] = (np.abs(np.log2(shapes["batch_size"] / D2L["batch_size"]))
                          + np.abs(np.log2(shapes["hidden_size"] / D2L["hidden_size"])))
    best = shapes.sort_values(["distance", "impls", "hidden_size", "batch_size"],
                              ascending=[True, False, True, True]).iloc[0]
    return int(best["batch_size"]), int(best["hidden_size"])


def is_d2l(group: Group, batch: int, hidden: int) -> bool:
    return at_d2l_sizes(batch, group.seq_len, hidden, group.input_size)


def bytes_per_sequence(ok: pd.DataFrame, hidden_size: int) -> pd.DataFrame:
    """Per implementation, a linear fit of peak bytes over batch size at one hidden size (one group's ok rows).

    slope_bytes is what each extra sequence costs; intercept_bytes what does not grow with the batch.
    """
    fits = []
    for impl, rows in ok[ok["hidden_size"] == hidden_size].groupby("impl"):
        rows = rows.dropna(subset=["peak_bytes"])
        if rows["batch_size"].nunique() < 2:
            continue
        fit = linregress(rows["batch_size"].astype(float), rows["peak_bytes"].astype(float))
        activations = rows.dropna(subset=["activation_bytes"])
        act_slope = (linregress(activations["batch_size"].astype(float), activations["activation_bytes"].astype(float))
                     .slope if activations["batch_size"].nunique() >= 2 else math.nan)
        fits.append({"impl": impl, "hidden_size": hidden_size, "slope_bytes": fit.slope,
                     "intercept_bytes": fit.intercept, "r_squared": fit.rvalue**2, "points": len(rows),
                     "batch_min": int(rows["batch_size"].min()), "batch_max": int(rows["batch_size"].max()),
                     "activation_slope_bytes": act_slope})
    return pd.DataFrame(fits)


def hidden_growth(ok: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Per implementation, the exponent k of bytes ~ H^k (a least-squares line in log-log) for parameters and
    activations, over the hidden sizes run at one batch size."""
    fits = []
    for impl, rows in ok[ok["batch_size"] == batch_size].groupby("impl"):
        rows = rows.sort_values("hidden_size")
        if rows["hidden_size"].nunique() < 2:
            continue
        fit = {"impl": impl, "batch_size": batch_size, "hidden_min": int(rows["hidden_size"].iloc[0]),
               "hidden_max": int(rows["hidden_size"].iloc[-1])}
        for column in ("param_bytes", "activation_bytes", "peak_bytes"):
            valid = rows[rows[column] > 0]
            name = column.removesuffix("_bytes")
            fit[f"{name}_exponent"] = (np.polyfit(np.log(valid["hidden_size"].astype(float)),
                                                  np.log(valid[column].astype(float)), 1)[0]
                                       if valid["hidden_size"].nunique() >= 2 else math.nan)
            fit[f"{name}_first_bytes"] = rows[column].iloc[0]
            fit[f"{name}_last_bytes"] = rows[column].iloc[-1]
        fits.append(fit)
    return pd.DataFrame(fits)


def pivot(ok: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    """impl x batch rows, hidden columns, of one value per cell."""
    table = ok.assign(value=values).pivot_table(index=["impl", "batch_size"], columns="hidden_size",
                                                values="value", aggfunc="first", dropna=False)
    table.columns = [f"H{int(h)}" for h in table.columns]
    return table


def metrics(ok: pd.DataFrame) -> dict[str, tuple[str, pd.Series]]:
    """The pivot tables: file stem -> (title, one value per row)."""
    return {
        "step-ms": ("median step time (ms)", ok["step_ms_median"]),
        "tokens-per-s": ("tokens per second (batch × seq_len / median step)", ok["tokens_per_s"]),
        "peak-mib": ("peak memory of a step (MiB)", ok["peak_bytes"] / MIB),
        "noise-pct": ("noise: IQR / median of the step time (%)", 100 * ok["step_ms_iqr"] / ok["step_ms_median"]),
        "between-pct": ("spread between processes: sd of their log median step times (%)",
                        ok["step_ms_between_pct"]),
        "relative-between-pct": ("spread between processes of the step relative to the machine-speed probe (%): "
                                 "what `compare` judges", ok["relative_between_pct"]),
    }


# ----------------------------------------------------------------------------- plots


def _log2_ticks(ax, values: Sequence[float]) -> None:
    """A log2 x axis labelled with the grid's own sizes."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(values))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _scale(ax, which: str, values) -> None:
    """A log axis with plain labels at 1, 2, 5 x 10^k when values span a factor of 3 or more (mathtext
    labels are slow and hard to read); else linear, as a log axis over a narrow range has no labelled ticks."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    axis = ax.yaxis if which == "y" else ax.xaxis
    if values.size and values.max() >= 3 * values.min():
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: sig(v)))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    else:
        (ax.set_yscale if which == "y" else ax.set_xscale)("linear")
        axis.set_major_formatter(ScalarFormatter(useOffset=False))
        (ax.set_ylim if which == "y" else ax.set_xlim)(0, values.max() * 1.15 if values.size else 1)  # from 0


def plot_against(ok: pd.DataFrame, group: Group, x: str, facet: str, colors: dict[str, str], path: Path) -> Path:
    """Step time, tokens/s and peak memory against x (batch or hidden size), a panel per value of facet."""
    rows = [("step_ms_median", "median step (ms)"), ("tokens_per_s", "tokens / s"),
            ("peak_bytes", "peak memory (MiB)")]
    facets = sorted(ok[facet].unique())
    # Fixed margins (inches) rather than a layout engine: these grids are the report's slowest figures.
    width_in, height_in = max(7.0, 1.2 + 3.1 * len(facets)), 8.2
    left_in, right_in, top_in, bottom_in = 1.0, 0.2, 0.9, 0.6
    fig = Figure(figsize=(width_in, height_in))
    fig.subplots_adjust(left=left_in / width_in, right=1 - right_in / width_in, top=1 - top_in / height_in,
                        bottom=bottom_in / height_in, wspace=0.08, hspace=0.1)
    axes = fig.subplots(len(rows), len(facets), squeeze=False, sharex=True, sharey="row")
    xname = {"batch_size": "batch size", "hidden_size": "hidden size"}
    fname = {"batch_size": "B", "hidden_size": "H"}
    for j, value in enumerate(facets):
        panel = ok[ok[facet] == value]
        for i, (column, label) in enumerate(rows):
            ax = axes[i][j]
            for impl, lines in panel.groupby("impl"):
                lines = lines.sort_values(x)
                y = lines[column] / (MIB if column == "peak_bytes" else 1)
                ax.plot(lines[x], y, marker="o", color=colors[impl], label=impl)
                spread = _quartiles(lines, column)
                if spread is not None:
                    ax.errorbar(lines[x], y, yerr=spread, fmt="none", ecolor=colors[impl], capsize=3, alpha=0.7)
            _scale(ax, "y", ok[column])
            _log2_ticks(ax, ok[x].unique())
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(f"{fname[facet]} = {int(value)}")
            if i == len(rows) - 1:
                ax.set_xlabel(xname[x])
            if j == 0:
                ax.set_ylabel(label)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{group.title}: against {xname[x]}, a panel per {xname[facet]}\n"
                 "(bars: the timed rounds' 25th to 75th percentile)")
    return save_figure(fig, path)


def _quartiles(lines: pd.DataFrame, column: str) -> np.ndarray | None:
    """Distances below and above the plotted value to the rounds' quartiles (time and tokens/s), else None."""
    if column == "step_ms_median":
        low, high = lines["step_ms_q1"], lines["step_ms_q3"]
    elif column == "tokens_per_s":
        tokens = lines["real_tokens"].fillna(lines["batch_size"] * lines["seq_len"]) * 1e3
        low, high = tokens / lines["step_ms_q3"], tokens / lines["step_ms_q1"]
    else:
        return None
    if low.isna().all():
        return None
    value = lines[column]
    return np.clip(np.vstack([value - low, high - value]).astype(float), 0, None)


def plot_relative(ok: pd.DataFrame, group: Group, path: Path) -> Path | None:
    """Each implementation's step time divided by cudnn's in the same cell, as a heatmap over batch x hidden."""
    reference = ok[ok["impl"] == REFERENCE_IMPL].set_index(["batch_size", "hidden_size"])["step_ms_median"]
    others = sorted(set(ok["impl"]) - {REFERENCE_IMPL})
    if reference.dropna().empty or not others:
        return None
    batches, hiddens = sorted(ok["batch_size"].unique()), sorted(ok["hidden_size"].unique(), reverse=True)
    ratios = {}
    for impl in others:
        own = ok[ok["impl"] == impl].set_index(["batch_size", "hidden_size"])["step_ms_median"]
        ratios[impl] = np.array([[own.get((b, h), np.nan) / reference.get((b, h), np.nan) for b in batches]
                                 for h in hiddens], dtype=float)
    finite = np.concatenate([r[np.isfinite(r)] for r in ratios.values()])
    if finite.size == 0:
        return None
    span = max(2.0, float(np.exp(np.max(np.abs(np.log(finite))))))  # symmetric around 1, at least 1/2..2
    norm = LogNorm(vmin=1 / span, vmax=span)
    fig = Figure(figsize=(1.6 + 0.9 * len(batches) * len(others) + 1.0, 1.6 + 0.55 * len(hiddens)),
                 layout="constrained")
    axes = fig.subplots(1, len(others), squeeze=False)[0]
    image = None
    for ax, impl in zip(axes, others):
        image = ax.imshow(ratios[impl], cmap="coolwarm", norm=norm, aspect="auto")
        for (r, c), ratio in np.ndenumerate(ratios[impl]):
            ax.text(c, r, "–" if not np.isfinite(ratio) else f"{sig(ratio, 2)}×", ha="center", va="center",
                    fontsize="small")
        ax.set_xticks(range(len(batches)), [str(int(b)) for b in batches])
        ax.set_yticks(range(len(hiddens)), [str(int(h)) for h in hiddens])
        ax.set_xlabel("batch size")
        ax.set_ylabel("hidden size")
        ax.set_title(impl)
    bar = fig.colorbar(image, ax=list(axes), label=f"step time ÷ {REFERENCE_IMPL}'s")
    ticks = [2.0**k for k in range(-12, 13) if 1 / span <= 2.0**k <= span]
    bar.set_ticks(ticks, labels=[f"{sig(t, 2)}×" for t in ticks])
    bar.ax.minorticks_off()
    fig.suptitle(f"{group.title}: step time relative to {REFERENCE_IMPL} (>1: slower)")
    return save_figure(fig, path)


def winners(ok: pd.DataFrame) -> pd.DataFrame:
    """Per (batch, hidden): the fastest implementation, the second, and the margin (second's step ÷ first's)."""
    rows = []
    for (batch, hidden), cell in ok.dropna(subset=["step_ms_median"]).groupby(["batch_size", "hidden_size"]):
        ranked = cell.sort_values("step_ms_median")
        first = ranked.iloc[0]
        second = ranked.iloc[1] if len(ranked) > 1 else None
        rows.append({"batch_size": batch, "hidden_size": hidden, "fastest": first["impl"],
                     "second": second["impl"] if second is not None else "",
                     "margin": second["step_ms_median"] / first["step_ms_median"] if second is not None else np.nan})
    return pd.DataFrame(rows, columns=["batch_size", "hidden_size", "fastest", "second", "margin"])


def plot_winners(ok: pd.DataFrame, group: Group, path: Path) -> Path | None:
    """A heat map over batch x hidden naming the fastest implementation in each cell, coloured by its margin over
    the second (the second's step time over the winner's)."""
    table = winners(ok)
    if table.empty or table["margin"].isna().all():
        return None
    batches, hiddens = sorted(table["batch_size"].unique()), sorted(table["hidden_size"].unique(), reverse=True)
    at = table.set_index(["batch_size", "hidden_size"])
    margin = np.array([[at["margin"].get((b, h), np.nan) for b in batches] for h in hiddens], dtype=float)
    width = 2.0 + 1.3 * len(batches)
    fig = Figure(figsize=(width, 1.6 + 0.6 * len(hiddens)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(margin, cmap="viridis", vmin=1.0, vmax=max(1.5, float(np.nanmax(margin))), aspect="auto")
    for (r, c), value in np.ndenumerate(margin):
        key = (batches[c], hiddens[r])
        if key in at.index:
            ax.text(c, r, f"{at.loc[key, 'fastest']}\n×{value:.2f}" if np.isfinite(value) else at.loc[key, "fastest"],
                    ha="center", va="center", fontsize="small", color="white" if value < 1.3 else "black")
    ax.set_xticks(range(len(batches)), [str(int(b)) for b in batches])
    ax.set_yticks(range(len(hiddens)), [str(int(h)) for h in hiddens])
    ax.set_xlabel("batch size")
    ax.set_ylabel("hidden size")
    fig.colorbar(image, ax=ax, label="second ÷ fastest (step time)")
    # wrapped to the figure's width: with one or two batch sizes a configuration's title is wider than the map
    fig.suptitle(textwrap.fill(f"{group.title}: the fastest implementation", width=max(24, int(9 * width))))
    return save_figure(fig, path)


def plot_breakdown(cells: pd.DataFrame, group: Group, where: str, path: Path) -> Path:
    """Stacked parts of the peak per implementation at one cell."""
    fig = Figure(figsize=(4.2 + 1.4 * len(cells), 4.8), layout="constrained")
    ax = fig.subplots()
    heights = {part: np.clip(cells[part].fillna(0).to_numpy(float), 0, None) / MIB for part in PARTS}
    tallest = max(float(sum(heights.values()).max()), 1e-9)
    bottom = np.zeros(len(cells))
    names = list(cells["impl"])
    for part in [p for p in PARTS if p != "library_bytes" or heights[p].any()]:
        ax.bar(names, heights[part], bottom=bottom, label=PART_LABELS[part], width=0.6)
        for i, height in enumerate(heights[part]):
            if height > 0.05 * tallest:  # label the parts big enough to hold one
                ax.text(i, bottom[i] + height / 2, sig(height), ha="center", va="center", fontsize="small",
                        color="white")
        bottom += heights[part]
    for i, peak in enumerate(cells["peak_bytes"].to_numpy(float) / MIB):
        ax.annotate(f"peak {sig(peak)} MiB", (i, bottom[i]), ha="center", va="bottom", xytext=(0, 2),
                    textcoords="offset points", fontsize="small")
    ax.set_ylabel("MiB at the step's peak")
    ax.set_ylim(0, tallest * 1.12)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"Peak memory by part at {where}\n{group.title}")
    return save_figure(fig, path)


def plot_first_call(cells: pd.DataFrame, group: Group, where: str, path: Path) -> Path | None:
    """Startup, first call (scripting / compiling included) and the median step, per implementation."""
    bars = [("first_step_ms", "first call"), ("startup_ms", "startup (to steady state)"),
            ("step_ms_median", "median step")]
    bars = [(c, label) for c, label in bars if (cells[c] > 0).any()]
    if not bars:
        return None
    fig = Figure(figsize=(3.5 + 1.5 * len(cells), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(bars)
    x = np.arange(len(cells))
    shown = cells[[c for c, _ in bars]].to_numpy(float)
    low, high = np.nanmin(shown[shown > 0]) / 2, np.nanmax(shown) * 2  # bars from 0 defeat a log autoscale
    for k, (column, label) in enumerate(bars):
        values = cells[column].to_numpy(float)
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, np.where(values > 0, values, np.nan), width, label=label)
        for xi, v in zip(x, values):
            if np.isfinite(v):  # startup_ms can be <= 0 (noise larger than the cost): no bar on a log axis
                ax.annotate(sig(v, 2), (xi + (k - (len(bars) - 1) / 2) * width, v if v > 0 else low),
                            ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(x, list(cells["impl"]))
    _scale(ax, "y", [low, high])
    ax.set_ylim(low, high)
    ax.set_ylabel("ms (log scale)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"First call (scripting / compiling included), startup and a warm step at {where}\n{group.title}")
    return save_figure(fig, path)


def plot_predicted(ok: pd.DataFrame, group: Group, colors: dict[str, str], path: Path) -> Path | None:
    """The memory model's predicted peak against the measured one, every cell that has both."""
    rows = ok.dropna(subset=["predicted_peak_bytes", "peak_bytes"])
    if rows.empty:
        return None
    fig = Figure(figsize=(5.4, 4.8), layout="constrained")
    ax = fig.subplots()
    for impl, points in rows.groupby("impl"):
        ax.scatter(points["peak_bytes"] / MIB, points["predicted_peak_bytes"] / MIB, color=colors[impl], label=impl)
    low = min(rows["peak_bytes"].min(), rows["predicted_peak_bytes"].min()) / MIB
    high = max(rows["peak_bytes"].max(), rows["predicted_peak_bytes"].max()) / MIB
    ax.plot([low, high], [low, high], color="grey", linestyle="--", label="predicted = measured")
    _scale(ax, "x", [low, high])
    _scale(ax, "y", [low, high])
    ax.set_xlabel("measured peak (MiB)")
    ax.set_ylabel("predicted peak (MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle(f"{group.title}: predicted vs. measured peak")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the markdown


def _env_value(value) -> str:
    """An environment field in words: lists joined, mappings as NAME=value, an empty one as none."""
    if isinstance(value, dict) and "load_average_start" in value:  # how a run in worker processes was made
        load = [", ".join(f"{x:.2f}" for x in value[k]) for k in ("load_average_start", "load_average_end")]
        extra = {int(k): n for k, n in (value.get("extra_cells") or {}).items()}  # worker -> the cells it timed
        cut = [n for k, n in extra.items() if k < value["count"]]  # a first one the time budget cut
        added = [n for k, n in extra.items() if k >= value["count"]]
        more = (f" and {len(cut)} the time budget cut to the least settled cells ({', '.join(map(str, cut))} cells)"
                if cut else "")
        more += (f", then {len(added)} more timing only the least settled cells "
                 f"({', '.join(map(str, added))} cells)" if added else "")
        budget = value.get("budget_end_s")
        within = (f" (those past the first {BUDGET_FREE_PROCESSES} planned to end within {budget:.0f} s: the time "
                  "budget)" if budget is not None else "")
        left = [p["unsettled"] for p in (value.get("planned") or {}).values() if not p.get("cells")]
        if left:  # the budget had no time for another process
            more += f", then no more: the time budget left {left[0]} cells unsettled (`--budget-s`)"
        done = min(value["finished"], value["count"]) - len(cut)
        return (f"{done} of {value['count']} fresh processes timing every cell{more}, one after another, in "
                f"{value['wall_s']:.0f} s{within}; load average (1, 5, 15 min) {load[0]} before, {load[1]} after")
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _environment(combined: Combined) -> str:
    """A column per run: where the numbers came from."""
    fields = [("device", "device"), ("gpu_name", "GPU"), ("cpu_model", "CPU"), ("cpu_count", "CPU cores"),
              ("torch_threads", "torch threads"), ("torch_interop_threads", "torch inter-op threads"),
              ("parallel_backend", "parallel backend"), ("cpu_capability", "CPU capability (ATen)"),
              ("cpu_flags", "ISA features"), ("onednn_version", "oneDNN"), ("onednn_bf16", "oneDNN bfloat16"),
              ("onednn_fp16", "oneDNN float16"), ("bf16_path", "bfloat16 runs on"), ("blas", "BLAS"),
              ("dispatch_env", "dispatch and thread variables set"), ("malloc", "C allocator"),
              ("torch", "torch"), ("cuda", "CUDA"), ("cudnn", "cuDNN"), ("onednn", "oneDNN available"),
              ("tf32_matmul", "TF32 matmul"), ("tf32_cudnn", "TF32 cuDNN"),
              ("python", "Python"), ("git_commit", "commit"), ("time_utc", "time (UTC)"),
              ("processes", "how it was measured")]
    table = {"": [label for key, label in fields if any(key in run.environment for run in combined.runs)]}
    for run in combined.runs:
        table[f"`{run.path}`"] = [_env_value(run.environment.get(key, "–")) for key, _ in fields
                                  if any(key in r.environment for r in combined.runs)]
    if not table[""]:
        return "No environment.json in the run directories."
    return md_table(pd.DataFrame(table))


def _grid(rows: pd.DataFrame) -> str:
    def values(column: str) -> str:
        return ", ".join(str(int(v)) if isinstance(v, (float, int, np.integer)) else str(v)
                         for v in sorted(rows[column].dropna().unique()))

    impls = [f"`{r.impl}` ({r.description})" if pd.notna(r.description) else f"`{r.impl}`"
             for r in rows.drop_duplicates("impl").sort_values("impl").itertuples()]
    lines = [f"- implementations: {', '.join(impls)}",
             f"- devices: {values('device')}; dtypes: {values('dtype')}; modes: {values('mode')}",
             f"- batch sizes: {values('batch_size')}; hidden sizes: {values('hidden_size')}; "
             f"sequence lengths: {values('seq_len')}; input (vocabulary) sizes: {values('input_size') or '–'}",
             "- cells: " + ", ".join(f"{n} {status}" for status, n in rows["status"].value_counts().items())]
    if (rows["world_size"] != 1).any():
        lines.insert(-1, f"- world sizes (ddp ranks): {values('world_size')}")
    return "\n".join(lines)


def _answer(group: Group, ok: pd.DataFrame, batch: int, hidden: int) -> list[str]:
    """The chapter's question in words, for one group, with its own numbers."""
    where = f"B{batch} H{hidden} T{group.seq_len} V{_int(group.input_size)}"
    at = ok[(ok["batch_size"] == batch) & (ok["hidden_size"] == hidden)].sort_values("impl")
    which = "the d2l config" if is_d2l(group, batch, hidden) else "the cell nearest the d2l config (B32 H256 T35 V28)"
    out = noise_lines(ok) + [f"At **{which}, {where}**:", ""]
    reference = at[at["impl"] == REFERENCE_IMPL]["step_ms_median"]
    fits = bytes_per_sequence(ok, hidden)
    out += [_summary_table(at, fits.set_index("impl")["slope_bytes"] if not fits.empty else pd.Series(dtype=float),
                           reference.iloc[0] if not reference.dropna().empty else math.nan), ""]
    for r in at.itertuples():
        model = r.param_bytes + r.grad_bytes + r.optimizer_bytes
        batch_bytes = r.activation_bytes + r.workspace_bytes
        model_parts = f"parameters {human_bytes(r.param_bytes)}"
        if group.mode == "train":
            model_parts += (f" + gradients {human_bytes(r.grad_bytes)} + optimizer state "
                            f"{human_bytes(r.optimizer_bytes)}")
        speed = ""
        if pd.notna(r.step_ms_median):
            noise = r.step_ms_iqr / r.step_ms_median
            speed = f" A step takes {sig(r.step_ms_median)} ms ({sig(r.tokens_per_s)} tokens/s"
            relative = process_medians(getattr(r, "relative_step_processes", None))
            if len(relative) >= 2:  # what reproduces between runs: the step relative to the machine-speed probe
                low, high = typical_interval(relative)
                speed += (f"; {sig(r.relative_step_median)}× the machine-speed probe, 95% interval {sig(low)}–"
                          f"{sig(high)} over {len(relative)} processes")
                raw = process_medians(r.step_ms_processes)
                if probe_spread(r.step_ms_processes, r.relative_step_processes) > PROBE_MOVED:
                    speed += (f"; its processes ran {sig(min(raw))}–{sig(max(raw))} ms as the machine's speed moved: "
                              "the relative figure is the one that repeats")
                speed += ")"
            else:
                speed += f"; noisy: IQR {noise:.1%} of the median)" if noise > NOISY_FRACTION else ")"
            if r.impl != REFERENCE_IMPL and not reference.dropna().empty:
                ratio = r.step_ms_median / reference.iloc[0]
                speed += (f", {sig(ratio, 2)}× {REFERENCE_IMPL}'s time" if ratio >= 1
                          else f", {sig(1 / ratio, 2)}× faster than {REFERENCE_IMPL}")
            speed += "."
        library = f" (libraries' workspaces {human_bytes(r.library_bytes)} included)" if r.library_bytes > 0 else ""
        first = f" The first call takes {sig(r.first_step_ms)} ms" if pd.notna(r.first_step_ms) else ""
        if first and pd.notna(r.startup_ms) and r.startup_ms >= r.step_ms_median:
            first += (f"; reaching steady steps costs {sig(r.startup_ms)} ms more than as many steady steps "
                      "would (startup_ms)")
        elif first and pd.notna(r.startup_ms):  # within a step of nothing (it can come out below 0): the noise's
            first += f"; reaching steady steps costs less than one more step ({sig(r.startup_ms)} ms, startup_ms)"
        out.append(f"- **{r.impl}**: the model takes **{human_bytes(model)}** ({model_parts}); a batch of {batch} "
                   f"sequences takes **{human_bytes(batch_bytes)}** (activations {human_bytes(r.activation_bytes)} + "
                   f"workspace {human_bytes(r.workspace_bytes)}), {sig(batch_bytes / model, 2) if model else '–'}× "
                   f"the model; the step peaks at {human_bytes(r.peak_bytes)}{library}.{speed}"
                   + (f"{first}." if first else ""))
        gpu = _gpu_memory(r)
        if gpu:
            out.append(f"  {gpu}")
    if not fits.empty:
        out += ["", f"**Each extra sequence** (linear fit of the peak over batch size at H{hidden}):", ""]
        for f in fits.itertuples():
            exact = " — two points: the line is exact, R² says nothing" if f.points == 2 else ""
            out.append(f"- **{f.impl}**: {human_bytes(f.slope_bytes)} per sequence "
                       f"({human_bytes(f.slope_bytes / group.seq_len)} per token; activations "
                       f"{human_bytes(f.activation_slope_bytes)} of it), plus {human_bytes(f.intercept_bytes)} that "
                       f"does not grow with the batch; R² = {f.r_squared:.4f} over {f.points} batch sizes "
                       f"{f.batch_min}–{f.batch_max}{exact}.")
    growth = hidden_growth(ok, batch)
    if not growth.empty:
        out += ["", f"**With hidden size** (at B{batch}; k in bytes ∝ H^k, a line in log-log):", ""]
        for g in growth.itertuples():
            ratio = g.hidden_max / g.hidden_min
            out.append(f"- **{g.impl}**: H{g.hidden_min}→H{g.hidden_max} (×{sig(ratio)}): parameters "
                       f"{human_bytes(g.param_first_bytes)}→{human_bytes(g.param_last_bytes)} (k = "
                       f"{g.param_exponent:.2f}), activations {human_bytes(g.activation_first_bytes)}→"
                       f"{human_bytes(g.activation_last_bytes)} (k = {g.activation_exponent:.2f}), peak "
                       f"{human_bytes(g.peak_first_bytes)}→{human_bytes(g.peak_last_bytes)} "
                       f"(k = {g.peak_exponent:.2f}).")
        out += ["", "Parameters grow with H² once H outgrows the input and output sizes (the recurrent weights "
                "W_h· are H×H; the input weights and the output layer are linear in H); activations grow with H "
                "(a few B×H tensors saved per time step)."]
    return out


def probe_spread(step_ms_processes, relative_processes) -> float:
    """How far apart a cell's processes ran the machine-speed probe (max / min of each one's step ÷ its relative
    step); NaN without two processes."""
    probes = [s / r for s, r in zip(process_medians(step_ms_processes), process_medians(relative_processes)) if r]
    return max(probes) / min(probes) if len(probes) >= 2 else math.nan


def noise_lines(ok: pd.DataFrame) -> list[str]:
    """What repeats, judged as `compare` judges it: whether each cell's processes agree on its step relative to the
    machine-speed probe (bench/readers/stats.py settled), and, where the probe moved between them, that the machine's
    speed moved and which figures hold. A run of one process has only its rounds' IQR to go by."""
    if "relative_step_processes" not in ok:
        ok = ok.assign(relative_step_processes=None)
    timed = ok[[len(process_medians(v)) >= 2 for v in ok["relative_step_processes"]]]
    out = []
    if timed.empty:
        noisy = (ok["step_ms_iqr"] / ok["step_ms_median"] > NOISY_FRACTION).sum()
        if noisy > len(ok) / 2:
            return [f"**Caution: {noisy} of {len(ok)} cells are noisy** (the timed rounds' IQR above "
                    f"{NOISY_FRACTION:.0%} of their median, in one process): the times below may not repeat; a busy "
                    "machine? The memory figures do not depend on it.", ""]
        return [f"{noisy} of {len(ok)} cells are noisier than {100 * NOISY_FRACTION:.0f}% (IQR / median, in one "
                "process)" + (": their times say less than their digits." if noisy else "."), ""]
    # each cell's uncertainty: two standard errors of its processes' typical relative step, in %
    uncertain = pd.Series([settle_pct(process_medians(v)) for v in timed["relative_step_processes"]])
    loose = int((uncertain > 200 * SETTLED_WITHIN).sum())
    rule = ("their typical step relative to the machine-speed probe, the figure `compare` judges, pinned within "
            f"±{100 * SETTLED_WITHIN:.1f}% (two standard errors)")
    if loose > 0.1 * len(timed):
        out.append(f"**Caution: in {loose} of {len(timed)} cells the processes disagree by more than twice what "
                   f"settles a cell** ({rule}): their step figures may not repeat within 5%; was the machine busy? "
                   "Memory does not depend on it.")
    else:
        done = int((uncertain <= 100 * SETTLED_WITHIN).sum())
        out.append(f"{done} of {len(timed)} cells settled: {rule}"
                   + (f"; the others within ±{uncertain.max():.1f}%." if done < len(timed) else "."))
    spreads = pd.Series([probe_spread(r.step_ms_processes, r.relative_step_processes) for r in timed.itertuples()])
    if spreads.max() > PROBE_MOVED:
        out.append(f"The machine's speed moved during the run: within a cell, one process ran the probe up to "
                   f"×{spreads.max():.2f} slower than another (×{spreads.median():.2f} in the median cell). Memory and "
                   "the times relative to the probe hold; milliseconds moved with the machine, and repeat only as "
                   "well as its speed does.")
    return out + [""]


def _summary_table(at: pd.DataFrame, per_sequence_bytes: pd.Series, reference_ms: float) -> str:
    """One line per implementation at the answer's cell: the numbers the sentences below explain."""
    model = "model (params+grads+optimizer)" if (at["mode"] == "train").any() else "model (params)"
    table = pd.DataFrame({
        "impl": at["impl"],
        model: (at["param_bytes"] + at["grad_bytes"] + at["optimizer_bytes"]).map(human_bytes),
        "batch (activations+workspace)": (at["activation_bytes"] + at["workspace_bytes"]).map(human_bytes),
        "peak": at["peak_bytes"].map(human_bytes),
        "per extra sequence": at["impl"].map(per_sequence_bytes).map(human_bytes),
        "step (ms)": at["step_ms_median"].map(sig),
        "step ÷ probe": at["relative_step_median"].map(sig) if "relative_step_median" in at else "–",
        "tokens/s": at["tokens_per_s"].map(sig),
        f"time ÷ {REFERENCE_IMPL}'s": (at["step_ms_median"] / reference_ms).map(lambda v: f"{sig(v, 2)}×"
                                                                               if pd.notna(v) else "–"),
    })
    if math.isnan(reference_ms):
        table = table.drop(columns=table.columns[-1])
    return md_table(table)


def _gpu_memory(r) -> str:
    """On a GPU: what the process holds beyond the step's peak (why nvidia-smi shows hundreds of MiB)."""
    if not str(r.device).startswith("cuda"):
        return ""
    parts = [(r.context_bytes, "the CUDA context (torch's, cuBLAS's and cuDNN's kernels loaded onto the device, "
                               "and anything allocated outside torch)"),
             (r.peak_reserved_bytes, "the caching allocator's pool (peak reserved)")]
    parts = [f"{what} {human_bytes(v)}" for v, what in parts if pd.notna(v)]
    if pd.notna(r.library_bytes) and r.library_bytes > 0:
        parts.append(f"the libraries keep {human_bytes(r.library_bytes)} of workspaces inside the pool")
    if pd.isna(r.process_used_bytes) and not parts:
        return ""
    seen = (f"nvidia-smi shows {human_bytes(r.process_used_bytes)} for this process"
            if pd.notna(r.process_used_bytes) else "NVML gave no per-process figure here (see notes)")
    return f"{seen}, while the step peaks at {human_bytes(r.peak_bytes)}: " + "; ".join(parts) + "."


def _span(values: pd.Series, fmt) -> str:
    """'low–high' of a column, formatted; one value when they read the same."""
    low, high = fmt(values.min()), fmt(values.max())
    return low if low == high else f"{low}–{high}"


def _across(ok: pd.DataFrame) -> str:
    """Ranges over the whole group, per implementation."""
    lines = []
    for impl, rows in ok.groupby("impl"):
        model = rows["param_bytes"] + rows["grad_bytes"] + rows["optimizer_bytes"]
        batch = rows["activation_bytes"] + rows["workspace_bytes"]
        lines.append(f"- **{impl}**: model {_span(model, human_bytes)}, batch {_span(batch, human_bytes)}, peak "
                     f"{_span(rows['peak_bytes'], human_bytes)}, median step {_span(rows['step_ms_median'], sig)} ms, "
                     f"first call {_span(rows['first_step_ms'], sig)} ms.")
    return "\n".join(lines)


def _pivot_md(table: pd.DataFrame, marked: pd.DataFrame | None = None, percent: bool = False) -> str:
    text = table.map(lambda v: "–" if pd.isna(v) else (f"{v:.1f}%" if percent else sig(v)))
    if marked is not None:
        text = text.where(~marked, "**" + text + "**")
    return md_table(text.reset_index().rename(columns={"batch_size": "B"}))


def _memory_model(group: Group, part: pd.DataFrame, runs: Sequence[Run]) -> str | None:
    """How far the memory model's prediction lies from the measured peak here, and which path it counted
    for the CPU each run recorded (bench/instruments/memory path_of)."""
    from bench.instruments.env import CpuDispatch
    from bench.instruments.memory import NotModelled, kernel_of, path_of

    rows = part.dropna(subset=["predicted_peak_bytes", "peak_bytes"])
    if rows.empty:
        return None
    error = (rows["predicted_peak_bytes"] - rows["peak_bytes"]) / rows["peak_bytes"]
    worst = error.abs().groupby(rows["impl"]).max()
    lines = [f"Predicted peak against measured, {len(rows)} cells: worst "
             + ", ".join(f"{impl} {100 * e:.2f}%" for impl, e in worst.items()) + "."]
    if group.device != "cpu":
        return "\n".join(lines)
    for run in runs:
        if "cpu_capability" not in run.environment:
            continue
        cpu = CpuDispatch.from_dict(run.environment)
        paths = {}
        for impl in sorted(rows["impl"].unique()):
            try:
                paths[impl] = path_of(kernel_of(impl, "cpu", group.dtype, group.mode, cpu), group.dtype,
                                      group.mode, cpu)
            except NotModelled:
                continue
        lines += ["", f"Counted for the CPU of `{run.path}` ({run.environment.get('cpu_model', '?')}, "
                  f"{cpu.cpu_capability}):", ""] + [f"- {impl}: {path}" for impl, path in paths.items()]
    return "\n".join(lines)


def _failures(rows: pd.DataFrame) -> str:
    bad = rows[rows["status"] != "ok"]
    if bad.empty:
        return "Every cell finished ok."
    table = pd.DataFrame({"cell": [cell_name(r) for _, r in bad.iterrows()], "status": bad["status"],
                          "reason": bad["error"].fillna("–").str.slice(0, 300)})
    return md_table(table)


#: the optimization ladder, from the chapter's loop to the vendor's kernel (issue: which steps close the gap)
LADDER = ("scratch", "scripted", "compiled", "fused", "fused_compiled", "triton", "cudnn")


def _phases(at: pd.DataFrame) -> str | None:
    """Per implementation at one cell: forward, backward and optimizer medians, their sum against the step's."""
    timed = at[at["forward_ms_median"].notna()]
    if timed.empty:
        return None
    parts = timed[["forward_ms_median", "backward_ms_median", "optimizer_ms_median"]].fillna(0.0)
    total = parts.sum(axis=1)
    return md_table(pd.DataFrame({
        "impl": timed["impl"],
        **{f"{p} (ms)": timed[f"{p}_ms_median"].map(lambda v: sig(v) if pd.notna(v) else "–")
           for p in ("forward", "backward", "optimizer")},
        "sum (ms)": total.map(sig), "step (ms)": timed["step_ms_median"].map(sig),
        "sum ÷ step": (total / timed["step_ms_median"]).map(lambda v: f"{v:.3f}"),
        "backward ÷ forward": (parts["backward_ms_median"] / parts["forward_ms_median"]).map(
            lambda v: f"{v:.2f}" if v > 0 else "–"),
    }))


def _ladder(cell_rows: pd.DataFrame) -> str | None:
    """The ladder's rungs at one cell (every status): step time, tokens/s and time relative to cudnn's."""
    rungs = cell_rows[cell_rows["impl"].isin(LADDER)].copy()
    if rungs["impl"].nunique() < 2:
        return None
    rungs["rung"] = rungs["impl"].map(LADDER.index)
    rungs = rungs.sort_values("rung")
    reference = rungs[(rungs["impl"] == REFERENCE_IMPL) & (rungs["status"] == "ok")]
    reference_ms = float(reference["step_ms_median"].iloc[0]) if len(reference) else math.nan
    reference_relative = float(reference["relative_step_median"].iloc[0]) if len(reference) else math.nan
    table = pd.DataFrame({
        "rung": rungs["impl"],
        "step (ms)": [sig(r.step_ms_median) if r.status == "ok" else r.status for r in rungs.itertuples()],
        "tokens/s": rungs["tokens_per_s"].map(lambda v: sig(v) if pd.notna(v) else "–"),
        f"time ÷ {REFERENCE_IMPL}'s": (rungs["step_ms_median"] / reference_ms).map(
            lambda v: f"{sig(v, 3)}×" if pd.notna(v) else "–"),
        # each round over the machine-speed probe around it: the ratio with the machine's drift divided out
        f"÷ {REFERENCE_IMPL}'s, relative to the probe": (rungs["relative_step_median"] / reference_relative).map(
            lambda v: f"{sig(v, 3)}×" if pd.notna(v) else "–"),
        "noise (IQR / median)": (100 * rungs["step_ms_iqr"] / rungs["step_ms_median"]).map(
            lambda v: f"{v:.0f}%" if pd.notna(v) else "–"),
        "peak memory": rungs["peak_bytes"].map(lambda v: human_bytes(v) if pd.notna(v) else "–"),
    })
    return md_table(table)


def _scaling(ok: pd.DataFrame) -> str | None:
    """ddp rows: scaling efficiency per cell, a column per world size."""
    ddp = ok[(ok["mode"] == DDP_MODE) & ok["scaling_efficiency"].notna()]
    if ddp.empty:
        return None
    table = ddp.pivot_table(index=["device", "dtype", "impl", "seq_len", "batch_size", "hidden_size"],
                            columns="world_size", values="scaling_efficiency", aggfunc="first")
    table.columns = [f"{int(w)} rank" + ("s" if w != 1 else "") for w in table.columns]
    text = table.map(lambda v: "–" if pd.isna(v) else f"{v:.2f}").reset_index()
    return md_table(text.rename(columns={"seq_len": "T", "batch_size": "B per rank", "hidden_size": "H"}))


def _packed(ok: pd.DataFrame) -> str | None:
    """Packed rows beside the same cell padded (lengths full): real tokens, and real tokens/s packed ÷ padded."""
    key = [k for k in CELL_KEY if k != "lengths"]
    packed = ok[ok["lengths"] != "full"]
    padded = ok[ok["lengths"] == "full"][[*key, "tokens_per_s"]].rename(columns={"tokens_per_s": "padded"})
    both = packed.merge(padded, on=key)
    if both.empty:
        return None
    table = pd.DataFrame({
        "impl": both["impl"], "dtype": both["dtype"], "amp": both["amp"], "mode": both["mode"],
        "B": both["batch_size"].map(_int), "H": both["hidden_size"].map(_int), "T": both["seq_len"].map(_int),
        "lengths": both["lengths"], "real / padded tokens": [f"{_int(r)} / {_int(p)}" for r, p in
                                                             zip(both["real_tokens"], both["padded_tokens"])],
        "tokens/s packed": both["tokens_per_s"].map(lambda v: f"{v:.0f}"),
        "tokens/s padded": both["padded"].map(lambda v: f"{v:.0f}"),
        "packed ÷ padded": (both["tokens_per_s"] / both["padded"]).map(lambda v: f"{v:.2f}")})
    return md_table(table.sort_values(["lengths", "impl"]))


def _accuracy(runs: Sequence[Run], out_dir: Path) -> list[str]:
    """The section of `lstm-bench check --accuracy`'s files where a run directory holds them (its plot redrawn
    into out_dir)."""
    from bench.grid import ACCURACY_CSV

    found = [run.path / ACCURACY_CSV for run in runs if (run.path / ACCURACY_CSV).exists()]
    if not found:
        return []
    df = pd.concat([read_accuracy(path) for path in found], ignore_index=True)
    plot = plot_accuracy(df, out_dir / "accuracy.png")
    return ["", "## Error along the sequence, per precision", "",
            "`lstm-bench check --accuracy`: each implementation against nn.LSTM in float64, the same weights, input "
            "and initial state, as T grows.", "", f"![accuracy]({plot.name})", "", accuracy_tables(df)]


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Read the runs and write report.md, its PNGs and pivot CSVs into out_dir (default: the one run directory)."""
    combined = combine(run_dirs)
    if out_dir is None:
        if len(combined.runs) > 1:
            raise RunError("several run directories: say where the combined report goes with --out DIR")
        out_dir = combined.runs[0].path
    out_dir = writable_dir(out_dir, "report directory")  # checked before the first plot is drawn
    rows = combined.rows
    ok = rows[rows["status"] == "ok"]
    colors = impl_colors(rows["impl"].unique())
    sources = ", ".join(f"`{run.path}`" for run in combined.runs)
    md = [f"# lstm-bench report: {sources}", "", "## Environment", "", _environment(combined), "", "## Grid", "",
          _grid(rows)]
    if combined.superseded:
        md += ["", f"({combined.superseded} rows were replaced by later rows of the same cell: a resumed run.)"]
    if ok.empty:
        md += ["", "## No results", "", f"**No cell finished ok** ({len(rows)} rows: "
               + ", ".join(f"{n} {s}" for s, n in rows["status"].value_counts().items())
               + "), so there is nothing to plot or tabulate; the reasons are below."]
    long_tables: dict[str, list[pd.DataFrame]] = {}
    for group in groups(ok) if not ok.empty else []:
        part = group.select(ok)
        batch, hidden = d2l_cell(part)
        where = f"B{batch} H{hidden}"
        at = part[(part["batch_size"] == batch) & (part["hidden_size"] == hidden)].sort_values("impl")
        md += ["", f"## {group.title}", "", "### The answer", ""] + _answer(group, part, batch, hidden)
        md += ["", "Across the grid:", "", _across(part)]
        model = _memory_model(group, part, combined.runs)
        md += ["", "### The memory model", "", model] if model else []
        phases = _phases(at)
        if phases:
            md += ["", f"### A step's phases at {where}", "", "Timed apart in the same rounds, the device "
                   "synchronized between them: forward with the loss, backward, optimizer (gradient clipping and "
                   "the update); medians, so their sum need not be the step's median exactly.", "", phases]
        every = group.select(rows)
        ladder = _ladder(every[(every["batch_size"] == batch) & (every["hidden_size"] == hidden)])
        if ladder:
            md += ["", f"### The optimization ladder at {where}", "", "From the chapter's Python loop to the "
                   "vendor's fused kernel, each rung measured in this run: `scripted` and `compiled` run the "
                   "chapter's cell under TorchScript and Inductor; `fused` has one GEMM for the four gates, the "
                   "input projection hoisted out of the loop and the weights' gradients in one GEMM over all "
                   "steps; `fused_compiled` compiles its pointwise math; `triton` (CUDA only) makes each step "
                   "one kernel; `cudnn` is the vendor's.", "", ladder]
        plots = []
        if part["batch_size"].nunique() > 1:
            plots.append(plot_against(part, group, "batch_size", "hidden_size", colors,
                                      out_dir / f"plot-vs-batch-{group.slug}.png"))
        if part["hidden_size"].nunique() > 1:
            plots.append(plot_against(part, group, "hidden_size", "batch_size", colors,
                                      out_dir / f"plot-vs-hidden-{group.slug}.png"))
        plots.append(plot_relative(part, group, out_dir / f"plot-relative-{group.slug}.png"))
        plots.append(plot_winners(part, group, out_dir / f"plot-fastest-{group.slug}.png"))
        plots.append(plot_breakdown(at, group, where, out_dir / f"plot-breakdown-{group.slug}.png"))
        plots.append(plot_first_call(at, group, where, out_dir / f"plot-first-call-{group.slug}.png"))
        plots.append(plot_predicted(part, group, colors, out_dir / f"plot-predicted-{group.slug}.png"))
        md += ["", "### Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p is not None]
        if REFERENCE_IMPL not in set(part["impl"]):
            md += ["", f"(No `{REFERENCE_IMPL}` cells in this group: no plot relative to it.)"]
        md += ["", "### Tables", ""]
        best = winners(part)
        if not best.empty:
            best["cell"] = [f"{w} ×{m:.2f} over {s}" if s else w
                            for w, m, s in zip(best["fastest"], best["margin"], best["second"])]
            map_table = best.pivot(index="batch_size", columns="hidden_size", values="cell")
            map_table.index.name, map_table.columns.name = "batch \\ hidden", None
            md += ["**the fastest implementation per cell, and its margin over the second (step time)**", "",
                   md_table(map_table.reset_index().astype(str)), ""]
        for stem, (title, values) in metrics(part).items():
            table = pivot(part, values)
            long_tables.setdefault(stem, []).append(table.reset_index().assign(
                **{c: getattr(group, c) for c in GROUP}))
            marked = table > 100 * NOISY_FRACTION if stem == "noise-pct" else None
            md += [f"**{title}**" + (f" — bold: above {100 * NOISY_FRACTION:.0f}%" if marked is not None else ""),
                   "", _pivot_md(table, marked, percent=stem.endswith("-pct")), ""]
        md += noise_lines(part)
    for stem, tables in long_tables.items():
        table = pd.concat(tables, ignore_index=True)
        table = table[list(GROUP) + [c for c in table.columns if c not in GROUP]]
        table.to_csv(out_dir / f"pivot-{stem}.csv", index=False)
    if long_tables:
        md += ["", "Pivot tables as CSV (a row per group × impl × batch size, a column per hidden size): "
               + ", ".join(f"[pivot-{stem}.csv](pivot-{stem}.csv)" for stem in long_tables)]
    scaling = _scaling(ok)
    if scaling:
        md += ["", "## Data-parallel scaling", "", "Tokens/s of all ranks ÷ (ranks × the same cell's tokens/s on one "
               "rank): 1.00 is perfect scaling; the batch size is per rank.", "", scaling]
    packed = _packed(ok)
    if packed:
        md += ["", "## Packed against padded", "", "Real tokens/s of a packed batch (each sequence its own length, "
               "the padding not computed) ÷ the same cell with every sequence T long: above 1.00 packing pays.", "",
               packed]
    if not ok.empty:  # where the time goes, the distance to the limit, the cost per time step, memory through a step
        md += profiling_sections(combined.runs, ok, out_dir)
    md += _accuracy(combined.runs, out_dir)
    md += ["", "## Cells that did not finish ok (failed, out of memory, unsupported, non-finite)", "", _failures(rows)]
    notes = rows["notes"].dropna().value_counts()
    if not notes.empty:
        md += ["", "## Notes", ""] + [f"- {note} ({n} cell{'s' if n != 1 else ''})"
                                      for note, n in notes.head(MAX_NOTES).items()]
        md += [f"- … and {len(notes) - MAX_NOTES} more in measurements.csv"] if len(notes) > MAX_NOTES else []
    path = out_dir / REPORT_NAME
    path.write_text("\n".join(md) + "\n")
    return path
