"""The controller's links to its workers: sending actions and reading results (actions.py, the
per-action half), probing, loss and rejoin (docs/reliability.md says what is promised while
workers fail).

Actions to one worker are held on its link until the loop pass that made them sends them
(`send_actions`, after every tick and before the loop waits), as one ActionBatch when there are
several; workers answer likewise with a ResultBatch, read entry by entry.

WorkerLinks is one part of Controller (controller/server.py), a mixin: it works on the
controller's workers, actions in flight (`self.actions`, `self.pending` its table), scheduler,
logs and telemetry.
"""
from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..status import Status
from ..transport import schema as s
from ..transport.sockets import EVENTS, POLLIN
from .actions import WorkerLink


class WorkerLinks:
    def send_action(self, worker_id: int, action, data=(), expected_end: int = 0, on_done=None) -> None:
        """The Outbox's send (actions.Actions.send): `action` stays in controller time (the
        scheduler's copy); the copy on the wire has its window in the worker's clock. A send
        that fails becomes a WORKER_LOST result delivered after the current tick."""
        self.actions.send(worker_id, action, data, expected_end, on_done)

    def send_actions(self) -> None:
        """Send the actions held: one message per worker (actions.Actions.send_held)."""
        self.actions.send_held()

    def _deliver_failed_sends(self) -> None:
        self.actions.deliver_failed_sends()

    def _drain_worker(self, w: WorkerLink) -> None:
        self.actions.drain(w)

    def _fail_action(self, aid: int, status: int, message: str) -> None:
        self.actions.fail(aid, status, message)

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
            st.models = list(self.models.values())
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
