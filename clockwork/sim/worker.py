"""A simulated worker process: clockwork's WorkerRuntime over the emulated backend.

The runtime is the production one, untouched: it gets every action, its `received` time and its
timer deadlines in this worker's own clock, which is skewed (a fixed offset) and drifting (ppm)
against simulated time, so the controller's clock conversion is exercised as on real hosts.
What this module adds is only what worker/server.py does around the runtime in a real process
(decode, hand over, stamp `sent`, encode, heartbeats) -- kept to a few lines here because that
edge is tied to a real socket and the wall clock -- plus the faults a simulation may inject:

    crash()/restart()   the process dies (its connection closes) and later starts empty
    stall(until)        the process freezes (SIGSTOP, a long GC, a full disk): it reads and
                        runs nothing, then catches up; the controller sees only silence
    message_cost_ns     optional CPU per action read: the process is busy (as in a stall) for
                        that long per message, so a loaded worker receives actions late
    slowdown            exec and load times multiplied (a throttled or shared GPU)
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from ..model.emulated import EmulatedBackend
from ..status import Status
from ..transport import schema as s
from ..transport.sockets import send as send_message
from ..worker.runtime import TAGS, WorkerRuntime

FAR = 1 << 62


class SimBackend(EmulatedBackend):
    """The emulated backend with seeded exec-time noise (log-normal, sigma `noise`) and a
    `slowdown` factor on exec and weight loads."""

    def __init__(self, num_gpus: int, rng: random.Random, noise: float = 0.0, **pools):
        super().__init__(num_gpus, **pools)
        self.rng = rng
        self.noise = noise
        self.slowdown = 1.0

    def _stretch(self, op):
        f = self.slowdown
        if self.noise:
            f *= math.exp(self.rng.gauss(0.0, self.noise))
        if f != 1.0:
            op.duration = int(op.duration * f)
            op.end = op.begin + op.duration
        return op

    def load_weights(self, *args, **kw):          # whatever the Backend interface passes
        return self._stretch(super().load_weights(*args, **kw))

    def execute(self, *args, **kw):
        return self._stretch(super().execute(*args, **kw))


class SimWorker:
    def __init__(self, loop, index: int, gpus: int, model_dir: Path, worker_config: dict, link,
                 offset_ns: int = 0, drift_ppm: float = 0.0, noise: float = 0.0, seed: int = 0,
                 device_name: str = "Emulated GPU", message_cost_ns: int = 0):
        self.loop = loop
        self.index = index
        self.gpus = gpus
        self.model_dir = Path(model_dir)
        self.cfg = worker_config
        self.link = link                 # network Link whose ROUTER end is this worker
        link.router.on_message = self._on_message
        link.router.frames = False       # _handle reads bytes
        self.offset = int(offset_ns)
        self.drift = float(drift_ppm)
        self.rng = random.Random(seed)
        self.noise = noise
        self.device_name = device_name
        self.message_cost = message_cost_ns  # CPU per action read: the process is busy meanwhile
        self.heartbeat_ns = int(worker_config["heartbeat_interval_ms"] * 1e6)
        self.rt: WorkerRuntime | None = None
        self.backend: SimBackend | None = None
        self.alive = False
        self.incarnation = 0
        self.stalled_until = 0
        self.slowdown = 1.0
        self.controller: bytes | None = None
        self._wake = FAR
        self.start()

    # ------------------------------------------------------------------ the worker's clock
    def clock(self) -> int:
        t = self.loop.now
        if not self.drift:
            return self.offset + t
        return self.offset + t + int(t * self.drift / 1e6)

    def to_sim(self, w: int) -> int:
        """The earliest simulated time at which clock() >= w."""
        if not self.drift:
            return w - self.offset
        t = int((w - self.offset) / (1.0 + self.drift / 1e6))
        while self.offset + t + int(t * self.drift / 1e6) < w:
            t += 1
        return t

    # ------------------------------------------------------------------ process lifecycle
    def start(self) -> None:
        cfg = self.cfg
        pools = dict(page_size=int(cfg["page_size"]),
                     total_pages=int(cfg["weights_cache_size"]) // int(cfg["page_size"]),
                     io_pool_size=int(cfg["io_pool_size"]), workspace_pool_size=int(cfg["workspace_pool_size"]))
        self.backend = SimBackend(self.gpus, self.rng, self.noise, device_name=self.device_name, **pools)
        self.backend.slowdown = self.slowdown
        self.rt = WorkerRuntime(self.backend, self.model_dir, self._send, clock=self.clock, **pools)
        self.alive = True
        self.incarnation += 1
        self.controller = None
        self.link.router.inbox.clear()
        self._wake = FAR
        self.loop.after(self.heartbeat_ns, self._heartbeat, self.incarnation)

    def crash(self) -> None:
        """The process dies: state gone, connection closed."""
        if not self.alive:
            return
        self.alive = False
        self.rt = None
        self.link.net.peer_down(self.link)

    def restart(self) -> None:
        if self.alive:
            return
        self.start()
        self.link.net.peer_up(self.link)

    def stall(self, until: int) -> None:
        """Freeze until `until` (simulated ns): nothing is read, run or sent meanwhile."""
        if until > self.stalled_until:
            self.stalled_until = until
            self.loop.at(until, self._resume, self.incarnation)

    def set_slowdown(self, factor: float) -> None:
        self.slowdown = factor
        if self.backend is not None:
            self.backend.slowdown = factor

    def _resume(self, incarnation) -> None:
        if incarnation != self.incarnation or not self.alive or self.loop.now < self.stalled_until:
            return
        if self.message_cost:
            self._handle(1)                # the one whose reading just ended
            if self.link.router.inbox:     # then busy with the next
                self.stall(self.loop.now + self.message_cost)
        else:
            self._handle()
        self._advance(None)

    # ------------------------------------------------------------------ the edge
    def _on_message(self) -> None:
        if not self.alive or self.loop.now < self.stalled_until:
            return
        if self.message_cost:              # busy reading it; handled when that ends (_resume)
            self.stall(self.loop.now + self.message_cost)
            return
        self._handle()

    def _handle(self, limit: int = 1 << 30) -> None:
        inbox = self.link.router.inbox
        rt = self.rt
        while inbox and limit:
            limit -= 1
            frames = inbox.popleft()
            received = self.clock()
            ident = frames[0]
            try:
                msg = s.decode(frames[1], s.ACTION_DECODER)
            except s.ProtocolError as e:
                self._send(ident, s.ErrorResult(-1, 0, Status.BAD_MESSAGE, str(e), received), ())
                continue
            if msg.__class__ is s.ActionBatch:      # as worker/server.py: each entry on its own
                for action, data in s.unbatch(msg, frames[2:]):
                    if action.__class__ is s.BadEntry:
                        self._send(ident, s.ErrorResult(action.action_id, action.tag, Status.BAD_MESSAGE,
                                                        action.error, received), ())
                    else:
                        self._on_action(ident, action, data, received)
            else:
                self._on_action(ident, msg, frames[2:], received)
            rt.advance(self.clock())
        self._arm()

    def _on_action(self, ident: bytes, msg, data, received: int) -> None:
        cls = msg.__class__
        if ident != self.controller:          # worker/server.py: Reset makes a peer the controller
            if cls is s.Reset:
                if self.controller is not None:
                    self._send(self.controller, s.ErrorResult(
                        -1, TAGS[s.Reset], Status.NOT_CONTROLLER,
                        "another controller took this worker over (Reset)", received), ())
                self.controller = ident
            elif cls is not s.GetWorkerState:
                self._send(ident, s.ErrorResult(msg.action_id, TAGS.get(cls, 0), Status.NOT_CONTROLLER,
                                                "this worker serves another controller link: a controller "
                                                "must send Reset first", received), ())
                return
        try:
            self.rt.handle(msg, data, ident, received)
        except Exception as e:    # as worker/server.py: a bug costs one action
            self._send(ident, s.ErrorResult(msg.action_id, TAGS.get(cls, 0), Status.RUNTIME_ERROR,
                                            f"internal error: {e!r}", received), ())

    def _send(self, ident, msg, data) -> None:
        msg.sent = self.clock()
        send_message(self.link.router, msg, data, ident)

    def _arm(self) -> None:
        t = self.rt.next_time()
        if t is None:
            return
        ts = self.to_sim(t)
        if ts < self._wake:
            self._wake = ts
            self.loop.at(ts, self._advance, ts)

    def _advance(self, ts) -> None:
        if not self.alive or (ts is not None and ts != self._wake) or self.loop.now < self.stalled_until:
            return
        self._wake = FAR
        self.rt.advance(self.clock())
        self._arm()

    def _heartbeat(self, incarnation) -> None:
        if incarnation != self.incarnation or not self.alive:
            return
        self.loop.after(self.heartbeat_ns, self._heartbeat, incarnation)
        if self.controller is None or self.loop.now < self.stalled_until:
            return
        now = self.clock()
        self.link.router.send_multipart([self.controller, s.encode(
            s.Heartbeat(now, self.rt.stats.pending, self.rt.readings(now)))])
