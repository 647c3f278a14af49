"""Periodic controller stats lines, in the original's format:

    Client throughput=400.8 goodput=398.2 slo=99.35% success=100.00% min=3.6 max=21.8 mean=4.7

goodput counts successes within their SLO (as `cw top`, the metrics and `cw plot` do); slo is
goodput over throughput (SLO attainment).
    W0-GPU0 Infer min=3.32 max=3.32 mean=3.32 e2emean=4.47 e2emax=7.25 throughput=200.6 utilization=0.67 clock=[1380-1380]

Counters are plain attributes updated in place; a line is built only when printed.
"""
from __future__ import annotations

import math


class Summary:
    """min / max / sum / count of durations (ns) in the current interval."""
    __slots__ = ("n", "total", "lo", "hi", "e2e_total", "e2e_hi", "clock_lo", "clock_hi")

    def __init__(self):
        self.reset()

    def reset(self):
        self.n = 0
        self.total = 0
        self.lo = math.inf
        self.hi = 0
        self.e2e_total = 0
        self.e2e_hi = 0
        self.clock_lo = math.inf
        self.clock_hi = 0

    def add(self, duration: int, e2e: int = 0, clock: int = 0):
        self.n += 1
        self.total += duration
        if duration < self.lo:
            self.lo = duration
        if duration > self.hi:
            self.hi = duration
        self.e2e_total += e2e
        if e2e > self.e2e_hi:
            self.e2e_hi = e2e
        if clock:
            if clock < self.clock_lo:
                self.clock_lo = clock
            if clock > self.clock_hi:
                self.clock_hi = clock


class ControllerStats:
    def __init__(self):
        self.requests = 0
        self.successes = 0
        self.met = 0                 # successes within their SLO (goodput)
        self.latency = Summary()
        self.gpu: dict[tuple[int, int], tuple[Summary, Summary]] = {}   # (worker, gpu) -> (LoadW, Infer)
        self.total_requests = 0
        self.total_successes = 0
        self.by_status: dict[int, int] = {}

    def request_done(self, status: int, latency_ns: int, within_slo: bool = False) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status == 0:
            self.successes += 1
            self.met += within_slo
            self.latency.add(latency_ns)

    def action_done(self, worker_id: int, gpu_id: int, is_infer: bool, duration: int, e2e: int,
                    clock: int = 0) -> None:
        pair = self.gpu.get((worker_id, gpu_id))
        if pair is None:
            pair = self.gpu[(worker_id, gpu_id)] = (Summary(), Summary())
        pair[1 if is_infer else 0].add(duration, e2e, clock)

    def lines(self, interval_s: float) -> list[str]:
        """Lines for the interval just ended; resets interval counters."""
        out = []
        for (w, g), pair in sorted(self.gpu.items()):
            for label, s in zip(("LoadW", "Infer"), pair):
                if s.n:
                    out.append(
                        f"W{w}-GPU{g} {label} min={s.lo / 1e6:.2f} max={s.hi / 1e6:.2f} "
                        f"mean={s.total / s.n / 1e6:.2f} e2emean={s.e2e_total / s.n / 1e6:.2f} "
                        f"e2emax={s.e2e_hi / 1e6:.2f} throughput={s.n / interval_s:.1f} "
                        f"utilization={s.total / (interval_s * 1e9):.2f} "
                        f"clock=[{0 if s.clock_lo == math.inf else s.clock_lo}-{s.clock_hi}]")
                s.reset()
        lat = self.latency
        success = 100.0 * self.successes / self.requests if self.requests else 100.0
        slo = 100.0 * self.met / self.requests if self.requests else 100.0
        line = (f"Client throughput={self.requests / interval_s:.1f} goodput={self.met / interval_s:.1f} "
                f"slo={slo:.2f}% success={success:.2f}%")
        if lat.n:
            line += f" min={lat.lo / 1e6:.1f} max={lat.hi / 1e6:.1f} mean={lat.total / lat.n / 1e6:.1f}"
        out.append(line)
        self.total_requests += self.requests
        self.total_successes += self.successes
        self.requests = self.successes = self.met = 0
        lat.reset()
        return out
