"""Telemetry counters, updated on the controller's hot path.

Per answered request and per completed action the controller pays a dict lookup, a few integer
increments and one bisect into a fixed latency histogram: no allocation beyond the counters
(created once per model and per GPU). Everything derived (rates, percentiles, snapshots,
Prometheus samples) is computed later from these counters, about once a second.

Counters are cumulative (Prometheus reads them as they are; snapshots take differences), except
the per-model `hist`, `lat_max` and `batch_hist`, which the snapshot builder resets each interval.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import deque

from ..status import Status
from ..transport import schema as s

# Latency buckets (ns): 8 per power of two from 10 us to ~1000 s (a bucket is < 9.1% wide),
# plus the Prometheus-style bounds below so those can be read off exactly. Bucket i counts
# BOUNDS[i-1] < x <= BOUNDS[i]; the last bucket (index len(BOUNDS)) is the overflow.
PROM_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BOUNDS: tuple[int, ...] = tuple(sorted(
    {int(10_000 * 2 ** (i / 8)) for i in range(8 * 27)} | {int(b * 1e9) for b in PROM_BOUNDS_S}))
NBUCKETS = len(BOUNDS) + 1
PROM_INDEX = tuple(BOUNDS.index(int(b * 1e9)) for b in PROM_BOUNDS_S)

MAX_PENDING_EVENTS = 256


def bucket(ns: int) -> int:
    return bisect_left(BOUNDS, ns)


class ModelCounters:
    __slots__ = ("model_id", "requests", "successes", "met", "coldstarts", "failures",
                 "executions", "inferences", "hist", "lat_max", "batch_hist", "prev", "prev_t")

    def __init__(self, model_id: int):
        self.model_id = model_id
        self.requests = 0           # answered, any status
        self.successes = 0
        self.met = 0                # successful within the deadline
        self.coldstarts = 0
        self.failures: dict[int, int] = {}   # status -> count
        self.executions = 0         # Infer actions that succeeded
        self.inferences = 0         # inputs they executed (sum of batch sizes)
        self.hist = [0] * NBUCKETS  # latency of successes, this interval
        self.lat_max = 0
        self.batch_hist: dict[int, int] = {}   # batch size -> Infers, this interval
        self.prev = (0, 0, 0, 0)    # (requests, met, coldstarts, failures) at the last snapshot
        self.prev_t = 0


class GpuCounters:
    __slots__ = ("worker_id", "gpu_id", "infers", "inferences", "exec_ns", "loads", "load_ns",
                 "evicts", "errors", "loaded", "prev", "prev_t")

    def __init__(self, worker_id: int, gpu_id: int):
        self.worker_id = worker_id
        self.gpu_id = gpu_id
        self.infers = 0
        self.inferences = 0
        self.exec_ns = 0
        self.loads = 0
        self.load_ns = 0
        self.evicts = 0
        self.errors = 0
        self.loaded: set[int] = set()   # model ids with weights on this GPU
        self.prev = (0, 0, 0, 0, 0, 0)  # (infers, inferences, exec_ns, loads, evicts, errors)
        self.prev_t = 0


class Recorder:
    """All telemetry counters of one controller. Not thread-safe for writers (the controller's
    event loop is the only writer); readers on other threads copy what they read."""

    def __init__(self):
        self.models: dict[int, ModelCounters] = {}
        self.gpus: dict[tuple[int, int], GpuCounters] = {}
        # cumulative, every model: successful requests' latency, queueing and compute times
        self.request_hist = [0] * NBUCKETS
        self.queue_hist = [0] * NBUCKETS
        self.compute_hist = [0] * NBUCKETS
        self.request_sum = self.queue_sum = self.compute_sum = 0
        # this interval, every model
        self.total_hist = [0] * NBUCKETS
        self.total_max = 0
        self.by_status: dict[int, int] = {}     # this interval
        # events waiting for the next publish: (wall_ns, kind, text, worker, gpu, model)
        self.events: deque = deque(maxlen=MAX_PENDING_EVENTS)
        self.events_dropped = 0

    def model(self, model_id: int) -> ModelCounters:
        m = self.models.get(model_id)
        if m is None:
            m = self.models[model_id] = ModelCounters(model_id)
        return m

    def gpu(self, worker_id: int, gpu_id: int) -> GpuCounters:
        g = self.gpus.get((worker_id, gpu_id))
        if g is None:
            g = self.gpus[(worker_id, gpu_id)] = GpuCounters(worker_id, gpu_id)
        return g

    # ------------------------------------------------------------------ hot path

    def request_done(self, req, status: int, latency: int, now: int, exec_ns: int = 0) -> None:
        m = self.models.get(req.model_id)
        if m is None:
            m = self.model(req.model_id)
        m.requests += 1
        if req.is_coldstart:
            m.coldstarts += 1
        if status == 0:
            m.successes += 1
            if now <= req.deadline:
                m.met += 1
            i = bisect_left(BOUNDS, latency)
            m.hist[i] += 1
            self.total_hist[i] += 1
            self.request_hist[i] += 1
            self.request_sum += latency
            if latency > m.lat_max:
                m.lat_max = latency
            if latency > self.total_max:
                self.total_max = latency
            if exec_ns > 0:
                queued = latency - exec_ns if latency > exec_ns else 0
                self.queue_hist[bisect_left(BOUNDS, queued)] += 1
                self.queue_sum += queued
                self.compute_hist[bisect_left(BOUNDS, exec_ns)] += 1
                self.compute_sum += exec_ns
        else:
            m.failures[status] = m.failures.get(status, 0) + 1
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def action_done(self, worker_id: int, action, result, wall_ns: int = 0) -> None:
        t = type(result)
        gpu_id = getattr(action, "gpu_id", None)
        if gpu_id is None:
            return      # worker-wide actions (LoadModelFromDisk, Reset, ...) have no GPU
        g = self.gpus.get((worker_id, gpu_id))
        if g is None:
            g = self.gpu(worker_id, gpu_id)
        if t is s.InferResult:
            g.infers += 1
            g.inferences += action.batch_size
            g.exec_ns += result.exec_duration
            m = self.models.get(action.model_id)
            if m is None:
                m = self.model(action.model_id)
            m.executions += 1
            m.inferences += action.batch_size
            m.batch_hist[action.batch_size] = m.batch_hist.get(action.batch_size, 0) + 1
        elif t is s.LoadWeightsResult:
            g.loads += 1
            g.load_ns += result.duration
            g.loaded.add(action.model_id)
            self._event(wall_ns, "load", "", worker_id, gpu_id, action.model_id)
        elif t is s.EvictWeightsResult:
            g.evicts += 1
            g.loaded.discard(action.model_id)
            self._event(wall_ns, "evict", "", worker_id, gpu_id, action.model_id)
        elif t is s.ErrorResult:
            g.errors += 1
            if type(action) is s.EvictWeights and result.status == Status.WEIGHTS_NOT_PRESENT:
                g.loaded.discard(action.model_id)

    def _event(self, wall_ns, kind, text, worker_id=-1, gpu_id=-1, model_id=-1) -> None:
        if len(self.events) == MAX_PENDING_EVENTS:
            self.events_dropped += 1
        self.events.append((wall_ns, kind, text, worker_id, gpu_id, model_id))

    # ------------------------------------------------------------------ edge events

    def event(self, wall_ns: int, kind: str, text: str, worker_id: int = -1, gpu_id: int = -1,
              model_id: int = -1) -> None:
        self._event(wall_ns, kind, text, worker_id, gpu_id, model_id)

    def worker_reset(self, worker_id: int) -> None:
        """The worker was lost or reset: its GPU caches are empty now."""
        for (w, _), g in self.gpus.items():
            if w == worker_id:
                g.loaded.clear()
