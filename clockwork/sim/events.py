"""The simulated clock and its event heap.

Time is integer ns and moves only when the next event runs. Events at the same time run in the
order they were scheduled (a sequence number breaks ties), so a run is deterministic.
"""
from __future__ import annotations

import heapq

_heappush = heapq.heappush


class EventLoop:
    """Callable as the injected clock: `loop()` is the current simulated time (ns)."""
    __slots__ = ("now", "_heap", "_seq", "events", "stopped")

    def __init__(self, now: int = 0):
        self.now = now
        self._heap: list = []
        self._seq = 0
        self.events = 0           # events run so far (for benchmarks and progress)
        self.stopped = False

    def __call__(self) -> int:
        return self.now

    def at(self, t: int, fn, arg=None) -> None:
        """Run fn(arg) at time t (never in the past: t < now runs at now)."""
        if t < self.now:
            t = self.now
        seq = self._seq = self._seq + 1
        _heappush(self._heap, (t, seq, fn, arg))

    def after(self, delay: int, fn, arg=None) -> None:
        self.at(self.now + delay, fn, arg)

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run(self, until: int, done=None) -> None:
        """Run events up to and including time `until`, or until done() is true (checked after
        each event) or stop() is called. The clock ends at `until` only if it got there."""
        heap, pop = self._heap, heapq.heappop
        self.stopped = False
        ran = 0
        try:
            while heap and heap[0][0] <= until and not self.stopped:
                t, _, fn, arg = pop(heap)
                self.now = t
                ran += 1
                fn(arg)
                if done is not None and done():
                    return
        finally:
            self.events += ran
        if not self.stopped and self.now < until and (not heap or heap[0][0] > until):
            self.now = until

    def stop(self) -> None:
        self.stopped = True
