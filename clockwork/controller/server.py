"""The controller process: the I/O edge around a scheduling policy.

It owns every socket and every clock conversion; the Scheduler (pure logic) owns every decision.

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

import bisect
import gc
import itertools
import secrets
import signal
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..status import Status
from ..transport import schema as s
from ..transport import security as security_mod
from ..transport.clocksync import ClockSync
from ..transport.schema import ProtocolError
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, dealer, parse_address, recv, router, send, wait
from . import logs as logs_mod
from .queuewait import QueueWait
from .scheduler import Request
from .stats import ControllerStats

FAR_FUTURE = 1 << 62
MAX_COPIES = 100_000
MAX_SLO_NS = 3_600_000_000_000
PROBE_INTERVAL_NS = 500_000_000
# LoadModelFromDisk runs inside the worker's loop (a real GPU worker also warms every batch size
# then), so it sends no heartbeat meanwhile: that silence is tolerated up to this long. A worker
# that dies meanwhile is still noticed at once, by its connection closing.
DISK_LOAD_SILENCE_NS = 60_000_000_000
HOUSEKEEPING_NS = 50_000_000
STARTUP_REPORT_NS = 5_000_000_000     # while connecting: say which workers we wait for this often
DRAIN_BATCH = 256


def new_epoch() -> int:
    """A random non-zero 63-bit controller epoch (see transport.schema)."""
    return secrets.randbits(63) or 1


def set_timer_slack_ns(ns: int = 1) -> bool:
    """Linux rounds timed waits up by the timer slack (50 us by default): set it to 1 ns so a
    planned wake-up happens when planned. Best effort; returns whether it worked."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(29, ns, 0, 0, 0) == 0   # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


class WorkersUnreachable(RuntimeError):
    """At start, a worker did not answer within worker_connect_timeout_s."""


class WorkerLink:
    __slots__ = ("id", "address", "sock", "sync", "state", "alive", "joined", "last_heard",
                 "last_probe", "pending", "readings", "late", "monitor", "taken")

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


class Pending:
    """An action sent and not yet answered."""
    __slots__ = ("worker", "action", "sent", "expected_end", "on_done")

    def __init__(self, worker, action, sent, expected_end, on_done):
        self.worker = worker
        self.action = action
        self.sent = sent
        self.expected_end = expected_end
        self.on_done = on_done      # None: the scheduler's; else an edge callback


class LoadJob:
    """A client's LoadModel, broadcast to every live worker."""
    __slots__ = ("client", "request_id", "path", "model_id", "copies", "waiting", "models", "error")

    def __init__(self, client, request_id, path, model_id, copies):
        self.client = client
        self.request_id = request_id
        self.path = path
        self.model_id = model_id
        self.copies = copies
        self.waiting: set[int] = set()
        self.models: list[s.ModelInfo] | None = None
        self.error: tuple[int, str] | None = None


