"""`lstm-bench compare BASELINE NEW`: a regression gate between two run directories that does not cry wolf.

A cell (same impl, device, dtype, mode and sizes in both runs) is judged on what varies between runs.
`lstm-bench run` times every cell in several fresh processes (bench/workers.py), so the unit is the
process: the ratio of the two runs' typical per-process medians and its 95% interval (Welch's t on
their logs, each side's spread at least its run's typical spread between processes:
bench/readers/stats.py). Each process's median is of its rounds relative to the machine-speed probe
timed around each (measured on this project's quiet 2-core machine at one thread: the probe and the
steps moved 1.5x together between processes, their ratio 1.07x); raw medians where a run has none.
*slower* when the ratio is beyond the threshold and the whole
interval beyond half of it; *faster* likewise; *unchanged* when the interval lies within the
threshold; *noisy* (not judged) when it cannot tell: the rerun list then holds the cell, for
`lstm-bench ab` to settle with more processes. The rounds of one process do not sample what moves
between runs (thread placement, clocks, memory layout, the neighbours): judged on rounds alone, two
runs of one commit differed with p = 1e-68.

Runs of one process (`pytest bench/ --benchmark-only`, older runs) fall back to the rounds:
slower when the median round grew beyond the threshold and the Mann-Whitney U test is significant
(as asv does), noisy when a run's median is itself uncertain beyond `max_median_error`; there a
round counts relative to the machine-speed probe timed around it. A change that slows every cell
shows as the run's common ratio, which gates beyond `max_shift`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench.grid import CELL_KEY, Cell
from bench.instruments.measure import relative_rounds
from bench.readers import stats
from bench.results import ENV_KEYS, Run, environment_differences, process_medians

KEY = CELL_KEY  # what makes two rows the same cell
MIN_SHIFT_CELLS = 5  # the run as a whole is judged (and said to have moved) on at least this many timed cells
#: the probe's median ratio between two runs beyond which `compare` notes that the machine ran at another speed:
#: three default runs whose probes differed by 1.27x differed by up to 6% relative to it at H512 (docs/measuring.md)
PROBE_MOVED_BETWEEN_RUNS = 1.2
#: verdicts, in the order the summary lists them; the first three are of time
VERDICTS = ("slower", "faster", "unchanged", "noisy", "failed", "new", "missing", "unmeasured")
SUITE_TEST = "bench/test_suite.py::test_cell"  # the suite's test; a cell's node id is SUITE_TEST[<cell id>]


@dataclass(frozen=True)
class Thresholds:
    """When a difference counts; the defaults and the noise behind them are in README.md ("Comparing runs")."""

    #: slower when new/base median step time > 1 + time_ratio (faster when < 1 / (1 + time_ratio))
    time_ratio: float = 0.10
    #: ... and the Mann-Whitney U test of the two runs' rounds gives p < alpha
    alpha: float = 0.01
    #: memory grew when new peak_bytes > base peak_bytes * (1 + memory_ratio)
    memory_ratio: float = 0.02
    #: noisy (time not judged) when either run's median round is uncertain by more than this fraction of
    #: itself (its standard error, from the rounds' IQR and count: see median_error_pct)
    max_median_error: float = 0.10
    #: the whole run regressed (every cell, or the machine) when the median ratio of all cells exceeds
    #: 1 + max_shift
    max_shift: float = 0.10
    #: judge the run as a whole at all (not for a re-measurement of flagged cells: they moved by selection)
    judge_shift: bool = True


class EnvironmentMismatch(Exception):
    """The runs come from different environments; the message is one line for the user."""


def check_environments(baseline: Run, new: Run) -> None:
    """EnvironmentMismatch (one line) unless the two runs agree on ENV_KEYS."""
    diffs = environment_differences(baseline.environment, new.environment)
    if diffs:
        what = ", ".join(f"{k} {b!r} vs {n!r}" for k, (b, n) in diffs.items())
        raise EnvironmentMismatch(f"the runs' environments differ ({what}); "
                                  "--allow-env-mismatch compares them anyway")


def cell_id(row: pd.Series, impl: str | None = None) -> str:
    """The cell's id (bench.grid.Cell.id): benchmark.json's param, the suite's test id."""
    return Cell.from_row(row, impl).id


