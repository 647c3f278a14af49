"""INFER4, the Clockwork scheduler: plan every Infer and LoadWeights with a window, drop what
cannot meet its deadline early, keep GPUs busy with the largest batch that still fits.

docs/design.md ("INFER4") describes it and where it deviates from the original, and why. This
module keeps the queues, the per-GPU heaps and the event handling; the parts with one job each:
estimates.py (exec and load time estimates), batching.py (batch sizes, batch choice, Infer
windows), load_planning.py (load demand, eviction victims).

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
- While a GPU's exec executor is expected free before now + dispatch_ahead, pop the most urgent
  model: drop front requests that cannot finish by their exec deadline even alone
  (COULD_NOT_START_IN_TIME), then run the batch batching.choose_batch picks.
- Admission at arrival: a request that would miss its exec deadline even if every GPU served
  only its model's queue, in full batches, from now on, is refused at once.
- Loads: GPUs with free load slots choose in order of least expected work (the original cycled
  through GPUs), each taking the neediest model it does not hold, one copy per model per pass.
- Failures: an Infer that fails at the worker answers its requests with the worker's code
  (no retry: a window miss means the plan slipped and a retry would rarely meet the deadline),
  except WORKER_LOST, whose requests are re-queued (other GPUs, or a reload, may still make it;
  those already past their exec deadline are answered WORKER_LOST).
- Results: every time in a result (exec_end) is in controller time (the edge converts them);
  LoadWeightsResult times are not used.

The edge must call tick() after every batch of events, and again no later than the time it
returned: on_request only queues; batches and loads are formed in tick().
"""
from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import MutableMapping, Sequence
from typing import Callable, ClassVar

from ...limits import MAX_SLO_NS
from ...status import Status
from ...transport.schema import (EvictWeights, Infer, InferResult, LoadWeights,
                                 LoadWeightsResult, ModelInfo, WorkerState)
from ..scheduler import GpuRef, Outbox, Request, Scheduler
from .batching import EARLIEST_LEAD, LATEST_MIN, batch_sizes, choose_batch, infer_window
from .common import DEFAULT_CLOCK_MHZ, Settings, build_gpus, ceil_div, free_pages, output_view
from .estimates import Estimates
from .load_planning import (DIRECT_LOAD_AFTER, ShareBound, eviction_victims, forget_emptied, helpable,
                            load_latest, next_load_pass, rank_demand)

INF = 1 << 62

_INFER, _LOAD, _EVICT = 0, 1, 2
_heappush, _heappop, _heapreplace = heapq.heappush, heapq.heappop, heapq.heapreplace


_batching: dict[tuple, tuple] = {}     # (profile's compiled sizes, settings) -> (sizes, thresholds, compiled)


