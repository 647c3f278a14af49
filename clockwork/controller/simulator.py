"""Discrete-event simulator: run a scheduling policy against simulated workers in simulated time.

A fake clock, an Outbox that hands actions to simulated GPUs after a network delay, and workers
that execute them as the real (emulated) worker does: per GPU an exec and a weights executor,
each ordered by `earliest`; nothing starts before `earliest`; a task that would start after
`latest` fails at once (ACTION_TOO_LATE); pages are counted (NOT_ENOUGH_PAGES), Infer needs the
weights (WEIGHTS_NOT_PRESENT) and fails if they change while it runs (WEIGHTS_CHANGED).
Durations are the profiled ones, optionally stretched by random noise. Results come back after
the network delay, in simulated time. A worker's clock may be skewed and drift against the
controller's (`worker_clock=(offset_ns, drift_ppm)`): windows and results then cross between the
clocks through ClockSync as they do in the controller, so a conversion that is off shows. Workers can be killed (their in-flight actions are failed
with WORKER_LOST before on_worker_lost, as the edge does) and added.

Used by the tests (deterministic: seeded noise, no wall clock) and for quick experiments:

    sim = Simulator("infer4", models_from_profile("h200", ["resnet50"], copies=4), gpus=2)
    sim.poisson(rate=800, duration=2 * SECOND)
    sim.run()
    print(sim.summary())

The simulator checks that every request is answered exactly once (AssertionError otherwise).
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
from typing import Callable

from ..model.zoo import load_profile
from ..percentiles import percentile
from ..status import Status
from ..transport.clocksync import ClockSync
from ..transport.schema import (ErrorResult, EvictWeights, EvictWeightsResult, GpuState, Infer,
                                InferResult, LoadWeights, LoadWeightsResult, ModelInfo, WorkerState)
from .scheduler import Request, Scheduler
from .schedulers import make_scheduler
from .schedulers.common import DEFAULT_CLOCK_MHZ, Settings, batch_tables

MS = 1_000_000
SECOND = 1_000_000_000
PAGE_SIZE = 16 * 1024 * 1024


class SimClock:
    """The injected clock: integer ns, moved only by the simulator."""

    def __init__(self, now: int = 0):
        self.now = now

    def __call__(self) -> int:
        return self.now


class Response:
    __slots__ = ("req", "status", "message", "output", "exec_ns", "time")

    def __init__(self, req, status, message, output, exec_ns, time):
        self.req, self.status, self.message = req, status, message
        self.output, self.exec_ns, self.time = output, exec_ns, time

    @property
    def latency(self) -> int:
        return self.time - self.req.arrival


class SimOutbox:
    """The Outbox the scheduler talks to; forwards to the simulator."""

    def __init__(self, sim: "Simulator"):
        self.sim = sim
        self.action_ids = itertools.count(1)

    def send_action(self, worker_id, action, data=(), expected_end=0):
        self.sim._send(worker_id, action, data)

    def respond(self, req, status, message="", output=None, exec_ns=0):
        self.sim._respond(req, status, message, output, exec_ns)


def model_info(model_id: int, exec_ns: dict[int, int], weights_load_ns: int = 1 * MS,
               num_pages: int = 1, input_size: int = 16, output_size: int = 8) -> ModelInfo:
    """A ModelInfo for tests: exec_ns maps batch size -> profiled ns."""
    sizes = sorted(exec_ns)
    return ModelInfo(model_id=model_id, source=f"sim/{model_id}", input_size=input_size,
                     output_size=output_size, weights_size=num_pages * PAGE_SIZE,
                     num_pages=num_pages, batch_sizes=sizes, exec_ns=[exec_ns[b] for b in sizes],
                     weights_load_ns=weights_load_ns)


def models_from_profile(profile: str = "h200", names: list[str] | None = None, copies: int = 1,
                        page_size: int = PAGE_SIZE) -> list[ModelInfo]:
    """ModelInfos from a clockwork/conf/profiles entry, `copies` instances of each (consecutive ids)."""
    prof = load_profile(profile)
    out = []
    for name, m in prof["models"].items():
        if names and name not in names:
            continue
        exec_ns = {int(b): int(v) for b, v in m["exec_ns"].items()}
        in_bytes = 4 * math.prod(m["input"]["shape"])
        out_bytes = 4 * math.prod(m["output"]["shape"])
        pages = max(1, -(-int(m["weights_size"]) // page_size))
        for _ in range(copies):
            info = model_info(len(out), exec_ns, int(m["weights_load_ns"]), pages, in_bytes, out_bytes)
            info.source = name
            out.append(info)
    return out


class _Executor:
    """One of a GPU's executors: tasks ordered by earliest, one at a time."""
    __slots__ = ("heap", "busy", "wake", "busy_ns")

    def __init__(self):
        self.heap: list = []
        self.busy = False
        self.wake = None
        self.busy_ns = 0


