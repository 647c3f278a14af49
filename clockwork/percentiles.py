"""Percentiles, defined once for the whole project (code, tests and tools/bench).

Two kinds, because the data comes in two shapes:
- `percentile(samples, q)`: from raw samples, linear interpolation at q x (n - 1) -- numpy's
  default and the original Clockwork's SlidingWindow percentile (INFER4's estimates use it).
- `histogram_percentile(counts, q, bounds, hi)`: from bucket counts (telemetry, logs), the
  nearest rank ceil(n x q) rounded up to its bucket's upper bound, capped by the observed
  maximum `hi` when given.
Both return NaN when there is nothing to take a percentile of.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from itertools import accumulate


def percentile(samples, q: float) -> float:
    """q-th percentile (0..100) of `samples`, linearly interpolated; NaN if empty."""
    v = sorted(samples)
    if not v:
        return math.nan
    pos = q / 100.0 * (len(v) - 1)
    lo = int(pos)
    hi = lo + 1 if lo + 1 < len(v) else lo
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def histogram_percentile(counts, q: float, bounds, hi: float = 0) -> float:
    """q-th percentile (0..100) from bucket counts: counts[i] samples are <= bounds[i] (the
    last count, if there is one more than bounds, is unbounded: `hi`). NaN if no samples."""
    cum = list(accumulate(counts))
    n = cum[-1] if cum else 0
    if n == 0:
        return math.nan
    i = bisect_left(cum, max(1, math.ceil(n * q / 100.0)))
    bound = bounds[i] if i < len(bounds) else (hi or bounds[-1])
    return float(min(bound, hi) if hi else bound)
