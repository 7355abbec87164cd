"""Whether a difference between configurations is real: intervals, seed-paired tests, Holm's correction.

The seeds of an ablation are few (3 or 5), so every interval uses Student's t, never the normal
approximation; the distributions come from ``scipy.stats``. imloss controls the seeds: runs of two
configurations with the same seed share their initialisation and data order, so their difference is
compared seed by seed (a paired t-test), which removes the seed-to-seed spread both rows share. Where
the seed sets differ, the comparison falls back to Welch's unequal-variance t-test. With m
configurations compared to one baseline, the p-values are adjusted by Holm's step-down method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# scipy.stats is imported in the functions that use it: `imloss runs` and `show` import the report
# package and would pay half a second for it.

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.80


@dataclass(frozen=True)
class Interval:
    """The mean of n values and its ``CONFIDENCE`` interval (NaN bounds for n < 2: no interval)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student's t interval of the mean: mean ± t_{(1+c)/2, n-1} · s / sqrt(n), s the sample std (ddof 1)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    from scipy import stats

    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """A configuration against the baseline: delta = other - baseline, its interval and p-value.

    ``test`` is "paired" (same seeds on both sides, n pairs), "Welch" (n = the two sample sizes) or
    None (a side with fewer than 2 values: no test, NaN numbers).
    """

    test: str | None
    n: tuple[int, ...]
    delta: float
    low: float
    high: float
    p: float

    @property
    def described(self) -> str:
        """How it was tested, e.g. "paired, n = 5" or "Welch, n = 5 / 3"."""
        if self.test is None:
            return "no test (n < 2)"
        return f"{self.test}, n = {' / '.join(str(k) for k in self.n)}"


def compare(baseline: Mapping[int, float], other: Mapping[int, float], confidence: float = CONFIDENCE) -> Comparison:
    """``other`` against ``baseline``, both {seed: value}: paired by seed when the seed sets are equal.

    Paired: d_s = other_s - baseline_s; delta = mean(d), interval mean(d) ± t_{n-1} · sd(d)/sqrt(n),
    p of the t-test of mean(d) = 0 (``scipy.stats.ttest_rel``). Welch: delta = mean(o) - mean(b),
    se = sqrt(s_o²/n_o + s_b²/n_b), df by Welch-Satterthwaite, interval delta ± t_df · se, p of
    ``scipy.stats.ttest_ind(equal_var=False)``. Equal values on every seed give a zero-width interval
    and p = NaN (no spread to test against).
    """
    from scipy import stats

    b = {s: v for s, v in baseline.items() if not math.isnan(v)}
    o = {s: v for s, v in other.items() if not math.isnan(v)}
    level = (1 + confidence) / 2
    if set(b) == set(o) and len(b) >= 2:
        seeds = sorted(b)
        d = np.asarray([o[s] - b[s] for s in seeds])
        n = len(d)
        delta = float(d.mean())
        half = float(stats.t.ppf(level, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
        p = float(stats.ttest_rel([o[s] for s in seeds], [b[s] for s in seeds]).pvalue) if _spread(d) else math.nan
        return Comparison("paired", (n,), delta, delta - half, delta + half, p)
    if len(b) < 2 or len(o) < 2:
        delta = (np.mean(list(o.values())) - np.mean(list(b.values()))) if b and o else math.nan
        return Comparison(None, (len(o), len(b)), float(delta), math.nan, math.nan, math.nan)
    xo, xb = np.asarray(list(o.values())), np.asarray(list(b.values()))
    vo, vb = xo.var(ddof=1) / len(xo), xb.var(ddof=1) / len(xb)
    delta, se = float(xo.mean() - xb.mean()), math.sqrt(vo + vb)
    if not (_spread(xo) or _spread(xb)):
        return Comparison("Welch", (len(xo), len(xb)), delta, delta, delta, math.nan)
    df = (vo + vb) ** 2 / (vo**2 / (len(xo) - 1) + vb**2 / (len(xb) - 1))
    half = float(stats.t.ppf(level, df)) * se
    p = float(stats.ttest_ind(xo, xb, equal_var=False).pvalue)
    return Comparison("Welch", (len(xo), len(xb)), delta, delta - half, delta + half, p)


def _spread(x: np.ndarray) -> bool:
    """Whether values differ by more than rounding: equal values stored as floats (0.94 - 0.89 against
    0.95 - 0.90) differ by 1e-16, which a t-test would read as a certain difference."""
    return bool(np.ptp(x) > 1e-9 * max(1.0, float(np.abs(x).max())))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (NaN ones are not counted and stay NaN).

    Sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) · p_(j)); a row is
    significant at level a when its adjusted p is below a, which keeps the chance of any false
    claim among the m comparisons below a.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def detectable_difference(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest difference a two-sided two-sample t-test of n seeds a side finds with ``power``.

    With a common std ``sd`` (pooled over the configurations) the test statistic of a true difference
    d follows the noncentral t with df = 2n - 2 and noncentrality d / (sd · sqrt(2/n)); d is the root of
    P(|T| > t_{1-a/2, df}) = power. The textbook shortcut (t_{1-a/2} + t_{power}) · sd · sqrt(2/n)
    understates it at few seeds (by 14% at n = 2, 5% at n = 3). A paired design needs less when the
    seeds' effects are shared: this bound is the cautious one.
    """
    from scipy import optimize, stats

    if n < 2 or not sd > 0:
        return math.nan
    df, se = 2 * n - 2, sd * math.sqrt(2 / n)
    critical = float(stats.t.ppf(1 - alpha / 2, df))

    def shortfall(d: float) -> float:
        nc = d / se
        # The far tail (a significant difference of the wrong sign) is ~1e-6 here, NaN where it underflows.
        wrong_sign = float(np.nan_to_num(stats.nct.cdf(-critical, df, nc)))
        return float(stats.nct.sf(critical, df, nc)) + wrong_sign - power

    shortcut = (critical + float(stats.t.ppf(power, df))) * se
    return float(optimize.brentq(shortfall, 0.5 * shortcut, 2 * shortcut))


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """sqrt(sum (n_i - 1) s_i² / sum (n_i - 1)) over the groups with at least two values."""
    sums = [(len(g) - 1, float(np.var(g, ddof=1))) for g in groups if len(g) >= 2]
    dof = sum(k for k, _ in sums)
    return math.sqrt(sum(k * v for k, v in sums) / dof) if dof else math.nan
