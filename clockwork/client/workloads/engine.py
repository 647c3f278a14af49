"""The workload engine: loads models, then drives request streams from arrival processes.

One thread, one heap. Open-loop streams keep exactly one entry in the heap (their next
arrival time); closed-loop streams send the next request from the previous one's callback;
timers (SLO or rate changes) are heap entries too. Between due events the engine waits in
`Client.poll` for answers, so it never sleeps per request and never spins.

Inputs: one zmq.Frame of zeros per distinct input size, shared by every model instance of
that size and sent by reference with every request; with inputs disabled nothing is sent and
the controller generates inputs.
"""
from __future__ import annotations

import heapq
import itertools
import random
import time
from typing import Callable, Iterator

import zmq

from ...config import model_dir
from ...status import Status
from ...transport.schema import InferResponse
from ..api import SEND_FAILED, Client
from ..arrivals import ClosedLoop
from ..stats import Stats


class Model:
    """One model instance as a workload sees it; slo_factor may change while running."""
    __slots__ = ("id", "name", "input_size", "output_size", "slo_factor", "input_frame")

    def __init__(self, model_id: int, name: str, input_size: int, output_size: int, input_frame=None):
        self.id = model_id
        self.name = name
        self.input_size = input_size
        self.output_size = output_size
        self.slo_factor = 0.0
        self.input_frame = input_frame

    def __repr__(self):
        return f"Model({self.id}, {self.name!r})"


class WorkloadError(Exception):
    """A workload cannot run with the given parameters or models (printed, exit 1)."""


def zoo_models(explicit: str | None = None) -> list[str]:
    """Names of the models a workload may load: --models, else the model directories in the
    model directory (config.model_dir(), as every command finds it) if it exists here, else the
    emulated zoo (clockwork/conf/profiles/h200.toml)."""
    if explicit:
        return [m.strip() for m in explicit.split(",") if m.strip()]
    mdir = model_dir()
    if mdir.is_dir():
        found = sorted(p.name for p in mdir.iterdir() if (p / "model.json").exists())
        if found:
            return found
    from ...model.zoo import load_profile
    return sorted(load_profile("h200").get("models", {}))


