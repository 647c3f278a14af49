"""The timed executor: one serial device stream (exec, weights-in, inputs-in or outputs-out).

Tasks wait in a heap ordered by `earliest`. Nothing starts before its earliest, and one task's
op runs at a time (the stream is serial: the next starts only once the previous op's end is
reached). A task that cannot start by its `latest` -- because the clock passed it, or because
the op in flight will only end after it -- fails at once with ACTION_TOO_LATE naming its stage;
there is no retry: the controller planned that window and must learn at once that it missed.

Pure logic: time is the `now` argument of every call. The runtime asks next_time() when it
must call advance() again.
"""
from __future__ import annotations

import heapq

from ..model.backend import PENDING
from ..status import Status

NO_LIMIT = 1 << 62


class Task:
    """One stage of an action. run(now) starts it and returns the op's end time (PENDING if
    unknown yet) or None when it finished (or failed) without occupying the stream;
    fail(status, message, now) reports a window miss, or an exception run() raised. So run()
    must settle its action (answer it, count it finished) only after the last thing that can
    raise: an action is finished exactly once."""
    __slots__ = ("earliest", "latest", "stage", "run", "fail")

    def __init__(self, earliest: int, latest: int, stage: str, run, fail):
        self.earliest = earliest
        self.latest = latest
        self.stage = stage
        self.run = run
        self.fail = fail


class Executor:
    __slots__ = ("name", "_heap", "_seq", "busy_until", "wake_at")

    def __init__(self, name: str):
        self.name = name
        self._heap: list[tuple[int, int, Task]] = []
        self._seq = 0
        self.busy_until = 0          # end of the op in flight (<= now: idle); PENDING: unknown
        self.wake_at = NO_LIMIT      # bookkeeping for the runtime's timer heap

    def __len__(self) -> int:
        return len(self._heap)

    def submit(self, task: Task) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (task.earliest, self._seq, task))

    def next_time(self) -> int | None:
        """When advance() may have work: None if empty or waiting on an op of unknown end."""
        if not self._heap or self.busy_until == PENDING:
            return None
        e = self._heap[0][0]
        return e if e > self.busy_until else self.busy_until

    def advance(self, now: int) -> None:
        """Fail what can no longer make its window, start what is due."""
        heap = self._heap
        while heap:
            busy = self.busy_until
            if busy == PENDING:
                return
            task = heap[0][2]
            start = max(now, busy, task.earliest)
            if start > task.latest:
                heapq.heappop(heap)
                task.fail(Status.ACTION_TOO_LATE,
                          f"{task.stage}: too late: could start at {start}, latest {task.latest} "
                          f"({(start - task.latest) / 1e3:.1f} us late)", now)
                continue
            if start > now:
                return
            heapq.heappop(heap)
            try:
                end = task.run(now)
            except Exception as e:    # a backend bug fails this action, not the whole worker
                task.fail(Status.RUNTIME_ERROR, f"{task.stage}: {type(e).__name__}: {e}", now)
                end = None
            self.busy_until = now if end is None else end

    def completed(self, now: int) -> None:
        """The op in flight (started with an unknown end) has completed at `now`."""
        self.busy_until = now

    def clear(self) -> list[Task]:
        """Drop every queued task (Reset); returns them."""
        tasks = [t for _, _, t in self._heap]
        self._heap.clear()
        self.busy_until = 0
        self.wake_at = NO_LIMIT
        return tasks
