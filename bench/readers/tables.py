"""What the readers' tables share: numbers to significant digits, bytes in units, Markdown tables."""

from __future__ import annotations

import pandas as pd


def sig(value: float, digits: int = 3) -> str:
    """A number to `digits` significant digits, with thousands separators for the large."""
    if value is None or pd.isna(value):
        return "–"
    text = f"{value:.{digits}g}"
    return f"{value:,.0f}" if "e+" in text or abs(value) >= 10**digits else text  # 999.7 -> 1,000, not 1e+03


def human_bytes(value: float) -> str:
    """Bytes in B, KiB, MiB or GiB, three significant digits."""
    if value is None or pd.isna(value):
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{sig(value / size)} {unit}"
    return f"{sig(value)} B"


def md_table(df: pd.DataFrame) -> str:
    """A DataFrame (already formatted as text) as a GitHub markdown table."""
    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
