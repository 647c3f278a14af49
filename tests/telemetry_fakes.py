"""A stand-in controller for telemetry tests: just the attributes Controller.telemetry_view reads, a
settable clock, and helpers that play requests and actions through the publisher's hooks the way
the controller edge (server.py) does."""
from __future__ import annotations

import itertools

from clockwork.controller.scheduler import Request
from clockwork.controller.server import Controller
from clockwork.transport import schema as s

MS = 1_000_000


class FakeSync:
    offset = 0
    rtt = 50_000


class FakeWorker:
    def __init__(self, worker_id: int, gpus: int, pages: int = 100):
        self.id = worker_id
        self.address = f"127.0.0.1:{20000 + worker_id}"
        self.state = s.WorkerState(16 << 20, [s.GpuState(i, pages, pages, 1 << 29, 1 << 29, [], f"Fake GPU {i}")
                                              for i in range(gpus)], [])
        self.alive = True
        self.joined = True
        self.readings = [s.GpuReading(i, 1980, 2619, 40 + i, 1 << 30, 141 << 30, 0.25 * (i + 1))
                         for i in range(gpus)]
        self.sync = FakeSync()
        self.pending: set[int] = set()


class FakeScheduler:
    def __init__(self):
        self.numbers = {}

    def stats(self):
        return self.numbers


class FakePending:
    def __init__(self, worker, action):
        self.worker = worker
        self.action = action


class FakeController:
    def __init__(self, workers: int = 1, gpus: int = 2, models: int = 3, metrics_port: int = 0):
        self.now = 1_000_000_000_000
        self.config = {"controller": {"metrics_port": metrics_port}}
        self.workers = [FakeWorker(i, gpus) for i in range(workers)]
        self.models = {i: s.ModelInfo(i, f"zoo/resnet{i}", 1000, 100, 10 << 20, 2 + i, [1, 2, 4, 8],
                                      [3 * MS, 4 * MS, 6 * MS, 10 * MS], 8 * MS) for i in range(models)}
        self.pending: dict[int, FakePending] = {}
        self.scheduler = FakeScheduler()
        self.scheduler_name = "fake"
        self.phase = "running"
        self.ids = itertools.count(1)
        self.telemetry = None

    def clock(self) -> int:
        return self.now

    telemetry_view = Controller.telemetry_view       # the real one, over these attributes

    def advance(self, ns: int) -> None:
        self.now += ns

    # -- what server.py does, through the hooks

    def answer(self, model_id: int, status: int, latency: int, slo: int = 100 * MS, exec_ns: int = 0,
               coldstart: bool = False) -> None:
        """A request that arrived `latency` ago is answered now with `status`."""
        req = Request(next(self.ids), None, 0, model_id, 1, self.now - latency, slo, [])
        req.is_coldstart = coldstart
        self.telemetry.request_done(req, status, latency, self.now, exec_ns)

    def action(self, worker: int, action, result) -> None:
        self.telemetry.action_done(self.workers[worker], action, result, self.now)

    def infer(self, worker: int, gpu: int, model: int, batch: int, exec_ns: int) -> None:
        a = s.Infer(next(self.ids), 0, 0, model, gpu, batch, exec_ns)
        r = s.InferResult(a.action_id, 0, 0, 0, 0, 0, exec_ns, exec_ns, 0, 0, 1980, 1980)
        self.action(worker, a, r)

    def load(self, worker: int, gpu: int, model: int) -> None:
        a = s.LoadWeights(next(self.ids), 0, 0, model, gpu, 8 * MS)
        self.action(worker, a, s.LoadWeightsResult(a.action_id, 0, 0, 0, 8 * MS, 8 * MS))

    def evict(self, worker: int, gpu: int, model: int) -> None:
        a = s.EvictWeights(next(self.ids), 0, 0, model, gpu)
        self.action(worker, a, s.EvictWeightsResult(a.action_id, 0, 0, 0, 0))
