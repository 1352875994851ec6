"""The statistics of "did it get slower?", with the process as the unit (`compare` and `ab` share them).

The rounds of one process do not sample what moves between processes (thread placement, clock
frequency, memory layout, the neighbours), so a test on them alone is overconfident: two runs of one
commit differ by p = 1e-68. Here each side is a few per-process median step times, and the question
is answered on their logs with Student's t (Kalibera & Jones, ISMM 2013: the variance that dominates
is between processes, so that is the level to sample and to test):

- `paired`: pair k of each side was measured back to back (`lstm-bench ab`): t on the differences;
- `unpaired`: two runs, each with its own processes (`lstm-bench compare`): Welch's t.

`judge` turns an estimate into a verdict with threshold t: slower when the ratio new/base exceeds
1 + t and its whole 95% interval lies above 1 + t/2 (large, and surely more than half the threshold);
faster likewise below 1 / (1 + t) and 1 / (1 + t/2); unchanged when the whole interval lies within
[1 / (1 + t), 1 + t]; otherwise None: the samples cannot tell yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
#: a spread between processes: (standard deviation of log times, its degrees of freedom)
Spread = tuple[float, int]


@dataclass(frozen=True)
class Estimate:
    """new / base as a ratio of typical (geometric mean) per-process times, with its confidence interval."""

    ratio: float
    low: float
    high: float
    base_n: int
    new_n: int

    @property
    def known(self) -> bool:
        """An interval exists (at least two samples where it needs them)."""
        return not math.isnan(self.low)


def _mean_sd(logs: Sequence[float]) -> tuple[float, float]:
    n = len(logs)
    mean = sum(logs) / n
    return mean, (math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1)) if n > 1 else math.nan)


def _t(df: float, confidence: float) -> float:
    from scipy.stats import t as student_t  # scipy is slow to import: only when judging

    return float(student_t.ppf(0.5 + confidence / 2, df))


def paired(base: Sequence[float], new: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """base[k] and new[k] measured as pair k: Student t on log(new[k] / base[k]); NaN interval below 2 pairs."""
    d = [math.log(n / b) for b, n in zip(base, new)]
    if not d:
        return Estimate(math.nan, math.nan, math.nan, len(base), len(new))
    mean, sd = _mean_sd(d)
    if len(d) < 2:
        return Estimate(math.exp(mean), math.nan, math.nan, len(d), len(d))
    half = _t(len(d) - 1, confidence) * sd / math.sqrt(len(d))
    return Estimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(d), len(d))


def unpaired(base: Sequence[float], new: Sequence[float], confidence: float = CONFIDENCE,
             floor: tuple[Spread, Spread] = ((0.0, 0), (0.0, 0))) -> Estimate:
    """Two independent samples of per-process times: Welch's t on their logs; NaN interval below 2 on a side.

    `floor` is each side's run-wide spread between processes, (sd of log times, its degrees of
    freedom), over all its cells (`run_spread`). A side's spread is its own or its run's,
    whichever is larger, with that estimate's degrees of freedom. Three processes estimate their own
    spread on two degrees of freedom, and one that came out small by chance makes the interval
    falsely narrow; a run's 50 cells estimate it on 100.
    """
    if not base or not new:
        return Estimate(math.nan, math.nan, math.nan, len(base), len(new))
    sides = []
    for values, (floor_sd, floor_df) in zip((base, new), floor):
        mean, sd = _mean_sd([math.log(x) for x in values])
        own = (sd, len(values) - 1) if len(values) > 1 else (math.nan, 0)
        sd, df = max(own, (floor_sd, floor_df)) if floor_df else own
        sides.append((mean, sd**2 / len(values) if df else math.nan, df))
    (mb, vb, db), (mn, vn, dn) = sides
    ratio = math.exp(mn - mb)
    if not (db and dn):
        return Estimate(ratio, math.nan, math.nan, len(base), len(new))
    se = math.sqrt(vb + vn)
    if se == 0:
        return Estimate(ratio, ratio, ratio, len(base), len(new))
    df = (vb + vn) ** 2 / (vb**2 / db + vn**2 / dn)  # Welch-Satterthwaite
    half = _t(df, confidence) * se
    return Estimate(ratio, ratio * math.exp(-half), ratio * math.exp(half), len(base), len(new))


def run_spread(samples: Sequence[Sequence[float]]) -> Spread:
    """The spread between processes typical of a run's cells: the median over its cells (those with two or more
    processes) of the standard deviation of their log per-process times, and the degrees of freedom of them all;
    (0, 0) when there is none. The median, so that a few cells a burst of load hit do not widen every interval."""
    sds, df = [], 0
    for values in samples:
        if len(values) >= 2:
            sds.append(_mean_sd([math.log(v) for v in values])[1])
            df += len(values) - 1
    return (sorted(sds)[len(sds) // 2], df) if sds else (0.0, 0)


def judge(estimate: Estimate, threshold: float) -> str | None:
    """slower, faster or unchanged when the interval says so; None when it cannot tell (or there is none)."""
    if not estimate.known:
        return None
    if estimate.low > 1 + threshold / 2 and estimate.ratio > 1 + threshold:
        return "slower"
    if estimate.high < 1 / (1 + threshold / 2) and estimate.ratio < 1 / (1 + threshold):
        return "faster"
    if estimate.low >= 1 / (1 + threshold) and estimate.high <= 1 + threshold:
        return "unchanged"
    return None


def between_pct(values: Sequence[float]) -> float:
    """The spread between processes: the sample standard deviation of their log times, in percent (about the
    coefficient of variation); NaN below two."""
    if len(values) < 2:
        return math.nan
    return 100 * _mean_sd([math.log(v) for v in values])[1]


def typical_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The confidence interval of the typical (geometric mean) per-process time; NaN below two processes."""
    if len(values) < 2:
        return math.nan, math.nan
    mean, sd = _mean_sd([math.log(v) for v in values])
    half = _t(len(values) - 1, confidence) * sd / math.sqrt(len(values))
    return math.exp(mean - half), math.exp(mean + half)