class _SimGpu:
    __slots__ = ("gpu_id", "total_pages", "free_pages", "present", "version", "exec", "load")

    def __init__(self, gpu_id: int, total_pages: int):
        self.gpu_id = gpu_id
        self.total_pages = total_pages
        self.free_pages = total_pages
        self.present: dict[int, int] = {}      # model id -> weights version
        self.version: dict[int, int] = {}
        self.exec = _Executor()
        self.load = _Executor()


class _SimWorker:
    def __init__(self, worker_id: int, gpus: int, total_pages: int, clock_offset: int = 0,
                 drift_ppm: float = 0.0):
        self.id = worker_id
        self.alive = True
        self.gpus = [_SimGpu(i, total_pages) for i in range(gpus)]
        self.inflight: dict[int, tuple] = {}    # action id -> (action as the scheduler sent it, sent at)
        self.offset = clock_offset
        self.drift = drift_ppm * 1e-6
        self.sync = ClockSync()                 # the controller's estimate of this worker's clock

    def time(self, t: int) -> int:
        """The worker's clock at simulated (controller) time `t`."""
        return t + self.offset + int(t * self.drift)

    def when(self, worker_time: int) -> int:
        """The first simulated time at which the worker's clock reads `worker_time`."""
        t = int((worker_time - self.offset) / (1 + self.drift))
        while self.time(t) < worker_time:
            t += 1
        while t > 0 and self.time(t - 1) >= worker_time:
            t -= 1
        return t