def time_test(base_s: list[float], new_s: list[float]) -> tuple[float, float]:
    """(ratio of median round times new/base, two-sided Mann-Whitney U p-value) of two runs' raw rounds."""
    ratio = float(np.median(new_s) / np.median(base_s))
    return ratio, float(mannwhitneyu(new_s, base_s, alternative="two-sided").pvalue)


def _cells(run: Run, impl_map: dict[str, str]) -> pd.DataFrame:
    """A run's rows, one per cell (the last row wins: a re-run into the same directory appends), impls mapped."""
    df = run.measurements.copy()
    df["source_impl"] = df["impl"]
    if "world_size" in df:
        df["world_size"] = df["world_size"].fillna(1)  # rows written before the column were single-process
    if impl_map:
        stand_ins = df["impl"].isin(list(impl_map))
        replaced = df["impl"].isin(list(impl_map.values())) & ~stand_ins
        df = df[~replaced].copy()  # the stand-in's cells take the place of the run's own cells of that impl
        df["impl"] = df["impl"].map(lambda name: impl_map.get(name, name))
    return df.drop_duplicates(list(KEY), keep="last").reset_index(drop=True)


def median_error_pct(iqr_pct: float, rounds: float) -> float:
    """The standard error of a median of `rounds` rounds whose IQR is iqr_pct of it, in percent: for
    normal rounds sigma = IQR / 1.349 and the median's error is 1.2533 sigma / sqrt(rounds)."""
    return 1.2533 * iqr_pct / 1.349 / math.sqrt(rounds)


def _iqr_pct(rounds_s: list[float]) -> float:
    """The rounds' interquartile range in percent of their median: how much one run's own rounds spread."""
    q25, median, q75 = np.percentile(rounds_s, [25, 50, 75])
    return float(100 * (q75 - q25) / median)


def _ratio(new: float, base: float) -> float:
    return new / base if base and not (pd.isna(base) or pd.isna(new)) else math.nan


def compare_runs(baseline: Run, new: Run, thresholds: Thresholds = Thresholds(),
                 impl_map: dict[str, str] | None = None) -> Comparison:
    """Every cell of either run with its verdict. impl_map {new impl: baseline impl} matches a stand-in
    implementation of the new run (a plug-in, a rewrite) to the baseline's cells of another name."""
    base = _cells(baseline, {})
    news = _cells(new, impl_map or {})
    if impl_map and Path(baseline.path).resolve() == Path(new.path).resolve():
        # one run against itself: only the matched implementations mean anything (side by side in one run)
        base = base[base["impl"].isin(list(impl_map.values()))]
        news = news[news["source_impl"].isin(list(impl_map))]
    merged = base.merge(news, on=list(KEY), how="outer", suffixes=("_base", "_new"), indicator=True)
    floors = {column: tuple(stats.run_spread([process_medians(m) for m in run.measurements[column]])
                            for run in (baseline, new))  # each run's spread between processes, over its cells
              for column in PROCESS_COLUMNS.values()}
    records = []
    for _, row in merged.iterrows():
        rec = {k: row[k] for k in KEY} | {"source_impl": row["source_impl_new"]
                                            if row["_merge"] != "left_only" else row["source_impl_base"]}
        rec |= _compare_cell(row, baseline, new, thresholds, floors)
        records.append(rec)
    cells = pd.DataFrame.from_records(records, columns=[*KEY, "source_impl", *_CELL_FIELDS])
    timed = cells["verdict"] == ""
    cells.loc[timed, "verdict"] = [_time_verdict(row, thresholds) for _, row in cells[timed].iterrows()]
    cells = cells.sort_values(["verdict", *KEY], key=lambda s: s.map(VERDICTS.index) if s.name == "verdict" else s)
    return Comparison(baseline, new, cells.reset_index(drop=True), thresholds, dict(impl_map or {}))


