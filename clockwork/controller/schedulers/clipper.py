"""clipper: the fifo baseline with Clipper's adaptive batching (NSDI 2017), the second baseline
of the paper's comparison.

Clipper has no admission control and no deadlines of its own; what it adds over a plain queue is
a per-model batch size tuned by AIMD against the latency SLO: after a batch whose execution
stayed within the SLO of its requests the largest batch grows by one, after one that did not it
shrinks by 10%. Everything else (routing, loading, LRU eviction, one Infer per GPU at a time,
queues that grow without bound under overload) is fifo's. The limit starts at 1, as Clipper's
does, and never exceeds max_batch_size or the model's largest compiled batch."""
from __future__ import annotations

from ...transport.schema import InferResult
from .fifo import FifoScheduler

BACKOFF = 0.9      # Clipper's multiplicative decrease


class ClipperScheduler(FifoScheduler):
    name = "clipper"

    def __init__(self, config, clock, out):
        super().__init__(config, clock, out)
        self._ceiling: dict[int, int] = {}      # model id -> largest batch it may ever use

    def _model(self, info):
        super()._model(info)
        mid = info.model_id
        if mid not in self._ceiling:
            self._ceiling[mid] = self._limit[mid]
            self._limit[mid] = 1

    def on_result(self, worker_id, action, result, data):
        entry = self._inflight.get(result.action_id)
        if entry is not None and entry[0] == "infer" and type(result) is InferResult and entry[3]:
            mid, reqs = entry[2], entry[3]
            slo = min(r.slo for r in reqs)
            limit = self._limit[mid]
            if result.exec_duration <= slo:
                self._limit[mid] = min(self._ceiling[mid], limit + 1)
            else:
                self._limit[mid] = max(1, int(limit * BACKOFF))
        super().on_result(worker_id, action, result, data)

    def stats(self):
        st = super().stats()
        st["batch_limits"] = dict(sorted(self._limit.items())[:16])
        return st
