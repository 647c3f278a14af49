"""FIFO: the baseline Clockwork is compared with (Clipper / INFaaS style): reactive, no admission
control, no deadline drops.

One FIFO per GPU. A request goes to the least-loaded GPU that holds (or is loading) its model;
a model nobody holds is loaded on the least-loaded GPU, evicting idle models least recently used
first when pages run out. A GPU runs one Infer at a time: when it is idle it takes its oldest
request whose model is loaded plus up to max_batch_size - 1 more queued requests of that model
(whatever is queued, no waiting to fill a batch). Windows are wide open. Under overload queues,
and so latencies, grow without bound: that is the point of comparison."""
from __future__ import annotations

from collections import OrderedDict, deque

from ...status import Status
from ...transport.schema import Infer, InferResult, LoadWeightsResult, ModelInfo
from ..scheduler import Request
from .common import OPEN, OpenWindowLoads, Settings, batch_tables, build_gpus, free_pages, output_view



class _Gpu:
    __slots__ = ("ref", "queues", "queued", "loaded", "loading", "blocked", "busy_model",
                 "free_pages", "batches")

    def __init__(self, ref, state, models):
        self.ref = ref
        self.queues: dict[int, deque] = {}      # model id -> its requests here, arrival order
        self.queued = 0                         # items queued here
        self.loaded = OrderedDict((mid, None) for mid in state.loaded_models)   # LRU order
        self.loading: set[int] = set()
        self.blocked: dict[int, None] = {}      # models waiting for pages here, first request first
        self.busy_model = -1                    # model of the Infer in flight, -1 when idle
        self.free_pages = free_pages(state, models)
        self.batches = 0


