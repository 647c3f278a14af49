"""INFER4, the Clockwork scheduler: plan every Infer and LoadWeights with a window, drop what
cannot meet its deadline early, keep GPUs busy with the largest batch that still fits.

Behaviour follows the original (see /work/shared/notes/original-clockwork.md); data structures
differ where that keeps the per-request cost small:

- Exec estimate per (model, compiled batch): percentile (p99) of the last `estimate_window`
  measurements, seeded from the profiled exec_ns; stored as ns x MHz and divided by the GPU's
  last reported clock, as the original does.
- One queue per model, kept in exec-deadline order (arrival order when every request of a model
  has the same SLO, which is the common case; a request with a shorter SLO is inserted ahead,
  so the queue front is always the most urgent request and timeouts need one timer per model).
- Instead of one strategy per (request, batch size) pushed onto every GPU's heap (5 x G heap
  entries per request in the original), each GPU's min-heap holds at most one live entry per
  model: key = front request's exec deadline - estimate of the batch the queue could fill, i.e.
  the latest start of the model's most urgent strategy. Entries are re-pushed when the queue
  reaches a new compiled batch size (key only ever drops then) and corrected lazily when popped
  (the front may have been served by another GPU). Requests are not pinned to GPUs: whichever
  GPU holding the model pops it first serves it, like the original.
- While a GPU's exec executor is expected free before now + schedule_ahead, pop the most urgent
  model: drop front requests that cannot finish by their exec deadline even alone
  (COULD_NOT_START_IN_TIME), then run the batch (compiled size <= max_batch_size) that serves the
  most requests in time; requests ahead of that batch that it cannot include are answered
  CONTROLLER_SKIPPED, as in the original's try_dequeue. The original reached this through its
  strategy heap (the first feasible strategy, then an upgrade); choosing the largest feasible
  batch directly is a deviation that keeps goodput at the GPU's batch-16 capacity under overload.
  A batch of n requests may be padded up to the next compiled size (the worker supports it),
  where the original only formed compiled sizes; deadlines are checked with the padded size.
- Infer window: earliest = max(now, expected start - EARLIEST_LEAD) (the original used now),
  latest = max(now + 1 ms, the batch's earliest SLO deadline - its estimate - 1 ms): the last
  start at which every request of the batch is still answered within its SLO. The original's
  latest (expected start + latest_delta) both refused starts that would still be in time (an
  action reaching a CPU-starved worker 12 ms late, with 90 ms of slack left) and allowed ones
  that finish after the SLO, answered SUCCESS but useless (seen in tools/bench/azure.py).
- Load demand: a model's queued work (requests x batch-1 estimate) while its newest request could
  still be helped by a load (within max_load_slo of arrival and with time left for load + exec).
  A GPU already holding the model serves its share of that demand in proportion to
  default_slo / (the GPU's total queued share) -- the original LoadTracker's capacity rule,
  without its incremental priority sets: demand is re-evaluated over the models with queued
  requests at most every LOAD_INTERVAL (longer when many models wait), and only when something
  changed. GPUs with free load slots choose in order of least expected work (the original
  cycled through GPUs), each taking the neediest model it does not hold, one copy per model
  per pass.
- Failures: an Infer that fails at the worker answers its requests with the worker's code
  (no retry: a window miss means the plan slipped and a retry would rarely meet the deadline),
  except WORKER_LOST, whose requests are re-queued (other GPUs, or a reload, may still make it;
  those already past their exec deadline are answered WORKER_LOST).
- Results: InferResult times (exec_end) must be in controller time (the edge converts them);
  LoadWeightsResult times are not used.
- Evictions never pick a model with an Infer in flight on that GPU (the original could, and the
  Infer then failed with "weights changed").

The edge must call tick() after every batch of events, and again no later than the time it
returned: on_request only queues; batches and loads are formed in tick().
"""
from __future__ import annotations

import heapq
from collections import OrderedDict, deque

from ...status import Status
from ...transport.schema import (EvictWeights, Infer, InferResult, LoadWeights,
                                 LoadWeightsResult, ModelInfo, WorkerState)
from ..scheduler import GpuRef, Request, Scheduler
from .common import DEFAULT_CLOCK_MHZ, Settings, batch_tables, build_gpus, free_pages, output_view

