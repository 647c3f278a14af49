"""The controller's links to its workers: sending actions (through the clock boundary, a failed
send queued until after the tick), reading results and heartbeats, probing, loss and rejoin
(docs/reliability.md says what is promised while workers fail).

Actions to one worker are held on its link until the loop pass that made them sends them
(`send_actions`, after every tick and before the loop waits), as one ActionBatch when there are
several; workers answer likewise with a ResultBatch, read entry by entry here.

WorkerLinks is one part of Controller (controller/server.py), a mixin: it works on the
controller's workers, pending actions, scheduler, logs, stats and telemetry.
"""
from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..status import Status
from ..transport import schema as s
from ..transport.clocksync import ClockSync
from ..transport.schema import ProtocolError
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, recv, send
from .logs import action_row

DRAIN_BATCH = 256           # messages read from one socket before the loop looks elsewhere


class WorkerLink:
    __slots__ = ("id", "address", "sock", "sync", "state", "alive", "joined", "last_heard",
                 "last_probe", "pending", "readings", "late", "monitor", "taken", "outbox")

    def __init__(self, worker_id: int, address: str, sock: zmq.Socket):
        self.id = worker_id
        self.address = address
        self.sock = sock
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
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.outbox: list = []      # [(action id, wire action, data frames)] not yet sent


class Pending:
    """An action sent and not yet answered."""
    __slots__ = ("worker", "action", "sent", "expected_end", "on_done", "context")

    def __init__(self, worker, action, sent, expected_end, on_done, context):
        self.worker = worker
        self.action = action
        self.sent = sent
        self.expected_end = expected_end
        self.on_done = on_done      # None: the scheduler's; else an edge callback
        self.context = context      # Scheduler.log_context() when sent, if the action log is on