class FifoScheduler(OpenWindowLoads):
    name = "fifo"

    def __init__(self, config, clock, out):
        super().__init__(config, clock, out)
        self.s = Settings(config)
        self._gpus: list[_Gpu] = []
        self._next_index = 0
        self._limit: dict[int, int] = {}
        self._inflight: dict[int, tuple] = {}   # action id -> (kind, gpu, model id, requests)

    def add_models(self, models: dict[int, ModelInfo]) -> None:
        """Models loaded while running (a LoadModel after startup)."""
        super().add_models(models)
        for info in models.values():
            self._model(info)

    def start(self, models, workers):
        super().start(models, workers)
        for info in models.values():
            self._model(info)
        for wid in sorted(workers):
            self._add(wid, workers[wid])

    def _model(self, info):
        self.models.setdefault(info.model_id, info)
        pad, _ = batch_tables(info)
        sizes = [b for b in set(pad[1:]) if b <= self.s.max_batch_size] or [pad[1]]
        self._limit[info.model_id] = max(sizes)

    def _add(self, worker_id, state):
        for info in state.models:
            if info.model_id not in self._limit:
                self._model(info)
        for ref, gs in build_gpus({worker_id: state}, self._next_index):
            self._gpus.append(_Gpu(ref, gs, self.models))
            self._next_index = ref.index + 1

    def queued_requests(self) -> int:
        return sum(g.queued for g in self._gpus)

    # ------------------------------------------------------------------ requests

    def on_request(self, req: Request) -> None:
        if req.model_id not in self.models:
            self.out.respond(req, Status.INVALID_REQUEST, f"unknown model {req.model_id}")
            return
        self._route(req)

    def _route(self, req: Request) -> None:
        if not self._gpus:
            self.out.respond(req, Status.WORKER_LOST, "no workers")
            return
        mid = req.model_id
        holders = [g for g in self._gpus if mid in g.loaded or mid in g.loading or mid in g.blocked]
        req.is_coldstart = not any(mid in h.loaded for h in holders)    # as infer4: weights nowhere yet
        g = min(holders or self._gpus, key=lambda g: g.queued)
        q = g.queues.get(mid)
        if q is None:
            q = g.queues[mid] = deque()
        q.append(req)
        g.queued += req.batch_size
        if mid not in g.loaded and mid not in g.loading and mid not in g.blocked:
            if self._make_room(g, mid):
                self._send_load(g, mid)
            else:
                g.blocked[mid] = None
        self._kick(g)

    def _load_blocked(self, g: _Gpu) -> None:
        """Load the models waiting here that now fit, first request first. Room only grows when
        a result comes back (an Infer ends, a load fails), so this runs then, not per request:
        retrying every waiting model on every event cost O(waiting x loaded) each time."""
        room = g.free_pages
        for other in g.loaded:
            if other != g.busy_model and not g.queues.get(other):
                room += self.models[other].num_pages
        for mid in list(g.blocked):
            if room <= 0:
                break
            pages = self.models[mid].num_pages
            if pages <= room and g.queues.get(mid) and self._make_room(g, mid):
                del g.blocked[mid]
                self._send_load(g, mid)
                room -= pages

    def _kick(self, g: _Gpu) -> None:
        """Start an Infer if this GPU is idle: the oldest request of a loaded model."""
        if g.busy_model >= 0:
            return
        best, oldest = None, None
        queues = g.queues
        for mid in g.loaded:
            q = queues.get(mid)
            if q and (oldest is None or q[0].arrival < oldest):
                best, oldest = mid, q[0].arrival
        if best is None:
            return
        q = g.queues[best]
        limit = self._limit[best]
        reqs, items = [], 0
        while q and (not reqs or items + q[0].batch_size <= limit):
            r = q.popleft()
            items += r.batch_size
            reqs.append(r)
        g.queued -= items
        data = []
        for r in reqs:
            r.gpu = g.ref.index
            if data is not None:
                if r.inputs:
                    data.extend(r.inputs)
                else:
                    data = None
        aid = next(self.out.action_ids)
        g.busy_model = best
        g.batches += 1
        g.loaded.move_to_end(best)
        self._inflight[aid] = ("infer", g, best, reqs)
        self.out.send_action(g.ref.worker_id, Infer(aid, 0, self.clock() + OPEN, best, g.ref.gpu_id, items),
                             data or ())

    def _make_room(self, g: _Gpu, mid: int) -> bool:
        victims = self._lru_victims(g, self.models[mid].num_pages,
                                    lambda other: other == g.busy_model or bool(g.queues.get(other)))
        if victims is None:
            return False
        self._evict(g, victims)
        return True

    # ------------------------------------------------------------------ results

    def on_result(self, worker_id, action, result, data):
        entry = self._inflight.pop(result.action_id, None)
        if entry is None:
            return
        kind, g, mid, reqs = entry
        if kind == "infer":
            g.busy_model = -1
            if type(result) is InferResult:
                out = output_view(data)
                size = self.models[mid].output_size
                off = 0
                for r in reqs:
                    n = r.batch_size * size
                    self.out.respond(r, Status.SUCCESS, "", out[off:off + n] if out is not None else None,
                                     result.exec_duration)
                    off += n
            else:
                for r in reqs:
                    self.out.respond(r, result.status, result.message)
        elif kind == "load":
            g.loading.discard(mid)
            if type(result) is LoadWeightsResult or result.status == Status.WEIGHTS_ALREADY_PRESENT:
                g.loaded[mid] = None
            else:
                g.free_pages += self.models[mid].num_pages
                q = g.queues.pop(mid, ())
                for r in q:
                    g.queued -= r.batch_size
                    self.out.respond(r, result.status, result.message)
        if g in self._gpus:
            if g.blocked:
                self._load_blocked(g)
            self._kick(g)

    def on_worker_lost(self, worker_id):
        super().on_worker_lost(worker_id)
        lost = [g for g in self._gpus if g.ref.worker_id == worker_id]
        self._gpus = [g for g in self._gpus if g.ref.worker_id != worker_id]
        for aid in [a for a, e in self._inflight.items() if e[1] in lost]:
            _, _, _, reqs = self._inflight.pop(aid)
            for r in reqs or ():
                self.out.respond(r, Status.WORKER_LOST, "worker lost")
        for g in lost:                 # queued there but not started: send elsewhere
            for q in g.queues.values():
                for r in q:
                    self._route(r)
            g.queues.clear()

    def on_worker_joined(self, worker_id, state):
        super().on_worker_joined(worker_id, state)
        self._add(worker_id, state)

    def stats(self):
        return {"scheduler": self.name, "actions_in_flight": len(self._inflight),
                "queued": sum(g.queued for g in self._gpus),
                "gpus": [{"index": g.ref.index, "name": g.ref.name, "queued": g.queued,
                          "batches": g.batches, "models_loaded": len(g.loaded),
                          "free_pages": g.free_pages} for g in self._gpus]}