INF = 1 << 62
EARLIEST_LEAD = 1_000_000       # an Infer may start this much before its expected start
LATEST_MIN = 1_000_000          # latest >= now + 1 ms + latest_delta
LOAD_INTERVAL = 100_000         # load decisions at most every 100 us (the original's)

_INFER, _LOAD, _EVICT = 0, 1, 2
_heappush, _heappop, _heapreplace = heapq.heappush, heapq.heappop, heapq.heapreplace


def percentile(samples: list[int], p: float) -> int:
    """The original's SlidingWindow percentile: linear interpolation at p x (n - 1)."""
    v = sorted(samples)
    pos = p / 100.0 * (len(v) - 1)
    lo = int(pos)
    hi = lo + 1 if lo + 1 < len(v) else lo
    return int(v[lo] + (v[hi] - v[lo]) * (pos - lo))


class _Model:
    """Per-model state: queue, estimates, where it is loaded."""
    __slots__ = ("id", "info", "pages", "output_size", "pad", "down", "top", "limit", "est",
                 "windows", "wpos", "thresholds", "sizes", "queue", "items", "gpus", "loading_gpus",
                 "timeout_key", "b1ns", "weights_est", "weights_window", "weights_pos", "wanting")

    def __init__(self, info: ModelInfo, s: Settings):
        self.id = info.model_id
        self.info = info
        self.pages = info.num_pages
        self.output_size = info.output_size
        pad, exec_ns = batch_tables(info)
        self.pad = pad
        self.top = len(pad) - 1
        compiled = sorted(set(pad[1:]))
        # batch sizes used for batching several requests: <= max_batch_size and <= max_exec
        # (the smallest is always allowed, as the original kept batch 1)
        allowed = [b for b in compiled if b <= s.max_batch_size and exec_ns[b] <= s.max_exec]
        self.limit = allowed[-1] if allowed else compiled[0]
        self.thresholds = frozenset(b for b in compiled if b <= self.limit)
        self.sizes = [b for b in compiled if b <= self.limit]     # batch candidates, ascending
        # down[n]: largest compiled size below pad[n] (0 if none): the next smaller candidate
        self.down = [0] * (self.top + 1)
        for n in range(1, self.top + 1):
            smaller = [b for b in compiled if b < pad[n]]
            self.down[n] = smaller[-1] if smaller else 0
        self.est = [e * DEFAULT_CLOCK_MHZ for e in exec_ns]     # ns x MHz, by items n
        self.b1ns = exec_ns[1]
        self.windows = {b: [] for b in compiled}
        self.wpos = {b: 0 for b in compiled}
        self.queue: deque[Request] = deque()
        self.items = 0                     # sum of batch_size over the queue
        self.gpus: list[_Gpu] = []         # GPUs with the weights loaded
        self.loading_gpus: list[_Gpu] = []
        self.timeout_key = INF
        self.weights_est = max(1, info.weights_load_ns)
        self.weights_window: list[int] = []
        self.weights_pos = 0
        self.wanting = False

    def b1(self) -> int:
        """Batch-1 estimate in ns at the nominal clock (for slo_factor and load demand)."""
        return self.b1ns

    def measure(self, items: int, scaled: int, window: int, p: float) -> None:
        b = self.pad[items]
        w = self.windows[b]
        if len(w) < window:
            w.append(scaled)
        else:
            w[self.wpos[b]] = scaled
            self.wpos[b] = (self.wpos[b] + 1) % window
        value = percentile(w, p)
        lo = self.down[b] + 1 if self.down[b] else 1
        for n in range(lo, b + 1):
            self.est[n] = value
        self.b1ns = self.est[1] // DEFAULT_CLOCK_MHZ

    def measure_weights(self, duration: int, window: int, p: float) -> None:
        w = self.weights_window
        if len(w) < window:
            w.append(duration)
        else:
            w[self.weights_pos] = duration
            self.weights_pos = (self.weights_pos + 1) % window
        self.weights_est = max(1, percentile(w, p))


