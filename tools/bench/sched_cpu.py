#!/usr/bin/env python3
"""Scheduler CPU per request, the policy alone (no sockets, no simulator): a fake clock, an
Outbox that records, and results fed back at their expected end. Prints wall microseconds per
request for the whole loop (policy + this small harness), so it is an upper bound on the
policy's own cost; the project's goal for the whole controller is <= 20 us per request.

    python tools/bench/sched_cpu.py --models 100 --gpus 16
    python tools/bench/sched_cpu.py --models 1000 --gpus 4 --cold     # paging: loads and evictions
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.controller.scheduler import Request  # noqa: E402
from clockwork.controller.schedulers import make_scheduler  # noqa: E402
from clockwork.controller.simulator import MS, models_from_profile  # noqa: E402
from clockwork.transport.schema import (EvictWeights, EvictWeightsResult, GpuState, Infer,  # noqa: E402
                                        InferResult, LoadWeights, LoadWeightsResult, WorkerState)


class Out:
    def __init__(self):
        self.action_ids = itertools.count(1)
        self.sent = []
        self.answered = 0

    def send_action(self, worker_id, action, data=(), expected_end=0):
        self.sent.append((worker_id, action))

    def respond(self, req, status, message="", output=None, exec_ns=0):
        self.answered += 1


class Clock:
    now = 0

    def __call__(self):
        return self.now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--models", type=int, default=100, help="resnet50 copies")
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=0, help="requests/s (default: ~ capacity)")
    ap.add_argument("--cold", action="store_true", help="GPUs start empty (loads on demand)")
    a = ap.parse_args()
    models = {m.model_id: m for m in models_from_profile("h200", ["resnet50"], copies=a.models)}
    clock, out = Clock(), Out()
    sched = make_scheduler(a.scheduler, {}, clock, out)
    pages = 1376
    workers = {}
    for w in range(a.gpus):
        loaded, used = [], 0
        if not a.cold:
            for m in models.values():
                if used + m.num_pages <= pages:
                    loaded.append(m.model_id)
                    used += m.num_pages
        workers[w] = WorkerState(16 << 20, [GpuState(0, pages, pages - used, 1 << 29, 1 << 29, loaded)],
                                 list(models.values()))
    sched.start(models, workers)
    rate = a.rate or a.gpus * 1400
    dt = int(1e9 / rate)
    pending = []
    output = bytes(16 * 4000)
    t0 = time.perf_counter()
    for i in range(a.requests):
        clock.now += dt
        while pending and pending[0][0] <= clock.now:
            end, _, w, act = heapq.heappop(pending)
            t = type(act)
            if t is Infer:
                res = InferResult(act.action_id, 0, 0, 0, 0, end - act.expected_ns, end, act.expected_ns,
                                  0, 0, 1980, 1980)
                sched.on_result(w, act, res, [output])
            elif t is LoadWeights:
                sched.on_result(w, act, LoadWeightsResult(act.action_id, 0, 0, 0, end, act.expected_ns), [])
            elif t is EvictWeights:
                sched.on_result(w, act, EvictWeightsResult(act.action_id, 0, 0, 0, end), [])
            sched.tick()
        sched.on_request(Request(i, None, i, i % a.models, 1, clock.now, 100 * MS, []))
        sched.tick()
        for w, act in out.sent:
            end = max(getattr(act, "earliest", 0), clock.now) + getattr(act, "expected_ns", 0)
            heapq.heappush(pending, (end, act.action_id, w, act))
        out.sent.clear()
    elapsed = time.perf_counter() - t0
    st = sched.stats()
    print(f"{a.scheduler}: {a.models} models, {a.gpus} GPUs, {'cold' if a.cold else 'preloaded'}, "
          f"{rate:.0f} r/s: {elapsed / a.requests * 1e6:.1f} us/request (policy + harness), "
          f"answered {out.answered}/{a.requests}")
    print({k: v for k, v in st.items() if k not in ("gpus", "queues")})


if __name__ == "__main__":
    main()
