"""accuracy.csv (`lstm-bench check --accuracy`) read back: its plot and its tables, for the check and the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from bench.grid import ACCURACY_COLUMNS, PRECISIONS
from bench.readers.plots import colors, save

PANELS = (("outputs_max_rel", "outputs (y, h, c)"), ("grads_max_rel", "gradients (input, state, weights)"))


def read_accuracy(path: str | Path) -> pd.DataFrame:
    """The rows of an accuracy.csv, in ACCURACY_COLUMNS."""
    df = pd.read_csv(path)
    return df.reindex(columns=list(ACCURACY_COLUMNS))


def plot_accuracy(df: pd.DataFrame, path: Path) -> Path:
    """Max relative error against T, one column of panels per precision (outputs above, gradients below),
    a line per implementation; log-log."""
    ok = df[df["status"] == "ok"]
    precisions = [p for p in PRECISIONS if p in set(ok["precision"])] or list(PRECISIONS[:1])
    impls = sorted(set(ok["impl"]))
    palette = colors(impls)  # the report's colour per implementation
    fig = Figure(figsize=(3.2 * len(precisions) + 1, 6))
    axes = fig.subplots(2, len(precisions), sharex=True, sharey="row", squeeze=False)
    for col, precision in enumerate(precisions):
        for row, (column, label) in enumerate(PANELS):
            ax = axes[row][col]
            for impl in impls:
                line = ok[(ok["impl"] == impl) & (ok["precision"] == precision)].sort_values("seq_len")
                if len(line):
                    ax.plot(line["seq_len"], line[column].clip(lower=1e-12), "o-", color=palette[impl], label=impl)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(precision)
            if row == 1:
                ax.set_xlabel("sequence length T")
            if col == 0:
                ax.set_ylabel(f"max relative error\n{label}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # an implementation missing from the first panel still gets its legend entry
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7) or 1, frameon=False)
    first = ok.iloc[0] if len(ok) else None
    sizes = (f"B{int(first.batch_size)} I{int(first.input_size)} H{int(first.hidden_size)}, "
             if first is not None else "")
    fig.suptitle(f"Error against nn.LSTM in float64 along the sequence ({sizes}normwise: max|diff| / max|ref|)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return save(fig, path)


def accuracy_tables(df: pd.DataFrame) -> str:
    """Markdown: a row per implementation and precision, the max relative error of the outputs and of the
    gradients at each T; then what did not run."""
    ok = df[df["status"] == "ok"]
    seq_lens = sorted(set(ok["seq_len"]))
    header = ("| impl | precision | " + " | ".join(f"outputs T{t}" for t in seq_lens) + " | "
              + " | ".join(f"gradients T{t}" for t in seq_lens) + " |")
    lines = [header, "|---" * (2 + 2 * len(seq_lens)) + "|"]
    order = {p: k for k, p in enumerate(PRECISIONS)}
    for (impl, precision), rows in sorted(ok.groupby(["impl", "precision"]), key=lambda g: (g[0][0],
                                                                                             order.get(g[0][1], 99))):
        at = rows.set_index("seq_len")
        cells = [f"{at.loc[t, column]:.2g}" if t in at.index else "" for column, _ in PANELS for t in seq_lens]
        lines.append(f"| {impl} | {precision} | " + " | ".join(cells) + " |")
    parts = ["Max relative error (normwise: max|diff| / max|nn.LSTM float64|); outputs: the worst of y, h, c; "
             "gradients: the worst of the input's, the initial state's and every weight's.", "\n".join(lines)]
    failed = df[df["status"] != "ok"]
    if len(failed):  # one entry per implementation and reason, its precisions listed
        entries = [f"{impl} in {', '.join(dict.fromkeys(rows['precision']))} ({status}: {error})"
                   for (impl, status, error), rows in failed.groupby(["impl", "status", "error"], sort=True)]
        parts.append("Not run: " + "; ".join(entries))
    return "\n\n".join(parts)


def render_accuracy(out: Path) -> tuple[Path, Path]:
    """accuracy.png and accuracy.md beside out/accuracy.csv, drawn from it."""
    from bench.grid import ACCURACY_CSV

    df = read_accuracy(out / ACCURACY_CSV)
    plot = plot_accuracy(df, out / "accuracy.png")
    md = out / "accuracy.md"
    md.write_text(f"# Error along the sequence\n\n![accuracy]({plot.name})\n\n{accuracy_tables(df)}\n")
    return plot, md
