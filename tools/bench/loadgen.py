"""Shared pieces of the reliability benchmarks (overload.py, soak.py): emulated capacity, an
open-loop sender that counts every answer, and RSS sampling of the processes involved.

Capacity of one model on G emulated GPUs = G x 16 / exec(batch 16): the most requests per
second the GPUs can finish when every batch is full (the profile is the emulated truth).
"""
from __future__ import annotations

import os
import time
from collections import Counter, deque

from clockwork.client.api import Client
from clockwork.model.format import load_spec
from clockwork.percentiles import percentile
from clockwork.status import Status


def capacity(model_dir, model: str, gpus: int, max_batch: int = 16) -> float:
    """Requests/s that `gpus` emulated GPUs finish for `model` with full batches."""
    spec = load_spec(model_dir / model)
    b = max(x for x in spec.exec_ns if x <= max_batch)
    return gpus * b / (spec.exec_ns[b] / 1e9)


def rss_kib(pid: int) -> int:
    """Resident set size of a process (KiB), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class OpenLoop:
    """Sends Infers at a fixed rate whatever the answers (open loop), tallying every answer.

    `answered` counts callbacks, which the client runs exactly once per request (an answer,
    or NO_ANSWER when its timeout passes), so sent - answered is what is still outstanding and
    `statuses[NO_ANSWER]` is what never got an answer.
    """

    def __init__(self, client: Client, model_id: int, rate: float, slo_ns: int, timeout_s: float = 30.0):
        self.client = client
        self.model_id = model_id
        self.gap = 1.0 / rate
        self.slo_ns = slo_ns
        self.timeout_s = timeout_s
        self.sent = 0
        self.answered = 0
        self.statuses: Counter = Counter()
        self.good = 0                       # success within the SLO (client-measured)
        # seconds, the most recent answers only: memory stays flat however long the run
        self.reject_latency: deque[float] = deque(maxlen=50_000)
        self.ok_latency: deque[float] = deque(maxlen=50_000)

    def _done(self, resp, data, latency_s):
        self.answered += 1
        st = resp.status
        self.statuses[st] += 1
        if st == Status.SUCCESS:
            if latency_s * 1e9 <= self.slo_ns:
                self.good += 1
            self.ok_latency.append(latency_s)
        else:
            self.reject_latency.append(latency_s)

    def run(self, duration_s: float, every_s: float = 0.0, on_tick=None) -> None:
        """Send for duration_s; on_tick(elapsed_s) runs every every_s seconds if given, and
        ends the run early by returning True."""
        c = self.client
        start = time.perf_counter()
        nxt = start
        next_tick = start + every_s if on_tick else float("inf")
        end = start + duration_s
        cb = self._done
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            while nxt <= now:          # catch up in a burst if we fell behind
                c.infer_async(self.model_id, cb, slo_ns=self.slo_ns, timeout_s=self.timeout_s)
                self.sent += 1
                nxt += self.gap
            if now >= next_tick:
                if on_tick(now - start):
                    break
                next_tick += every_s
            c.poll(max(0.0, min(nxt, end) - time.perf_counter()))

    def drain(self, timeout_s: float) -> int:
        return self.client.drain(timeout_s)


pct = percentile      # (soak.py and overload.py import it from here)


def pids_of(cluster) -> dict[str, int]:
    """name -> pid of every process a LocalCluster started, plus this one (the client)."""
    out = {"client": os.getpid()}
    if cluster.controller is not None:
        out["controller"] = cluster.controller.pid
    for i, p in enumerate(cluster.worker_procs):
        out[f"worker{i}" if len(cluster.worker_procs) > 1 else "worker"] = p.pid
    return out