class _Gpu:
    """Per-GPU state as the controller predicts it."""
    __slots__ = ("ref", "index", "worker_id", "gpu_id", "alive", "clock", "exec_free", "infers",
                 "load_free", "loads", "heap", "live", "timer", "loaded", "loading", "busy",
                 "free_pages", "total_pages", "exec_ns", "batches", "items", "load_count",
                 "evict_count", "stats_at", "stats_exec_ns")

    def __init__(self, ref: GpuRef, free_pages: int, now: int):
        self.ref = ref
        self.index = ref.index
        self.worker_id = ref.worker_id
        self.gpu_id = ref.gpu_id
        self.alive = True
        self.clock = DEFAULT_CLOCK_MHZ
        self.exec_free = now                # expected time the exec executor is free
        self.infers = 0                     # Infers in flight
        self.load_free = now
        self.loads = 0                      # LoadWeights in flight
        self.heap: list[tuple[int, int]] = []   # (key, model id), at most one live per model
        self.live: dict[int, int] = {}      # model id -> key of its live heap entry
        self.timer = INF                    # when this GPU's scheduling timer fires
        self.loaded: OrderedDict[int, None] = OrderedDict()   # LRU order, most recent last
        self.loading: set[int] = set()
        self.busy: dict[int, int] = {}      # model id -> Infers in flight on this GPU
        self.free_pages = free_pages
        self.total_pages = ref.total_pages
        self.exec_ns = 0                    # measured exec time, total
        self.batches = 0
        self.items = 0
        self.load_count = 0
        self.evict_count = 0
        self.stats_at = now
        self.stats_exec_ns = 0


class _Pending:
    """An action in flight."""
    __slots__ = ("kind", "gpu", "model", "reqs", "start", "est")

    def __init__(self, kind, gpu, model, reqs, start, est):
        self.kind = kind
        self.gpu = gpu
        self.model = model
        self.reqs = reqs
        self.start = start
        self.est = est