#: a cell has settled when about two standard errors of its processes' typical figure (2 sd / sqrt(n), the sd of
#: their logs) are within this fraction of it: until then `lstm-bench run` adds a process (bench/workers.py) that
#: times such cells only, up to --max-processes, and the report does not call the cell settled. Three default runs'
#: medians of 3 processes each agreed within 5% in 43 of 54 cells;
#: the cells that missed had processes 5-30% apart (a bimodal fused_compiled cell: 8.4-11.4 relative), where a
#: median of three lands on either mode. With up to 5 (2 more, timing 15-30 cells each) three runs agreed within
#: 5% in 50 of 54, the worst at x1.079 (was x1.133), for 114-215 s more a run. With the C allocator steady
#: (bench/instruments/malloc.py) and rows pooled over rounds: 54 of 54, the worst at x1.049, 24-32 cells added.
SETTLED_WITHIN = 0.025


def settle_pct(values: Sequence[float]) -> float:
    """How closely a cell's per-process figures pin their typical value: two standard errors (2 sd / sqrt(n) of their
    logs), in percent; NaN below two."""
    return 2 * between_pct(values) / math.sqrt(len(values)) if len(values) >= 2 else math.nan


def settled(values: Sequence[float]) -> bool:
    """Whether a cell's per-process figures pin their typical value within SETTLED_WITHIN (see there)."""
    return len(values) >= 2 and settle_pct(values) / 100 <= SETTLED_WITHIN


#: when `lstm-bench run` picks the cells an added process times again (bench/workers.py unsettled), a cell's own
#: spread between processes is pooled with the run's typical one as if that had been seen in this many more
#: processes: three processes estimate a spread on 2 degrees of freedom, and three that agree by chance would settle a
#: cell whose processes spread as widely as the run's others (the run's cells spread 2-4% between processes alike on
#: the project's CPU; three default runs' per-cell spreads: docs/measuring.md).
PRIOR_DF = 4


def pooled_settle_pct(values: Sequence[float], typical_sd: float) -> float:
    """settle_pct with the cell's spread (sd of its logs) pooled with `typical_sd`, the run's (PRIOR_DF); NaN below
    two."""
    if len(values) < 2:
        return math.nan
    df = len(values) - 1
    own = between_pct(values) / 100
    sd = math.sqrt((df * own**2 + PRIOR_DF * typical_sd**2) / (df + PRIOR_DF))
    return 200 * sd / math.sqrt(len(values))


def typical_sd(samples: Sequence[Sequence[float]]) -> float:
    """The spread between processes typical of a run's cells: the middle one (the lower of two middles, never a mean
    of them) of the sds of their logs, over cells with two or more processes; 0 when there is none."""
    sds = sorted(_mean_sd([math.log(v) for v in values])[1] for values in samples if len(values) >= 2)
    return sds[(len(sds) - 1) // 2] if sds else 0.0