class Engine:
    def __init__(self, client: Client, stats: Stats, *, send_inputs: bool = True, seed: int = 0,
                 duration_s: float | None = None, slo_ns: int = 0, log=print, tsv: bool = False,
                 zoo: list[str] | None = None):
        self.client = client
        self.zoo = zoo if zoo is not None else zoo_models()
        self.stats = stats
        self.send_inputs = send_inputs
        self.seed = seed
        self.duration_s = duration_s
        self.slo_ns = slo_ns
        self.log = log
        self.tsv = tsv
        self.models: list[Model] = []
        self._frames: dict[int, zmq.Frame] = {}
        self._heap: list = []
        self._ids = itertools.count()
        self._closed: list["_ClosedStream"] = []
        self.running = False
        self.t0 = 0.0
        self.now = 0.0                        # seconds since start, updated by the loop
        self.stop_reason = ""
        self.max_lag_s = 0.0                  # how far behind schedule a request was sent, at worst
        self.late_sends = 0                   # open-loop requests sent more than 1 ms after their time
        self.timed_sends = 0                  # open-loop requests (the ones with an arrival time)
        self.outstanding_at_end = 0

    # ------------------------------------------------------------------ setup

    def load(self, path: str, copies: int = 1) -> list[Model]:
        """LoadModel(path, copies); returns one Model per copy (consecutive ids)."""
        self.log(f"Loading {path} x{copies}")
        first, n, r = self.client.load_model(path, copies)
        frame = None
        if self.send_inputs:
            frame = self._frames.get(r.input_size)
            if frame is None:
                frame = self._frames[r.input_size] = zmq.Frame(bytes(r.input_size))
        models = [Model(first + i, path, r.input_size, r.output_size, frame) for i in range(n)]
        self.models.extend(models)
        return models

    def _push(self, t: float, handler) -> None:
        heapq.heappush(self._heap, (t, next(self._ids), handler))

    def open_loop(self, model: Model, times: Iterator[float], user_id: int = 0) -> None:
        """Send one request to `model` at each time the arrival generator yields."""
        s = _OpenStream(self, model, iter(times), user_id)
        s.schedule()

    def open_loop_spread(self, models: list[Model], times: Iterator[float], seed: int | str,
                         user_id: int = 0) -> None:
        """Send one request at each time the arrival generator yields, each to one of `models`
        drawn at random: for Poisson arrivals the same as one stream per model at an equal
        share of the rate (a thinned Poisson process), with one generator for all of them."""
        s = _SpreadStream(self, list(models), iter(times), user_id, random.Random(seed))
        s.schedule()

    def closed_loop(self, models: list[Model], spec: ClosedLoop, user_id: int = 0, seed: int = 0) -> None:
        """Keep spec.concurrency requests in flight, round-robin over `models`."""
        s = _ClosedStream(self, list(models), spec, user_id)
        self._closed.append(s)
        for t in spec.initial_times(seed):
            self._push(t, s)

    def bursty_closed_loop(self, model: Model, concurrency: int, windows: Iterator[tuple[float, float]],
                           user_id: int = 0) -> None:
        s = _BurstyClosedStream(self, model, concurrency, iter(windows), user_id)
        self._closed.append(s)
        s.schedule()

    def every(self, period_s: float, fn: Callable[["Engine"], bool], first: float | None = None) -> None:
        """Call fn(engine) every period_s (first at `first`, default one period in); stop
        repeating when it returns False."""
        self._push(period_s if first is None else first, _Timer(self, period_s, fn))

    def stop(self, reason: str = "") -> None:
        if self.running:
            self.running = False
            self.stop_reason = reason

    # ------------------------------------------------------------------ per request

    def send(self, model: Model, callback, user_id: int) -> None:
        self.stats.on_sent()
        self.client.infer_async(model.id, callback, model.input_frame, 1, model.slo_factor,
                                self.slo_ns, user_id)

    def account(self, model: Model, user_id: int, resp, latency_s: float) -> None:
        self.stats.on_answer(resp.status, latency_s, type(resp) is InferResponse and resp.within_slo)
        if self.tsv:
            self.stats.record(time.perf_counter() - latency_s, resp.request_id, model.id, user_id, 1,
                              model.slo_factor, resp.status, latency_s, getattr(resp, "latency_ns", 0))

    # ------------------------------------------------------------------ run

    def run(self, drain_s: float = 5.0) -> None:
        """Wait until the controller is ready (ls), run until the duration passes or every
        stream has ended, then wait up to drain_s for outstanding answers."""
        self.client.ls()
        self.log(f"Starting workload with {len(self.models)} model instances")
        clock = time.perf_counter
        self.t0 = clock()
        self.stats.t0 = self.stats._interval_start = self.t0
        self.running = True
        heap, pop, client, stats = self._heap, heapq.heappop, self.client, self.stats
        end = self.duration_s if self.duration_s is not None else float("inf")
        while self.running:
            now = self.now = clock() - self.t0
            if now >= end:
                self.stop(f"duration {self.duration_s:g} s reached")
                break
            fired = 0
            while heap and heap[0][0] <= now and fired < 2000:
                t, _, handler = pop(heap)
                if type(handler) in _TIMED:     # only arrivals have a time to be late for
                    lag = now - t
                    self.timed_sends += 1
                    if lag > 0.001:
                        self.late_sends += 1
                        if lag > self.max_lag_s:
                            self.max_lag_s = lag
                self.now = t
                handler.fire(t)
                fired += 1
            if not self.running:
                break
            if fired:
                client.poll(0)
            else:
                if not heap and not client.outstanding and not any(s.active for s in self._closed):
                    self.stop("workload finished")
                    break
                nxt = heap[0][0] if heap else end
                client.poll(max(0.0, min(nxt, end, now + 0.1) - now))
            stats.maybe_print()
        self.log(f"Stopping: {self.stop_reason}")
        self.stats.stop()
        if self.late_sends:
            frac = self.late_sends / self.timed_sends
            self.log(f"note: {self.late_sends} requests ({100 * frac:.2f}%) left more than 1 ms after their "
                     f"arrival time (worst {self.max_lag_s * 1e3:.1f} ms)"
                     + (": this client could not keep up" if frac > 0.01 else ""))
        left = self.client.drain(drain_s)
        if left:
            self.log(f"{left} requests still unanswered after {drain_s:g} s; giving up on them")
            self.client.abandon()
        self.outstanding_at_end = left


