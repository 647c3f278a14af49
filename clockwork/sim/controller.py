"""The real controller edge in simulated time.

`SimController` is clockwork.controller.server.Controller with its sockets replaced by
network.py's and its clock by the simulation's. Every method that decides something is
inherited unchanged: request validation and admission (admission.py, requests.py), the
LoadModel broadcast (model_loading.py), clock conversion of windows and results (actions.py),
loss by silence or closed connection and rejoin (worker_links.py), housekeeping, the request and
action logs and the stats lines (server.py). Only two things are written here:

  * __init__, which makes in-memory sockets and hands them, with the simulated clock, to
    Controller._init_state (the state Controller.__init__ builds around its ZeroMQ sockets); and
  * the event loop: Controller.run() waits on sockets with the wall clock, so its body is
    re-expressed as two event handlers (`_turn` for timers, `_readable` for a socket that has
    messages), doing what one pass of run()'s loop does, in the same order.

The controller's own CPU time is free unless `message_cost_ns` is set: then it handles one
message per that many ns (a deterministic stand-in for the real process's cost per message,
ticks included), so queueing inside a busy controller shows up as it would for real.

`measure_cpu` reports the wall-clock CPU time spent in the handlers (cpu_ns); off by default,
because reading the process CPU clock is a system call that cost ~20% of a simulation's time.
"""
from __future__ import annotations

from collections import deque
from time import process_time_ns

from ..controller.server import HOUSEKEEPING_NS, Controller
from ..controller.actions import WorkerLink

FAR = 1 << 62


class SimController(Controller):
    def __init__(self, config: dict, loop, network, links: list, scheduler: str | None = None,
                 log_dir=None, out=print, epoch: int = 1, message_cost_ns: int = 0, measure_cpu: bool = False):
        self.loop = loop
        self.security = None
        self.host, self.client_port = "sim", 0
        self.message_cost = message_cost_ns
        self._backlog: deque = deque()      # (socket, frames) read but not yet handled (CPU busy)
        self._busy = False
        # a free controller handles a message as it arrives; a busy one queues it (_arrived)
        arrived = self._arrived if message_cost_ns else (lambda sock: self._readable(sock))
        client_sock = network.router_socket("controller", lambda: arrived(client_sock))
        workers: list[WorkerLink] = []
        for i, lk in enumerate(links):
            w = WorkerLink(i, f"sim-worker-{i}", lk.dealer)
            lk.dealer.on_message = (lambda sock=lk.dealer: arrived(sock))
            w.monitor.on_message = (lambda sock=w.monitor: arrived(sock))
            workers.append(w)
        if not workers:
            raise ValueError("at least one worker is needed")
        # the epoch is seeded (Controller draws it at random), so runs repeat
        self._init_state(config, client_sock, workers, scheduler, loop, epoch, log_dir, out)
        self.spin_s = 0.0                   # nothing to spin for in simulated time
        self._next_tick = 0
        self._next_housekeeping = 0
        self._next_print = FAR
        self._armed = FAR
        # wall-clock CPU spent in the controller's handlers (edge, scheduler, codec; the sends
        # into the simulated network included): reported only, never fed back into the run
        self.cpu_ns = 0
        if measure_cpu:
            self._turn = self._measured(self._turn)
            self._readable = self._measured(self._readable)

    def _measured(self, handler):
        def measured(arg):
            cpu0 = process_time_ns()
            handler(arg)
            self.cpu_ns += process_time_ns() - cpu0
        return measured

    # ------------------------------------------------------------------ run(), as events
    def begin(self) -> None:
        """run()'s preamble: greet, probe every worker, arm the timers."""
        self._running = True
        self.out(f"Starting Clockwork Controller ({self.scheduler_name}), epoch {self.epoch:x}")
        for log, what in ((self.request_log, "requests"), (self.action_log, "actions")):
            if log.path:
                self.out(f"Logging {what} to {log.path}")
        self.out("(Startup-1) Bouncing LS and Infer requests until startup is complete")
        self.out("(Startup-2) Querying current worker state")
        for w in self.workers:
            self._probe(w, self.clock())
        self.started = self.clock()
        self._plan_startup_report(self.started)
        self._next_print = self.clock() + int(self.print_interval * 1e9)
        self._end_pass()

    def _turn(self, t) -> None:
        """One pass of run()'s loop at a due time: housekeeping, stats lines, scheduler tick."""
        if t != self._armed:
            return                       # superseded by an earlier wake-up
        self._armed = FAR
        if not self._running:
            return
        now = self.clock()
        if now >= self._next_housekeeping:
            self._housekeeping(now)
            self._next_housekeeping = now + HOUSEKEEPING_NS
        if now >= self._next_print:
            for line in self.stats.lines(self.print_interval):
                self.out(line)
            self._next_print = now + int(self.print_interval * 1e9)
        if self.phase == "running" and now >= self._next_tick:
            self._next_tick = self._tick()
        self._end_pass()

    # ------------------------------------------------------------------ controller CPU time
    def _arrived(self, sock) -> None:
        """A message reached a socket, with a message cost set: the controller is one CPU that
        handles one message per `message_cost` ns, in arrival order: the message waits, and its
        effects (answers, actions) happen when its handling ends, as in a busy real process."""
        self._backlog.append((sock, sock.inbox.pop()))
        if not self._busy:
            self._busy = True
            self.loop.after(self.message_cost, self._handle_next)

    def _handle_next(self, _=None) -> None:
        sock, frames = self._backlog.popleft()
        sock.inbox.append(frames)
        self._readable(sock)
        if self._backlog:
            self.loop.after(self.message_cost, self._handle_next)
        else:
            self._busy = False

    def _readable(self, sock) -> None:
        """run()'s handling of a ready socket, then the tick it does after any input."""
        if not self._running:
            return
        self._handle_ready(sock)
        if self.phase == "running":
            self._next_tick = self._tick()
        elif self.actions.failed_sends:      # (edge actions: probes, model loads)
            self._deliver_failed_sends()
        self._end_pass()

    def _end_pass(self) -> None:
        """What run() does before it waits: actions and answers made in this pass go out (a
        failed send makes the scheduler tick again at once), timers re-armed."""
        if self._send_outgoing() and self.phase == "running":
            self._next_tick = self.clock()
        self._arm()

    def _arm(self) -> None:
        wake = min(self._next_housekeeping, self._next_print)
        if self.phase == "running" and self._next_tick < wake:
            wake = self._next_tick
        if wake < self._armed:
            self._armed = wake
            self.loop.at(wake, self._turn, wake)

    def finish(self) -> None:
        """Stop serving and close the logs (run()'s finally)."""
        self._running = False
        self.replies.flush()
        self.request_log.close()
        self.action_log.close()
