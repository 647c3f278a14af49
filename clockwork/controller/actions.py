"""The actions a controller has in flight, from the scheduler's send to the result's delivery:
the per-action half of worker_links.py, in plain classes so that the opt-in build compiles
them (docs/compiled.md).

An action leaves through its worker's clock boundary (the copy on the wire has its window in
the worker's clock; the scheduler keeps its own) and waits on the link until the loop pass
that made it sends it (`send_held`, as one ActionBatch when there are several). Results come
back the same way, read entry by entry from a ResultBatch, converted to controller time, and
delivered once: to the scheduler, or to the edge callback the action was sent with. A send
that fails is not reported from inside the send (the scheduler would be called back while it
is sending): it becomes a WORKER_LOST result delivered after the current tick.

What is not per action (heartbeats' worker state, a worker refusing us, loss and rejoin,
probes) is worker_links.py's: this class calls back into the controller for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import zmq

from ..id_ranges import IdRanges
from ..status import Status
from ..transport import schema as s
from ..transport.clocksync import ClockSync
from ..transport.schema import ProtocolError
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, recv, send
from .logs import TsvLog, action_row
from .stats import ControllerStats

DRAIN_BATCH = 256           # messages read from one socket before the loop looks elsewhere


class WorkerLink:
    """One worker as the controller sees it: its socket, clock estimate and actions in flight."""

    def __init__(self, worker_id: int, address: str, sock: Any):
        self.id = worker_id
        self.address = address
        self.sock: Any = sock       # a DEALER (or the simulator's in-memory socket)
        self.sync = ClockSync()
        self.state: s.WorkerState | None = None
        self.alive = False          # has answered since (re)connecting
        self.joined = False         # scheduler knows about it
        self.last_heard = 0
        self.last_probe = 0
        self.pending: set[int] = set()
        self.readings: list = []
        self.late = 0               # results of actions already failed (worker was lost): discarded
        self.taken = False          # another controller's Reset took it over: no probes until reconnected
        self.monitor: Any = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.outbox: list[tuple[int, Any, Sequence]] = []   # [(action id, wire action, data frames)] not yet sent


class Pending:
    """An action sent and not yet answered."""

    def __init__(self, worker: WorkerLink, action: Any, sent: int, expected_end: int,
                 on_done: Callable[[WorkerLink, Any], None] | None, context: tuple[int, int, int] | None):
        self.worker = worker
        self.action = action
        self.sent = sent
        self.expected_end = expected_end
        self.on_done = on_done      # None: the scheduler's; else an edge callback
        self.context = context      # Scheduler.log_context() when sent, if the action log is on


class Actions:
    """The actions in flight and their results. `controller` is asked for what may change
    under this object (its scheduler and telemetry) and for what is not per action."""

    def __init__(self, controller: Any, clock: Callable[[], int], workers: list[WorkerLink],
                 stats: ControllerStats, action_log: TsvLog, pad: IdRanges[list[int]], batch: bool,
                 touched: set):
        self.controller = controller
        self.clock = clock
        self.workers = workers
        self.stats = stats
        self.action_log = action_log
        self.pad = pad              # model ids -> model.format.pad_table, for goodput
        self.batch = batch          # [controller] batch_actions: one message per worker per pass
        self.touched = touched      # sockets the loop's wait() must ask (sockets.wait)
        self.pending: dict[int, Pending] = {}
        self.outgoing: list[WorkerLink] = []        # links with actions held
        self.failed_sends: list[tuple[int, str]] = []   # (action id, why), delivered after the tick

    def send(self, worker_id: int, action: Any, data: Sequence = (), expected_end: int = 0,
             on_done: Callable[[WorkerLink, Any], None] | None = None) -> None:
        """The Outbox's send (scheduler.Outbox.send_action); `on_done`: an edge callback
        instead of the scheduler's on_result."""
        w = self.workers[worker_id]
        now = self.clock()
        aid = action.action_id
        context = None
        if on_done is None and self.action_log.on:
            context = self.controller.scheduler.log_context(worker_id, action.gpu_id, action.model_id)
        self.pending[aid] = Pending(w, action, now, expected_end, on_done, context)
        w.pending.add(aid)
        wire = w.sync.action_to_worker(action)
        if self.batch:
            if not w.outbox:
                self.outgoing.append(w)
            w.outbox.append((aid, wire, data))
            return
        self.touched.add(w.sock)
        try:
            send(w.sock, wire, data, flags=NOBLOCK)
        except zmq.Again:
            self.failed_sends.append((aid, f"worker {w.address} send queue full"))

    def send_held(self) -> None:
        """Send the actions held: one message per worker, an ActionBatch when there are
        several. A send that fails fails each of its actions, delivered as for a single send."""
        for w in self.outgoing:
            held = w.outbox
            if not held:        # dropped when the worker was lost
                continue
            w.outbox = []
            self.touched.add(w.sock)
            try:
                if len(held) == 1:
                    _, wire, data = held[0]
                    send(w.sock, wire, data, flags=NOBLOCK)
                else:
                    batch, frames = s.batch(s.ActionBatch, [a for _, a, _ in held], [d for _, _, d in held])
                    send(w.sock, batch, frames, flags=NOBLOCK)
            except zmq.Again:
                for aid, _, _ in held:
                    self.failed_sends.append((aid, f"worker {w.address} send queue full"))
        self.outgoing.clear()

    def deliver_failed_sends(self) -> None:
        failed = list(self.failed_sends)      # (failing may queue more: the next call's)
        self.failed_sends.clear()
        for aid, why in failed:
            self.fail(aid, Status.WORKER_LOST, why)

    def drain(self, w: WorkerLink) -> None:
        """Read up to DRAIN_BATCH messages. Mostly called when wait() saw one waiting, so the
        socket is asked (ZMQ_EVENTS, two system calls) after each message, not before."""
        sock = w.sock
        for _ in range(DRAIN_BATCH):
            try:
                _, msg, data = recv(sock, s.RESULT_DECODER, routed=False, flags=NOBLOCK)
            except zmq.Again:
                self.touched.add(sock)
                return
            except ProtocolError as e:
                self.controller.out(f"Worker {w.address}: {e}")
            else:
                if type(msg) is s.ResultBatch:
                    self.on_batch(w, msg, data, self.clock())
                else:
                    self.on_message(w, msg, data, self.clock())
            if not sock.get(EVENTS) & POLLIN:
                return
        self.touched.add(sock)     # messages left for the next pass

    def on_batch(self, w: WorkerLink, batch: s.ResultBatch, data: Any, now: int) -> None:
        for result, frames in s.unbatch(batch, data):
            if type(result) is s.BadEntry:
                self.bad_entry(w, result, now)
            else:
                self.on_message(w, result, frames, now)

    def bad_entry(self, w: WorkerLink, entry: s.BadEntry, now: int) -> None:
        """A result in a batch that could not be read: its action (if it names one of ours on
        this link) fails with BAD_MESSAGE now instead of waiting for the worker to be lost."""
        w.last_heard = now
        self.controller.out(f"Worker {w.address}: {entry.error}")
        p = self.pending.get(entry.action_id)
        if p is not None and p.worker is w:
            self.fail(entry.action_id, Status.BAD_MESSAGE, f"worker {w.address}: {entry.error}")

    def on_message(self, w: WorkerLink, msg: Any, data: Sequence, now: int) -> None:
        """A result (or heartbeat, or refusal) from `w`, read `now`."""
        w.last_heard = now
        t = type(msg)
        if t is s.ErrorResult and msg.status == Status.NOT_CONTROLLER:
            self.controller._refused(w, msg, now)
            return
        if t is s.Heartbeat:
            w.readings = msg.readings
            if not w.alive and not w.pending:
                self.controller._probe(w, now)
            return
        aid = msg.action_id
        p = self.pending.get(aid)
        if p is None or p.worker is not w:
            w.late += 1   # late result of an action already failed (worker was lost): discard
            return
        del self.pending[aid]
        w.pending.discard(aid)
        # a round trip for the clock estimate; from here on every time is controller time
        self.deliver(p, w.sync.receive(msg, p.sent, now), data, now)

    def deliver(self, p: Pending, msg: Any, data: Sequence, now: int) -> None:
        w = p.worker
        action = p.action
        t = type(msg)
        if t is s.InferResult:
            self.stats.action_done(w.id, action.gpu_id, True, msg.exec_duration, now - p.sent, msg.gpu_clock)
        elif t is s.LoadWeightsResult:
            self.stats.action_done(w.id, action.gpu_id, False, msg.duration, now - p.sent)
        if self.action_log.on and (p.context is not None or t is s.ErrorResult):
            pad = self.pad.find(action.model_id) if t is s.InferResult else None
            self.action_log.add(action_row(p, msg, now, pad[1][action.batch_size] if pad else 0))
        telemetry = self.controller.telemetry
        if telemetry is not None:   # telemetry: per action counters
            telemetry.action_done(w, action, msg, now)
        if p.on_done is not None:
            p.on_done(w, msg)
        else:
            self.controller.scheduler.on_result(w.id, action, msg, data)

    def fail(self, aid: int, status: int, message: str) -> None:
        """The action's result is an ErrorResult(status) made here (worker lost, send failed,
        unreadable result), if it is still in flight."""
        p = self.pending.pop(aid, None)
        if p is None:
            return
        p.worker.pending.discard(aid)
        err = s.ErrorResult(aid, getattr(type(p.action), "__struct_config__").tag, status, message)
        self.deliver(p, err, [], self.clock())
