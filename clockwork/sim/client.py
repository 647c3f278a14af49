"""The real workload engine (clockwork.client.workloads) driven in simulated time.

`SimClient` offers what the engine uses of clockwork.client.api.Client -- load_model, ls,
infer_async, outstanding -- speaking the real wire messages over a simulated link. Blocking
calls (load_model, ls) run the simulation until their answer arrives, retrying on INITIALIZING
as the real client does. `EngineDriver` replaces Engine.run()'s wall-clock loop: it fires the
engine's due arrival streams and timers at their simulated times; closed loops send their next
request from the response callback, as they do for real.

Every answer is counted per request id, so a request answered twice or never is reported.
"""
from __future__ import annotations

import heapq
import itertools

import zmq

from ..status import Status
from ..transport import schema as s

RETRY_NS = 1_000_000_000          # Client.retry_interval_s
FAR = 1 << 62


class ClientFailed(Exception):
    """A LoadModel or ls the workload needs failed (the message says why)."""


class SimClient:
    def __init__(self, loop, link):
        self.loop = loop
        self.sock = link.dealer
        self.sock.on_message = self._on_message
        self.sock.frames = False                  # _on_message reads bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple] = {}      # request id -> (callback, sent ns)
        self.answered = 0
        self.answered_unknown = 0                 # answers for ids not outstanding: duplicates
        self.before_answer = None                 # hooks around the callbacks (the driver's)
        self.on_answer = None
        self.address = "sim"
        self.epoch = 0                            # the controller's, from its LoadModel answers

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def _send(self, msg, callback, inputs=None) -> int:
        rid = msg.request_id
        self._pending[rid] = (callback, self.loop.now)
        header = s.encode(msg)
        if inputs is None:
            self.sock.send(header)
        else:
            self.sock.send(header, zmq.SNDMORE)
            self.sock.send(inputs)
        return rid

    def infer_async(self, model_id: int, callback, inputs=None, batch_size: int = 1,
                    slo_factor: float = 0.0, slo_ns: int = 0, user_id: int = 0, timeout_s=None) -> int:
        rid = next(self._ids)
        return self._send(s.InferRequest(rid, model_id, batch_size, slo_factor, slo_ns, user_id, self.epoch,
                                         self.loop.now), callback, inputs)

    def _on_message(self) -> None:
        inbox = self.sock.inbox
        now = self.loop.now
        if self.before_answer is not None:
            self.before_answer()
        while inbox:
            frames = inbox.popleft()
            msg = s.decode(frames[0], s.RESPONSE_DECODER)
            entry = self._pending.pop(msg.request_id, None)
            if entry is None:
                self.answered_unknown += 1
                continue
            self.answered += 1
            cb, sent = entry
            cb(msg, frames[1:], (now - sent) / 1e9)
        if self.on_answer is not None:
            self.on_answer()

    # ------------------------------------------------------------------ blocking calls
    def _call(self, make, what: str):
        """Send, run the simulation until answered; resend while the controller initialises."""
        while True:
            box = []
            self._send(make(next(self._ids)), lambda r, d, lat: box.append(r))
            self.loop.run(FAR, done=lambda: bool(box))
            if not box:
                raise ClientFailed(f"{what}: no answer (the simulation ran out of events)")
            r = box[0]
            if r.status != Status.INITIALIZING:
                return r
            t = self.loop.now + RETRY_NS
            self.loop.run(t)

    def load_model(self, path: str, copies: int = 1, timeout_s=None):
        r = self._call(lambda rid: s.LoadModelRequest(rid, path, copies), f"load model {path!r} x{copies}")
        if r.status != Status.SUCCESS:
            raise ClientFailed(f"load model {path!r} x{copies}: status {r.status}: {r.message}")
        self.epoch = r.epoch
        return r.model_id, r.copies, r

    def ls(self, timeout_s=None):
        r = self._call(lambda rid: s.LsRequest(rid), "ls")
        if r.status != Status.SUCCESS:
            raise ClientFailed(f"ls: status {r.status}: {r.message}")
        return list(r.models)


class EngineDriver:
    """Engine.run() in simulated time: the engine's heap entries (seconds since the start)
    fire at t0 + their time; the run stops sending at the duration."""

    def __init__(self, loop, engine, client: SimClient, duration_ns: int):
        self.loop = loop
        self.engine = engine
        self.client = client
        self.t0 = 0
        self.end = 0
        self.duration_ns = duration_ns
        self._armed = FAR
        client.before_answer = self._set_now
        client.on_answer = self._arm

    def start(self) -> None:
        e = self.engine
        self.t0 = self.loop.now
        self.end = self.t0 + self.duration_ns
        e.t0 = e.now = 0.0
        e.stats.t0 = e.stats._interval_start = 0.0
        e.running = True
        self.loop.at(self.end, self._stop)
        self._arm()

    def _stop(self, _=None) -> None:
        self.engine.stop(f"duration {self.duration_ns / 1e9:g} s reached")

    def _now_s(self) -> float:
        return (self.loop.now - self.t0) / 1e9

    def _arm(self) -> None:
        heap = self.engine._heap
        if not self.engine.running or not heap:
            return
        ts = heap[0][0]
        t = self.t0 + int(ts * 1e9) + 1          # not before the float time, at most 1 ns after
        if t < self._armed and t < self.end:
            self._armed = t
            self.loop.at(t, self._fire, ts)

    def _fire(self, ts) -> None:
        t = self.loop.now
        if t != self._armed:
            return
        self._armed = FAR
        e = self.engine
        heap, pop = e._heap, heapq.heappop
        limit = max(ts, (t - self.t0) / 1e9)     # everything due by now, the armed entry included
        while e.running and heap and heap[0][0] <= limit:
            due, _, handler = pop(heap)
            e.now = due
            handler.fire(due)
        e.now = self._now_s()
        self._arm()

    def _set_now(self) -> None:
        self.engine.now = self._now_s()