class WorkerLinks:
    def send_action(self, worker_id: int, action, data=(), expected_end: int = 0, on_done=None) -> None:
        """The Outbox's send: `action` stays in controller time (the scheduler's copy); the copy
        on the wire has its window in the worker's clock. A send that fails is not reported
        from in here (the scheduler would be called back while it is sending): it becomes a
        WORKER_LOST result delivered after the current tick."""
        w = self.workers[worker_id]
        now = self.clock()
        aid = action.action_id
        context = None
        if on_done is None and self.action_log.on:
            context = self.scheduler.log_context(worker_id, action.gpu_id, action.model_id)
        self.pending[aid] = Pending(w, action, now, expected_end, on_done, context)
        w.pending.add(aid)
        wire = w.sync.action_to_worker(action)
        if self.batch_actions:
            if not w.outbox:
                self._outgoing.append(w)
            w.outbox.append((aid, wire, data))
            return
        self._touched.add(w.sock)
        try:
            send(w.sock, wire, data, flags=NOBLOCK)
        except zmq.Again:
            self._failed_sends.append((aid, f"worker {w.address} send queue full"))

    def send_actions(self) -> None:
        """Send the actions held: one message per worker, an ActionBatch when there are
        several. A send that fails fails each of its actions, delivered as for a single send."""
        for w in self._outgoing:
            held = w.outbox
            if not held:        # dropped when the worker was lost
                continue
            w.outbox = []
            self._touched.add(w.sock)
            try:
                if len(held) == 1:
                    _, wire, data = held[0]
                    send(w.sock, wire, data, flags=NOBLOCK)
                else:
                    batch, frames = s.batch(s.ActionBatch, [a for _, a, _ in held], [d for _, _, d in held])
                    send(w.sock, batch, frames, flags=NOBLOCK)
            except zmq.Again:
                self._failed_sends.extend((aid, f"worker {w.address} send queue full") for aid, _, _ in held)
        self._outgoing.clear()

    def _deliver_failed_sends(self) -> None:
        failed, self._failed_sends = self._failed_sends, []
        for aid, why in failed:
            self._fail_action(aid, Status.WORKER_LOST, why)

    def _drain_worker(self, w: WorkerLink) -> None:
        """Read up to DRAIN_BATCH messages. Mostly called when wait() saw one waiting, so the
        socket is asked (ZMQ_EVENTS, two system calls) after each message, not before."""
        sock = w.sock
        for _ in range(DRAIN_BATCH):
            try:
                _, msg, data = recv(sock, s.RESULT_DECODER, routed=False, flags=NOBLOCK)
            except zmq.Again:
                self._touched.add(sock)
                return
            except ProtocolError as e:
                self.out(f"Worker {w.address}: {e}")
            else:
                if type(msg) is s.ResultBatch:
                    self._on_result_batch(w, msg, data, self.clock())
                else:
                    self._on_worker_message(w, msg, data, self.clock())
            if not sock.get(EVENTS) & POLLIN:
                return
        self._touched.add(sock)     # messages left for the next pass

    def _on_result_batch(self, w: WorkerLink, batch: s.ResultBatch, data, now: int) -> None:
        for result, frames in s.unbatch(batch, data):
            if type(result) is s.BadEntry:
                self._bad_result(w, result, now)
            else:
                self._on_worker_message(w, result, frames, now)

    def _bad_result(self, w: WorkerLink, entry: s.BadEntry, now: int) -> None:
        """A result in a batch that could not be read: its action (if it names one of ours on
        this link) fails with BAD_MESSAGE now instead of waiting for the worker to be lost."""
        w.last_heard = now
        self.out(f"Worker {w.address}: {entry.error}")
        p = self.pending.get(entry.action_id)
        if p is not None and p.worker is w:
            self._fail_action(entry.action_id, Status.BAD_MESSAGE, f"worker {w.address}: {entry.error}")

    def _on_worker_message(self, w: WorkerLink, msg, data, now: int) -> None:
        w.last_heard = now
        if type(msg) is s.ErrorResult and msg.status == Status.NOT_CONTROLLER:
            self._refused(w, msg, now)
            return
        if type(msg) is s.Heartbeat:
            w.readings = msg.readings
            if not w.alive and not w.pending:
                self._probe(w, now)
            return
        p = self.pending.get(msg.action_id)
        if p is None or p.worker is not w:
            w.late += 1   # late result of an action already failed (worker was lost): discard
            return
        del self.pending[msg.action_id]
        w.pending.discard(msg.action_id)
        # a round trip for the clock estimate; from here on every time is controller time
        self._deliver(p, w.sync.receive(msg, p.sent, now), data, now)

    def _deliver(self, p: Pending, msg, data, now: int) -> None:
        w = p.worker
        action = p.action
        t = type(msg)
        if t is s.InferResult:
            self.stats.action_done(w.id, action.gpu_id, True, msg.exec_duration, now - p.sent, msg.gpu_clock)
        elif t is s.LoadWeightsResult:
            self.stats.action_done(w.id, action.gpu_id, False, msg.duration, now - p.sent)
        if self.action_log.on and (p.context is not None or t is s.ErrorResult):
            pad = self._pad.get(getattr(action, "model_id", -1)) if t is s.InferResult else None
            self.action_log.add(action_row(p, msg, now, pad[action.batch_size] if pad else 0))
        if self.telemetry is not None:   # telemetry: per action counters
            self.telemetry.action_done(w, action, msg, now)
        if p.on_done is not None:
            p.on_done(w, msg)
        else:
            self.scheduler.on_result(w.id, action, msg, data)

    def _fail_action(self, aid: int, status: int, message: str) -> None:
        p = self.pending.pop(aid, None)
        if p is None:
            return
        p.worker.pending.discard(aid)
        err = s.ErrorResult(aid, getattr(type(p.action), "__struct_config__").tag, status, message)
        self._deliver(p, err, [], self.clock())

    def _probe(self, w: WorkerLink, now: int) -> None:
        """(Re)connect handshake: Reset, then GetWorkerState; the answer marks the worker alive."""
        w.last_probe = now
        if any(type(self.pending[a].action) is s.GetWorkerState for a in w.pending):
            return
        self.send_action(w.id, s.Reset(next(self.action_ids)), on_done=lambda w, r: None)
        self.send_action(w.id, s.GetWorkerState(next(self.action_ids)), on_done=self._worker_state)

    def _worker_state(self, w: WorkerLink, res) -> None:
        if type(res) is not s.WorkerStateResult or w.alive:
            return      # failed, or a second answer (probes resent after a reconnect)
        st = res.state
        w.state = st
        w.alive = True
        w.last_heard = self.clock()
        self.out(f"Worker {w.id} ({w.address}) page_size={st.page_size} {len(st.gpus)} GPUs "
                 f"{len(st.models)} models")
        for g in st.gpus:
            self.out(f"  GPU {g.gpu_id} {g.name} {g.total_pages * st.page_size / 2**30:.1f} GB "
                     f"({g.total_pages} pages) {len(g.loaded_models)} loaded models")
        if self.telemetry is not None:   # telemetry: event
            self.telemetry.event("worker_connected", f"Worker {w.id} ({w.address}) connected with "
                                 f"{len(st.gpus)} GPUs", w.id)
        if self.phase == "connecting":
            if all(x.alive for x in self.workers):
                self.phase = "loading"
                self.out("(Startup-3) Awaiting LoadModel requests from clients")
            return
        # a worker coming back (or arriving late): load every known model, then hand it over
        waiting = self.rejoin_waiting.setdefault(w.id, set())
        for path, first, copies in self.loaded_paths:
            waiting.add(first)
            self._send_load(w, path, first, copies,
                            lambda w, r, first=first: self._rejoin_step(w, first, r))
        if not waiting:
            self._rejoin(w)

    def _rejoin_step(self, w: WorkerLink, first: int, res) -> None:
        waiting = self.rejoin_waiting.get(w.id)
        if waiting is None or not w.alive:
            return      # lost again while reloading: no half-made rejoin
        if type(res) is s.ErrorResult:
            self.out(f"Worker {w.address}: reload of models {first}.. failed: {res.message}")
        waiting.discard(first)
        if not waiting:
            self._rejoin(w)

    def _rejoin(self, w: WorkerLink) -> None:
        self.rejoin_waiting.pop(w.id, None)
        if self.phase == "running" and not w.joined:
            # the worker was reset: its state now has the models but nothing in GPU caches
            st = w.state
            st.models = [self.models[k] for k in sorted(self.models)]
            for g in st.gpus:
                g.loaded_models = []
            w.joined = True
            self.out(f"Worker {w.id} ({w.address}) joined with {len(st.gpus)} GPUs; "
                     f"{w.late} late results discarded so far")
            if self.telemetry is not None:   # telemetry: event
                self.telemetry.event("worker_joined", f"Worker {w.id} ({w.address}) joined with "
                                     f"{len(st.gpus)} GPUs", w.id)
            self.scheduler.on_worker_joined(w.id, st)

    def _link_events(self, w: WorkerLink) -> None:
        """Connection events of a worker link. A closed connection took every action not yet
        answered with it (and the process that had our state, if it died): the worker is lost,
        or, if it already was, its probes are lost and are sent again when it reconnects."""
        while w.monitor.get(EVENTS) & POLLIN:
            event = recv_monitor_message(w.monitor, zmq.NOBLOCK)["event"]
            now = self.clock()
            if event == zmq.EVENT_DISCONNECTED:
                if w.alive:
                    self._worker_lost(w, now, "connection closed")
                else:
                    for aid in sorted(w.pending):
                        self._fail_action(aid, Status.WORKER_LOST, f"worker {w.address} disconnected")
                    w.outbox.clear()        # failed above: not sent
                    w.last_probe = 0
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and not w.alive and self._running:
                w.taken = False     # a new connection (e.g. the worker restarted): ours again
                self._probe(w, now)

    def _refused(self, w: WorkerLink, msg: s.ErrorResult, now: int) -> None:
        """The worker did not take an action from us (NOT_CONTROLLER). Action id -1 is its
        notice that another controller's Reset took it over: stop using it, and do not send
        Reset back (two controllers would take turns resetting it); it is probed again only when
        its connection is made anew. Any other refusal means it does not know this link (a new
        worker process, or a re-made connection, got actions queued before our Reset): the
        action fails, and the worker is lost and probed (reset) as after any loss."""
        if msg.action_id == -1:
            if w.taken:
                return
            w.taken = True
            why = f"taken over by another controller ({msg.message}); not probed again until it reconnects"
            if w.alive:
                self._worker_lost(w, now, why)
            else:
                self.out(f"Worker {w.id} ({w.address}): {why}")
                for aid in sorted(w.pending):
                    self._fail_action(aid, Status.WORKER_LOST, f"worker {w.address} serves another controller")
                w.outbox.clear()
            return
        p = self.pending.get(msg.action_id)
        if p is not None and p.worker is w:
            self._fail_action(msg.action_id, Status.WORKER_LOST, f"worker {w.address}: {msg.message}")
        if w.alive and not w.taken:
            self._worker_lost(w, now, "it does not know this controller link (restarted, or the connection "
                              "was made anew); it will be reset")

    def _worker_lost(self, w: WorkerLink, now: int, why: str) -> None:
        self.out(f"Worker {w.id} ({w.address}) lost: {why}; {len(w.pending)} actions in flight failed")
        w.alive = False
        if self.telemetry is not None:   # telemetry: event
            self.telemetry.event("worker_lost", f"Worker {w.id} ({w.address}) lost: {why}", w.id)
        for aid in sorted(w.pending):
            self._fail_action(aid, Status.WORKER_LOST, f"worker {w.address} lost")
        w.pending.clear()
        w.outbox.clear()        # failed above: not sent
        self.rejoin_waiting.pop(w.id, None)
        for job in list(self.load_jobs.values()):
            if w.id in job.waiting:
                job.waiting.discard(w.id)
                if not job.waiting:
                    self._finish_load(job)
        if w.joined:
            w.joined = False
            self.scheduler.on_worker_lost(w.id)
        w.last_probe = now