class Infer4Scheduler(Scheduler):
    name = "infer4"

    def __init__(self, config: dict, clock, out):
        super().__init__(config, clock, out)
        self.s = Settings(config)
        self._models: dict[int, _Model] = {}
        self._gpus: dict[int, _Gpu] = {}
        self._next_index = 0
        self._timeouts: list[tuple[int, int]] = []     # (front exec deadline, model id)
        self._gpu_timers: list[tuple[int, int]] = []   # (time, gpu index)
        self._inflight: dict[int, _Pending] = {}
        self._wanting: dict[int, _Model] = {}          # models with queued requests
        self._load_dirty = False
        self._next_load = 0
        self._counts = [0] * 64                        # responses by status code
        self._queued = 0
        self._overloaded = 0
        self._sending = False                          # inside send_action of an Infer
        self._max_clock = DEFAULT_CLOCK_MHZ             # highest GPU clock seen (MHz)

    # ------------------------------------------------------------------ setup

    def add_models(self, models: dict[int, ModelInfo]) -> None:
        """Models loaded while running (a LoadModel after startup)."""
        super().add_models(models)
        for info in models.values():
            self._add_model(info)

    def start(self, models: dict[int, ModelInfo], workers: dict[int, WorkerState]) -> None:
        super().start(models, workers)
        for info in models.values():
            self._add_model(info)
        for worker_id in sorted(workers):
            self._add_worker(worker_id, workers[worker_id])

    def _add_model(self, info: ModelInfo) -> None:
        if info.model_id not in self._models:
            self._models[info.model_id] = _Model(info, self.s)

    def _add_worker(self, worker_id: int, state: WorkerState) -> None:
        for info in state.models:
            self._add_model(info)
        now = self.clock()
        for ref, gs in build_gpus({worker_id: state}, self._next_index):
            g = _Gpu(ref, free_pages(gs, self._models), now)
            self._gpus[ref.index] = g
            self._next_index = ref.index + 1
            for mid in gs.loaded_models:
                m = self._models.get(mid)
                if m is not None:
                    g.loaded[mid] = None
                    m.gpus.append(g)
                    if m.queue:
                        self._push(g, m)
        self._load_dirty = True

    # ------------------------------------------------------------------ requests

    def on_request(self, req: Request) -> None:
        m = self._models.get(req.model_id)
        if m is None:
            self._respond(req, Status.INVALID_REQUEST, f"unknown model {req.model_id}")
            return
        if not 1 <= req.batch_size <= m.top:
            self._respond(req, Status.INVALID_REQUEST,
                          f"batch size {req.batch_size} not in 1..{m.top} for model {m.id}")
            return
        q = m.queue
        if len(q) >= self.s.max_queue_per_model:
            self._overloaded += 1
            self._respond(req, Status.OVERLOADED, "model queue full")
            return
        if req.slo_factor > 0:
            s = self.s
            slo = m.b1ns * req.slo_factor
            if not slo < 3.6e12:            # infinite, or over an hour
                self._respond(req, Status.INVALID_REQUEST, f"slo_factor {req.slo_factor} too large")
                return
            slo = int(slo)
            req.slo = slo
            req.deadline = req.arrival + slo
            req.exec_deadline = req.arrival + max(slo - s.buffer, s.schedule_ahead + s.buffer)
        if not m.gpus:
            req.is_coldstart = True
        dl = req.exec_deadline
        if q and m.gpus and q[-1].exec_deadline <= dl:
            # Admission at arrival. Joining the tail, the request finishes no earlier than if
            # every GPU of the cluster served nothing but this queue, in full batches, from
            # now on. If even that misses its exec deadline, refuse it now: under overload the
            # excess is answered at once instead of near its deadline. (A lower bound, so a
            # request that could still make it is never refused here.)
            lim = m.limit
            rounds = -(-(-(-(m.items + req.batch_size) // lim)) // len(self._gpus))
            if self.clock() + rounds * (m.est[lim] // self._max_clock) > dl:
                self._respond(req, Status.COULD_NOT_START_IN_TIME,
                              "could not start in time (queue ahead of it too long)")
                return
        if not q or q[-1].exec_deadline <= dl:
            q.append(req)
            front = len(q) == 1
        else:
            i = len(q) - 1
            while i > 0 and q[i - 1].exec_deadline > dl:
                i -= 1
            q.insert(i, req)
            front = i == 0
        m.items += req.batch_size
        self._queued += 1
        if len(m.gpus) + len(m.loading_gpus) < len(self._gpus):
            self._load_dirty = True         # a load could help (more) with this request
        if front:
            if dl < m.timeout_key:
                m.timeout_key = dl
                _heappush(self._timeouts, (dl, m.id))
            if not m.wanting:
                m.wanting = True
                self._wanting[m.id] = m
            for g in m.gpus:
                self._push(g, m)
        elif m.items in m.thresholds:
            for g in m.gpus:
                self._push(g, m)

    def _key(self, m: _Model, g: _Gpu) -> int:
        n = m.items if m.items < m.limit else m.limit
        return m.queue[0].exec_deadline - m.est[n if n > 0 else 1] // g.clock

    def _push(self, g: _Gpu, m: _Model) -> None:
        """Offer model `m` to GPU `g` (if its key got more urgent) and make sure `g` wakes."""
        key = self._key(m, g)
        if key < g.live.get(m.id, INF):
            g.live[m.id] = key
            _heappush(g.heap, (key, m.id))
        if g.timer == INF:
            t = g.exec_free - self.s.schedule_ahead
            g.timer = t
            _heappush(self._gpu_timers, (t, g.index))

    def _respond(self, req: Request, status: int, message: str = "", output=None, exec_ns: int = 0):
        if 0 <= status < 64:
            self._counts[status] += 1
        self.out.respond(req, status, message, output, exec_ns)

    # ------------------------------------------------------------------ tick

    def tick(self) -> int | None:
        now = self.clock()
        th = self._timeouts
        while th and th[0][0] <= now:
            key, mid = _heappop(th)
            m = self._models[mid]
            if key != m.timeout_key:
                continue
            m.timeout_key = INF
            q = m.queue
            while q and q[0].exec_deadline <= now:
                r = q.popleft()
                m.items -= r.batch_size
                self._queued -= 1
                self._respond(r, Status.TIMEOUT, "not scheduled before its deadline")
            if q:
                m.timeout_key = q[0].exec_deadline
                _heappush(th, (m.timeout_key, mid))

        gt = self._gpu_timers
        gpus = self._gpus
        while gt and gt[0][0] < now:     # hungry: expected free before now + schedule_ahead
            t, idx = _heappop(gt)
            g = gpus.get(idx)
            if g is None or g.timer != t:
                continue
            g.timer = INF
            self._schedule_gpu(g, now)

        wake = INF
        if self._load_dirty and self._wanting:
            if now >= self._next_load:
                self._schedule_loads(now)
            if self._load_dirty and self._wanting:
                wake = self._next_load
        if th and th[0][0] < wake:
            wake = th[0][0]
        if gt and gt[0][0] < wake:
            wake = gt[0][0]
        if wake >= INF:
            return None
        return wake if wake > now else now + 1

    def _schedule_gpu(self, g: _Gpu, now: int) -> None:
        horizon = now + self.s.schedule_ahead
        heap, live, models = g.heap, g.live, self._models
        while heap:
            t = g.exec_free if g.exec_free > now else now
            if t >= horizon:
                break
            key, mid = heap[0]
            if live.get(mid) != key:
                _heappop(heap)
                continue
            m = models[mid]
            if not m.queue or mid not in g.loaded:
                _heappop(heap)
                del live[mid]
                continue
            true_key = self._key(m, g)
            if true_key > key:          # stale: the front was served elsewhere; re-rank
                _heapreplace(heap, (true_key, mid))
                live[mid] = true_key
                continue
            _heappop(heap)
            del live[mid]
            self._dispatch(m, g, t, now)
            if m.queue:
                key = self._key(m, g)
                live[mid] = key
                _heappush(heap, (key, mid))
        if heap and g.timer == INF:
            t = g.exec_free - self.s.schedule_ahead
            g.timer = t
            _heappush(self._gpu_timers, (t, g.index))

    def _dispatch(self, m: _Model, g: _Gpu, t: int, now: int) -> None:
        """Form one batch of `m` to start on `g` at `t` and send it."""
        q, est, clk = m.queue, m.est, g.clock
        while q:
            r = q[0]
            if t + est[r.batch_size] // clk <= r.exec_deadline:
                break
            q.popleft()
            m.items -= r.batch_size
            self._queued -= 1
            self._respond(r, Status.COULD_NOT_START_IN_TIME, "could not start in time")
        if not q:
            return
        # Pick the batch serving the most requests in time if it starts at t: for each allowed
        # compiled size c, the requests that can finish by t + est(c) are a suffix of the
        # deadline-ordered queue; take up to c items from its start. Requests before that
        # suffix are skipped (CONTROLLER_SKIPPED), as the original skips requests ahead of the
        # strategy it runs; under overload this keeps batches large instead of spending the
        # GPU on small batches of nearly expired requests.
        qlen = len(q)
        best_items, best_skip = 0, 0
        for c in m.sizes:
            finish = t + est[c] // clk
            i = 0
            while i < qlen and q[i].exec_deadline < finish:
                i += 1
            if i == qlen:
                break                   # larger batches finish later still
            items = 0
            j = i
            while j < qlen and items + q[j].batch_size <= c:
                items += q[j].batch_size
                j += 1
            if items > best_items:
                best_items, best_skip = items, i
            if j == qlen:
                break                   # queue exhausted: a larger c cannot take more
        reqs = []
        items = 0
        if best_items == 0:             # the front request alone (larger than any batch limit)
            r = q.popleft()
            items = r.batch_size
            reqs.append(r)
        else:
            for _ in range(best_skip):
                r = q.popleft()
                m.items -= r.batch_size
                self._queued -= 1
                self._respond(r, Status.CONTROLLER_SKIPPED, "skipped for a larger batch")
            while q and items + q[0].batch_size <= best_items:
                r = q.popleft()
                items += r.batch_size
                reqs.append(r)
        m.items -= items
        self._queued -= len(reqs)
        e = est[items] // clk
        earliest = t - EARLIEST_LEAD
        if earliest < now:
            earliest = now
        deadline = reqs[0].deadline
        for r in reqs:
            if r.deadline < deadline:
                deadline = r.deadline
        latest = deadline - e - LATEST_MIN      # the last start that still meets every SLO
        if latest < now + LATEST_MIN:
            latest = now + LATEST_MIN
        aid = next(self.out.action_ids)
        data = []
        complete = True
        for r in reqs:
            r.gpu = g.index
            if complete:
                if r.inputs:
                    data.extend(r.inputs)
                else:
                    complete = False
        if not complete:
            data = ()          # some request came without inputs: the worker generates them all
        self._inflight[aid] = _Pending(_INFER, g, m, reqs, t, e)
        g.exec_free = t + e
        g.infers += 1
        g.batches += 1
        g.items += items
        g.busy[m.id] = g.busy.get(m.id, 0) + 1
        g.loaded.move_to_end(m.id)
        self._sending = True
        try:
            self.out.send_action(g.worker_id, Infer(aid, earliest, latest, m.id, g.gpu_id, items, e),
                                 data, t + e)
        finally:
            self._sending = False

    # ------------------------------------------------------------------ loads

    def _schedule_loads(self, now: int) -> None:
        s = self.s
        horizon = now + s.schedule_ahead
        cands = [g for g in self._gpus.values()
                 if g.loads < s.max_loads_per_gpu and g.load_free < horizon]
        self._load_dirty = False
        if not cands:
            return      # a load result will set _load_dirty again
        wanting = self._wanting
        # a pass costs O(models waiting); space passes out as that grows
        self._next_load = now + LOAD_INTERVAL * max(1, len(wanting) >> 3)
        n_gpus = len(self._gpus)
        max_load_slo = s.max_load_slo
        demand = []                 # (model, queued work, copies)
        share_of: dict[int, float] = {}
        loadable = False
        for mid, m in list(wanting.items()):
            q = m.queue
            if not q:
                m.wanting = False
                del wanting[mid]
                continue
            back = q[-1]
            b1 = m.b1ns
            if back.arrival + max_load_slo <= now or back.exec_deadline <= now + m.weights_est + b1:
                continue            # no queued request could still be helped by a load
            d = m.items * b1
            k = len(m.gpus) + len(m.loading_gpus)
            demand.append((m, d, k))
            if k:
                share = d / k
                for h in m.gpus:
                    share_of[h.index] = share_of.get(h.index, 0.0) + share
                for h in m.loading_gpus:
                    share_of[h.index] = share_of.get(h.index, 0.0) + share
            if k < n_gpus:
                loadable = True
        if not loadable:
            return      # every model that could use a load is on every GPU already
        capacity = s.default_slo
        ranked = []
        for m, d, k in demand:
            if k >= n_gpus:
                continue
            unmet = float(d)
            if k:
                share = d / k
                for h in m.gpus:
                    unmet -= share * min(1.0, capacity / share_of[h.index])
                for h in m.loading_gpus:
                    unmet -= share * min(1.0, capacity / share_of[h.index])
            if unmet > 0.5:
                ranked.append((-unmet, m.id))
        if not ranked:
            return
        ranked.sort()
        # least busy GPUs choose first (expected exec backlog plus queued demand on them), so
        # new copies spread out; ties go to the GPU with the most free pages
        cands.sort(key=lambda g: (max(0, g.exec_free - now) + share_of.get(g.index, 0.0), -g.free_pages))
        chosen: set[int] = set()
        models = self._models
        for g in cands:
            for _, mid in ranked:
                if g.loads >= s.max_loads_per_gpu or g.load_free >= horizon:
                    break
                if mid in chosen or mid in g.loaded or mid in g.loading:
                    continue
                m = models[mid]
                if m.pages <= g.total_pages and self._make_room(g, m, now):
                    self._send_load(g, m, now)
                    chosen.add(mid)
                    self._load_dirty = True     # there may be more to load next pass

    def _make_room(self, g: _Gpu, m: _Model, now: int) -> bool:
        """Evict (models without queued requests, LRU first, then any, LRU) until `m` fits on
        `g`. Models with Infers in flight on `g` are never evicted. False (and no eviction)
        if it cannot fit."""
        need = m.pages - g.free_pages
        if need <= 0:
            return True
        victims = []
        freed = 0
        for idle_only in (True, False):
            for mid in g.loaded:
                if freed >= need:
                    break
                if g.busy.get(mid) or mid in victims:
                    continue
                other = self._models[mid]
                if idle_only and other.queue:
                    continue
                victims.append(mid)
                freed += other.pages
        if freed < need:
            return False
        for mid in victims:
            other = self._models[mid]
            del g.loaded[mid]
            g.live.pop(mid, None)
            other.gpus.remove(g)
            g.free_pages += other.pages
            g.evict_count += 1
            aid = next(self.out.action_ids)
            self._inflight[aid] = _Pending(_EVICT, g, other, None, now, 0)
            self.out.send_action(g.worker_id, EvictWeights(aid, 0, INF, mid, g.gpu_id))
        return True

    def _send_load(self, g: _Gpu, m: _Model, now: int) -> None:
        s = self.s
        start = g.load_free if g.load_free > now else now
        e = m.weights_est
        latest = max(now + LATEST_MIN + s.latest_delta, start + s.latest_delta)
        aid = next(self.out.action_ids)
        g.free_pages -= m.pages
        g.loading.add(m.id)
        m.loading_gpus.append(g)
        g.loads += 1
        g.load_count += 1
        g.load_free = start + e
        self._inflight[aid] = _Pending(_LOAD, g, m, None, start, e)
        self.out.send_action(g.worker_id, LoadWeights(aid, now, latest, m.id, g.gpu_id, e),
                             (), start + e)

    # ------------------------------------------------------------------ results

    def on_result(self, worker_id: int, action, result, data: list) -> None:
        p = self._inflight.pop(result.action_id, None)
        if p is None:
            return          # unknown or already handled (e.g. its worker was declared lost)
        if p.kind == _INFER:
            self._infer_result(p, result, data)
        elif p.kind == _LOAD:
            self._load_result(p, result)
        # evictions: pages were freed when sent; an error (weights not present) changes nothing

    def _infer_result(self, p: _Pending, result, data: list) -> None:
        g, m, reqs = p.gpu, p.model, p.reqs
        now = self.clock()
        g.infers -= 1
        left = g.busy[m.id] - 1
        if left:
            g.busy[m.id] = left
        else:
            del g.busy[m.id]
        if type(result) is InferResult:
            s = self.s
            clock = (result.gpu_clock + result.gpu_clock_before) // 2
            if result.gpu_clock > 0 and g.alive:
                g.clock = result.gpu_clock
                if g.clock > self._max_clock:
                    self._max_clock = g.clock     # fastest clock seen: admission's lower bound
            if clock <= 0:
                clock = g.clock
            items = 0
            for r in reqs:
                items += r.batch_size
            m.measure(items, result.exec_duration * clock, s.estimate_window, s.estimate_percentile)
            g.exec_ns += result.exec_duration
            # correct the expected free time by how late (or early) this one finished
            if g.infers == 0:
                g.exec_free = result.exec_end
            else:
                delta = result.exec_end - (p.start + p.est)
                g.exec_free += delta if delta > -EARLIEST_LEAD else -EARLIEST_LEAD
            self._rearm(g)
            out = output_view(data)
            size = m.output_size
            expected = items * size
            if out is not None and len(out) < expected:
                msg = f"worker returned {len(out)} output bytes, expected {expected}"
                for r in reqs:
                    self._respond(r, Status.ERROR, msg)
                return
            off = 0
            dur = result.exec_duration
            for r in reqs:
                n = r.batch_size * size
                self._respond(r, Status.SUCCESS, "", out[off:off + n] if out is not None else None, dur)
                off += n
            return
        # an ErrorResult: the action did not run (or failed); the GPU frees up earlier
        if g.infers == 0:
            if g.exec_free > now:
                g.exec_free = now
        else:
            g.exec_free = max(now, g.exec_free - p.est)
        self._rearm(g)
        status = getattr(result, "status", Status.ERROR)
        message = getattr(result, "message", "")
        if status == Status.WORKER_LOST and not self._sending:
            self._requeue(reqs, now, message)   # (a send that failed at once is not retried)
        else:
            for r in reqs:
                self._respond(r, status, message)

    def _requeue(self, reqs: list[Request], now: int, message: str) -> None:
        for r in reversed(reqs):
            m = self._models[r.model_id]
            if r.exec_deadline <= now:
                self._respond(r, Status.WORKER_LOST, message or "worker lost")
                continue
            q = m.queue
            i = 0
            while i < len(q) and q[i].exec_deadline < r.exec_deadline:
                i += 1
            q.insert(i, r)
            m.items += r.batch_size
            self._queued += 1
            r.gpu = -1
            if i == 0:
                if r.exec_deadline < m.timeout_key:
                    m.timeout_key = r.exec_deadline
                    _heappush(self._timeouts, (r.exec_deadline, m.id))
                if not m.wanting:
                    m.wanting = True
                    self._wanting[m.id] = m
                for g in m.gpus:
                    self._push(g, m)
        self._load_dirty = True

    def _rearm(self, g: _Gpu) -> None:
        """The expected free time moved earlier: make sure the GPU's timer is not too late."""
        if g.heap and g.alive:
            t = g.exec_free - self.s.schedule_ahead
            if t < g.timer:
                g.timer = t
                _heappush(self._gpu_timers, (t, g.index))

    def _load_result(self, p: _Pending, result) -> None:
        g, m = p.gpu, p.model
        now = self.clock()
        g.loads -= 1
        g.loading.discard(m.id)
        if g in m.loading_gpus:
            m.loading_gpus.remove(g)
        self._load_dirty = True
        ok = type(result) is LoadWeightsResult
        if ok:
            s = self.s
            m.measure_weights(result.duration, s.estimate_window, s.estimate_percentile)
            if g.loads == 0 and g.load_free > now:
                g.load_free = now          # (result.end is in worker time: not converted)
        else:
            if g.loads == 0 and g.load_free > now:
                g.load_free = now
            ok = getattr(result, "status", None) == Status.WEIGHTS_ALREADY_PRESENT
            if not ok:
                g.free_pages += m.pages
        if ok and g.alive:
            g.loaded[m.id] = None
            m.gpus.append(g)
            if m.queue:
                self._push(g, m)

    # ------------------------------------------------------------------ workers

    def on_worker_lost(self, worker_id: int) -> None:
        super().on_worker_lost(worker_id)
        lost = [g for g in self._gpus.values() if g.worker_id == worker_id]
        for g in lost:
            g.alive = False
            del self._gpus[g.index]
            for mid in g.loaded:
                m = self._models.get(mid)
                if m is not None and g in m.gpus:
                    m.gpus.remove(g)
            for mid in g.loading:
                m = self._models.get(mid)
                if m is not None and g in m.loading_gpus:
                    m.loading_gpus.remove(g)
            g.heap.clear()
            g.live.clear()
        # anything still in flight there (the edge should have failed it already)
        for aid in [a for a, p in self._inflight.items() if p.gpu.worker_id == worker_id]:
            p = self._inflight.pop(aid)
            if p.kind == _INFER:
                p.gpu.infers -= 1
                self._requeue(p.reqs, self.clock(), "worker lost")
        self._load_dirty = True

    def on_worker_joined(self, worker_id: int, state: WorkerState) -> None:
        super().on_worker_joined(worker_id, state)
        self._add_worker(worker_id, state)

    # ------------------------------------------------------------------ stats

    def estimate(self, model_id: int, batch_size: int, gpu_index: int | None = None) -> int:
        """Current exec estimate (ns) of `batch_size` items of a model, at a GPU's clock."""
        m = self._models[model_id]
        clock = self._gpus[gpu_index].clock if gpu_index is not None else DEFAULT_CLOCK_MHZ
        return m.est[batch_size] // clock

    def stats(self) -> dict:
        now = self.clock()
        gpus = []
        for g in self._gpus.values():
            # measured exec time over a window of at least a second (several callers may ask)
            elapsed = now - g.stats_at
            util = (g.exec_ns - g.stats_exec_ns) / elapsed if elapsed > 0 else 0.0
            if elapsed >= 1_000_000_000:
                g.stats_at, g.stats_exec_ns = now, g.exec_ns
            gpus.append({
                "index": g.index, "name": g.ref.name, "worker_id": g.worker_id, "gpu_id": g.gpu_id,
                "utilization": round(util, 4), "infers_in_flight": g.infers,
                "loads_in_flight": g.loads, "backlog_ns": max(0, g.exec_free - now),
                "clock_mhz": g.clock, "free_pages": g.free_pages, "total_pages": g.total_pages,
                "models_loaded": len(g.loaded), "batches": g.batches, "requests_batched": g.items,
                "loads": g.load_count, "evictions": g.evict_count,
            })
        queues = {mid: len(m.queue) for mid, m in self._models.items() if m.queue}
        return {
            "scheduler": self.name,
            "queued": self._queued,
            "queues": queues,
            "models_waiting": len(queues),
            "actions_in_flight": len(self._inflight),
            "overloaded": self._overloaded,
            "responses": {Status(c).name.lower(): n for c, n in enumerate(self._counts)
                          if n and c in Status._value2member_map_},
            "gpus": gpus,
        }
