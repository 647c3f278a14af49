"""Clock synchronisation between the controller and one worker, and the one place where
timestamps cross between the two clocks (docs/design.md, "Clocks").

Each completed action is a round trip: the controller sent at t0 and received at t3 (its clock),
the worker received at t1 and sent at t2 (its clock). Then
    rtt    = (t3 - t0) - (t2 - t1)
    offset = ((t1 - t0) + (t2 - t3)) / 2      (worker clock minus controller clock)
The sample with the smallest rtt over a sliding window has the least queueing noise, so its
offset is used (the original's min-delta idea); the window lets the estimate follow a drifting
worker clock.

Every action's window leaves the controller through `action_to_worker` and every result comes
back through `result_to_controller`: both return new structs, so the scheduler's own copy of an
action stays in controller time.
"""
from __future__ import annotations

from collections import deque

from msgspec.structs import replace

from .schema import (ClearCacheResult, ErrorResult, EvictWeightsResult, Heartbeat, InferResult,
                     LoadModelFromDiskResult, LoadWeightsResult, WorkerStateResult)

# results by the worker-clock timestamps they carry
_BEGIN_END = (LoadWeightsResult, EvictWeightsResult, LoadModelFromDiskResult)
_RECEIVED_SENT = (ClearCacheResult, WorkerStateResult, ErrorResult)


class ClockSync:
    __slots__ = ("offset", "rtt", "_samples", "_best")

    def __init__(self, window: int = 64):
        self.offset = 0
        self.rtt = 0
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)
        self._best: tuple[int, int] | None = None     # min(self._samples)

    def add(self, t0: int, t1: int, t2: int, t3: int) -> None:
        """One round trip: t0, t3 in controller time, t1, t2 in the worker's. Runs per result:
        the window's minimum is searched again only when the sample leaving it was the best."""
        rtt = (t3 - t0) - (t2 - t1)
        if rtt < 0:  # worker clock stepped or bogus timestamps: ignore the sample
            return
        sample = (rtt, ((t1 - t0) + (t2 - t3)) // 2)
        samples = self._samples
        best = self._best
        leaving = samples[0] if len(samples) == samples.maxlen else None
        samples.append(sample)
        if best is None or (leaving is not None and leaving <= best):
            best = min(samples)
        elif sample < best:
            best = sample
        self._best = best
        self.rtt, self.offset = best

    def to_worker(self, t: int) -> int:
        """Controller time -> worker time. 0 (an open earliest: "any time") stays 0, so actions
        sent that way keep their send order in the worker's executors whatever the estimate."""
        return t + self.offset if t else 0

    def to_controller(self, t: int) -> int:
        """Worker time -> controller time. 0 (a timestamp nobody set) stays 0."""
        return t - self.offset if t else 0

    def action_to_worker(self, action):
        """A copy of `action` with its [earliest, latest] window in the worker's clock (an
        action without a window is returned as it is)."""
        if not hasattr(action, "earliest"):
            return action
        return replace(action, earliest=self.to_worker(action.earliest),
                       latest=self.to_worker(action.latest))

    def result_to_controller(self, result):
        """A copy of `result` with every timestamp in controller time (durations as they are).
        Written out per type: this runs for every result, and a generic loop costs 10x."""
        o = self.offset
        t = type(result)
        if t is InferResult:
            r = result
            return replace(r, received=r.received - o, sent=r.sent - o,
                           copy_input_begin=r.copy_input_begin - o, copy_input_end=r.copy_input_end - o,
                           exec_begin=r.exec_begin - o, exec_end=r.exec_end - o,
                           copy_output_begin=r.copy_output_begin - o,
                           copy_output_end=r.copy_output_end - o)
        if t in _BEGIN_END:
            return replace(result, received=result.received - o, sent=result.sent - o,
                           begin=result.begin - o, end=result.end - o)
        if t in _RECEIVED_SENT:     # (an ErrorResult made by the controller itself has zeros)
            return replace(result, received=self.to_controller(result.received),
                           sent=self.to_controller(result.sent))
        if t is Heartbeat:
            return replace(result, sent=result.sent - o)
        raise TypeError(f"no clock conversion for {t.__name__}")

    def receive(self, result, sent_at: int, now: int):
        """A result of an action sent at `sent_at` and received `now` (controller time): take
        its round trip as a sample, then return it in controller time."""
        if result.received and result.sent:
            self.add(sent_at, result.received, result.sent, now)
        return self.result_to_controller(result)
