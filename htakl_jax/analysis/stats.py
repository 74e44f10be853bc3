"""Paired comparisons of two training recipes over seeds: interval, power and the words to use.

Arms of a grid share their seeds (initialisation, data order, augmentation), so each seed gives
one paired difference d_s = metric(arm, s) - metric(reference, s). With n seeds, mean m and
sample standard deviation sd (ddof = 1), the two-sided interval is m ± t_{1-a/2, n-1} sd / sqrt(n)
(Student t, n - 1 degrees of freedom). A difference is "detected" only when that interval
excludes 0; otherwise it is "not detected", which says nothing about it being absent: the
interval's width says how large an effect could still hide in it. Arms that share no pairing
(a teacher-free arm against means over teachers) get Welch's interval instead (`welch_stats`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

__all__ = [
    "ENDPOINT_UNITS",
    "PairedStats",
    "WelchStats",
    "paired_comparisons",
    "paired_stats",
    "paired_t_power",
    "seeds_for_power",
    "verdict",
    "welch_stats",
]

# Seeds beyond which `seeds_for_power` gives up (None): more than any grid here could run.
MAX_SEEDS = 1000


@dataclasses.dataclass(frozen=True)
class PairedStats:
    """Summary of n paired differences (in the unit they were given, e.g. points).

    `low`/`high`: the two-sided `confidence` interval of the mean (None for n < 2);
    `seeds_needed`: seeds for a paired t-test (two-sided, at 1 - `confidence`) to detect a true
    difference of `effect` with probability `power`, were the spread the observed `std` (None for
    n < 2 or above MAX_SEEDS).
    """

    n: int
    mean: float
    std: float
    low: float | None
    high: float | None
    confidence: float
    effect: float
    power: float
    seeds_needed: int | None

    @property
    def detected(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_t_power(n: int, std: float, effect: float, alpha: float) -> float:
    """Power of the two-sided paired t-test with n pairs against a true mean `effect`."""
    df = n - 1
    t_crit = scipy_stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n) / std
    return float(scipy_stats.nct.sf(t_crit, df, nc) + scipy_stats.nct.cdf(-t_crit, df, nc))


def seeds_for_power(
    std: float, *, effect: float = 1.0, power: float = 0.8, alpha: float = 0.05
) -> int | None:
    """Smallest n >= 2 with paired t-test power >= `power` for a true difference `effect`
    given a paired-difference spread `std` (same unit); None above MAX_SEEDS."""
    if not (std >= 0 and effect > 0 and 0 < power < 1 and 0 < alpha < 1):
        raise ValueError(
            f"need std >= 0, effect > 0, power and alpha in (0, 1); got {std}, "
            f"{effect}, {power}, {alpha}"
        )
    if std == 0:
        return 2
    for n in range(2, MAX_SEEDS + 1):
        if paired_t_power(n, std, effect, alpha) >= power:
            return n
    return None


def paired_stats(
    diffs: Sequence[float], *, confidence: float = 0.95, effect: float = 1.0, power: float = 0.8
) -> PairedStats:
    """Mean, sample std, Student-t interval and seeds-for-power of paired differences."""
    d = np.asarray(diffs, np.float64)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"paired_stats needs a non-empty 1-D finite sequence, got {diffs!r}")
    n, mean = int(d.size), float(d.mean())
    if n < 2:
        return PairedStats(n, mean, 0.0, None, None, confidence, effect, power, None)
    std = float(d.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    needed = seeds_for_power(std, effect=effect, power=power, alpha=1 - confidence)
    return PairedStats(n, mean, std, mean - half, mean + half, confidence, effect, power, needed)


def verdict(s: PairedStats, digits: int = 2) -> str:
    """ "detected (95% CI [a, b])" when the interval excludes 0, else "not detected (...)";
    "no interval (1 seed)" for a single pair."""
    if s.low is None:
        return f"no interval ({s.n} seed)"
    ci = f"{round(100 * s.confidence):d}% CI [{s.low:.{digits}f}, {s.high:.{digits}f}]"
    return f"{'detected' if s.detected else 'not detected'} ({ci})"


@dataclasses.dataclass(frozen=True)
class WelchStats:
    """mean(a) - mean(b) of two independent samples with its two-sided `confidence` interval
    by Welch's t (unequal variances; `df` the Welch-Satterthwaite degrees of freedom)."""

    n_a: int
    n_b: int
    mean: float
    df: float
    low: float
    high: float
    confidence: float

    @property
    def detected(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


def welch_stats(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> WelchStats:
    """Welch's interval for mean(a) - mean(b), samples of at least 2 finite values each; for
    arms that share no pairing, or whose pairing a summary has averaged away."""
    xa, xb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    for name, x in (("a", xa), ("b", xb)):
        if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)):
            raise ValueError(f"welch_stats: {name} must be 1-D, finite, >= 2 values; got {x!r}")
    r = scipy_stats.ttest_ind(xa, xb, equal_var=False)
    ci = r.confidence_interval(confidence)
    mean = float(xa.mean() - xb.mean())
    low, high = float(ci.low), float(ci.high)
    return WelchStats(xa.size, xb.size, mean, float(r.df), low, high, confidence)


# Endpoint -> (scale to the reported unit, unit, effect for seeds_needed in that unit or None).
ENDPOINT_UNITS = {
    "accuracy": (100.0, "pp", 1.0),
    "teacher_agreement": (100.0, "pp", 1.0),
    "nll": (1.0, "nats", None),
    "kl_teacher_student": (1.0, "nats", None),
}


def paired_comparisons(
    rows: Sequence[Mapping[str, Any]],
    *,
    reference: str,
    endpoints: Sequence[str] = ("accuracy",),
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Every arm minus the `reference` arm, paired by (timesteps, seed), per endpoint.

    `rows`: one mapping per trained student with ``arm`` (a label), ``timesteps``, ``seed`` and
    the endpoint values (fractions for accuracy and agreement, nats for NLL and KL); a row that
    lacks an endpoint is left out of that endpoint's pairs. Returns one record per (arm, T,
    endpoint) with at least one pair: the `PairedStats` fields in the endpoint's unit
    (`ENDPOINT_UNITS`), its ``unit`` and the ``verdict`` words.
    """
    by_key = {(r["arm"], int(r["timesteps"]), int(r["seed"])): r for r in rows}
    out = []
    arms = [a for a in dict.fromkeys(r["arm"] for r in rows) if a != reference]
    for arm in arms:
        for t in sorted({t for a, t, _ in by_key if a == arm}):
            seeds = sorted(s for a, tt, s in by_key if a == arm and tt == t)
            for name in endpoints:
                scale, unit, effect = ENDPOINT_UNITS[name]
                pairs = [(by_key[(arm, t, s)], by_key.get((reference, t, s))) for s in seeds]
                diffs = [
                    scale * (a[name] - b[name])
                    for a, b in pairs
                    if b is not None and name in a and name in b
                ]
                if not diffs:
                    continue
                s = paired_stats(diffs, confidence=confidence, effect=effect or 1.0)
                record = dataclasses.asdict(s) | {
                    "arm": arm,
                    "reference": reference,
                    "timesteps": t,
                    "endpoint": name,
                    "unit": unit,
                    "verdict": verdict(s),
                }
                if effect is None:
                    record["seeds_needed"] = None
                out.append(record)
    return out
