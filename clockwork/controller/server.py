"""The controller process: the I/O edge around a scheduling policy (docs/design.md).

It owns every socket and every clock conversion; the Scheduler (pure logic) owns every decision.
Its parts, one job each: worker_links.py (actions out, results in, loss and rejoin),
model_loading.py (LoadModel broadcasts), admission.py (client requests in, answers out); this
module has the event loop, the startup phases and housekeeping, and builds the parts' state.

    clients  --ROUTER-->  Controller  --DEALER per worker-->  workers
                              |
                          Scheduler (infer4 | fifo | direct | echo)

Phases, as in the original:
  connecting  Reset + GetWorkerState to every worker; wait for all of them.
  loading     LoadModel requests are broadcast to workers as LoadModelFromDisk; Infer and LS are
              answered INITIALIZING while loads are in flight. The first LS or Infer once no load
              is in flight starts the scheduler.
  running     requests go to the scheduler; LoadModel still works (new models are added).

A worker that stays silent for worker_timeout_ms (heartbeats), or whose connection closes (its
process died: a monitor on each link reports it at once), is lost: each of its in-flight actions
is failed with WORKER_LOST through the scheduler (so every request gets an answer), and the
controller keeps probing it; when it answers again it is reset, its models are loaded again, and
it rejoins. Results of actions already failed that way arrive late and are discarded. A worker
restarted on the same address before its silence was noticed is caught by the connection
closing, so it is never sent actions meant for the old process's state.
"""
from __future__ import annotations

import gc
import itertools
import secrets
import sys
import time

import zmq

from ..id_ranges import IdRanges
from ..limits import MAX_COPIES, SHARD_ID_BITS
from ..transport import schema as s
from ..transport import security as security_mod
from ..transport.sockets import dealer, parse_address, router, set_timer_slack, stop_on_signals, wait
from . import logs as logs_mod
from .actions import Actions, WorkerLink
from .admission import Admission
from .model_loading import LoadJob, ModelLoading
from .model_registry import ModelRegistry
from .replies import Replies
from .requests import Requests
from .schedulers.common import Settings
from .stats import ControllerStats
from .worker_links import WorkerLinks

PROBE_INTERVAL_NS = 500_000_000
# LoadModelFromDisk runs inside the worker's loop (a real GPU worker also warms every batch size
# then), so it sends no heartbeat meanwhile: that silence is tolerated up to this long. A worker
# that dies meanwhile is still noticed at once, by its connection closing.
DISK_LOAD_SILENCE_NS = 60_000_000_000
HOUSEKEEPING_NS = 50_000_000
STARTUP_REPORT_NS = 5_000_000_000     # while connecting: say which workers we wait for this often


def new_epoch() -> int:
    """A random non-zero 63-bit controller epoch (see transport.schema)."""
    return secrets.randbits(63) or 1


class WorkersUnreachable(RuntimeError):
    """At start, a worker did not answer within worker_connect_timeout_s."""


