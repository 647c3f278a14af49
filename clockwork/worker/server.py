"""The worker's ZeroMQ edge: one ROUTER, one thread, one event loop around a WorkerRuntime.

The loop waits on the socket (and the backend's completion fd, if it has one) exactly until the
next executor event, heartbeat or stats line, so emulated millisecond executions end on time
without spinning. Replies go to the identity that sent the action. Anything undecodable gets an
ErrorResult(BAD_MESSAGE) -- or a schema.fatal() text on a protocol-version mismatch -- and the
loop carries on: no input can take the worker down.

One controller link at a time: a peer becomes *the* controller by sending Reset (the explicit
handshake every controller starts with), which also drops all state. Every other action from any
other peer is refused with ErrorResult(NOT_CONTROLLER) and changes nothing; GetWorkerState is
read-only and answered to anyone (tools). A controller displaced by another's Reset is told so
once (ErrorResult NOT_CONTROLLER, action id -1), so it stops using this worker instead of
fighting over it. Only the controller gets a Heartbeat every heartbeat_interval_ms carrying the
pending count and device readings. Without CURVE anyone who can reach the port can send that
Reset: docs/reliability.md says what that exposes.
"""
from __future__ import annotations

import gc
import select
import time

import zmq

from ..status import Status, describe
from ..transport import schema as s
from ..transport import sockets
from .runtime import TAGS, WorkerRuntime

MAX_BATCH_RECV = 256        # messages handled per loop turn before timers get another look


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f}MB" if n < 2 ** 30 else f"{n / 2 ** 30:.1f}GB"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f}"


def describe_model(m: s.ModelInfo) -> str:
    """The original's model summary: sizes, pages, weights transfer and exec ms per batch."""
    execs = " ".join(f"b{b}={_ms(e)}" for b, e in zip(m.batch_sizes, m.exec_ns))
    return (f"input={m.input_size} output={m.output_size} weights={m.weights_size / 2 ** 20:.1f} MB "
            f"({m.num_pages} pages) xfer={_ms(m.weights_load_ns)} {execs}")


def describe_state(state: s.WorkerState, max_models: int = 10) -> str:
    lines = [f"page_size={state.page_size}", "gpus="]
    for g in state.gpus:
        lines.append(f"GPU-{g.gpu_id} weights_cache={_mb(g.total_pages * state.page_size)} "
                     f"({g.total_pages} pages, {g.free_pages} free) io_pool={_mb(g.io_pool_size)} "
                     f"workspace_pool={_mb(g.workspace_pool_size)} {len(g.loaded_models)} models currently on GPU")
    lines.append("models=")
    for m in state.models[:max_models]:
        lines.append(f"M-{m.model_id} src={m.source} {describe_model(m)}")
    if len(state.models) > max_models:
        lines.append(f"... and {len(state.models) - max_models} more")
    return "\n".join(lines)


