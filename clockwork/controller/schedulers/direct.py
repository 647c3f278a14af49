"""DIRECT: forwards each request as its own Infer to a GPU holding the model, with wide-open
windows; loads the model on first use (evicting idle models, least recently used first, when
pages run short). No batching, no deadlines, no timeouts: for testing workers end to end."""
from __future__ import annotations

from collections import OrderedDict

from ...status import Status
from ...transport.schema import Infer, InferResult, LoadWeightsResult
from ..scheduler import Request
from .common import OPEN, OpenWindowLoads, build_gpus, free_pages, output_view



class _Gpu:
    __slots__ = ("ref", "loaded", "loading", "busy", "free_pages")

    def __init__(self, ref, state, models):
        self.ref = ref
        self.loaded = OrderedDict((mid, None) for mid in state.loaded_models)   # LRU order
        self.loading: set[int] = set()
        self.busy: dict[int, int] = {}     # model id -> Infers in flight
        self.free_pages = free_pages(state, models)


class DirectScheduler(OpenWindowLoads):
    name = "direct"

    def __init__(self, config, clock, out):
        super().__init__(config, clock, out)
        self._gpus: list[_Gpu] = []
        self._next_index = 0
        self._rr = 0
        self._waiting: dict[int, list[Request]] = {}   # model id -> requests waiting for a load
        self._inflight: dict[int, tuple] = {}          # action id -> (kind, gpu, model id, requests)

    def start(self, models, workers):
        super().start(models, workers)
        for wid in sorted(workers):
            self._add(wid, workers[wid])

    def _add(self, worker_id, state):
        for info in state.models:
            self.models.setdefault(info.model_id, info)
        for ref, gs in build_gpus({worker_id: state}, self._next_index):
            self._gpus.append(_Gpu(ref, gs, self.models))
            self._next_index = ref.index + 1

    def on_request(self, req: Request) -> None:
        mid = req.model_id
        if mid not in self.models:
            self.out.respond(req, Status.INVALID_REQUEST, f"unknown model {mid}")
            return
        holders = [g for g in self._gpus if mid in g.loaded]
        if holders:
            self._rr += 1
            self._infer(holders[self._rr % len(holders)], req)
            return
        waiting = self._waiting.get(mid)
        if waiting is not None:
            waiting.append(req)
            return
        self._waiting[mid] = [req]
        if not self._load(mid):
            self._fail_waiting(mid, Status.NOT_ENOUGH_PAGES, "model does not fit on any GPU")

    def queued_requests(self) -> int:
        return sum(len(v) for v in self._waiting.values())

    def _infer(self, g: _Gpu, req: Request) -> None:
        aid = next(self.out.action_ids)
        req.gpu = g.ref.index
        g.busy[req.model_id] = g.busy.get(req.model_id, 0) + 1
        g.loaded.move_to_end(req.model_id)
        self._inflight[aid] = ("infer", g, req.model_id, [req])
        now = self.clock()
        self.out.send_action(g.ref.worker_id, Infer(aid, 0, now + OPEN, req.model_id, g.ref.gpu_id,
                                                    req.batch_size), req.inputs)

    def _load(self, mid: int) -> bool:
        pages = self.models[mid].num_pages
        for g in sorted(self._gpus, key=lambda g: -g.free_pages):
            victims = self._lru_victims(g, pages, g.busy.get)
            if victims is None:
                continue
            self._evict(g, victims)
            self._send_load(g, mid)
            return True
        return False

    def _fail_waiting(self, mid, status, message):
        for r in self._waiting.pop(mid, ()):
            self.out.respond(r, status, message)

    def on_result(self, worker_id, action, result, data):
        entry = self._inflight.pop(result.action_id, None)
        if entry is None:
            return
        kind, g, mid, reqs = entry
        if kind == "infer":
            left = g.busy[mid] - 1
            if left:
                g.busy[mid] = left
            else:
                del g.busy[mid]
            req = reqs[0]
            if type(result) is InferResult:
                out = output_view(data)
                n = req.batch_size * self.models[mid].output_size
                self.out.respond(req, Status.SUCCESS, "", out[:n] if out is not None else None,
                                 result.exec_duration)
            else:
                self.out.respond(req, result.status, result.message)
        elif kind == "load":
            g.loading.discard(mid)
            if type(result) is LoadWeightsResult or result.status == Status.WEIGHTS_ALREADY_PRESENT:
                g.loaded[mid] = None
                for r in self._waiting.pop(mid, ()):
                    self._infer(g, r)
            else:
                g.free_pages += self.models[mid].num_pages
                self._fail_waiting(mid, result.status, result.message)

    def on_worker_lost(self, worker_id):
        super().on_worker_lost(worker_id)
        self._gpus = [g for g in self._gpus if g.ref.worker_id != worker_id]
        for aid in [a for a, e in self._inflight.items() if e[1].ref.worker_id == worker_id]:
            kind, g, mid, reqs = self._inflight.pop(aid)
            for r in reqs or ():
                self.out.respond(r, Status.WORKER_LOST, "worker lost")
            if kind == "load" and mid in self._waiting and not self._load(mid):
                self._fail_waiting(mid, Status.WORKER_LOST, "worker lost while loading the model")
        for mid in list(self._waiting):   # loads that were going to a lost GPU
            if not any(mid in g.loading for g in self._gpus) and not self._load(mid):
                self._fail_waiting(mid, Status.WORKER_LOST, "worker lost while loading the model")

    def on_worker_joined(self, worker_id, state):
        super().on_worker_joined(worker_id, state)
        self._add(worker_id, state)

    def stats(self):
        return {"scheduler": self.name, "actions_in_flight": len(self._inflight),
                "waiting_for_load": sum(len(v) for v in self._waiting.values()),
                "gpus": [{"index": g.ref.index, "name": g.ref.name, "models_loaded": len(g.loaded),
                          "free_pages": g.free_pages} for g in self._gpus]}