class Controller(WorkerLinks, ModelLoading, Admission):
    def __init__(self, config: dict, workers: list[str], scheduler: str | None = None,
                 host: str | None = None, client_port: int | None = None, log_dir=None,
                 out=print, telemetry_port: int | None = None, shard: int = 0):
        """shard: this controller's index in a sharded controller (`cw controller --shards`):
        it issues model ids from [shard << SHARD_ID_BITS, (shard + 1) << SHARD_ID_BITS)."""
        if not workers:
            raise ValueError("at least one worker address is needed (HOST:PORT)")
        cc = config["controller"]
        self.ctx = zmq.Context.instance()
        self.security = sec = security_mod.load(config)    # None: plain TCP
        self.host = host = host or cc.get("bind", "127.0.0.1")
        self.client_port = client_port or cc["client_port"]
        try:
            client_sock = router(self.ctx, host, self.client_port,
                                 secure=sec and (lambda sk: sec.server(sk, "controller")))
        except zmq.ZMQError as e:     # e.g. the port is in use: one line, not a traceback
            raise ValueError(f"cannot listen for clients on {host}:{self.client_port}: {e}") from None
        links = []
        for i, addr in enumerate(workers):
            whost, wport = parse_address(addr, config["worker"]["port"])
            links.append(WorkerLink(i, addr, dealer(
                self.ctx, whost, wport, secure=sec and (lambda sk: sec.client(sk, "controller", "worker")))))
        # model ids restart from the block start (0 unsharded) in every controller lifetime: the
        # epoch tells lifetimes apart
        self._init_state(config, client_sock, links, scheduler, time.monotonic_ns, new_epoch(), log_dir, out,
                         log_writer=bool(config["logging"].get("writer_process", False)), shard=shard)
        if telemetry_port is None:
            telemetry_port = cc.get("telemetry_port", 0)
        if telemetry_port or cc.get("metrics_port", 0):   # telemetry: PUB and/or Prometheus
            try:
                from ..telemetry.publisher import TelemetryPublisher
                self.telemetry = TelemetryPublisher(self, self.ctx, host, telemetry_port,
                                                    security=self.security)
            except ImportError:
                self.telemetry = None

    def _init_state(self, config: dict, client_sock, workers: list[WorkerLink], scheduler: str | None,
                    clock, epoch: int, log_dir, out, log_writer: bool = False, shard: int = 0) -> None:
        """Everything but opening sockets and telemetry. The simulator's controller
        (clockwork.sim.controller) calls this with its own sockets and clock, so both run on
        the same state. `log_writer`: the logs are written by child processes (logs.py)."""
        from .schedulers import make_scheduler   # registry lives with the policies

        cc = config["controller"]
        self.config = config
        self.out = out
        self.clock = clock
        self.action_ids = itertools.count(1)
        self.epoch = epoch
        self.client_sock = client_sock
        self.workers = workers
        self.scheduler_name = scheduler or cc["scheduler"]
        self.scheduler = make_scheduler(self.scheduler_name, config, self.clock, self)
        self.models = ModelRegistry()           # model id -> ModelInfo, one entry per LoadModel
        self.next_model_id = shard << SHARD_ID_BITS      # ids name their shard (limits.SHARD_ID_BITS)
        self.model_id_end = (shard + 1) << SHARD_ID_BITS
        self.load_jobs: dict[int, LoadJob] = {}      # first model id -> job in flight
        self.loaded_paths: list[tuple[str, int, int]] = []   # (path, first id, copies) for rejoin
        self.rejoin_waiting: dict[int, set[int]] = {}         # worker -> action ids to finish
        self.phase = "connecting"
        self.stats = ControllerStats()
        self._pad: IdRanges[list[int]] = IdRanges()   # model ids -> model.format.pad_table, for goodput
        self.settings = Settings(config)      # the [controller] times, parsed once for all
        self.worker_timeout = int(cc["worker_timeout_ms"] * 1e6)
        self.connect_timeout = int(cc.get("worker_connect_timeout_s", 0) * 1e9)
        self.started = self.next_startup_report = 0
        self.max_models = int(cc.get("max_models", MAX_COPIES))
        self.max_models_per_client = int(cc.get("max_models_per_client", self.max_models))
        self.client_copies: dict[bytes, int] = {}    # client connection -> copies registered or loading
        self.ls_page_size = max(1, int(cc.get("ls_page_size", 1000)))
        self.print_interval = float(cc["print_interval_s"])
        self.request_log, self.action_log = logs_mod.open_logs(
            log_dir, config["logging"]["request_log"], config["logging"]["action_log"], log_writer)
        self.telemetry = None
        self.replies = Replies(self.client_sock, bool(cc.get("batch_replies", True)))
        # the Infers from admission to answer (requests.py), with the memory bound on their inputs
        self.requests = Requests(self, clock, epoch, self.models, self.settings, self.replies, self.stats,
                                 self.request_log, int(cc.get("max_queued_input_bytes", 4 << 30)))
        self.spin_s = float(cc.get("spin_us", 0)) / 1e6     # busy-wait before sleeping (sockets.wait)
        self._running = False
        self.last_pass_ns = 0       # when the loop last made a pass (the in-process front end's liveness)
        self.loop_ended = ""        # why run() returned, once it has
        # Worker sockets come first: wait() lists ready sockets in this order, and a result
        # frees a GPU and answers requests, which must not queue behind a burst of new ones.
        self._sockets = [w.sock for w in self.workers] + [w.monitor for w in self.workers] + [self.client_sock]
        self._sock_worker = {w.sock: w for w in self.workers}
        # sockets wait() must ask before sleeping (sockets.wait): sent on, or left with messages
        # by a drain, since it last found them empty; the others only when they signal. At
        # first every one: a socket never asked does not signal its first message.
        self._touched: set = set(self._sockets)
        # the actions in flight (actions.py); `pending` is its table, action id -> Pending
        self.actions = Actions(self, clock, workers, self.stats, self.action_log, self._pad,
                               bool(cc.get("batch_actions", True)), self._touched)
        self.pending = self.actions.pending
        self._monitor_worker = {w.monitor: w for w in self.workers}

    # ------------------------------------------------------------------ Outbox for the scheduler

    def _tick(self) -> int:
        """Run the scheduler's tick, send the actions it made, then deliver the sends that
        failed; returns when to tick next (at once if failures were delivered: the scheduler
        must see them)."""
        nt = self.scheduler.tick()
        if self.actions.outgoing:
            self.send_actions()
        if self.actions.failed_sends:
            self._deliver_failed_sends()
            return self.clock()
        return nt if nt is not None else self.clock() + HOUSEKEEPING_NS

    def _send_outgoing(self) -> bool:
        """The end of every loop pass, before it waits: the actions made outside a tick (probes,
        model loads, handlers) go out, then the answers. Returns whether sends failed: their
        WORKER_LOST results were delivered, and a running scheduler must tick again at once."""
        failed = False
        while self.actions.outgoing:
            self.send_actions()
            if self.actions.failed_sends:
                failed = True
                self._deliver_failed_sends()     # (edge callbacks may send again)
        if self.replies.waiting:
            self.replies.flush()
        return failed

    # ------------------------------------------------------------------ main loop

    def run(self, duration_s: float | None = None) -> None:
        """Serve until SIGINT/SIGTERM, stop(), or duration_s elapses."""
        set_timer_slack(1)
        self._running = True
        stop_on_signals(self.stop)
        self.out(f"Starting Clockwork Controller ({self.scheduler_name}), epoch {self.epoch:x}")
        self.out(self.listening())
        for log, what in ((self.request_log, "requests"), (self.action_log, "actions")):
            if log.path:
                self.out(f"Logging {what} to {log.path}"
                         + (f" (previous run's log kept as {log.kept.name})" if log.kept else ""))
        self.out("(Startup-1) Bouncing LS and Infer requests until startup is complete")
        self.out("(Startup-2) Querying current worker state")
        for w in self.workers:
            self._probe(w, self.clock())
        gc.freeze()
        self.started = self.clock()
        self._plan_startup_report(self.started)
        end = None if duration_s is None else self.clock() + int(duration_s * 1e9)
        next_tick = 0
        next_housekeeping = 0
        next_print = self.clock() + int(self.print_interval * 1e9)
        fds = [sock.getsockopt(zmq.FD) for sock in self._sockets]     # for wait(), which asks for them
        try:
            while self._running:
                now = self.last_pass_ns = self.clock()
                if end is not None and now >= end:
                    break
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_NS
                if now >= next_print:
                    for line in self.stats.lines(self.print_interval):
                        self.out(line)
                    next_print = now + int(self.print_interval * 1e9)
                if self.phase == "running" and now >= next_tick:
                    next_tick = self._tick()
                # every action and answer this pass made goes out before we sleep
                if self._send_outgoing() and self.phase == "running":
                    next_tick = now
                wake = min(next_housekeeping, next_print)
                if self.phase == "running":
                    wake = min(wake, next_tick)
                if end is not None:
                    wake = min(wake, end)
                touched = self._touched
                if self.replies.sent:               # answers went out on the client socket
                    touched.add(self.client_sock)
                    self.replies.sent = False
                ready = wait(self._sockets, max(0, wake - self.clock()) / 1e9, self.spin_s, touched, fds)
                touched.clear()     # every socket wait() asked is ready (drained next) or empty
                for sock in ready:
                    self._handle_ready(sock)
                if ready and self.phase == "running":
                    next_tick = self._tick()
                elif self.actions.failed_sends:     # (edge actions: probes, model loads)
                    self._deliver_failed_sends()
        except BaseException as e:
            self.loop_ended = f"the controller's loop ended: {e!r}"
            raise
        finally:
            self.loop_ended = self.loop_ended or "the controller's loop ended (stopped)"
            self.close()

    def _handle_ready(self, sock) -> None:
        """Read what a ready socket holds: client requests, worker results or link events."""
        if sock is self.client_sock:
            self._drain_clients()
        elif sock in self._sock_worker:
            self._drain_worker(self._sock_worker[sock])
        else:
            self._link_events(self._monitor_worker[sock])

    def stop(self) -> None:
        self._running = False

    def bind_in_process(self, endpoint: str) -> None:
        """Also take clients on an inproc:// endpoint of this process's ZeroMQ context (the
        in-process front end): the same ROUTER, so their requests meet exactly the admission
        any client's meet, without an I/O thread or TCP in between. Before run(): the socket
        belongs to the loop's thread."""
        self.client_sock.bind(endpoint)

    def listening(self) -> str:
        """Where clients, `cw top` and Prometheus reach this controller (printed at start)."""
        tel = self.telemetry
        pub = tel.port if tel is not None and tel.sock is not None else 0
        metrics = self.config["controller"].get("metrics_port", 0) if tel is not None and tel.metrics else 0
        return (f"Listening: clients on {self.host}:{self.client_port}, telemetry "
                + (f"on {self.host}:{pub}" if pub else "off") + ", metrics "
                + (f"on http://{self.host}:{metrics}/metrics" if metrics else "off"))

    def close(self) -> None:
        self.replies.flush()
        self.request_log.close()
        self.action_log.close()
        if self.telemetry is not None:
            self.telemetry.close()
        for w in self.workers:
            w.sock.disable_monitor()
        for sock in self._sockets:
            sock.close(0)
        if self.security is not None:
            self.security.close()

    def _housekeeping(self, now: int) -> None:
        self.requests.queue_wait.sweep(now)
        self._touched.update(self._sockets)     # every socket asked now and then, come what may
        if self.phase == "connecting" and now >= self.next_startup_report:
            self._startup_report(now)
        self.request_log.flush()
        self.action_log.flush()
        for w in self.workers:
            if w.alive and now - w.last_heard > self.worker_timeout:
                self._drain_worker(w)     # after a stall here, its heartbeats may be waiting unread
                silence = now - w.last_heard
                if silence > self.worker_timeout and (silence > DISK_LOAD_SILENCE_NS or not any(
                        type(self.pending[a].action) is s.LoadModelFromDisk for a in w.pending)):
                    self._worker_lost(w, now, f"no message for {silence / 1e6:.0f} ms")
            elif not w.alive and not w.taken and now - w.last_probe > PROBE_INTERVAL_NS:
                self._probe(w, now)
        if self.telemetry is not None:
            self.telemetry.maybe_publish(now)

    def _startup_report(self, now: int) -> None:
        """Name the workers not yet answering; give up after worker_connect_timeout_s."""
        self._plan_startup_report(now)
        silent = ", ".join(f"{w.id} ({w.address})" for w in self.workers if not w.alive)
        waited = (now - self.started) / 1e9
        if self.connect_timeout and now - self.started >= self.connect_timeout:
            raise WorkersUnreachable(f"no answer from worker {silent} within {waited:.0f} s "
                                     "([controller] worker_connect_timeout_s): is `cw worker` running "
                                     "there, and is the address right?")
        limit = f"; giving up after {self.connect_timeout / 1e9:g} s" if self.connect_timeout else ""
        self.out(f"(Startup-2) waiting for worker {silent}: no answer for {waited:.0f} s{limit}")

    def _plan_startup_report(self, now: int) -> None:
        nxt = now + STARTUP_REPORT_NS
        if self.connect_timeout:
            give_up = self.started + self.connect_timeout
            nxt = min(nxt, give_up) if now < give_up else nxt
        self.next_startup_report = nxt

    # ------------------------------------------------------------------ clients

    def telemetry_view(self):
        """The narrow view telemetry reads (telemetry.publisher.ControllerView), once per snapshot."""
        from ..telemetry.publisher import ControllerView, WorkerView
        outstanding: dict[tuple[int, int], int] = {}
        for p in self.pending.values():
            key = (p.worker.id, getattr(p.action, "gpu_id", -1))
            outstanding[key] = outstanding.get(key, 0) + 1
        workers = []
        for w in self.workers:
            health = ("connecting" if w.state is None else
                      "lost" if not w.alive else
                      "ok" if w.joined or self.phase != "running" else "starting")
            workers.append(WorkerView(w.id, w.address, health, w.state, w.readings if w.alive else [],
                                      len(w.pending), int(w.sync.offset), int(w.sync.rtt)))
        try:
            stats = self.scheduler.stats() or {}
        except Exception:   # a scheduler bug must not take the controller down
            stats = None
        return ControllerView(self.phase, self.scheduler_name, self.models, workers, outstanding, stats)

    def _start_scheduling(self) -> None:
        live = {w.id: w.state for w in self.workers if w.alive}
        for w in self.workers:
            w.joined = w.alive
        total_pages = sum(g.total_pages for st in live.values() for g in st.gpus)
        model_pages = self.models.total_pages()
        self.out("(Startup-end) Transitioning to scheduler")
        self.out(f"Created {len(self.models)} models")
        self.out(f"Created {sum(len(st.gpus) for st in live.values())} GPUs on {len(live)} Workers")
        self.out(f"Total GPU capacity {total_pages} pages.")
        self.out(f"Total model pages {model_pages} "
                 f"({100 * max(0, model_pages - total_pages) // max(1, total_pages)}% oversubscription).")
        self.out("* Admitting inference requests")
        self.phase = "running"
        self.scheduler.start(self.models.copy(), live)
        gc.freeze()     # the scheduler's per-model and per-GPU state, likewise

    # ------------------------------------------------------------------ workers

def serve(config: dict, workers: list[str], frontend: dict | None = None, **kw) -> None:
    """Run a controller in this process until interrupted (the `cw controller` body).
    frontend: serve KServe v2 on a thread of this process too, with these settings
    (frontend.command.in_process_settings; frontend/in_process.py)."""
    c = Controller(config, workers, **kw)
    fe = None
    try:
        if frontend is not None:
            from ..frontend.in_process import InProcessFrontend
            fe = InProcessFrontend(c, frontend, log=c.out)
            try:
                fe.start()
            except BaseException:
                c.close()
                raise
        c.run()
    except KeyboardInterrupt:
        pass
    finally:
        if fe is not None:
            fe.stop()
    sys.stdout.flush()
