"""Quantiles from histogram buckets: explicit bounds (linear interpolation, as Prometheus'
`histogram_quantile`) and OTLP exponential buckets (log-linear within a bucket, linear in the zero
bucket). Results always lie inside the bucket that holds the quantile (property-tested)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def histogram_quantile(
    q: float,
    bounds: Sequence[float],
    counts: Sequence[float],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """The `q` quantile of explicit buckets (`counts` has one more entry than `bounds`); None if empty."""
    uppers = [*bounds, math.inf]
    total = sum(counts)
    if total <= 0:
        return None
    rank, below, lower = q * total, 0.0, -math.inf
    for upper, count in zip(uppers, counts, strict=True):
        if count > 0 and below + count >= rank:
            return _within_bucket(lower, upper, (rank - below) / count, minimum, maximum)
        below += count
        lower = upper
    return None


def _within_bucket(
    lower: float, upper: float, fraction: float, minimum: float | None, maximum: float | None
) -> float:
    """Linear interpolation in the explicit bucket `(lower, upper]`, ends as `histogram_quantile`."""
    if lower == -math.inf:
        if minimum is None and upper <= 0:
            return upper
        lower = minimum if minimum is not None else 0.0
    if upper == math.inf:
        if maximum is None:
            return lower
        upper = maximum
    low, high = _narrow(lower, upper, minimum, maximum)
    return min(max(low + (high - low) * fraction, low), high)  # rounding stays in the bucket


def exponential_histogram_quantile(
    q: float,
    *,
    scale: int,
    zero_count: float,
    positive: Mapping[int, float],
    negative: Mapping[int, float] | None = None,
    zero_threshold: float = 0.0,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """The `q` quantile of exponential buckets (`positive[k]`: count of `(base^k, base^(k+1)]`,
    `negative[k]`: of `[-base^(k+1), -base^k)`, base `2^(2^-scale)`); None if empty."""
    negative = negative or {}
    total = zero_count + sum(positive.values()) + sum(negative.values())
    if total <= 0:
        return None
    rank, below = q * total, 0.0
    for index in sorted(negative, reverse=True):
        count = negative[index]
        if count > 0 and below + count >= rank:
            low, high = _narrow(-_bound(index + 1, scale), -_bound(index, scale), minimum, maximum)
            return -_geometric(-high, -low, 1 - (rank - below) / count)
        below += count
    if zero_count > 0 and below + zero_count >= rank:
        low = -zero_threshold if any(negative.values()) else 0.0
        high = zero_threshold if any(positive.values()) else 0.0
        return low + (high - low) * (rank - below) / zero_count
    below += zero_count
    for index in sorted(positive):
        count = positive[index]
        if count > 0 and below + count >= rank:
            low, high = _narrow(_bound(index, scale), _bound(index + 1, scale), minimum, maximum)
            return _geometric(low, high, (rank - below) / count)
        below += count
    return None


def _bound(index: int, scale: int) -> float:
    """`base^index` for base `2^(2^-scale)`."""
    try:
        return float(2.0 ** (index / 2.0**scale))
    except OverflowError:
        return math.inf


def _geometric(low: float, high: float, fraction: float) -> float:
    """The point `fraction` of the way from `low` to `high` on a log scale (linear unless both > 0)."""
    if math.isinf(high):
        return low
    if low <= 0 or high <= low:
        answer = low + (high - low) * fraction
    else:
        answer = float(low * (high / low) ** fraction)
    return min(max(answer, low), high)  # rounding stays in the bucket


def _narrow(low: float, high: float, minimum: float | None, maximum: float | None) -> tuple[float, float]:
    """The bucket `[low, high]` cut to the known `[minimum, maximum]`, when they overlap."""
    narrowed_low = max(low, minimum) if minimum is not None else low
    narrowed_high = min(high, maximum) if maximum is not None else high
    if narrowed_low > narrowed_high:
        return low, high
    return narrowed_low, narrowed_high


# Query building