class Controller:
    def __init__(self, config: dict, workers: list[str], scheduler: str | None = None,
                 host: str | None = None, client_port: int | None = None, log_dir=None,
                 out=print, telemetry_port: int | None = None):
        from .schedulers import make_scheduler   # registry lives with the policies

        cc = config["controller"]
        self.config = config
        self.out = out
        self.clock = time.monotonic_ns
        self.action_ids = itertools.count(1)
        # model ids restart from 0 in every controller lifetime: the epoch tells lifetimes apart
        self.epoch = new_epoch()
        self.ctx = zmq.Context.instance()
        self.security = sec = security_mod.load(config)    # None: plain TCP
        self.host = host = host or cc.get("bind", "127.0.0.1")
        self.client_port = client_port or cc["client_port"]
        try:
            self.client_sock = router(self.ctx, host, self.client_port,
                                      secure=sec and (lambda sk: sec.server(sk, "controller")))
        except zmq.ZMQError as e:     # e.g. the port is in use: one line, not a traceback
            raise ValueError(f"cannot listen for clients on {host}:{self.client_port}: {e}") from None
        self.workers: list[WorkerLink] = []
        for i, addr in enumerate(workers):
            whost, wport = parse_address(addr, config["worker"]["port"])
            self.workers.append(WorkerLink(i, addr, dealer(
                self.ctx, whost, wport, secure=sec and (lambda sk: sec.client(sk, "controller", "worker")))))
        if not self.workers:
            raise ValueError("at least one worker address is needed (HOST:PORT)")
        self.scheduler_name = scheduler or cc["scheduler"]
        self.scheduler = make_scheduler(self.scheduler_name, config, self.clock, self)
        self.pending: dict[int, Pending] = {}
        self.models: dict[int, s.ModelInfo] = {}
        self.next_model_id = 0
        self.load_jobs: dict[int, LoadJob] = {}      # first model id -> job in flight
        self.loaded_paths: list[tuple[str, int, int]] = []   # (path, first id, copies) for rejoin
        self.rejoin_waiting: dict[int, set[int]] = {}         # worker -> action ids to finish
        self.phase = "connecting"
        self.stats = ControllerStats()
        self.request_ids = itertools.count(1)
        self.queue_wait = QueueWait()
        self.arrivals = 0
        self.departures = 0
        self.default_slo = int(cc["default_slo_ms"] * 1e6)
        self.buffer = int(cc["buffer_ms"] * 1e6)
        self.schedule_ahead = int(cc["schedule_ahead_ms"] * 1e6)
        self.max_batch = int(cc["max_batch_size"])
        self.max_exec_ns = int(cc["max_exec_ms"] * 1e6)
        self.worker_timeout = int(cc["worker_timeout_ms"] * 1e6)
        self.connect_timeout = int(cc.get("worker_connect_timeout_s", 0) * 1e9)
        self.started = self.next_startup_report = 0
        self.max_models = int(cc.get("max_models", MAX_COPIES))
        self.max_models_per_client = int(cc.get("max_models_per_client", self.max_models))
        self.client_copies: dict[bytes, int] = {}    # client connection -> copies registered or loading
        self.ls_page_size = max(1, int(cc.get("ls_page_size", 1000)))
        self.model_order: list[int] = []             # model ids, ascending (LS pages)
        # memory bound on inputs: bytes held by requests not yet answered, beyond which OVERLOADED
        self.max_input_bytes = int(cc.get("max_queued_input_bytes", 4 << 30))
        self.input_bytes = 0
        self._held: dict[int, int] = {}     # request id -> its input bytes, until answered
        self.print_interval = float(cc["print_interval_s"])
        self.request_log, self.action_log = logs_mod.open_logs(
            log_dir, config["logging"]["request_log"], config["logging"]["action_log"])
        self.telemetry = None
        if telemetry_port is None:
            telemetry_port = cc.get("telemetry_port", 0)
        if telemetry_port or cc.get("metrics_port", 0):   # telemetry: PUB and/or Prometheus
            try:
                from ..telemetry.publisher import TelemetryPublisher
                self.telemetry = TelemetryPublisher(self, self.ctx, host, telemetry_port)
            except ImportError:
                self.telemetry = None
        self._running = False
        # Worker sockets come first: wait() lists ready sockets in this order, and a result
        # frees a GPU and answers requests, which must not queue behind a burst of new ones.
        self._sockets = [w.sock for w in self.workers] + [w.monitor for w in self.workers] + [self.client_sock]
        self._sock_worker = {w.sock: w for w in self.workers}
        self._monitor_worker = {w.monitor: w for w in self.workers}

    # ------------------------------------------------------------------ Outbox for the scheduler

    def send_action(self, worker_id: int, action, data=(), expected_end: int = 0, on_done=None) -> None:
        w = self.workers[worker_id]
        now = self.clock()
        aid = action.action_id
        self.pending[aid] = Pending(w, action, now, expected_end, on_done)
        w.pending.add(aid)
        if hasattr(action, "earliest"):
            action.earliest = w.sync.to_worker(action.earliest)
            action.latest = w.sync.to_worker(action.latest)
        try:
            send(w.sock, action, data, flags=NOBLOCK)
        except zmq.Again:
            self._fail_action(aid, Status.WORKER_LOST, f"worker {w.address} send queue full")

    def _reply(self, msg, data=(), *, ident: bytes) -> None:
        """Send a client an answer stamped with this controller's epoch."""
        msg.epoch = self.epoch
        send(self.client_sock, msg, data, ident=ident)

    def respond(self, req: Request, status: int, message: str = "", output=None, exec_ns: int = 0) -> None:
        now = self.clock()
        latency = now - req.arrival
        self.departures += 1
        if self._held:
            self.input_bytes -= self._held.pop(req.id, 0)
        met = now <= req.deadline
        msg = s.InferResponse(req.client_request_id, status, message, req.model_id, req.batch_size,
                              latency, exec_ns, req.is_coldstart, self.epoch, met)
        if req.client is not None:
            send(self.client_sock, msg, (output,) if output is not None and status == 0 else (),
                 ident=req.client)
        self.stats.request_done(status, latency, met)
        self.request_log.add((now, req.id, status, req.user_id, req.model_id, req.slo_factor,
                              latency, req.deadline, int(met), self.arrivals,
                              self.departures, int(req.is_coldstart), req.batch_size, req.gpu))
        if self.telemetry is not None:
            self.telemetry.request_done(req, status, latency, now, exec_ns)

    # ------------------------------------------------------------------ main loop

    def run(self, duration_s: float | None = None) -> None:
        """Serve until SIGINT/SIGTERM, stop(), or duration_s elapses."""
        set_timer_slack_ns(1)
        self._running = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, lambda *_: self.stop())
            except ValueError:   # not the main thread (tests): stop() still works
                pass
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
        try:
            while self._running:
                now = self.clock()
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
                    nt = self.scheduler.tick()
                    next_tick = nt if nt is not None else now + HOUSEKEEPING_NS
                wake = min(next_housekeeping, next_print)
                if self.phase == "running":
                    wake = min(wake, next_tick)
                if end is not None:
                    wake = min(wake, end)
                ready = wait(self._sockets, max(0, wake - self.clock()) / 1e9)
                for sock in ready:
                    if sock is self.client_sock:
                        self._drain_clients()
                    elif sock in self._sock_worker:
                        self._drain_worker(self._sock_worker[sock])
                    else:
                        self._link_events(self._monitor_worker[sock])
                if ready and self.phase == "running":
                    nt = self.scheduler.tick()
                    next_tick = nt if nt is not None else self.clock() + HOUSEKEEPING_NS
        finally:
            self.close()

    def stop(self) -> None:
        self._running = False

    def listening(self) -> str:
        """Where clients, `cw top` and Prometheus reach this controller (printed at start)."""
        tel = self.telemetry
        pub = tel.port if tel is not None and tel.sock is not None else 0
        metrics = self.config["controller"].get("metrics_port", 0) if tel is not None and tel.metrics else 0
        return (f"Listening: clients on {self.host}:{self.client_port}, telemetry "
                + (f"on {self.host}:{pub}" if pub else "off") + ", metrics "
                + (f"on http://{self.host}:{metrics}/metrics" if metrics else "off"))

    def close(self) -> None:
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
        self.queue_wait.sweep(now)
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

    def _drain_clients(self) -> None:
        sock = self.client_sock
        for _ in range(DRAIN_BATCH):
            if not sock.get(EVENTS) & POLLIN:
                return
            try:
                ident, msg, data = recv(sock, s.REQUEST_DECODER, routed=True)
            except ProtocolError as e:
                if e.ident is not None:
                    self._reply(s.ErrorResponse(-1, Status.INVALID_REQUEST, str(e)), ident=e.ident)
                continue
            try:
                if type(msg) is s.InferRequest:
                    self._on_infer(ident, msg, data)
                elif type(msg) is s.LsRequest:
                    self._on_ls(ident, msg)
                else:
                    self._on_load_model(ident, msg)
            except Exception as e:   # a bug must cost one request, not the controller
                self.out(f"internal error handling request {msg.request_id}: {e!r}")
                self._reply(s.ErrorResponse(msg.request_id, Status.ERROR, f"internal error: {e!r}"), ident=ident)

    def _on_infer(self, ident: bytes, msg: s.InferRequest, data) -> None:
        self.arrivals += 1
        if msg.epoch != self.epoch and msg.epoch:
            self._reply(s.InferResponse(
                msg.request_id, Status.STALE_EPOCH, f"model id {msg.model_id} belongs to another controller "
                f"lifetime (epoch {msg.epoch:x}; this controller's is {self.epoch:x}): load the model again",
                msg.model_id, msg.batch_size), ident=ident)
            return
        if self.phase != "running":
            if self.phase == "loading" and not self.load_jobs:
                self._start_scheduling()
            else:
                self._reply(s.InferResponse(msg.request_id, Status.INITIALIZING,
                                                       "Controller initializing", msg.model_id), ident=ident)
                return
        model = self.models.get(msg.model_id)
        error = None
        nbytes = 0
        if model is None:
            error = f"unknown model id {msg.model_id}"
        elif not 1 <= msg.batch_size <= model.batch_sizes[-1]:
            error = (f"batch size {msg.batch_size} not supported by model {msg.model_id} "
                     f"(1..{model.batch_sizes[-1]})")
        elif msg.dtype and model.input_dtype and msg.dtype != model.input_dtype:
            error = f"input dtype {msg.dtype}; model {msg.model_id} takes {model.input_dtype}"
        elif msg.item_shape is not None and model.input_shape and msg.item_shape != model.input_shape:
            error = (f"input item shape {msg.item_shape}; model {msg.model_id} takes "
                     f"{model.input_shape} per item")
        elif data:
            nbytes = sum(len(f.buffer) for f in data)
            if nbytes != msg.batch_size * model.input_size:
                error = (f"input is {nbytes} bytes; model {msg.model_id} takes "
                         f"{msg.batch_size} x {model.input_size} bytes")
        if error is None and not (0 <= msg.slo_ns <= MAX_SLO_NS
                                  and 0 <= msg.slo_factor * model.exec_ns[0] <= MAX_SLO_NS):
            error = "SLO must be between 0 and 1 hour (slo_ns, or slo_factor x batch-1 exec time)"
        if error is not None:
            self._reply(s.InferResponse(msg.request_id, Status.INVALID_REQUEST, error,
                                                   msg.model_id, msg.batch_size), ident=ident)
            return
        if nbytes and self.input_bytes + nbytes > self.max_input_bytes:
            self._reply(s.InferResponse(
                msg.request_id, Status.OVERLOADED, f"queued requests hold {self.input_bytes} bytes of inputs "
                f"(limit {self.max_input_bytes})", msg.model_id, msg.batch_size), ident=ident)
            return
        now = self.clock()
        slo = msg.slo_ns or self.default_slo
        # arrival: when the client sent it, as far as we can tell (this loop may have been stalled)
        waited = self.queue_wait.waited(ident, msg.sent_ns, now)
        req = Request(next(self.request_ids), ident, msg.request_id, msg.model_id, msg.batch_size,
                      now - waited, slo, data, msg.user_id, msg.slo_factor, self.buffer, self.schedule_ahead)
        if req.deadline <= now:
            self.respond(req, Status.TIMEOUT, f"its SLO ({slo / 1e6:g} ms) had passed when the controller "
                         f"read it ({waited / 1e6:.0f} ms after it was sent)")
            return
        if nbytes:
            self.input_bytes += nbytes
            self._held[req.id] = nbytes
        self.scheduler.on_request(req)

    def _on_ls(self, ident: bytes, msg: s.LsRequest) -> None:
        if self.phase == "loading" and not self.load_jobs:
            self._start_scheduling()
        if self.phase != "running":
            self._reply(s.LsResponse(msg.request_id, Status.INITIALIZING,
                                                "Controller initializing"), ident=ident)
            return
        order = self.model_order
        start = bisect.bisect_left(order, msg.first)
        end = start + self.ls_page_size
        self._reply(s.LsResponse(msg.request_id, Status.SUCCESS, "", [self.models[k] for k in order[start:end]],
                                 next=order[end] if end < len(order) else -1), ident=ident)

    def _on_load_model(self, ident: bytes, msg: s.LoadModelRequest) -> None:
        error = None
        if self.phase == "connecting":
            error = (Status.INITIALIZING, "Controller initializing (waiting for workers)")
        elif not 1 <= msg.copies <= MAX_COPIES:
            error = (Status.INVALID_REQUEST, f"copies must be 1..{MAX_COPIES}")
        elif len(self.models) + sum(j.copies for j in self.load_jobs.values()) + msg.copies > self.max_models:
            error = (Status.INVALID_REQUEST, f"{msg.copies} more copies would exceed the limit of "
                     f"{self.max_models} model instances ({len(self.models)} registered)")
        elif self.client_copies.get(ident, 0) + msg.copies > self.max_models_per_client:
            error = (Status.INVALID_REQUEST, f"{msg.copies} more copies would exceed the limit of "
                     f"{self.max_models_per_client} model instances per client "
                     f"({self.client_copies.get(ident, 0)} registered or loading by this one)")
        elif not msg.path or msg.path.startswith("/") or ".." in msg.path.split("/") or "\x00" in msg.path:
            error = (Status.INVALID_REQUEST,
                     f"model path {msg.path!r} must be relative to the workers' model directory")
        if error is not None:
            self._reply(s.LoadModelResponse(msg.request_id, error[0], error[1]), ident=ident)
            return
        self.out(f"Client --> Req{msg.request_id}:LoadModel path={msg.path} copies={msg.copies}")
        job = LoadJob(ident, msg.request_id, msg.path, self.next_model_id, msg.copies)
        self.client_copies[ident] = self.client_copies.get(ident, 0) + msg.copies
        self.next_model_id += msg.copies
        self.load_jobs[job.model_id] = job
        for w in self.workers:
            if w.alive:
                job.waiting.add(w.id)
                self._send_load(w, job.path, job.model_id, job.copies,
                                lambda w, res, job=job: self._load_done(job, w, res))
        if not job.waiting:
            self._finish_load(job)

    def _send_load(self, w: WorkerLink, path: str, model_id: int, copies: int, on_done) -> None:
        action = s.LoadModelFromDisk(next(self.action_ids), 0, FAR_FUTURE, model_id, path, copies,
                                     self.max_batch, self.max_exec_ns)
        self.out(f"Worker <-- A{action.action_id}:LoadModelFromDisk model={model_id} copies={copies} {path}")
        self.send_action(w.id, action, on_done=on_done)

    def _load_done(self, job: LoadJob, w: WorkerLink, res) -> None:
        job.waiting.discard(w.id)
        if type(res) is s.ErrorResult and res.status == Status.WORKER_LOST:
            pass     # not the model's fault: the others answer, and it gets the model if it rejoins
        elif type(res) is s.ErrorResult:
            job.error = (res.status, f"worker {w.address}: {res.message}")
        elif job.models is None:
            job.models = res.models
            m = res.models[0]
            self.out(f"Worker --> R{res.action_id}:LoadModelFromDisk input={m.input_size} "
                     f"output={m.output_size} weights={m.weights_size / 2**20:.1f} MB ({m.num_pages} pages) "
                     f"xfer={m.weights_load_ns / 1e6:.1f} " +
                     " ".join(f"b{b}={t / 1e6:.1f}" for b, t in zip(m.batch_sizes, m.exec_ns)))
        if not job.waiting:
            self._finish_load(job)

    def _finish_load(self, job: LoadJob) -> None:
        del self.load_jobs[job.model_id]
        if job.error is None and job.models is None:
            job.error = (Status.ERROR, "no worker is connected")
        if job.error is not None:
            self.client_copies[job.client] -= job.copies
            self._reply(s.LoadModelResponse(job.request_id, job.error[0], job.error[1]),
                 ident=job.client)
            return
        new = {m.model_id: m for m in job.models}
        self.models.update(new)
        for k in new:
            bisect.insort(self.model_order, k)
        gc.freeze()     # long-lived model state: keep it out of gen-2 passes (~0.3 us/object each)
        if self.telemetry is not None:   # telemetry: event
            self.telemetry.event("model_registered", f"models {job.model_id}..{job.model_id + job.copies - 1} "
                                 f"registered from {job.path}", model_id=job.model_id)
        self.loaded_paths.append((job.path, job.model_id, job.copies))
        if self.phase == "running":
            self.scheduler.add_models(new)
        m = job.models[0]
        self.out(f"Client <-- Rsp{job.request_id}:LoadModel model_id=[{job.model_id}->"
                 f"{job.model_id + job.copies - 1}] input={m.input_size} output={m.output_size}")
        self._reply(s.LoadModelResponse(job.request_id, Status.SUCCESS, "", job.model_id,
                                                   job.copies, m.input_size, m.output_size),
             ident=job.client)

    def _start_scheduling(self) -> None:
        live = {w.id: w.state for w in self.workers if w.alive}
        for w in self.workers:
            w.joined = w.alive
        total_pages = sum(g.total_pages for st in live.values() for g in st.gpus)
        model_pages = sum(m.num_pages for m in self.models.values())
        self.out("(Startup-end) Transitioning to scheduler")
        self.out(f"Created {len(self.models)} models")
        self.out(f"Created {sum(len(st.gpus) for st in live.values())} GPUs on {len(live)} Workers")
        self.out(f"Total GPU capacity {total_pages} pages.")
        self.out(f"Total model pages {model_pages} "
                 f"({100 * max(0, model_pages - total_pages) // max(1, total_pages)}% oversubscription).")
        self.out("* Admitting inference requests")
        self.phase = "running"
        self.scheduler.start(dict(self.models), live)
        gc.freeze()     # the scheduler's per-model and per-GPU state, likewise

    # ------------------------------------------------------------------ workers

    def _drain_worker(self, w: WorkerLink) -> None:
        sock = w.sock
        for _ in range(DRAIN_BATCH):
            if not sock.get(EVENTS) & POLLIN:
                return
            try:
                _, msg, data = recv(sock, s.RESULT_DECODER, routed=False)
            except ProtocolError as e:
                self.out(f"Worker {w.address}: {e}")
                continue
            now = self.clock()
            w.last_heard = now
            if type(msg) is s.ErrorResult and msg.status == Status.NOT_CONTROLLER:
                self._taken_over(w, now, msg.message)
                continue
            if type(msg) is s.Heartbeat:
                w.readings = msg.readings
                if not w.alive and not w.pending:
                    self._probe(w, now)
                continue
            p = self.pending.get(msg.action_id)
            if p is None or p.worker is not w:
                w.late += 1   # late result of an action already failed (worker was lost): discard
                continue
            del self.pending[msg.action_id]
            w.pending.discard(msg.action_id)
            w.sync.add(p.sent, msg.received, msg.sent, now)
            self._deliver(p, msg, data, now)

    def _deliver(self, p: Pending, msg, data, now: int) -> None:
        w = p.worker
        action = p.action
        t = type(msg)
        if t is s.InferResult:
            off = w.sync.offset
            msg.exec_begin -= off
            msg.exec_end -= off
            msg.copy_output_end -= off
            self.stats.action_done(w.id, action.gpu_id, True, msg.exec_duration, now - p.sent, msg.gpu_clock)
            self.action_log.add((now, action.action_id, "Infer", 0, w.id, action.gpu_id, action.model_id,
                                 action.batch_size, action.expected_ns, msg.exec_duration, p.expected_end,
                                 msg.exec_end, 0, msg.gpu_clock, msg.copy_output_end, msg.received,
                                 msg.sent, p.sent, now - p.sent, 0, 0))
        elif t is s.LoadWeightsResult:
            self.stats.action_done(w.id, action.gpu_id, False, msg.duration, now - p.sent)
            self.action_log.add((now, action.action_id, "LoadWeights", 0, w.id, action.gpu_id,
                                 action.model_id, 0, action.expected_ns, msg.duration, p.expected_end,
                                 msg.end - w.sync.offset, 0, 0, 0, msg.received, msg.sent, p.sent,
                                 now - p.sent, 0, 0))
        elif t is s.ErrorResult:
            self.action_log.add((now, action.action_id, type(action).__name__, msg.status, w.id,
                                 getattr(action, "gpu_id", -1), getattr(action, "model_id", -1),
                                 getattr(action, "batch_size", 0), getattr(action, "expected_ns", 0), 0,
                                 p.expected_end, 0, 0, 0, 0, msg.received, msg.sent, p.sent,
                                 now - p.sent, 0, 0))
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
                    w.last_probe = 0
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and not w.alive and self._running:
                w.taken = False     # a new connection (e.g. the worker restarted): ours again
                self._probe(w, now)

    def _taken_over(self, w: WorkerLink, now: int, why: str) -> None:
        """The worker refused us: another controller's Reset made it serve that controller.
        Stop using it, and do not send Reset back (two controllers would take turns resetting
        it); it is probed again only when its connection is made anew."""
        if w.taken:
            return
        w.taken = True
        why = f"taken over by another controller ({why}); not probed again until it reconnects"
        if w.alive:
            self._worker_lost(w, now, why)
        else:
            self.out(f"Worker {w.id} ({w.address}): {why}")
            for aid in sorted(w.pending):
                self._fail_action(aid, Status.WORKER_LOST, f"worker {w.address} serves another controller")

    def _worker_lost(self, w: WorkerLink, now: int, why: str) -> None:
        self.out(f"Worker {w.id} ({w.address}) lost: {why}; {len(w.pending)} actions in flight failed")
        w.alive = False
        if self.telemetry is not None:   # telemetry: event
            self.telemetry.event("worker_lost", f"Worker {w.id} ({w.address}) lost: {why}", w.id)
        for aid in sorted(w.pending):
            self._fail_action(aid, Status.WORKER_LOST, f"worker {w.address} lost")
        w.pending.clear()
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


def serve(config: dict, workers: list[str], **kw) -> None:
    """Run a controller in this process until interrupted (the `cw controller` body)."""
    c = Controller(config, workers, **kw)
    try:
        c.run()
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