#: between processes, what is judged (timing -> the column of per-process figures), the first both runs have:
#: each process's median step over the probe around it (the machine's speed moved 1.5x between processes on a
#: quiet shared machine, and the step with it), else its raw median step time
PROCESS_COLUMNS = {"between processes, relative to the probe": "relative_step_processes",
                   "between processes": "step_ms_processes"}
_CELL_FIELDS = ("verdict", "memory", "cell_id", "base_ms", "new_ms", "timing", "probe_ratio", "raw_ratio", "time_ratio",
                "ci_low", "ci_high", "base_processes", "new_processes", "p_value", "base_rounds",
                "new_rounds", "base_iqr_pct", "new_iqr_pct", "base_peak_bytes", "new_peak_bytes", "memory_ratio",
                "base_first_step_ms", "new_first_step_ms", "first_step_ratio", "base_startup_ms", "new_startup_ms",
                "startup_ratio", "base_status", "new_status", "note")


def _compare_cell(row: pd.Series, baseline: Run, new: Run, t: Thresholds, floors: dict) -> dict:
    """One merged row -> time test, memory change, first-call times, and the verdict unless it is one of
    time (left "" for _time_verdict)."""
    rec = dict.fromkeys(_CELL_FIELDS, math.nan) | {"memory": "", "note": "", "timing": ""}
    rec["base_status"] = row.get("status_base") if row["_merge"] != "right_only" else ""
    rec["new_status"] = row.get("status_new") if row["_merge"] != "left_only" else ""
    if row["_merge"] == "left_only":
        rec |= {"verdict": "missing", "cell_id": cell_id(row, row["source_impl_base"])}
        return rec
    rec["cell_id"] = cell_id(row, row["source_impl_new"])
    if row["_merge"] == "right_only" or (row["status_base"] != "ok" and row["status_new"] == "ok"):
        rec["verdict"] = "new"
        return rec
    if row["status_new"] != "ok":
        failed = row["status_base"] == "ok"
        rec |= {"verdict": "failed" if failed else "unmeasured", "note": str(row.get("error_new") or "")[:120]}
        return rec
    base_id = cell_id(row, row["source_impl_base"])
    base_s, new_s = baseline.rounds_s.get(base_id), new.rounds_s.get(rec["cell_id"])
    base_p, new_p = baseline.probe_s.get(base_id), new.probe_s.get(rec["cell_id"])
    rec |= {"base_ms": row["step_ms_median_base"], "new_ms": row["step_ms_median_new"],
            "base_iqr_pct": 100 * _ratio(row["step_ms_iqr_base"], row["step_ms_median_base"]),
            "new_iqr_pct": 100 * _ratio(row["step_ms_iqr_new"], row["step_ms_median_new"])}
    rec["probe_ratio"] = _ratio(row.get("probe_ms_median_new"), row.get("probe_ms_median_base"))
    rec["raw_ratio"] = _ratio(rec["new_ms"], rec["base_ms"])
    for timing, column in PROCESS_COLUMNS.items():  # the unit is the process: Welch's t on their medians' logs
        base_m, new_m = (process_medians(row.get(f"{column}_{side}")) for side in ("base", "new"))
        if len(base_m) >= 2 and len(new_m) >= 2:
            e = stats.unpaired(base_m, new_m, floor=floors[column])
            rec |= {"timing": timing, "time_ratio": e.ratio, "ci_low": e.low, "ci_high": e.high,
                    "base_processes": len(base_m), "new_processes": len(new_m),
                    "base_rounds": len(base_s or ()), "new_rounds": len(new_s or ())}
            break
    if not rec["timing"] and base_s and new_s:  # one process a side: the test on the rounds
        rec |= {"base_ms": 1e3 * float(np.median(base_s)), "new_ms": 1e3 * float(np.median(new_s)),
                "base_rounds": len(base_s), "new_rounds": len(new_s), "timing": "as measured"}
        if base_p and new_p:  # each round relative to the machine-speed probe timed around it
            base_s, new_s = relative_rounds(base_s, base_p), relative_rounds(new_s, new_p)
            rec |= {"timing": "relative to the probe", "probe_ratio": float(np.median(new_p) / np.median(base_p))}
        ratio, p = time_test(base_s, new_s)
        rec |= {"time_ratio": ratio, "p_value": p, "base_iqr_pct": _iqr_pct(base_s), "new_iqr_pct": _iqr_pct(new_s)}
    elif not rec["timing"]:
        rec |= {"time_ratio": _ratio(rec["new_ms"], rec["base_ms"]),
                "note": "no raw rounds in benchmark.json: time not tested"}
    rec["verdict"] = ""  # of time: _time_verdict
    rec |= {"base_peak_bytes": row["peak_bytes_base"], "new_peak_bytes": row["peak_bytes_new"],
            "memory_ratio": _ratio(row["peak_bytes_new"], row["peak_bytes_base"])}
    if rec["memory_ratio"] > 1 + t.memory_ratio:
        rec["memory"] = "grew"
    elif rec["memory_ratio"] < 1 - t.memory_ratio:
        rec["memory"] = "shrank"
    elif not math.isnan(rec["memory_ratio"]):
        rec["memory"] = "same"
    for what in ("first_step_ms", "startup_ms"):
        base_v, new_v = row[f"{what}_base"], row[f"{what}_new"]
        rec |= {f"base_{what}": base_v, f"new_{what}": new_v,
                f"{what.removesuffix('_ms')}_ratio": _ratio(new_v, base_v)}
    return rec