class Simulator:
    """Runs `scheduler` (a name from the registry or a factory(config, clock, out)) in simulated
    time against `workers` x `gpus` simulated GPUs of `total_pages` pages each."""

    def __init__(self, scheduler: str | Callable = "infer4", models: list[ModelInfo] = (),
                 workers: int = 1, gpus: int = 1, total_pages: int = 1376, config: dict | None = None,
                 noise: float = 0.0, seed: int = 0, latency: int = 50_000, preload: bool = False,
                 gpu_clock: int = DEFAULT_CLOCK_MHZ, worker_clock: tuple[int, float] = (0, 0.0)):
        self.clock = SimClock(0)
        self.out = SimOutbox(self)
        self.config = config or {}
        self.settings = Settings(self.config)
        self.noise = noise
        self.rng = random.Random(seed)
        self.latency = latency
        self.gpu_clock = gpu_clock
        self.worker_clock = worker_clock
        self.models = {m.model_id: m for m in models}
        self._tables = {m.model_id: batch_tables(m) for m in models}
        self._events: list = []
        self._seq = itertools.count()
        self._next_wake = None
        self._request_ids = itertools.count(1)
        self._worker_ids = itertools.count(0)
        self.requests: list[Request] = []
        self.responses: dict[int, Response] = {}
        self.actions: list[tuple[int, int, object]] = []      # (time, worker, action) as sent
        self.errors: list[tuple[int, int, ErrorResult]] = []  # worker errors, as delivered
        self._closed: dict[int, tuple] = {}                   # closed-loop request id -> spec
        self.workers: dict[int, _SimWorker] = {}
        self._zeros = bytes(max([m.output_size * (max(m.batch_sizes or [1])) for m in models] + [0]))
        states = {}
        for _ in range(workers):
            w = self._new_worker(gpus, total_pages, preload)
            states[w.id] = self._state(w)
        if isinstance(scheduler, str):
            self.sched: Scheduler = make_scheduler(scheduler, self.config, self.clock, self.out)
        else:
            self.sched = scheduler(self.config, self.clock, self.out)
        self.sched.start(dict(self.models), states)
        self._tick()

    # ------------------------------------------------------------------ setup

    def _new_worker(self, gpus: int, total_pages: int, preload: bool) -> _SimWorker:
        w = _SimWorker(next(self._worker_ids), gpus, total_pages, *self.worker_clock)
        self.workers[w.id] = w
        # the connect handshake (GetWorkerState) is the first clock sample
        now, lat = self.clock.now, self.latency
        w.sync.add(now, w.time(now + lat), w.time(now + lat), now + 2 * lat)
        if preload:
            for g in w.gpus:
                for m in self.models.values():
                    if g.free_pages >= m.num_pages:
                        g.free_pages -= m.num_pages
                        g.present[m.model_id] = 1
                        g.version[m.model_id] = 1
        return w

    def _state(self, w: _SimWorker) -> WorkerState:
        return WorkerState(page_size=PAGE_SIZE, models=list(self.models.values()), gpus=[
            GpuState(gpu_id=g.gpu_id, total_pages=g.total_pages, free_pages=g.free_pages,
                     io_pool_size=512 << 20, workspace_pool_size=512 << 20,
                     loaded_models=sorted(g.present), name="simulated") for g in w.gpus])

    # ------------------------------------------------------------------ event loop

    def at(self, t: int, fn: Callable, *args) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn, args))

    def run(self, until: int | None = None) -> None:
        """Process events (in time order) until none are left or the next is after `until`."""
        ev = self._events
        while ev:
            t = ev[0][0]
            if until is not None and t > until:
                break
            self.clock.now = t
            while ev and ev[0][0] == t:
                _, _, fn, args = heapq.heappop(ev)
                fn(*args)
            self._tick()
        if until is not None and self.clock.now < until:
            self.clock.now = until

    def _tick(self) -> None:
        now = self.clock.now
        wake = self.sched.tick()
        if wake is None:
            return
        wake = max(wake, now + 1)
        if self._next_wake is None or self._next_wake <= now or wake < self._next_wake:
            self._next_wake = wake
            self.at(wake, _noop)

    # ------------------------------------------------------------------ clients

    def request(self, t: int, model_id: int, slo_ns: int = 0, slo_factor: float = 0.0,
                batch_size: int = 1, inputs: bool = False) -> None:
        """A client Infer arriving at the controller at time `t`."""
        self.at(t, self._arrive, model_id, slo_ns, slo_factor, batch_size, inputs, None)

    def _arrive(self, model_id, slo_ns, slo_factor, batch_size, inputs, closed):
        s = self.settings
        rid = next(self._request_ids)
        frames = []
        if inputs:
            frames = [bytes(self.models[model_id].input_size * batch_size)]
        req = Request(rid, None, rid, model_id, batch_size, self.clock.now, slo_ns or s.default_slo,
                      frames, slo_factor=slo_factor, buffer=s.buffer, schedule_ahead=s.schedule_ahead)
        self.requests.append(req)
        if closed is not None:
            self._closed[rid] = closed
        self.sched.on_request(req)

    def poisson(self, rate: float, duration: int, model_ids: list[int] | None = None,
                start: int = 0, slo_ns: int = 0, slo_factor: float = 0.0) -> int:
        """Open-loop Poisson arrivals at `rate` requests/s over `duration` ns, models picked
        uniformly from `model_ids` (default: all). Returns the number of requests."""
        ids = model_ids if model_ids is not None else sorted(self.models)
        t = start
        n = 0
        while True:
            t += int(self.rng.expovariate(rate) * SECOND)
            if t >= start + duration:
                return n
            self.request(t, ids[self.rng.randrange(len(ids))] if len(ids) > 1 else ids[0],
                         slo_ns, slo_factor)
            n += 1

    def closed_loop(self, clients: int, model_id: int, until: int, slo_ns: int = 0,
                    start: int = 0, think: int = 100_000) -> None:
        """`clients` clients each sending one request, the next `think` ns (> 0: a client's
        round trip; zero would let instant rejections loop forever at one instant) after the
        answer, until `until`."""
        think = max(1, think)
        for _ in range(clients):
            self.at(start, self._arrive, model_id, slo_ns, 0.0, 1, False, (model_id, slo_ns, until, think))

    def _respond(self, req, status, message, output, exec_ns):
        now = self.clock.now
        if req.id in self.responses:
            raise AssertionError(f"request {req.id} answered twice "
                                 f"({Status(self.responses[req.id].status).name}, then {Status(status).name})")
        if status == Status.SUCCESS and output is not None:
            expected = req.batch_size * self.models[req.model_id].output_size
            if len(output) != expected:
                raise AssertionError(f"request {req.id}: output of {len(output)} bytes, expected {expected}")
        self.responses[req.id] = Response(req, status, message, output, exec_ns, now)
        spec = self._closed.pop(req.id, None)
        if spec is not None and now + spec[3] < spec[2]:
            self.at(now + spec[3], self._arrive, spec[0], spec[1], 0.0, 1, False, spec)

    # ------------------------------------------------------------------ workers

    def kill_worker(self, t: int, worker_id: int) -> None:
        self.at(t, self._kill, worker_id)

    def _kill(self, worker_id: int) -> None:
        w = self.workers[worker_id]
        if not w.alive:
            return
        w.alive = False
        for aid, (action, _) in list(w.inflight.items()):
            del w.inflight[aid]
            self.sched.on_result(worker_id, action, ErrorResult(
                aid, type(action).__struct_config__.tag, Status.WORKER_LOST, "worker lost"), [])
        self.sched.on_worker_lost(worker_id)

    def add_models(self, t: int, models: list[ModelInfo]) -> None:
        """Models loaded on every worker at time `t` (a LoadModel while running)."""
        self.at(t, self._add_models, models)

    def _add_models(self, models):
        for m in models:
            self.models[m.model_id] = m
            self._tables[m.model_id] = batch_tables(m)
        need = max([m.output_size * max(m.batch_sizes or [1]) for m in models] + [0])
        if need > len(self._zeros):
            self._zeros = bytes(need)
        self.sched.add_models({m.model_id: m for m in models})

    def add_worker(self, t: int, gpus: int = 1, total_pages: int = 1376, preload: bool = False) -> None:
        self.at(t, self._join, gpus, total_pages, preload)

    def _join(self, gpus, total_pages, preload):
        w = self._new_worker(gpus, total_pages, preload)
        self.sched.on_worker_joined(w.id, self._state(w))

    def _send(self, worker_id, action, data):
        now = self.clock.now
        self.actions.append((now, worker_id, action))
        w = self.workers.get(worker_id)
        if w is None or not w.alive:
            err = ErrorResult(action.action_id, type(action).__struct_config__.tag,
                              Status.WORKER_LOST, "worker lost")
            self.at(now, self._deliver_lost, worker_id, action, err)
            return
        w.inflight[action.action_id] = (action, now)
        self.at(now + self.latency, self._receive, w, w.sync.action_to_worker(action), data)

    def _deliver_lost(self, worker_id, action, err):
        self.sched.on_result(worker_id, action, err, [])

    def _reply(self, w: _SimWorker, action, result, data=()):
        self.at(self.clock.now + self.latency, self._deliver, w, action, result, list(data))

    def _deliver(self, w, action, result, data):
        sent = w.inflight.pop(action.action_id, None) if w.alive else None
        if sent is None:
            return
        action, sent_at = sent
        result = w.sync.receive(result, sent_at, self.clock.now)
        if type(result) is ErrorResult:
            self.errors.append((self.clock.now, w.id, result))
        self.sched.on_result(w.id, action, result, data)

    def _error(self, w, action, status, message="", received=None):
        now = w.time(self.clock.now)
        self._reply(w, action, ErrorResult(action.action_id, type(action).__struct_config__.tag,
                                           status, message or Status(status).name.lower(),
                                           now if received is None else received, now))

    def _receive(self, w: _SimWorker, action, data):
        if not w.alive:
            return
        kind = type(action)
        gpu_id = getattr(action, "gpu_id", 0)
        if not 0 <= gpu_id < len(w.gpus):
            return self._error(w, action, Status.INVALID_GPU)
        g = w.gpus[gpu_id]
        model = self.models.get(getattr(action, "model_id", -1))
        if kind in (Infer, LoadWeights, EvictWeights) and model is None:
            return self._error(w, action, Status.UNKNOWN_MODEL)
        if kind is EvictWeights:
            if action.model_id not in g.present:
                return self._error(w, action, Status.WEIGHTS_NOT_PRESENT)
            del g.present[action.model_id]
            g.version[action.model_id] = g.version.get(action.model_id, 0) + 1
            g.free_pages += model.num_pages
            now = w.time(self.clock.now)
            return self._reply(w, action, EvictWeightsResult(action.action_id, now, now, now, now))
        if kind is Infer:
            pad, _ = self._tables[action.model_id]
            if not 1 <= action.batch_size < len(pad):
                return self._error(w, action, Status.INVALID_BATCH_SIZE)
            if data and sum(len(f) for f in data) != action.batch_size * model.input_size:
                return self._error(w, action, Status.INVALID_INPUT_SIZE)
            ex = g.exec
        elif kind is LoadWeights:
            ex = g.load
        else:
            return self._error(w, action, Status.BAD_MESSAGE, f"simulator does not run {kind.__name__}")
        heapq.heappush(ex.heap, (action.earliest, next(self._seq), action, w.time(self.clock.now)))
        self._pump(w, g, ex)

    def _noisy(self, ns: int) -> int:
        if self.noise <= 0:
            return ns
        return int(ns * (1.0 + self.noise * self.rng.random()))

    def _pump(self, w: _SimWorker, g: _SimGpu, ex: _Executor) -> None:
        """Start the next task of an executor if it is idle and the task may start."""
        if not w.alive:
            return
        sim_now = self.clock.now
        now = w.time(sim_now)                   # the worker's clock
        while not ex.busy and ex.heap:
            earliest, _, action, received = ex.heap[0]
            if earliest > now:
                wake = w.when(earliest)
                if ex.wake is None or ex.wake > wake or ex.wake <= sim_now:
                    ex.wake = wake
                    self.at(wake, self._pump, w, g, ex)
                return
            heapq.heappop(ex.heap)
            if now > action.latest:
                self._error(w, action, Status.ACTION_TOO_LATE,
                            f"{'exec' if ex is g.exec else 'load_weights'} too late by {now - action.latest} ns",
                            received)
                continue
            model = self.models[action.model_id]
            if ex is g.exec:
                if action.model_id not in g.present:
                    self._error(w, action, Status.WEIGHTS_NOT_PRESENT, "", received)
                    continue
                pad, exec_ns = self._tables[action.model_id]
                dur = self._noisy(exec_ns[action.batch_size])
                version = g.present[action.model_id]
            else:
                if action.model_id in g.present:
                    self._error(w, action, Status.WEIGHTS_ALREADY_PRESENT, "", received)
                    continue
                if g.free_pages < model.num_pages:
                    self._error(w, action, Status.NOT_ENOUGH_PAGES,
                                f"need {model.num_pages} pages, {g.free_pages} free", received)
                    continue
                g.free_pages -= model.num_pages
                dur = self._noisy(model.weights_load_ns)
                version = None
            ex.busy = True
            ex.busy_ns += dur
            self.at(sim_now + dur, self._finish, w, g, ex, action, received, now, version)

    def _finish(self, w, g, ex, action, received, begin, version):
        ex.busy = False
        if not w.alive:
            return
        now = w.time(self.clock.now)
        if ex is g.exec:
            if g.present.get(action.model_id) != version:
                self._error(w, action, Status.WEIGHTS_CHANGED, "", received)
            else:
                n = action.batch_size * self.models[action.model_id].output_size
                out = memoryview(self._zeros)[:n]
                self._reply(w, action, InferResult(
                    action.action_id, received, now, begin, begin, begin, now, now - begin, now, now,
                    self.gpu_clock, self.gpu_clock), [out])
        else:
            v = g.version.get(action.model_id, 0) + 1
            g.version[action.model_id] = v
            g.present[action.model_id] = v
            self._reply(w, action, LoadWeightsResult(action.action_id, received, now, begin, now, now - begin))
        self._pump(w, g, ex)

    # ------------------------------------------------------------------ results

    def unanswered(self) -> list[Request]:
        return [r for r in self.requests if r.id not in self.responses]

    def with_status(self, status: int) -> list[Response]:
        return [x for x in self.responses.values() if x.status == status]

    def summary(self) -> dict:
        by_status: dict[str, int] = {}
        for x in self.responses.values():
            name = Status(x.status).name.lower() if x.status in Status._value2member_map_ else str(x.status)
            by_status[name] = by_status.get(name, 0) + 1
        ok = sorted(x.latency for x in self.with_status(Status.SUCCESS))
        met = sum(1 for x in self.with_status(Status.SUCCESS) if x.time <= x.req.deadline)

        def pct(p):
            return percentile(ok, p) / MS if ok else None
        return {"requests": len(self.requests), "answered": len(self.responses),
                "statuses": by_status, "deadline_met": met,
                "latency_ms": {"p50": pct(50), "p99": pct(99), "max": ok[-1] / MS if ok else None},
                "actions": len(self.actions), "time_s": self.clock.now / SECOND}


def _noop():
    pass


if __name__ == "__main__":  # pragma: no cover  (quick experiment)
    import json
    import sys
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 1000
    name = sys.argv[2] if len(sys.argv) > 2 else "infer4"
    sim = Simulator(name, models_from_profile("h200", ["resnet50"], copies=4), gpus=2, noise=0.05)
    sim.poisson(rate, 2 * SECOND)
    sim.run()
    print(json.dumps(sim.summary(), indent=1))