class _Model(Estimates):
    """Per-model state: queue, where it is loaded, and (the base class) its estimates."""
    __slots__ = ("id", "info", "pages", "output_size", "limit", "thresholds", "sizes", "queue",
                 "items", "gpus", "loading_gpus", "timeout_key", "wanting")

    def __init__(self, info: ModelInfo, s: Settings):
        super().__init__(info)
        self.id = info.model_id
        self.info = info
        self.pages = info.num_pages
        self.output_size = info.output_size
        key = (id(self.compiled), s.max_batch_size, s.max_exec)   # compiled: one list per profile
        shared = _batching.get(key)
        if shared is None:
            exec_ns = [e // DEFAULT_CLOCK_MHZ for e in self.est]
            sizes = batch_sizes(self.compiled, exec_ns, s.max_batch_size, s.max_exec)  # ascending
            shared = _batching[key] = (sizes, frozenset(sizes), self.compiled)
        self.sizes, self.thresholds = shared[0], shared[1]
        self.limit = self.sizes[-1]
        self.queue: deque[Request] = deque()
        self.items = 0                     # sum of batch_size over the queue
        self.gpus: list[_Gpu] = []         # GPUs with the weights loaded
        self.loading_gpus: list[_Gpu] = []
        self.timeout_key = INF
        self.wanting = False


class _Gpu:
    """Per-GPU state as the controller predicts it."""
    __slots__ = ("ref", "index", "worker_id", "gpu_id", "alive", "clock", "exec_free", "infers",
                 "load_free", "loads", "heap", "live", "timer", "loaded", "loading", "busy",
                 "free_pages", "total_pages", "exec_ns", "batches", "items", "load_count",
                 "evict_count", "added_at", "in_slots")

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
        self.added_at = now
        self.in_slots = False               # in the scheduler's turn of GPUs for direct loads


class _Pending:
    """An action in flight."""
    __slots__ = ("kind", "gpu", "model", "reqs", "start", "est")

    def __init__(self, kind: int, gpu: _Gpu, model: _Model, reqs, start: int, est: int):
        self.kind = kind
        self.gpu = gpu
        self.model = model
        self.reqs = reqs
        self.start = start
        self.est = est


class Infer4Scheduler(Scheduler):
    name: ClassVar[str] = "infer4"

    def __init__(self, config: dict, clock: Callable[[], int], out: Outbox):
        super().__init__(config, clock, out)
        self.s = Settings(config)
        self._models: dict[int, _Model] = {}           # those requested or loaded so far (_model)
        self._gpus: dict[int, _Gpu] = {}
        self._by_ref: dict[tuple[int, int], _Gpu] = {}   # (worker id, gpu id) -> GPU
        self._next_index = 0
        self._timeouts: list[tuple[int, int]] = []     # (front exec deadline, model id)
        self._gpu_timers: list[tuple[int, int]] = []   # (time, gpu index)
        self._inflight: dict[int, _Pending] = {}
        self._wanting: dict[int, _Model] = {}          # models with queued requests
        self._emptied: dict[int, _Model] = {}          # queues emptied since the last load pass
        self._load_dirty = False
        self._next_load = 0
        self._bound = ShareBound(self.s.default_slo)   # whether a load pass could rank anything
        self._cold: deque[_Model] = deque()   # models asked for with no copy, for direct loads
        self._slots: deque[_Gpu] = deque()    # GPUs that may have a free load slot, in turn
        self._counts = [0] * 64                        # responses by status code
        self._queued = 0
        self._overloaded = 0
        self._max_clock = DEFAULT_CLOCK_MHZ             # highest GPU clock seen (MHz)

    # ------------------------------------------------------------------ setup

    def start(self, models: MutableMapping[int, ModelInfo], workers: dict[int, WorkerState]) -> None:
        super().start(models, workers)
        for worker_id in sorted(workers):
            self._add_worker(worker_id, workers[worker_id])

    def _model(self, model_id: int) -> _Model | None:
        """A model's state, made on first use: with a million instances most are never
        requested, and their state (queue, estimates) would cost memory and startup time."""
        m = self._models.get(model_id)
        if m is None:
            info = self.models.get(model_id)
            if info is None:
                return None
            m = self._models[model_id] = _Model(info, self.s)
        return m

    def _add_worker(self, worker_id: int, state: WorkerState) -> None:
        models = self.models
        for info in state.models:
            if info.model_id not in models:     # (not setdefault: a registry would keep every one)
                models[info.model_id] = info
        now = self.clock()
        for ref, gs in build_gpus({worker_id: state}, self._next_index):
            for mid in gs.loaded_models:
                self._model(mid)
            g = _Gpu(ref, free_pages(gs, self._models), now)
            self._gpus[ref.index] = g
            self._by_ref[(worker_id, ref.gpu_id)] = g
            self._next_index = ref.index + 1
            for mid in gs.loaded_models:
                m = self._models.get(mid)
                if m is not None:
                    g.loaded[mid] = None
                    m.gpus.append(g)
                    if m.queue:
                        self._push(g, m)
            g.in_slots = True
            self._slots.append(g)
        self._load_dirty = True
        self._bound.stale()

    # ------------------------------------------------------------------ requests

    def on_request(self, req: Request) -> None:
        m = self._model(req.model_id)
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
            if not slo <= MAX_SLO_NS:       # infinite, or over an hour
                self._respond(req, Status.INVALID_REQUEST, f"slo_factor {req.slo_factor} too large")
                return
            slo = int(slo)
            req.slo = slo
            req.deadline = req.arrival + slo
            req.exec_deadline = req.arrival + max(slo - s.buffer, s.schedule_ahead + s.buffer)
        if not m.gpus:
            req.is_coldstart = True
            if not m.loading_gpus:
                self._cold.append(m)
        dl = req.exec_deadline
        if dl > req.deadline - LATEST_MIN:
            # The original's exec deadline is at least schedule_ahead + buffer (15 ms) after
            # arrival, past the deadline itself for SLOs under 15 ms; but an Infer's window closes
            # LATEST_MIN before its earliest deadline (batching.infer_window). Planning to finish
            # later than that sent Infers whose window had already closed: plan to finish by then.
            dl = req.exec_deadline = req.deadline - LATEST_MIN
        if self.clock() + m.est[req.batch_size] // self._max_clock > dl:
            # not even starting now on the fastest GPU (e.g. an SLO at or below the exec time)
            self._respond(req, Status.COULD_NOT_START_IN_TIME, "could not start in time (SLO too short)")
            return
        if q and m.gpus and q[-1].exec_deadline <= dl:
            # Admission at arrival. Joining the tail, the request finishes no earlier than if
            # every GPU of the cluster served nothing but this queue, in full batches, from
            # now on. If even that misses its exec deadline, refuse it now: under overload the
            # excess is answered at once instead of near its deadline. (A lower bound, so a
            # request that could still make it is never refused here.)
            lim = m.limit
            rounds = ceil_div(ceil_div(m.items + req.batch_size, lim), len(self._gpus))
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
        self._bound.add(m)
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
            t = g.exec_free - self.s.dispatch_ahead
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
            else:
                self._emptied[mid] = m
            self._bound.touch(m)

        gt = self._gpu_timers
        gpus = self._gpus
        while gt and gt[0][0] < now:     # hungry: expected free before now + dispatch_ahead
            t, idx = _heappop(gt)
            g = gpus.get(idx)
            if g is None or g.timer != t:
                continue
            g.timer = INF
            self._schedule_gpu(g, now)

        if self._cold:
            if self._next_load - now > DIRECT_LOAD_AFTER:
                self._direct_loads(now)
            else:
                self._cold.clear()          # the next pass is near: it places them
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
        horizon = now + self.s.dispatch_ahead
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
            self._bound.touch(m)
            if m.queue:
                key = self._key(m, g)
                live[mid] = key
                _heappush(heap, (key, mid))
            else:
                self._emptied[mid] = m
        if heap and g.timer == INF:
            t = g.exec_free - self.s.dispatch_ahead
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
        best_items, best_skip = choose_batch(q, m.sizes, est, clk, t)
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
        deadline = reqs[0].deadline
        for r in reqs:
            if r.deadline < deadline:
                deadline = r.deadline
        earliest, latest = infer_window(t, now, deadline, e)
        aid = next(self.out.action_ids)
        data: list = []
        complete = True
        for r in reqs:
            r.gpu = g.index
            if complete:
                if r.inputs:
                    data.extend(r.inputs)
                else:
                    complete = False
        if not complete:
            data = []          # some request came without inputs: the worker generates them all
        self._inflight[aid] = _Pending(_INFER, g, m, reqs, t, e)
        g.exec_free = t + e
        g.infers += 1
        g.batches += 1
        g.items += items
        g.busy[m.id] = g.busy.get(m.id, 0) + 1
        g.loaded.move_to_end(m.id)
        self.out.send_action(g.worker_id, Infer(aid, earliest, latest, m.id, g.gpu_id, items, e),
                             data, t + e)

    # ------------------------------------------------------------------ loads

    def _schedule_loads(self, now: int) -> None:
        s = self.s
        horizon = now + s.schedule_ahead
        gpus = self._gpus.values()
        self._load_dirty = False
        for g in gpus:
            if g.loads < s.max_loads_per_gpu and g.load_free < horizon:
                break
        else:
            return      # no GPU can take a load: a load result will set _load_dirty again
        wanting = self._wanting
        self._next_load = next_load_pass(now, len(wanting))
        bound = self._bound
        if not bound.may_rank(wanting, now, s.max_load_slo):
            forget_emptied(wanting, self._emptied)
            return      # rank_demand would rank nothing (most passes at or below capacity)
        self._emptied.clear()               # (rank_demand forgets them)
        ranked, share_of = rank_demand(wanting, len(self._gpus), now, s.max_load_slo, s.default_slo)
        if not ranked:
            return      # (most passes under load: every model's demand is met; no GPU list then)
        cands = [g for g in gpus if g.loads < s.max_loads_per_gpu and g.load_free < horizon]
        # least busy GPUs choose first (expected exec backlog plus queued demand on them), so
        # new copies spread out; ties go to the GPU with the most free pages
        # (a heap in that order, stable: the GPUs are taken one at a time, and once every ranked
        # model is chosen the rest need not be ordered at all)
        share = share_of.get
        order = [(max(0, g.exec_free - now) + share(g.index, 0.0), -g.free_pages, i, g)
                 for i, g in enumerate(cands)]
        heapq.heapify(order)
        chosen: set[int] = set()
        models = self._models
        first = 0                   # ranked[:first] are all chosen: no GPU need look at them again
        while order:
            g = heapq.heappop(order)[3]
            while first < len(ranked) and ranked[first][1] in chosen:
                first += 1
            if first == len(ranked):
                break
            for i in range(first, len(ranked)):
                if g.loads >= s.max_loads_per_gpu or g.load_free >= horizon:
                    break
                mid = ranked[i][1]
                if mid in chosen or mid in g.loaded or mid in g.loading:
                    continue
                m = models[mid]
                if m.pages <= g.total_pages and self._make_room(g, m, now):
                    self._send_load(g, m, now)
                    chosen.add(mid)
                    self._load_dirty = True     # there may be more to load next pass

    def _direct_loads(self, now: int) -> None:
        """Models asked for with no copy get one at once, each on the next GPU with a free load
        slot (in turn), when the next load pass is far off (load_planning: DIRECT_LOAD_AFTER)."""
        s = self.s
        horizon = now + s.schedule_ahead
        cold, slots = self._cold, self._slots
        while cold and slots:
            m = cold.popleft()
            if m.gpus or m.loading_gpus or not helpable(m, now, s.max_load_slo):
                continue
            free = False                    # a GPU with a slot free now seen in this round
            for _ in range(len(slots)):
                g = slots.popleft()
                if not g.alive or g.loads >= s.max_loads_per_gpu:
                    g.in_slots = False      # back in turn when one of its loads finishes
                    continue
                slots.append(g)
                if g.load_free >= horizon:
                    continue
                free = True
                if m.pages <= g.total_pages and self._make_room(g, m, now):
                    self._send_load(g, m, now)
                    break
            if not free:
                break
        cold.clear()                        # what found no slot waits for the next pass

    def _make_room(self, g: _Gpu, m: _Model, now: int) -> bool:
        """Evict (load_planning.eviction_victims) until `m` fits on `g`. False (and no
        eviction) if it cannot fit."""
        need = m.pages - g.free_pages
        if need <= 0:
            return True
        victims = eviction_victims(g, need, self._models)
        if victims is None:
            return False
        for mid in victims:
            other = self._models[mid]
            del g.loaded[mid]
            g.live.pop(mid, None)
            other.gpus.remove(g)
            self._bound.copy_lost(other)
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
        q = m.queue
        last_useful = q[-1].exec_deadline - e - m.est[1] // g.clock if q else 0
        latest = load_latest(start, now, s.latest_delta, LATEST_MIN, last_useful)
        aid = next(self.out.action_ids)
        g.free_pages -= m.pages
        g.loading.add(m.id)
        m.loading_gpus.append(g)
        self._bound.copy_added(m, g)
        g.loads += 1
        g.load_count += 1
        g.load_free = start + e
        self._inflight[aid] = _Pending(_LOAD, g, m, None, start, e)
        self.out.send_action(g.worker_id, LoadWeights(aid, now, latest, m.id, g.gpu_id, e),
                             (), start + e)

    # ------------------------------------------------------------------ results

    def on_result(self, worker_id: int, action, result, data: Sequence) -> None:
        p = self._inflight.pop(result.action_id, None)
        if p is None:
            return          # unknown or already handled (e.g. its worker was declared lost)
        if p.kind == _INFER:
            self._infer_result(p, result, data)
        elif p.kind == _LOAD:
            self._load_result(p, result)
        # evictions: pages were freed when sent; an error (weights not present) changes nothing

    def _infer_result(self, p: _Pending, result, data: Sequence) -> None:
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
            b1 = m.b1ns
            m.measure(items, result.exec_duration * clock, s.estimate_window, s.estimate_percentile)
            if m.b1ns != b1:
                self._bound.touch(m)
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
        if status == Status.WORKER_LOST:
            self._requeue(reqs, now, message)
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
        self._bound.stale()

    def _rearm(self, g: _Gpu) -> None:
        """The expected free time moved earlier: make sure the GPU's timer is not too late."""
        if g.heap and g.alive:
            t = g.exec_free - self.s.dispatch_ahead
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
        if g.alive and not g.in_slots:
            g.in_slots = True
            self._slots.append(g)           # a slot freed up
        ok = type(result) is LoadWeightsResult
        if ok:
            s = self.s
            m.measure_weights(result.duration, s.estimate_window, s.estimate_percentile)
            if g.loads == 0 and g.load_free > now:
                g.load_free = now          # (the load is done: its weights executor is free)
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
        else:
            self._bound.copy_lost(m)

    # ------------------------------------------------------------------ workers

    def on_worker_lost(self, worker_id: int) -> None:
        super().on_worker_lost(worker_id)
        lost = [g for g in self._gpus.values() if g.worker_id == worker_id]
        if lost:                            # a rejoin brings new GPU objects
            self._slots = deque(g for g in self._slots if g.worker_id != worker_id)
        for g in lost:
            g.alive = False
            del self._gpus[g.index]
            self._by_ref.pop((g.worker_id, g.gpu_id), None)
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
        self._bound.stale()

    def on_worker_joined(self, worker_id: int, state: WorkerState) -> None:
        super().on_worker_joined(worker_id, state)
        self._add_worker(worker_id, state)

    # ------------------------------------------------------------------ stats

    def log_context(self, worker_id: int, gpu_id: int, model_id: int) -> tuple[int, int, int]:
        g = self._by_ref.get((worker_id, gpu_id))
        m = self._models.get(model_id)
        return g.clock if g is not None else 0, self._queued, len(m.gpus) if m is not None else 0

    def estimate(self, model_id: int, batch_size: int, gpu_index: int | None = None) -> int:
        """Current exec estimate (ns) of `batch_size` items of a model, at a GPU's clock."""
        m = self._model(model_id)
        clock = self._gpus[gpu_index].clock if gpu_index is not None else DEFAULT_CLOCK_MHZ
        return m.est[batch_size] // clock   # type: ignore[union-attr]

    def stats(self) -> dict:
        """A snapshot; changes nothing (any number of callers may ask). Counters are totals
        since the GPU was added: a caller wanting rates takes differences."""
        now = self.clock()
        gpus = []
        for g in self._gpus.values():
            elapsed = now - g.added_at
            gpus.append({
                "index": g.index, "name": g.ref.name, "worker_id": g.worker_id, "gpu_id": g.gpu_id,
                "exec_ns": g.exec_ns, "utilization": round(g.exec_ns / elapsed, 4) if elapsed > 0 else 0.0,
                "infers_in_flight": g.infers,
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