def _time_verdict(cell: pd.Series, t: Thresholds) -> str:
    """Between processes: slower / faster / unchanged as bench/readers/stats.py judges the interval, noisy when
    it cannot tell. From one process per side: slower / faster (ratio beyond the threshold and p < alpha),
    noisy, or unchanged."""
    if cell["timing"] in PROCESS_COLUMNS:
        e = stats.Estimate(cell["time_ratio"], cell["ci_low"], cell["ci_high"], cell["base_processes"],
                           cell["new_processes"])
        return stats.judge(e, t.time_ratio) or "noisy"
    errors_pct = [median_error_pct(cell[f"{run}_iqr_pct"], cell[f"{run}_rounds"]) for run in ("base", "new")]
    if any(e > 100 * t.max_median_error for e in errors_pct):  # NaN (no raw rounds) compares False
        return "noisy"
    significant = cell["p_value"] < t.alpha  # False for NaN: without rounds a cell is never slower
    if significant and cell["time_ratio"] > 1 + t.time_ratio:
        return "slower"
    if significant and cell["time_ratio"] < 1 / (1 + t.time_ratio):
        return "faster"
    return "unchanged"


@dataclass
class Comparison:
    """The verdict on every cell, and what the gate makes of them."""

    baseline: Run
    new: Run
    cells: pd.DataFrame
    thresholds: Thresholds
    impl_map: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = {v: int((self.cells["verdict"] == v).sum()) for v in VERDICTS}
        return counts | {"memory grew": int((self.cells["memory"] == "grew").sum())}

    def flagged(self) -> pd.DataFrame:
        """The cells that fail the gate: slower (large and significant), memory grown, or ok before and not now."""
        c = self.cells
        return c[c["verdict"].isin(["slower", "failed"]) | (c["memory"] == "grew")]

    @property
    def shifted(self) -> bool:
        """The whole run moved: the median ratio of every timed cell beyond 1 + max_shift. Not judged when
        fewer than MIN_SHIFT_CELLS were timed, or the new run measured fewer than half the baseline's cells
        (a re-measurement of flagged cells: they moved by selection)."""
        timed = int(self.cells["time_ratio"].notna().sum())
        missing = int((self.cells["verdict"] == "missing").sum())
        return (self.thresholds.judge_shift and timed >= max(MIN_SHIFT_CELLS, missing)
                and self.common_ratio() > 1 + self.thresholds.max_shift)

    @property
    def regressed(self) -> bool:
        return self.shifted or not self.flagged().empty

    def common_ratio(self) -> float:
        """Median time ratio over the cells both runs measured: how much the whole run moved."""
        return float(self.cells["time_ratio"].median())

    def spread_line(self) -> str:
        """The time ratios' range: on an A/A pair (one commit twice) it is the noise a threshold must clear."""
        ratios = self.cells["time_ratio"].dropna()
        if ratios.empty:
            return "no cell timed in both runs"
        probe = self.cells["probe_ratio"].dropna()
        divided = (self.cells["timing"] == "relative to the probe").any()
        divided_out = ", divided out of the one-process cells" if divided else ""
        machine = (f"; the machine-speed probe moved x{probe.min():.2f} to x{probe.max():.2f} (median "
                   f"x{probe.median():.2f}){divided_out}") if len(probe) else "; no probe: times as measured"
        return (f"time ratio new/base over {len(ratios)} cells: min {ratios.min():.3f}, "
                f"median {ratios.median():.3f}, max {ratios.max():.3f}{machine}")

    def rerun_ids(self) -> list[str]:
        """pytest node ids to measure again (`lstm-bench ab --cells FILE`, `pytest $(cat FILE) --benchmark-only`):
        the flagged cells and those between processes that were too noisy to judge, or every timed cell when
        the whole run moved."""
        c = self.cells
        unclear = (c["verdict"] == "noisy") & c["timing"].isin(list(PROCESS_COLUMNS))
        cells = c[c["time_ratio"].notna()] if self.shifted else c[c.index.isin(self.flagged().index) | unclear]
        return [f"{SUITE_TEST}[{cid}]" for cid in cells["cell_id"]]

    def _display(self) -> pd.DataFrame:
        c = self.cells
        return pd.DataFrame({
            "verdict": c["verdict"], "impl": c["impl"], "mode": c["mode"], "dtype": c["dtype"],
            "B": c["batch_size"], "H": c["hidden_size"], "T": c["seq_len"],
            "base_ms": c["base_ms"].round(3), "new_ms": c["new_ms"].round(3),
            "probe": c["probe_ratio"].round(3), "raw": c["raw_ratio"].round(3), "ratio": c["time_ratio"].round(3),
            "95% CI": [f"{lo:.3f}-{hi:.3f}" if not pd.isna(lo) else "-" for lo, hi in zip(c["ci_low"], c["ci_high"])],
            "procs": [f"{b:.0f}/{n:.0f}" if not pd.isna(b) else "-"
                      for b, n in zip(c["base_processes"], c["new_processes"])],
            "p": c["p_value"].map(lambda p: f"{p:.2g}" if not pd.isna(p) else "-"),
            "iqr%": (c["base_iqr_pct"].round(1).astype(str) + "/" + c["new_iqr_pct"].round(1).astype(str)),
            "memory": c["memory"], "peak_MiB": (c["new_peak_bytes"] / 2**20).round(3),
            "mem_ratio": c["memory_ratio"].round(4), "first_ratio": c["first_step_ratio"].round(2),
        })

    def summary_line(self) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items() if n)
        shift = f"the whole run moved x{self.common_ratio():.2f}" if self.shifted else ""
        cells = f"{len(self.flagged())} cell(s)" if not self.flagged().empty else ""
        verdict = f"REGRESSION: {' and '.join(filter(None, (shift, cells)))}" if self.regressed else "no regression"
        return f"{verdict}: {counts}"

    def table(self) -> str:
        """The terminal report: every cell, then the summary."""
        t = self.thresholds
        head = (f"compare {self.baseline.path} -> {self.new.path}: slower/faster beyond x{1 + t.time_ratio:g} "
                f"with the 95% interval between processes beyond x{1 + t.time_ratio / 2:g} (noisy when it cannot "
                f"tell; runs of one process: Mann-Whitney p < {t.alpha:g} on the rounds, noisy when a median is "
                f"uncertain beyond {100 * t.max_median_error:g}%); "
                f"the whole run beyond x{1 + t.max_shift:g}; "
                f"memory beyond +{100 * t.memory_ratio:g}%")
        body = self._display().to_string(index=False, na_rep="-")
        return f"{head}\n{body}\n{self.spread_line()}\n{self._drift_note()}{self.summary_line()}"

    def _drift_note(self) -> str:
        """A warning when at least half of 5+ compared cells moved by half the threshold or more, together; and one
        when the machine-speed probe itself moved by PROBE_MOVED_BETWEEN_RUNS or more between the runs."""
        return self._probe_note() + self._shift_note()

    def _probe_note(self) -> str:
        """Where the machine ran at another speed in one run than in the other (the probe's median ratio), the step
        relative to the probe holds for cells like the probe, not for all: on this project's CPU, cells unlike it
        moved up to 6% where it moved by a quarter (docs/measuring.md, what does not repeat)."""
        probe = self.cells["probe_ratio"].dropna()
        if probe.empty or abs(math.log(probe.median())) < math.log(PROBE_MOVED_BETWEEN_RUNS):
            return ""
        how = "slower" if probe.median() > 1 else "faster"
        return (f"note: the machine-speed probe ran x{probe.median():.2f} {how} in the new run (median cell): the step "
                "relative to it holds for cells like it, but cells unlike it (large hidden sizes, oneDNN at small "
                "batches on this project's CPU) move with the machine by a few percent; compare runs made at one "
                "speed, or confirm with `lstm-bench ab`\n")

    def _shift_note(self) -> str:
        """A warning when at least half of 5+ compared cells moved by half the threshold or more, together."""
        c = self.cells
        between = int(((c["verdict"] == "noisy") & c["timing"].isin(list(PROCESS_COLUMNS))).sum())
        rounds = int((c["verdict"] == "noisy").sum()) - between
        note = (f"note: {between} cell(s) noisy: their processes disagree too much for the interval to say slower, "
                "faster or unchanged; in the rerun list, for `lstm-bench ab --cells` (more processes)\n"
                ) if between else ""
        note += (f"note: {rounds} cell(s) noisy: their rounds spread so wide within a run that the median is "
                 f"uncertain beyond {100 * self.thresholds.max_median_error:g}%, as wide as the change the gate looks "
                 "for; the machine was busy. Measure again on a quiet one\n") if rounds else ""
        common = self.common_ratio()
        if (self.cells["time_ratio"].count() < MIN_SHIFT_CELLS or math.isnan(common)
                or abs(math.log(common)) <= math.log(1 + self.thresholds.time_ratio) / 2):
            return note
        return note + (f"note: the median cell moved x{common:.2f}: a shift shared by most cells is more likely the "
                "machine (load, clocks, another process) than the code unless the probe moved with it; the run "
                f"as a whole gates beyond x{1 + self.thresholds.max_shift:g}\n")

    def markdown(self) -> str:
        """compare.md: the runs, thresholds, summary, flagged cells, every cell, first-call times."""
        t, b_env, n_env = self.thresholds, self.baseline.environment, self.new.environment
        lines = ["# lstm-bench compare", "",
                 f"**{self.summary_line()}**", "",
                 "| | baseline | new |", "| --- | --- | --- |",
                 f"| run | `{self.baseline.path}` | `{self.new.path}` |"]
        for key in ("git_commit", "time_utc", *ENV_KEYS, "cpu_model", "torch_threads"):
            lines.append(f"| {key} | {b_env.get(key, '-')} | {n_env.get(key, '-')} |")
        diffs = environment_differences(b_env, n_env)
        lines += ["", f"Environments differ in {', '.join(diffs)} (compared anyway)." if diffs else "",
                  f"Thresholds: where both runs timed the cell in two or more fresh processes, the unit is the "
                  "process: the ratio of the two runs' typical per-process medians with its 95% interval (Welch's t "
                  "on their logs, bench/readers/stats.py); a cell is slower (faster) when the ratio is beyond "
                  f"x{1 + t.time_ratio:g} (x{1 / (1 + t.time_ratio):.3g}) and its whole interval beyond "
                  f"x{1 + t.time_ratio / 2:g} (x{1 / (1 + t.time_ratio / 2):.3g}), unchanged when the interval lies "
                  "within the threshold, else noisy (not judged: measure again with more processes, or `lstm-bench "
                  "ab`). Each process's median is of its rounds over the machine-speed probe timed around each "
                  "(timing: between processes, relative to the probe; `raw` is the ratio of the raw medians), "
                  "or of the raw rounds where a run has no probe. "
                  f"Runs of one process (`pytest bench/`): a cell is slower (faster) when its median round grew "
                  f"beyond x{1 + t.time_ratio:g} and the Mann-Whitney U test of the two runs' rounds gives p < "
                  f"{t.alpha:g}, unless either median is uncertain beyond {100 * t.max_median_error:g}% (noisy); "
                  "there a round is its time over the probe's around it. "
                  "The whole run regressed when the median ratio of all cells "
                  f"exceeds x{1 + t.max_shift:g}. "
                  f"Its memory grew when peak_bytes rose beyond +{100 * t.memory_ratio:g}%. "
                  "First-call times are shown, never gated."]
        if self.impl_map:
            lines.append("Matched implementations (new = baseline): "
                         + ", ".join(f"`{n}` = `{b}`" for n, b in self.impl_map.items()) + ".")
        note = self._drift_note()
        lines += ["", self.spread_line() + ".", f"\n{note}" if note else "", "", "| verdict | cells |", "| --- | --- |"]
        lines += [f"| {v} | {n} |" for v, n in self.counts().items()]
        flagged = self.flagged()
        if not flagged.empty:
            lines += ["", "## Flagged cells", ""] + [f"- `{cid}`" for cid in flagged["cell_id"]]
        lines += ["", "## Every cell", "", _markdown_table(self._display())]
        first = self.cells.dropna(subset=["base_first_step_ms", "new_first_step_ms"], how="all")
        if not first.empty:
            lines += ["", "## First call (reported, not gated: one sample per run)", "", _markdown_table(pd.DataFrame({
                "cell": first["cell_id"], "base_first_ms": first["base_first_step_ms"].round(1),
                "new_first_ms": first["new_first_step_ms"].round(1), "ratio": first["first_step_ratio"].round(2),
                "base_startup_ms": first["base_startup_ms"].round(1),
                "new_startup_ms": first["new_startup_ms"].round(1),
                "startup_ratio": first["startup_ratio"].round(2)}))]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """The same as compare.md, for machines."""
        cells = json.loads(self.cells.to_json(orient="records"))
        return {"baseline": str(self.baseline.path), "new": str(self.new.path), "thresholds": asdict(self.thresholds),
                "impl_map": self.impl_map, "regressed": self.regressed, "counts": self.counts(),
                "common_ratio": self.common_ratio(), "shifted": self.shifted, "spread": self.spread_line(),
                "flagged": list(self.flagged()["cell_id"]),
                "environment_differences": environment_differences(self.baseline.environment, self.new.environment),
                "cells": cells}


