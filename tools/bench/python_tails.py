#!/usr/bin/env python3
"""Python's own tail-latency sources, and what clockwork does about them.

1. Timer slack: Linux may fire a timed wait up to `timerslack_ns` late (50 us by default for
   normal threads). Our event loops wait with select(); the controller and worker set the
   slack to 1 ns (prctl PR_SET_TIMERSLACK). Measured: lateness of 20,000 select() waits of
   200 us, default slack vs 1 ns.
2. Garbage collection: the cyclic GC stops the process to traverse every container object.
   With 4,000 models and their structures alive, a gen-2 pass is long. Both processes call
   gc.freeze() after startup, which moves everything alive into a permanent generation that
   collections skip. Measured: pause per collection while allocating request-like objects with
   a large live heap, with and without freeze.

    python tools/bench/python_tails.py
"""
from __future__ import annotations

import gc
import select
import time

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.transport.sockets import set_timer_slack  # noqa: E402


def wake_lateness(n: int = 20000, wait_s: float = 200e-6) -> np.ndarray:
    late = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        select.select([], [], [], wait_s)
        late[i] = (time.perf_counter() - t0 - wait_s) * 1e6
    return late


class Req:
    __slots__ = ("a", "b", "c", "inputs")

    def __init__(self, i):
        self.a, self.b, self.c, self.inputs = i, i, i, [i]


def gc_pauses(freeze: bool, live: int = 400_000, churn: int = 300_000) -> np.ndarray:
    gc.collect()
    heap = [{"id": i, "pages": [i, i + 1], "name": str(i)} for i in range(live)]   # like model state
    pauses, starts = [], {}

    def cb(phase, info):
        if phase == "start":
            starts["t"] = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - starts["t"]) * 1e6)

    if freeze:
        gc.freeze()
    gc.callbacks.append(cb)
    window = []
    for i in range(churn):             # requests come and go, some linger (queues)
        window.append(Req(i))
        if len(window) > 1000:
            window = window[500:]
    gc.callbacks.remove(cb)
    if freeze:
        gc.unfreeze()
    del heap
    gc.collect()
    return np.array(pauses) if pauses else np.zeros(1)


def full_collections(freeze: bool, live: int = 400_000, n: int = 20) -> np.ndarray:
    heap = [{"id": i, "pages": [i, i + 1], "name": str(i)} for i in range(live)]
    if freeze:
        gc.freeze()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        gc.collect(2)
        times.append((time.perf_counter() - t0) * 1e6)
    if freeze:
        gc.unfreeze()
    del heap
    gc.collect()
    return np.array(times)


def row(name, xs):
    return (f"{name:34s} n={len(xs):6d} p50={np.percentile(xs, 50):8.1f} p99={np.percentile(xs, 99):8.1f} "
            f"p99.9={np.percentile(xs, 99.9):8.1f} max={xs.max():9.1f} us")


def main():
    with open("/proc/self/timerslack_ns") as f:
        default = int(f.read())
    print(f"# timer slack (default {default} ns for this process)")
    set_timer_slack(default)
    print(row("select(200us) late, default slack", wake_lateness()))
    set_timer_slack(1)
    print(row("select(200us) late, slack 1 ns", wake_lateness()))
    print("# garbage collector, 400k live container objects, 300k short-lived requests")
    print(row("GC pause, default", gc_pauses(False)))
    print(row("GC pause, after gc.freeze()", gc_pauses(True)))
    print("# a full (generation 2) collection with that live heap: what an occasional gen-2 pass costs")
    print(row("gc.collect(2), default", full_collections(False)))
    print(row("gc.collect(2), after gc.freeze()", full_collections(True)))


if __name__ == "__main__":
    main()
