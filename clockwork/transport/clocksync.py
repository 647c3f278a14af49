"""Clock synchronisation between the controller and one worker.

Each completed action is a round trip: the controller sent at t0 and received at t3 (its clock),
the worker received at t1 and sent at t2 (its clock). Then
    rtt    = (t3 - t0) - (t2 - t1)
    offset = ((t1 - t0) + (t2 - t3)) / 2      (worker clock minus controller clock)
The sample with the smallest rtt over a sliding window has the least queueing noise, so its
offset is used (the original's min-delta idea). Windows are converted to worker time before
sending and result timestamps back to controller time after receiving.
"""
from __future__ import annotations

from collections import deque


class ClockSync:
    __slots__ = ("offset", "rtt", "_samples", "_window")

    def __init__(self, window: int = 64):
        self.offset = 0
        self.rtt = 0
        self._window = window
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)

    def add(self, t0: int, t1: int, t2: int, t3: int) -> None:
        rtt = (t3 - t0) - (t2 - t1)
        if rtt < 0:  # worker clock stepped or bogus timestamps: ignore the sample
            return
        self._samples.append((rtt, ((t1 - t0) + (t2 - t3)) // 2))
        best = min(self._samples)
        self.rtt, self.offset = best

    def to_worker(self, t: int) -> int:
        """Controller time -> worker time. 0 (an open earliest: "any time") stays 0, so actions
        sent that way keep their send order in the worker's executors whatever the estimate."""
        return t + self.offset if t else 0

    def to_controller(self, t: int) -> int:
        return t - self.offset
