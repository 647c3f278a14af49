"""Seeded arrival processes: pure generators of request times, in seconds from the start.

Open-loop processes are generators of absolute arrival times (floats, increasing), so the
workload engine only needs a heap of "next time" per stream and never sleeps per request.
Every open-loop process here is a special case of `piecewise_poisson`: a Poisson process whose
rate is constant over consecutive segments (a bursty process alternates `rate` and 0, a trace
replay uses one segment per trace interval). Because the Poisson process is memoryless,
restarting the exponential clock at every segment boundary is exact, not an approximation.

Closed-loop processes are not time sequences (the next request follows a response), so they
are described by `ClosedLoop`, and the bursty one by a generator of on-windows.

As in the original, per-minute trace counts are *requests per minute*: an interval of any
duration replays the rate `count x scale / 60` requests per second (short intervals speed the
trace up in time without changing its rates).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence


def _check_rate(rate: float) -> None:
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")


def fixed_rate(rate: float, start: float = 0.0) -> Iterator[float]:
    """One request every 1/rate seconds, the first at start + 1/rate (as the original)."""
    _check_rate(rate)
    if rate == 0:
        return
    gap = 1.0 / rate
    n = 1
    while True:
        yield start + n * gap          # multiply, not accumulate: no drift over millions
        n += 1


def poisson(rate: float, seed: int | str, start: float = 0.0) -> Iterator[float]:
    """Poisson open loop: exponential gaps with mean 1/rate."""
    _check_rate(rate)
    if rate == 0:
        return
    expo = random.Random(seed).expovariate
    t = start
    while True:
        t += expo(rate)
        yield t


def piecewise_poisson(segments: Iterable[tuple[float, float]], seed: int | str,
                      start: float = 0.0) -> Iterator[float]:
    """Poisson arrivals whose rate is `rate` during each (duration, rate) segment in turn.

    `segments` may be infinite (e.g. a cycled trace); zero-rate segments are skipped without
    drawing random numbers.
    """
    expo = random.Random(seed).expovariate
    seg_start = start
    for duration, rate in segments:
        _check_rate(rate)
        if duration < 0:
            raise ValueError(f"segment duration must be >= 0, got {duration!r}")
        seg_end = seg_start + duration
        if rate > 0:
            t = seg_start + expo(rate)
            while t < seg_end:
                yield t
                t += expo(rate)
        seg_start = seg_end


def stepped_rates(rates: Iterable[float], period: float) -> Iterator[tuple[float, float]]:
    """Segments holding each rate for `period` seconds (a stepped rate schedule)."""
    for r in rates:
        yield period, r


def bursty_segments(rate: float, burst_s: float, idle_s: float, seed: int | str) -> Iterator[tuple[float, float]]:
    """Alternating (burst, rate) and (idle, 0) segments with exponential lengths.

    Starts at a uniformly random phase of a first burst+idle period, as the original does,
    so that many bursty streams do not all burst together at time 0.
    """
    rng = random.Random(seed)
    burst = rng.expovariate(1.0 / burst_s)
    idle = rng.expovariate(1.0 / idle_s)
    phase = rng.random() * (burst + idle)
    if phase < burst:
        yield burst - phase, rate
        yield idle, 0.0
    else:
        yield burst + idle - phase, 0.0
    while True:
        yield rng.expovariate(1.0 / burst_s), rate
        yield rng.expovariate(1.0 / idle_s), 0.0


def bursty_poisson(rate: float, burst_s: float, idle_s: float, seed: int | str,
                   start: float = 0.0) -> Iterator[float]:
    """Poisson arrivals at `rate` during bursts of mean `burst_s`, silent during idle
    periods of mean `idle_s`. Long-run rate: rate x burst_s / (burst_s + idle_s)."""
    if burst_s <= 0 or idle_s <= 0:
        raise ValueError("burst and idle durations must be > 0")
    return piecewise_poisson(bursty_segments(rate, burst_s, idle_s, f"{seed}/bursts"), seed, start)


def trace_segments(counts: Sequence[float], scale: float = 1.0, interval_s: float = 60.0,
                   start_interval: int = 0, cycle: bool = True) -> Iterator[tuple[float, float]]:
    """One (interval_s, count x scale / 60) segment per trace interval, from start_interval,
    wrapping around at the end of the trace when `cycle` (the original wraps)."""
    n = len(counts)
    if n == 0:
        raise ValueError("a trace needs at least one interval")
    if interval_s <= 0:
        raise ValueError(f"interval duration must be > 0, got {interval_s!r}")
    per_s = scale / 60.0
    i = start_interval % n
    while True:
        yield interval_s, counts[i] * per_s
        i += 1
        if i == n:
            if not cycle:
                return
            i = 0


def random_start_segments(counts: Sequence[float], scale: float, interval_s: float, rng: random.Random,
                          cycle: bool = True) -> Iterator[tuple[float, float]]:
    """trace_segments from a random interval and a random phase within it (the original's
    "randomise" option), so that many replays of one trace do not move in lockstep."""
    start_interval = rng.randrange(len(counts))
    first = interval_s * rng.random()             # what is left of the first interval
    segs = trace_segments(counts, scale, interval_s, start_interval, cycle)
    _, rate0 = next(segs)
    yield first, rate0
    yield from segs


def trace_replay(counts: Sequence[float], seed: int | str, scale: float = 1.0, interval_s: float = 60.0,
                 start_interval: int | None = 0, cycle: bool = True, start: float = 0.0) -> Iterator[float]:
    """Poisson arrivals per trace interval (counts are requests per minute).
    start_interval=None: random start (see random_start_segments)."""
    if start_interval is None:
        segs = random_start_segments(counts, scale, interval_s, random.Random(f"{seed}/start"), cycle)
    else:
        segs = trace_segments(counts, scale, interval_s, start_interval, cycle)
    return piecewise_poisson(segs, seed, start)


def multiply(a: Iterable[tuple[float, float]], b: Iterable[tuple[float, float]]) -> Iterator[tuple[float, float]]:
    """Pointwise product of two piecewise-constant functions given as (duration, value)
    segments, e.g. a trace's rates times a load factor stepped over time. Ends with the
    shorter one."""
    ia, ib = iter(a), iter(b)
    try:
        da, va = next(ia)
        db, vb = next(ib)
        while True:
            d = min(da, db)
            if d > 0:
                yield d, va * vb
            da -= d
            db -= d
            if da <= 0:
                da, va = next(ia)
            if db <= 0:
                db, vb = next(ib)
    except StopIteration:
        return


def geometric_steps(start: float, stop: float, factor: float, op: str) -> list[float]:
    """start, start (op) factor, ... while <= stop: the original's "add"/"mul" schedules for
    rates and SLO factors (it stops once the value exceeds `stop`)."""
    if op not in ("add", "mul"):
        raise ValueError(f"operator must be 'add' or 'mul', got {op!r}")
    if op == "add" and factor <= 0 or op == "mul" and factor <= 1:
        raise ValueError(f"{op} by {factor} never reaches {stop}: the schedule would not end")
    out, v = [], start
    while v <= stop * (1 + 1e-12):
        out.append(v)
        v = v + factor if op == "add" else v * factor
    return out


@dataclass(frozen=True)
class ClosedLoop:
    """Keep `concurrency` requests in flight; stop after max_requests (None: never).
    `jitter_s` spreads the initial requests uniformly over [0, jitter_s] (the original's
    background clients use 10 s)."""
    concurrency: int
    max_requests: int | None = None
    jitter_s: float = 0.0

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"closed loop concurrency must be >= 1, got {self.concurrency}")

    def initial_times(self, seed: int | str, start: float = 0.0) -> list[float]:
        if self.jitter_s <= 0:
            return [start] * self.concurrency
        rng = random.Random(seed)
        return sorted(start + rng.random() * self.jitter_s for _ in range(self.concurrency))


def burst_windows(burst_s: float, idle_s: float, seed: int | str, start: float = 0.0) -> Iterator[tuple[float, float]]:
    """(begin, end) windows during which a bursty closed loop keeps its requests in flight."""
    if burst_s <= 0 or idle_s <= 0:
        raise ValueError("burst and idle durations must be > 0")
    t = start
    for duration, rate in bursty_segments(1.0, burst_s, idle_s, seed):
        if rate > 0:
            yield t, t + duration
        t += duration
