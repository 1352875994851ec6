"""What every reader's plot shares: one colour per implementation across a report, and how a figure is saved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def colors(impls: Sequence[str]) -> dict[str, str]:
    """A fixed color per implementation across every plot of a report."""
    palette = [f"C{i}" for i in range(10)]
    return {impl: palette[i % 10] for i, impl in enumerate(sorted(impls))}


def save(fig: Figure, path: Path, tight: bool = False) -> Path:
    """The figure as a PNG at the reports' resolution; `tight` where a legend sits outside the axes."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if tight else {}))
    return path