def _markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which this project does not install)."""
    text = df.astype(object).where(df.notna(), "-").astype(str)
    rows = [list(df.columns), ["---"] * len(df.columns), *text.values.tolist()]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def parse_impl_map(items: list[str]) -> dict[str, str]:
    """['NEW=BASE', ...] -> {NEW: BASE}; ValueError on a malformed item."""
    pairs = {}
    for item in items:
        new, sep, base = item.rpartition("=")
        if not sep or not new or not base:
            raise ValueError(f"--match-impl {item!r} is not valid; write NEW_IMPL=BASELINE_IMPL")
        pairs[new] = base
    return pairs


def write_outputs(comparison: Comparison, out_dir: Path, *, json_too: bool = False,
                  rerun_list: Path | None = None) -> list[Path]:
    """compare.md (and compare.json) into out_dir, the flagged cells' node ids into rerun_list; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "compare.md"]
    written[0].write_text(comparison.markdown())
    if json_too:
        written.append(out_dir / "compare.json")
        written[-1].write_text(json.dumps(comparison.to_json(), indent=1, default=str) + "\n")
    if rerun_list is not None:
        rerun_list.parent.mkdir(parents=True, exist_ok=True)
        ids = comparison.rerun_ids()
        rerun_list.write_text("".join(f"{i}\n" for i in ids))
        written.append(rerun_list)
    return written
