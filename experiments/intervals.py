"""Confidence intervals over seeds, and when a change between two rows may be called separated.

A proxy accuracy is a mean over a handful of seeded trainings, so a table that says one row
beats another must say how sure it is. Every trained table uses the same rules:

* a row's mean comes with a 95 % interval: Student's t for fewer than
  :data:`BOOTSTRAP_FROM` seeds (the t-distribution is exact for normal noise and honest about
  how little two or three values say), a studentized (bootstrap-t) bootstrap from
  :data:`BOOTSTRAP_FROM` on, whose tails come from the values rather than from a normal law
  (a plain percentile bootstrap would be a third narrower than t at five values);
* a change between two rows is the difference of their means, with the interval of that
  difference (Welch's t, which does not assume equal variances, or the bootstrap of both rows);
* a change is **separated** when that interval excludes zero, and is never called so when a
  row has fewer than :data:`MIN_SEEDS_TO_SEPARATE` seeds: with two seeds the t quantile is
  12.7 and the standard deviation itself is a guess, so the table says that no change can be
  called separated instead of pretending.

The bootstrap is seeded, so ``experiments show`` prints the same intervals as the run did.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95
BOOTSTRAP_FROM = 5
MIN_SEEDS_TO_SEPARATE = 3
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean (or a difference of means) and its 95 % interval; ``low``/``high`` are None
    where one value gives no interval. ``method`` is ``t``, ``welch``, ``bootstrap`` or ``-``."""

    mean: float
    low: float | None
    high: float | None
    method: str

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` with its 95 % interval (t below :data:`BOOTSTRAP_FROM` values,
    bootstrap from there on; none for a single value).

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("no values to average")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, None, None, "-")
    if len(values) >= BOOTSTRAP_FROM:
        low, high = _bootstrap([values])
        return Interval(mean, low, high, "bootstrap")
    half = _t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, "t")


def difference_interval(values: Sequence[float], reference: Sequence[float]) -> Interval:
    """``mean(values) - mean(reference)`` with its 95 % interval: Welch's t while either row
    has fewer than :data:`BOOTSTRAP_FROM` values, else the bootstrap of both rows.

    Raises:
        ValueError: either row has no values.
    """
    if not values or not reference:
        raise ValueError("no values to compare")
    mean = statistics.fmean(values) - statistics.fmean(reference)
    if min(len(values), len(reference)) < 2:
        return Interval(mean, None, None, "-")
    if min(len(values), len(reference)) >= BOOTSTRAP_FROM:
        low, high = _bootstrap([values, reference])
        return Interval(mean, low, high, "bootstrap")
    var_a, var_b = statistics.variance(values) / len(values), statistics.variance(reference) / len(reference)
    spread = math.sqrt(var_a + var_b)
    if spread == 0:
        return Interval(mean, mean, mean, "welch")
    freedom = (var_a + var_b) ** 2 / (var_a**2 / (len(values) - 1) + var_b**2 / (len(reference) - 1))
    half = _t_quantile(freedom) * spread
    return Interval(mean, mean - half, mean + half, "welch")


def separated(change: Interval, seeds: int, reference_seeds: int) -> bool | None:
    """Whether a change may be called separated: True when its interval excludes zero, False
    when it does not, None when a row has fewer than :data:`MIN_SEEDS_TO_SEPARATE` seeds (no
    verdict either way)."""
    if min(seeds, reference_seeds) < MIN_SEEDS_TO_SEPARATE or change.low is None:
        return None
    return change.excludes_zero()


def too_few_seeds_note(seeds: int) -> str | None:
    """The table's sentence when its rows have too few seeds for any verdict, else None."""
    if seeds >= MIN_SEEDS_TO_SEPARATE:
        return None
    return (f"with n = {seeds} seed{'s' if seeds != 1 else ''} per row no change can be called separated "
            f"(the rule needs n >= {MIN_SEEDS_TO_SEPARATE}: run with --seeds {MIN_SEEDS_TO_SEPARATE} or more)")


def _t_quantile(freedom: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, freedom))


def _bootstrap(rows: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Studentized (bootstrap-t) 95 % interval of the mean (one row) or of the difference of
    means (two rows), each row resampled with replacement :data:`BOOTSTRAP_RESAMPLES` times.

    The percentile bootstrap of a mean is too narrow for a handful of values (at n = 5 it spans
    about 1.75 standard errors where t spans 2.78: a 95 % interval that covers ~85 %); the
    studentized one resamples the t statistic itself, so its tails are those the data show."""
    import numpy as np

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = [np.asarray(row, dtype=float) for row in rows]
    draws = [rng.choice(row, size=(BOOTSTRAP_RESAMPLES, len(row))) for row in samples]
    sign = [1.0, -1.0][: len(samples)]
    estimate = sum(k * row.mean() for k, row in zip(sign, samples))
    error = math.sqrt(sum(row.var(ddof=1) / len(row) for row in samples))
    if error == 0:
        return estimate, estimate
    resampled = sum(k * draw.mean(axis=1) for k, draw in zip(sign, draws))
    errors = np.sqrt(sum(draw.var(axis=1, ddof=1) / draw.shape[1] for draw in draws))
    kept = errors > 0  # a resample of identical values has no spread to studentize by
    t = (resampled[kept] - estimate) / errors[kept]
    tail = (1 - CONFIDENCE) / 2 * 100
    low_t, high_t = np.percentile(t, [tail, 100 - tail])
    return float(estimate - high_t * error), float(estimate - low_t * error)