class WorkerServer:
    def __init__(self, runtime: WorkerRuntime, host: str, port: int, heartbeat_interval_ms: int = 200,
                 print_interval_s: float = 10, log=print, ctx: zmq.Context | None = None, security=None,
                 clock=time.monotonic_ns, batch_results: bool = True, timer_spin_us: float = 0,
                 spin_us: float = 0):
        """`clock`: the worker's clock (ns); every timestamp it sends and every window it checks
        is in it, whatever the controller's reads (docs/design.md, "Clocks"). `batch_results`:
        results made in one loop turn go to the controller as one message (False: one each).
        `timer_spin_us`: with one action in flight, sleep only until this long before the
        runtime's next timer (an op's end, an action's earliest), then busy-wait for it: a
        timed sleep wakes tens of us late, and that lateness is added to the result
        ([worker] timer_spin_us). `spin_us`:
        busy-wait this long for a message before sleeping ([worker] spin_us, as the
        controller's and the client's)."""
        self.rt = runtime
        self.clock = clock
        runtime.send = self._send
        self.log = log
        self.ctx = ctx or zmq.Context.instance()
        self.security = security        # transport.security.Security: CURVE, controllers only
        self.router = sockets.router(self.ctx, host, port,   # raises zmq.ZMQError if taken
                                     secure=security and (lambda sk: security.server(sk, "worker")))
        self.address = f"{host}:{port}"
        # <= 0 turns heartbeats / stats lines off
        self.heartbeat_ns = int(heartbeat_interval_ms * 1e6) if heartbeat_interval_ms > 0 else None
        self.print_ns = int(print_interval_s * 1e9) if print_interval_s > 0 else None
        self.controller: bytes | None = None
        self._next_heartbeat = 0
        self._next_print = 1 << 62
        self._stopped = False
        self._copy_outputs = not runtime.backend.stable_outputs
        self.batch_results = batch_results
        self.timer_spin_ns = int(timer_spin_us * 1000)
        self.spin_ns = int(spin_us * 1000)
        self._results: dict[bytes, list] = {}     # peer -> [(result, data frames)] of this turn
        self._fd = runtime.backend.wait_fd()
        self._select_fds = [self.router.getsockopt(zmq.FD)] + ([self._fd] if self._fd is not None else [])

    # ------------------------------------------------------------------ sending
    def _send(self, ident, msg, data) -> None:
        """A result: held until this loop turn ends (flush_results), or sent at once with
        batch_results off."""
        cls = msg.__class__
        if cls is s.WorkerStateResult:
            self.log(f"Sending R{msg.action_id}:GetWorkerState:\n{describe_state(msg.state)}")
        elif cls is s.LoadModelFromDiskResult:
            copies = f" copies={len(msg.models)}" if len(msg.models) > 1 else ""
            self.log(f"Sending R{msg.action_id}:LoadModelFromDisk {describe_model(msg.models[0])}"
                     f"{copies} duration={_ms(msg.end - msg.begin)}")
            gc.freeze()      # thousands of long-lived model objects: keep them out of GC passes
        elif cls is s.ErrorResult and msg.action_tag in _LOGGED_TAGS:
            self.log(f"Sending R{msg.action_id}:error {msg.status} ({Status(msg.status).name}): {msg.message}")
        elif cls is s.InferResult and self._copy_outputs and data:
            # the output lives in an io region the next Infer may overwrite: copy it now
            data = [bytes(memoryview(d)) for d in data]
        if not self.batch_results:
            msg.sent = self.clock()
            sockets.send(self.router, msg, data, ident)
            return
        held = self._results.get(ident)
        if held is None:
            self._results[ident] = [(msg, data)]
        else:
            held.append((msg, data))

    def flush_results(self) -> None:
        """Send the results held: one message per peer (a ResultBatch when there are several),
        each stamped `sent` now. Called before every wait, so a result never waits longer than
        the loop turn that made it."""
        now = self.clock()
        for ident, held in self._results.items():
            if len(held) == 1:
                msg, data = held[0]
                msg.sent = now
                sockets.send(self.router, msg, data, ident)
                continue
            for msg, _ in held:
                msg.sent = now
            batch, frames = s.batch(s.ResultBatch, [m for m, _ in held], [d for _, d in held])
            sockets.send(self.router, batch, frames, ident)
        self._results.clear()

    def _heartbeat(self, now: int) -> None:
        self.router.send_multipart([self.controller, s.encode(
            s.Heartbeat(now, self.rt.stats.pending, self.rt.readings(now)))])

    def stats_line(self) -> str:
        st = self.rt.stats
        line = (f"LdWts={st.loads} Inf={st.infers} Evct={st.evicts} || "
                f"Total Pending={st.pending} Errors={st.errors} MaxLag={st.max_lag / 1e6:.2f}ms")
        if st.by_status:
            line += " (" + ", ".join(f"{describe(c)}={n}" for c, n in sorted(st.by_status.items())) + ")"
            st.by_status.clear()
        st.loads = st.infers = st.evicts = st.errors = st.max_lag = 0
        return line

    # ------------------------------------------------------------------ receiving
    def _receive(self) -> None:
        """Read up to MAX_BATCH_RECV messages; called when _wait() saw one waiting, so the socket
        is asked (ZMQ_EVENTS, two system calls) after each message, not before the first."""
        rt = self.rt
        router = self.router
        for _ in range(MAX_BATCH_RECV):
            received = self.clock()
            try:
                ident, msg, data = sockets.recv(router, s.ACTION_DECODER, routed=True, flags=sockets.NOBLOCK)
            except zmq.Again:
                return
            except s.ProtocolError as e:
                self._bad_message(e, received)
                if not router.get(sockets.EVENTS) & sockets.POLLIN:
                    return
                continue
            if msg.__class__ is s.ActionBatch:
                for action, frames in s.unbatch(msg, data):
                    if action.__class__ is s.BadEntry:
                        self._bad_entry(ident, action, received)
                    else:
                        self._on_action(ident, action, frames, received)
            else:
                self._on_action(ident, msg, data, received)
            rt.advance(self.clock())
            if not router.get(sockets.EVENTS) & sockets.POLLIN:
                return

    def _on_action(self, ident: bytes, msg, data, received: int) -> None:
        """One action, alone or from a batch: the controller check, then the runtime."""
        cls = msg.__class__
        if ident != self.controller:
            if cls is s.Reset:
                self._handshake(ident, received)
            elif cls is not s.GetWorkerState:   # a tool asking for state is answered
                self._refuse(ident, msg, received)
                return
        if cls is s.GetWorkerState or cls is s.LoadModelFromDisk or cls is s.Reset \
                or cls is s.ClearCache:
            self.log(_describe_action(msg))
        try:
            self.rt.handle(msg, data, ident, received)
        except Exception as e:   # a bug must cost one action, not the worker
            self.log(f"internal error handling A{msg.action_id}: {e!r}")
            self._send(ident, s.ErrorResult(msg.action_id, TAGS.get(cls, 0), Status.RUNTIME_ERROR,
                                            f"internal error: {e!r}", received), ())

    def _bad_entry(self, ident: bytes, entry: s.BadEntry, received: int) -> None:
        """An action of a batch that could not be read: answered alone, the rest still run."""
        st = self.rt.stats
        st.errors += 1
        st.by_status[Status.BAD_MESSAGE] = st.by_status.get(Status.BAD_MESSAGE, 0) + 1
        self._send(ident, s.ErrorResult(entry.action_id, entry.tag, Status.BAD_MESSAGE, entry.error, received), ())

    def _handshake(self, ident: bytes, received: int) -> None:
        """A Reset from a new peer: it is the controller from now on; the previous one is told."""
        if self.controller is not None:
            self.log("A new controller link sent Reset: serving it; the previous link is refused from now on")
            self._send(self.controller, s.ErrorResult(-1, TAGS[s.Reset], Status.NOT_CONTROLLER,
                                                      "another controller took this worker over (Reset)",
                                                      received), ())
        self.controller = ident
        self._next_heartbeat = 0

    def _refuse(self, ident: bytes, msg, received: int) -> None:
        st = self.rt.stats
        st.errors += 1
        st.by_status[Status.NOT_CONTROLLER] = st.by_status.get(Status.NOT_CONTROLLER, 0) + 1
        self._send(ident, s.ErrorResult(msg.action_id, TAGS.get(msg.__class__, 0), Status.NOT_CONTROLLER,
                                        "this worker serves another controller link: a controller must "
                                        "send Reset first", received), ())

    def _bad_message(self, e: s.ProtocolError, received: int) -> None:
        text = str(e)
        ident = getattr(e, "ident", None)
        if ident is None:
            return
        if text.startswith("peer error"):
            self.log(text)           # the peer gave up on us; answering would ping-pong
        elif text.startswith("protocol version mismatch"):
            self.log(f"rejected a peer: {text}")
            sockets.send_raw(self.router, s.fatal(text), ident)
        else:
            st = self.rt.stats
            st.errors += 1
            st.by_status[Status.BAD_MESSAGE] = st.by_status.get(Status.BAD_MESSAGE, 0) + 1
            self._send(ident, s.ErrorResult(-1, 0, Status.BAD_MESSAGE, text, received), ())

    # ------------------------------------------------------------------ loop
    def stop(self) -> None:
        self._stopped = True

    def serve(self) -> None:
        """Run until stop() or KeyboardInterrupt. An exception from a backend or runtime bug is
        logged and costs the action it hit, never the worker."""
        self._next_print = self.clock() + self.print_ns if self.print_ns else 1 << 62
        while not self._stopped:
            try:
                self._turn()
            except Exception as e:
                self.log(f"internal error: {e!r}")

    def _turn(self) -> None:
        """One loop iteration: due timers, heartbeat, stats, then wait for the next event."""
        rt, fd = self.rt, self._fd
        now = self.clock()
        rt.advance(now)
        polling = fd is None and rt.waiting_on_backend()
        if polling:
            rt.poll_backend(now)
        beating = self.controller is not None and self.heartbeat_ns
        if beating and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_ns
            self._heartbeat(now)
        if now >= self._next_print:
            self._next_print = now + self.print_ns
            self.log(self.stats_line())
        wake = self._next_print
        t = rt.next_time()
        if t is not None and t < wake:
            wake = t
        if beating and self._next_heartbeat < wake:
            wake = self._next_heartbeat
        if polling and now + rt.backend.poll_interval_ns < wake:
            wake = now + rt.backend.poll_interval_ns
        if self._results:
            self.flush_results()
        # spin for a timer only with one action in flight: under load timers are dense, a spin
        # before each would keep a core busy, and one wake-up's lateness matters less
        spin = self.timer_spin_ns if t is not None and t <= wake and rt.stats.pending <= 1 else 0
        ready, fd_ready = self._wait(min(1.0, (wake - self.clock()) / 1e9), spin)
        if fd_ready:
            rt.poll_backend(self.clock())
        if ready:
            self._receive()

    def _wait(self, timeout_s: float, timer_spin_ns: int = 0) -> tuple[bool, bool]:
        """(socket readable, backend fd readable), waiting at most timeout_s (sub-ms exact).
        Busy-waits instead of sleeping for the first spin_us ([worker] spin_us: a message
        soon after is read without a wake-up) and for the last timer_spin_ns (the timeout is
        a planned event: a timed sleep would wake tens of us after it)."""
        router = self.router
        if router.get(sockets.EVENTS) & sockets.POLLIN:
            return True, False
        if timeout_s < 0:
            timeout_s = 0
        if not (timer_spin_ns or self.spin_ns):
            r, _, _ = select.select(self._select_fds, [], [], timeout_s)
            fd_ready = self._fd is not None and self._fd in r
            return bool(router.get(sockets.EVENTS) & sockets.POLLIN), fd_ready
        now = time.monotonic_ns()
        due = now + int(timeout_s * 1e9)
        if self.spin_ns:
            ready = self._spin(min(due, now + self.spin_ns))
            if ready is not None:
                return ready
        sleep_s = (due - timer_spin_ns - time.monotonic_ns()) / 1e9
        if sleep_s > 0:
            r, _, _ = select.select(self._select_fds, [], [], sleep_s)
            if r:
                fd_ready = self._fd is not None and self._fd in r
                return bool(router.get(sockets.EVENTS) & sockets.POLLIN), fd_ready
        return self._spin(due) or (False, False)

    def _spin(self, until: int) -> tuple[bool, bool] | None:
        """Check the socket (and the backend's fd) in a busy loop until `until` (monotonic
        ns): what became ready, or None."""
        router, fd = self.router, self._fd
        while time.monotonic_ns() < until:
            if router.get(sockets.EVENTS) & sockets.POLLIN:
                return True, False
            if fd is not None and select.select([fd], [], [], 0)[0]:
                return False, True
        return None

    def close(self) -> None:
        self.router.close(0)
        if self.security is not None:
            self.security.close()


_LOGGED_TAGS = {s.LoadModelFromDisk.__struct_config__.tag, s.ClearCache.__struct_config__.tag}


def _describe_action(a) -> str:
    name = a.__class__.__name__
    if isinstance(a, s.LoadModelFromDisk):
        return (f"Received A{a.action_id}:LoadModelFromDisk model={a.model_id} copies={a.copies} "
                f"[{a.earliest}, {a.latest}] {a.path}")
    return f"Received A{a.action_id}:{name}"