SEND_RETRY_S = 0.01     # a closed loop whose send failed (queue full) tries again this much later


class _Later:
    """A heap entry that calls fn() once (only made on the rare send failure)."""
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def fire(self, t):
        self.fn()


class _OpenStream:
    __slots__ = ("engine", "model", "times", "user_id", "active")

    def __init__(self, engine, model, times, user_id):
        self.engine, self.model, self.times, self.user_id = engine, model, times, user_id
        self.active = True

    def schedule(self):
        t = next(self.times, None)
        if t is None:
            self.active = False
        else:
            self.engine._push(t, self)

    def fire(self, t):
        if self.engine.running:
            self.engine.send(self.model, self.on_reply, self.user_id)
            self.schedule()

    def on_reply(self, resp, data, latency_s):
        self.engine.account(self.model, self.user_id, resp, latency_s)


class _SpreadStream(_OpenStream):
    """An open loop whose requests go to one of several models, drawn at random."""
    __slots__ = ("models", "pick")

    def __init__(self, engine, models, times, user_id, rng):
        super().__init__(engine, None, times, user_id)
        self.models = models
        self.pick = rng.randrange

    def fire(self, t):
        if self.engine.running:
            m = self.models[self.pick(len(self.models))]
            self.engine.send(m, lambda r, d, l, m=m: self.engine.account(m, self.user_id, r, l), self.user_id)
            self.schedule()


_TIMED = (_OpenStream, _SpreadStream)


class _ClosedStream:
    __slots__ = ("engine", "models", "spec", "user_id", "issued", "inflight", "_rr")

    def __init__(self, engine, models, spec, user_id):
        self.engine, self.models, self.spec, self.user_id = engine, models, spec, user_id
        self.issued = self.inflight = 0
        self._rr = 0

    @property
    def active(self):
        return self.inflight > 0

    def fire(self, t):                     # an initial (possibly jittered) request
        self._issue()

    def _issue(self):
        e = self.engine
        if not e.running or (self.spec.max_requests is not None and self.issued >= self.spec.max_requests):
            return
        m = self.models[self._rr]
        self._rr = (self._rr + 1) % len(self.models)
        self.issued += 1
        self.inflight += 1
        e.send(m, lambda r, d, l, m=m: self.on_reply(m, r, l), self.user_id)

    def on_reply(self, model, resp, latency_s):
        self.inflight -= 1
        self.engine.account(model, self.user_id, resp, latency_s)
        if resp.status == SEND_FAILED:         # not re-sent from inside the send: no recursion
            self.issued -= 1
            self.engine._push(self.engine.now + SEND_RETRY_S, _Later(self._issue))
        else:
            self._issue()


class _BurstyClosedStream:
    __slots__ = ("engine", "model", "concurrency", "windows", "user_id", "inflight", "until", "active")

    def __init__(self, engine, model, concurrency, windows, user_id):
        self.engine, self.model, self.concurrency = engine, model, concurrency
        self.windows, self.user_id = windows, user_id
        self.inflight = 0
        self.until = -1.0
        self.active = True

    def schedule(self):
        now = self.engine.now
        for begin, end in self.windows:
            if end > now:
                self.until = end
                self.engine._push(max(begin, now), self)
                return
        self.active = False

    def fire(self, t):
        for _ in range(self.concurrency):
            self._issue()

    def _issue(self):
        if self.engine.running:
            self.inflight += 1
            self.engine.send(self.model, self.on_reply, self.user_id)

    def on_reply(self, resp, data, latency_s):
        self.inflight -= 1
        self.engine.account(self.model, self.user_id, resp, latency_s)
        if self.engine.now < self.until:
            if resp.status == SEND_FAILED:
                self.engine._push(self.engine.now + SEND_RETRY_S, _Later(self._issue))
            else:
                self._issue()
        elif self.inflight == 0:
            self.schedule()


class _Timer:
    __slots__ = ("engine", "period", "fn")

    def __init__(self, engine, period, fn):
        self.engine, self.period, self.fn = engine, period, fn

    def fire(self, t):
        if self.fn(self.engine) is not False:
            self.engine._push(t + self.period, self)


__all__ = ["Engine", "Model", "WorkloadError", "zoo_models", "Status"]
