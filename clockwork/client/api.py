"""The client library: talk to a controller over one DEALER socket.

Single-threaded by design: the caller drives the event loop with `poll(timeout)` (the blocking
calls drive it themselves), so callbacks run on the caller's thread and need no locks. One
process sustains tens of thousands of requests per second open loop because the per-request
path is: one struct appended to the batch the next poll() sends (or, with batching off, a
~20-byte header and one non-blocking send; input buffers are zmq.Frames sent by reference,
never copied either way), a dict entry, and a deque append for the timeout.

    client = Client("127.0.0.1:12346")
    client.connect()                                                   # ControllerUnreachable if nobody there
    first_id, copies, info = client.load_model("resnet50", copies=2)   # retries while initialising
    reply = client.infer(first_id, inputs=buf)                         # blocking, raises on failure
    client.infer_async(first_id, callback=on_reply)                    # on_reply(resp, data, latency_s)
    fut = client.infer_future(first_id); client.poll(0.01); fut.done()
    client.close()

Requests made between two polls go to the controller together, as one InferRequestBatch,
when poll() begins (or once MAX_BATCH are waiting); answers come back likewise. Nothing waits
longer than it would have: a request is sent at the latest when the caller next drives the loop,
where it would have waited for its answer anyway. `batch_requests = false` ([client] in the
config, or coalesce=False) sends one message per request, as clients before batching did.

Client-side outcomes that are not controller answers use negative pseudo-statuses
(NO_ANSWER, SEND_FAILED, CONNECTION_LOST, WRONG_PEER), so accounting can tell "the controller said timeout"
(status 4) from "nobody answered". When the connection drops (the controller died or restarted)
every outstanding request is answered CONNECTION_LOST at once instead of waiting for its
timeout; ZeroMQ reconnects by itself, so the same Client works again once a controller is back.

A restarted controller is a new lifetime (a new epoch in its answers) whose model ids mean other
models. Every request names the epoch its model id is from, so the controller answers a stale id
STALE_EPOCH rather than serving another tenant's model; and the Client, on meeting a new epoch,
loads every model it loaded before again and from then on maps the ids its caller holds to the
new ones (client.lifetimes), so a workload keeps going across the restart.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Callable, Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..config import load_config
from ..status import Status, describe
from ..transport import schema
from ..transport import security as security_mod
from ..transport.schema import (ErrorResponse, InferRequest, InferRequestBatch, InferResponse,
                                InferResponseBatch, LoadModelRequest, LoadModelResponse, LsRequest,
                                ModelInfo, ProtocolError, split_frames)
from ..transport.sockets import EVENTS, MAX_MESSAGE_SIZE, NOBLOCK, POLLIN, parse_address, recv_frames, tcp
from ..transport.sockets import wait as wait_ready
from .lifetimes import ModelIds, Registration

NO_ANSWER = -1      # no response within the call's timeout (client side)
SEND_FAILED = -2    # could not even queue the request (send queue full)
CONNECTION_LOST = -3   # the connection to the controller dropped with the request outstanding
WRONG_PEER = -4     # the peer sent something no controller sends: it is not a clockwork controller

INPROC = "inproc://"  # an address of this form names a controller in this very process

MAX_BATCH = 256     # requests per InferRequestBatch: beyond, the batch is sent before poll()


def status_name(code: int) -> str:
    if code == NO_ANSWER:
        return "no answer (client timeout)"
    if code == SEND_FAILED:
        return "send failed (queue full)"
    if code == CONNECTION_LOST:
        return "connection to controller lost"
    if code == WRONG_PEER:
        return "peer is not a clockwork controller"
    return describe(code)


# Handshakes that fail for the security settings: the mechanisms differ (PROTOCOL) or the
# controller refuses our key (AUTH). NO_DETAIL is left out: it is what a connection closed in
# mid-handshake gives (a controller killed or restarting), and ZeroMQ reconnects by itself.
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


def handshake_failed_message(address: str, secure: bool) -> str:
    """Why a ZMTP handshake with the controller failed, as far as we can tell: the security
    settings of the two ends differ."""
    if not secure:
        return (f"the controller at {address} refused our connection's handshake: it requires CURVE "
                "security. Set [security] enabled = true and key_dir in CLOCKWORK_CONFIG_FILE, with a "
                "client key pair the controller accepts (`cw keys`; see docs/reliability.md)")
    return (f"the controller at {address} refused our CURVE handshake: it runs without security, or "
            "does not accept this client's key, or we hold the wrong controller public key "
            "([security] key_dir, client_key; `cw keys`)")


def wrong_peer_message(address: str, header) -> str | None:
    """Why the peer at `address` cannot be a controller, from a header we could not decode as
    a response: it is a worker's result or a controller's action (another role), or a peer's
    fatal error text. None for mere garbage (logged and skipped)."""
    for decoder, role in ((schema.RESULT_DECODER, "a clockwork worker (a worker's port? clients connect "
                           "to the controller's client port)"), (schema.ACTION_DECODER, "a clockwork controller's "
                           "worker link")):
        try:
            schema.decode(header, decoder)
        except ProtocolError as e:
            if str(e).startswith("peer error"):
                return f"{address} refused us: {e}"
            continue
        return f"{address} is not a clockwork controller: it answers like {role}"
    return None


def _connect(ctx: zmq.Context, endpoint: str, security=None) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER with sockets.dealer()'s options, plus a monitor for the ZMTP handshake that
    is attached *before* connecting, so the event cannot be missed. The handshake tells
    "a controller is listening" apart from "nothing there" without sending any request (an
    early Ls would end the controller's LoadModel stage before our models are loaded).
    The monitor also reports disconnections: answers to requests sent before one can never
    arrive (the controller routes by connection), so they are failed at once."""
    sock = ctx.socket(zmq.DEALER)
    for opt, value in ((zmq.LINGER, 0), (zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE), (zmq.SNDHWM, 100_000),
                       (zmq.RCVHWM, 100_000), (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 1000)):
        sock.setsockopt(opt, value)
    if security is not None:                   # CURVE: our key pair, and the controller's key
        security.client(sock, security.client_key, "controller")
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        raise
    return sock, monitor


def _dtype_and_item_shape(inputs, batch_size: int) -> tuple[str, list[int] | None]:
    """What the controller checks against the model: a numpy array's dtype and, when it is
    shaped (batch_size, ...), its per-item shape. Raw buffers and frames are not checked."""
    dtype = getattr(inputs, "dtype", None)
    shape = getattr(inputs, "shape", None)
    if dtype is None or shape is None:
        return "", None
    return dtype.name, (list(shape[1:]) if len(shape) >= 2 and shape[0] == batch_size else None)


class ClientError(Exception):
    """Base of every error this library raises."""


class ControllerUnreachable(ClientError):
    """No controller answered at all (nothing listening, wrong address, or it is stuck)."""


class WrongPeer(ClientError):
    """The peer answered with something no clockwork controller sends."""


class RequestTimeout(ClientError):
    """A request got no answer within its timeout."""


class RequestFailed(ClientError):
    """The controller answered with a non-success status."""

    def __init__(self, what: str, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{what} failed: {status_name(status)} ({status})"
                         + (f": {message}" if message else ""))


class InferReply:
    """A successful blocking infer: the response header, output bytes and round trip."""
    __slots__ = ("response", "output", "latency_s")

    def __init__(self, response: InferResponse, output, latency_s: float):
        self.response, self.output, self.latency_s = response, output, latency_s


class Future:
    """Result of an asynchronous call; completes inside `Client.poll`."""
    __slots__ = ("_done", "response", "data", "latency_s")

    def __init__(self):
        self._done = False
        self.response = self.data = None
        self.latency_s = 0.0

    def _set(self, response, data, latency_s):
        self._done = True
        self.response, self.data, self.latency_s = response, data, latency_s

    def done(self) -> bool:
        return self._done

    @property
    def status(self) -> int:
        return self.response.status if self._done else NO_ANSWER


Callback = Callable[[Any, list, float], None]


class Client:
    """A connection to one controller. Not thread-safe: use it from one thread."""

    def __init__(self, address: str, *, timeout_s: float = 30.0, connect_timeout_s: float | None = None,
                 retry_interval_s: float = 1.0, load_timeout_s: float = 600.0,
                 ctx: zmq.Context | None = None, log=print, coalesce: bool | None = None,
                 spin_us: float | None = None, request_ids: Iterator[int] | None = None):
        """timeout_s: default per-Infer timeout. connect_timeout_s: how long to wait for a
        first answer and to keep retrying while the controller initialises. load_timeout_s:
        how long one LoadModel may take once the controller is known to be there. coalesce:
        send the Infers made between two polls as one message (default [client] batch_requests).
        spin_us: busy-wait this long for an answer before sleeping in poll() (default [client]
        spin_us). request_ids: the ids to number requests with (default 1, 2, ...; a
        ShardedClient gives each shard's Client ids of its own, so they are unique across shards)."""
        cfg = load_config()
        if address.startswith(INPROC):
            # a controller in this process (the in-process front end, clockwork.frontend.in_process):
            # no I/O thread, no TCP, no handshake and no CURVE (nothing leaves the process); the
            # controller's context must be passed as ctx
            security, endpoint = None, address
            self.host, self.port, self.address = address, 0, address
        else:
            security = security_mod.load(cfg)     # SecurityError (a ValueError) before any socket
            self.host, self.port = parse_address(address, cfg["controller"]["client_port"])
            self.address = f"{self.host}:{self.port}"
            endpoint = tcp(self.host, self.port)
        self.timeout_s = timeout_s
        self.connect_timeout_s = (cfg["client"]["connect_timeout_s"] if connect_timeout_s is None
                                  else connect_timeout_s)
        self.retry_interval_s = retry_interval_s
        self.load_timeout_s = load_timeout_s
        self.coalesce = cfg["client"]["batch_requests"] if coalesce is None else coalesce
        self.spin_s = float(cfg["client"]["spin_us"]) / 1e6 if spin_us is None else spin_us / 1e6
        self.log = log
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.Context()
        try:
            self._sock, self._monitor = _connect(self._ctx, endpoint, security)
        except zmq.ZMQError as e:
            if self._own_ctx:
                self._ctx.term()
            raise ValueError(f"bad address {address!r}: {e.strerror}") from None
        self._transport_up = False
        self._dropped = False                      # a disconnection not yet handled by poll()
        self._link_down = False                    # disconnected since the last handshake
        self._told_down = False                    # the user was told the controller is gone
        self.disconnects = 0
        self._ids = itertools.count(1) if request_ids is None else request_ids
        # the poll() blocking calls drive while they wait: ours, or a ShardedClient's, which
        # serves every shard's answers meanwhile (clockwork.client.shards)
        self.drive: Callable[[float], int] = self.poll
        self._pending: dict[int, tuple[Callback, float]] = {}
        self._expiry: dict[float, deque] = {}     # one FIFO per distinct timeout: already sorted
        self.answered_unknown = 0                  # answers for ids we no longer wait for
        self.bad_messages = 0
        self.wrong_peer: str | None = None         # why the peer is not a controller, once seen
        self.handshake_failed: str | None = None   # why ZMTP handshakes fail (security mismatch)
        self._secure = security is not None
        self.heard_from_controller = False
        self.model_ids = ModelIds()                   # ids across controller lifetimes
        self._reload: _Reload | None = None        # re-registration with a new controller, under way
        self._announced_epoch = 0
        self.restarts_seen = 0
        self._enc = schema.encode
        self._now = time.perf_counter
        # requests made since the last poll, sent together by _flush(): their structs, their
        # input frames in order, and how many frames each has
        self._batch: list[InferRequest] = []
        self._batch_frames: list = []
        self._batch_counts: list[int] = []

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._close_monitor()
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The sockets poll() reads: for an outside event loop to wait on (clockwork.frontend)."""
        return [self._sock] if self._monitor is None else [self._sock, self._monitor]

    # ------------------------------------------------------------------ asynchronous calls

    def infer_async(self, model_id: int, callback: Callback, inputs=None, batch_size: int = 1,
                    slo_factor: float = 0.0, slo_ns: int = 0, user_id: int = 0,
                    timeout_s: float | None = None) -> int:
        """Send one Infer; `callback(response, data_frames, latency_s)` runs inside poll().

        `inputs`: None (controller generates them), or a buffer / zmq.Frame, or a list of
        them (batch_size x input_size bytes in all). A zmq.Frame is sent by reference, so one
        preallocated Frame can back every request. A numpy array sends its dtype, and, shaped
        (batch_size, ...), its per-item shape: the controller refuses a mismatch with the model
        (INVALID_REQUEST) instead of running bytes of another type. Returns the request id.
        """
        rid = next(self._ids)
        ids = self.model_ids
        epoch = ids.epoch
        if ids.route is not None:                  # the controller restarted: map the caller's id
            current = ids.route.get(model_id)
            if current is None:
                epoch = ids.old_epoch              # an id not loaded again: answered STALE_EPOCH
            else:
                model_id = current
        dtype, shape = _dtype_and_item_shape(inputs, batch_size)
        req = InferRequest(rid, model_id, batch_size, slo_factor, slo_ns, user_id, epoch, time.monotonic_ns(),
                           dtype, shape)
        if self.coalesce and not self._link_down:
            return self._queue(rid, req, inputs, callback, timeout_s)
        return self._send(rid, self._enc(req), inputs, callback, timeout_s)

    def infer_future(self, model_id: int, **kw) -> Future:
        fut = Future()
        self.infer_async(model_id, fut._set, **kw)
        return fut

    def _queue(self, rid, req, inputs, callback, timeout_s) -> int:
        """Hold an Infer for the batch the next poll() sends (see the module docstring)."""
        if inputs is None:
            n = 0
        elif isinstance(inputs, (list, tuple)):
            n = len(inputs)
            self._batch_frames.extend(inputs)
        else:
            n = 1
            self._batch_frames.append(inputs)
        self._batch.append(req)
        self._batch_counts.append(n)
        self._track(rid, callback, self._now(), timeout_s)
        if len(self._batch) >= MAX_BATCH:
            self._flush()
        return rid

    def _flush(self) -> None:
        """Send the held requests: one alone as an InferRequest (as before batching), several as
        one InferRequestBatch. If the send queue is full, each is answered SEND_FAILED."""
        reqs, frames = self._batch, self._batch_frames
        counts = self._batch_counts
        self._batch, self._batch_frames, self._batch_counts = [], [], []
        header = self._enc(reqs[0] if len(reqs) == 1 else
                           InferRequestBatch(reqs, counts if frames else []))
        sock = self._sock
        try:
            if frames:
                sock.send(header, zmq.NOBLOCK | zmq.SNDMORE)
                last = len(frames) - 1
                for i, frame in enumerate(frames):
                    sock.send(frame, zmq.NOBLOCK | (zmq.SNDMORE if i < last else 0), copy=False)
            else:
                sock.send(header, zmq.NOBLOCK)
        except zmq.Again:      # zmq queues all parts of a message or none
            for req in reqs:
                entry = self._pending.pop(req.request_id, None)
                if entry is not None:
                    entry[0](ErrorResponse(req.request_id, SEND_FAILED, "send queue full: controller not reading"),
                             [], 0.0)

    def load_model_async(self, path: str, copies: int, callback: Callback, timeout_s: float | None = None) -> int:
        rid = next(self._ids)
        return self._send(rid, self._enc(LoadModelRequest(rid, path, copies)), None, callback, timeout_s)

    def ls_async(self, callback: Callback, timeout_s: float | None = None, first: int = 0) -> int:
        """One page of the model list: ids >= first (the controller's ids); response.next is
        the first id of the next page, -1 after the last."""
        rid = next(self._ids)
        return self._send(rid, self._enc(LsRequest(rid, first)), None, callback, timeout_s)

    def _send(self, rid, header, inputs, callback, timeout_s) -> int:
        if self._batch:          # requests leave in the order they were made
            self._flush()
        now = self._now()
        if self._link_down:
            # we saw the controller go: nothing is queued for whoever comes back; the request is
            # answered CONNECTION_LOST in the next poll() (never from inside a send: no recursion)
            self._dropped = True
            self._pending[rid] = (callback, now)
            return rid
        try:
            if inputs is None:
                self._sock.send(header, zmq.NOBLOCK)
            elif isinstance(inputs, (list, tuple)):
                self._sock.send(header, zmq.NOBLOCK | zmq.SNDMORE)
                last = len(inputs) - 1
                for i, frame in enumerate(inputs):
                    self._sock.send(frame, zmq.NOBLOCK | (zmq.SNDMORE if i < last else 0), copy=False)
            else:
                self._sock.send(header, zmq.NOBLOCK | zmq.SNDMORE)
                self._sock.send(inputs, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # With a multipart message, zmq either queues all parts or none of them.
            callback(ErrorResponse(rid, SEND_FAILED, "send queue full: controller not reading"), [], 0.0)
            return rid
        self._track(rid, callback, now, timeout_s)
        return rid

    def _track(self, rid, callback, now, timeout_s) -> None:
        """Wait for `rid`'s answer until its timeout."""
        self._pending[rid] = (callback, now)
        t = self.timeout_s if timeout_s is None else timeout_s
        q = self._expiry.get(t)
        if q is None:
            q = self._expiry[t] = deque()
        q.append((now + t, rid))

    # ------------------------------------------------------------------ the event loop

    def poll(self, timeout_s: float | None = 0.0, max_messages: int = 10_000, monitor: bool = True) -> int:
        """Wait up to timeout_s for answers, run their callbacks, expire overdue requests.

        Returns the number of callbacks run. Never blocks longer than timeout_s (None: until
        at least one message arrives or a request expires). monitor=False skips reading the
        connection monitor: for an outside event loop that watches the monitor socket's own
        descriptor (clockwork.frontend.link), since every ZMQ_EVENTS check is two system calls.
        """
        if self._batch:
            self._flush()
        sock = self._sock
        n = 0
        look_at_monitor = monitor
        if timeout_s != 0:
            wait = timeout_s
            nxt = self._next_expiry()
            if nxt is not None:
                left = max(0.0, nxt - self._now())
                wait = left if wait is None else min(wait, left)
            ready = wait_ready([sock] if self._monitor is None else [sock, self._monitor], wait, self.spin_s)
            # the wait checked the monitor too (each check is a system call): read it if it had events
            look_at_monitor = monitor and self._monitor is not None and self._monitor in ready
        if look_at_monitor:
            self._read_monitor()
        decode = schema.decode
        dec = schema.RESPONSE_DECODER
        now = self._now
        events = sock.get
        while n < max_messages and events(EVENTS) & POLLIN:    # cheaper than catching Again
            frames = recv_frames(sock, NOBLOCK)
            self.heard_from_controller = True
            try:
                msg = decode(frames[0], dec)
            except ProtocolError as e:
                # a message of another role (a worker's result) means the peer is of another
                # kind: nothing we wait for will come, so fail it all now
                self.bad_messages += 1
                why = wrong_peer_message(self.address, frames[0])
                if why is None:
                    if self.bad_messages <= 5:
                        self.log(f"bad message from controller {self.address}: {e}")
                    continue
                self.wrong_peer = why
                n += self._fail_all(WRONG_PEER, why)
                continue
            if type(msg) is InferResponseBatch:
                n += self._answer_batch(msg, frames)
            else:
                n += self._answer(msg, frames[1:], now())
        if self._dropped:
            self._dropped = False
            failed = self._fail_all(CONNECTION_LOST, f"connection to {self.address} lost")
            n += failed
            if self._link_down and not self._told_down:
                self._told_down = True
                self.log(f"the controller at {self.address} is gone (connection lost): {failed} outstanding "
                         f"requests answered CONNECTION_LOST, and so is every request until it is back")
        if self._reload is not None and self._reload.retry:
            self._reload.resend_due(self._now())
        return n + self._expire()

    def send_held(self) -> None:
        """Send the requests held for the next poll() now (an outside loop about to sleep)."""
        if self._batch:
            self._flush()

    def next_deadline(self) -> float | None:
        """When poll() next has something to do without a message (perf_counter time): a
        request's timeout or a re-registration's retry; None: nothing."""
        return self._next_expiry()

    def _answer(self, msg, data, now: float) -> int:
        """Run the callback of the request `msg` answers; returns 1 if there was one."""
        if msg.epoch != self.model_ids.epoch and msg.epoch and self.model_ids.epoch:
            self._new_epoch(msg.epoch)
        entry = self._pending.pop(msg.request_id, None)
        if entry is None:
            self.answered_unknown += 1
            if msg.request_id == -1 and isinstance(msg, ErrorResponse):
                self.log(f"controller error: {msg.message}")
            return 0
        cb, sent = entry
        cb(msg, data, now - sent)
        return 1

    def _answer_batch(self, batch: InferResponseBatch, frames) -> int:
        """Each answer of an InferResponseBatch with its own output frames."""
        responses = batch.responses
        per_answer, why = split_frames(batch.frames, len(responses), frames[1:], "answers")
        if why is not None:
            self.bad_messages += 1
            if self.bad_messages <= 5:
                self.log(f"bad message from controller {self.address}: {why}")
            per_answer = [()] * len(responses)       # answer every request, without outputs
        now = self._now()
        n = 0
        for msg, outputs in zip(responses, per_answer):
            n += self._answer(msg, outputs or [], now)   # callbacks get a list, as for a single answer
        return n

    # ------------------------------------------------------------------ controller restarts

    def _new_epoch(self, epoch: int) -> None:
        """An answer from another controller lifetime than our model ids': load every model we
        loaded again (asynchronously; answers meanwhile are STALE_EPOCH), then map to the new ids."""
        if epoch == self._announced_epoch:
            return
        self._announced_epoch = epoch
        self.restarts_seen += 1
        regs = self.model_ids.registrations
        if not regs:
            self.log(f"controller at {self.address} restarted (epoch {epoch:x}): "
                     f"model ids from before are stale; load models again")
            return
        self.log(f"controller at {self.address} restarted (epoch {epoch:x}): "
                 f"loading {len(regs)} models again")
        self._reload = _Reload(self, epoch, regs)

    def _reloaded(self, reload: "_Reload") -> None:
        if reload is not self._reload:
            return
        self._reload = None
        ok = reload.new_first
        self.model_ids.switch(reload.epoch, ok)
        lost = len(reload.regs) - len(ok)
        self.log(f"re-registered {len(ok)} models with the controller at {self.address}"
                 + (f"; {lost} could not be loaded again (their ids answer STALE_EPOCH)" if lost else ""))

    def _settle(self, epoch: int, timeout_s: float) -> None:
        """Before handing out ids of `epoch` from a blocking call's answer: finish the
        re-registration that answer may have started, or adopt the epoch if we hold no models."""
        if not epoch:
            return
        end = self._now() + timeout_s
        while self._reload is not None and self._now() < end:
            self.drive(0.05)
        ids = self.model_ids
        if ids.epoch == epoch:
            return
        if ids.epoch == 0 or not ids.registrations:
            ids.adopt(epoch)
            return
        raise RequestFailed("re-register models", Status.STALE_EPOCH,
                            f"the controller at {self.address} restarted and models could not be "
                            f"loaded again within {timeout_s:g} s")

    def _fail_all(self, status: int, message: str) -> int:
        """Answer every outstanding request with a client-side status; returns how many."""
        now = self._now()
        entries = list(self._pending.items())
        self.abandon()
        for rid, (cb, sent) in entries:
            cb(ErrorResponse(rid, status, message), [], now - sent)
        return len(entries)

    def _next_expiry(self):
        best = None
        if self._reload is not None and self._reload.retry:
            best = min(t for t, _ in self._reload.retry)
        for q in self._expiry.values():
            while q and q[0][1] not in self._pending:
                q.popleft()
            if q and (best is None or q[0][0] < best):
                best = q[0][0]
        return best

    def _expire(self) -> int:
        if not self._pending:
            for q in self._expiry.values():
                q.clear()
            return 0
        now = self._now()
        n = 0
        for t, q in self._expiry.items():
            while q and q[0][0] <= now:
                _, rid = q.popleft()
                entry = self._pending.pop(rid, None)
                if entry is not None:
                    entry[0](ErrorResponse(rid, NO_ANSWER, f"no answer from {self.address} within {t:g} s"),
                             [], now - entry[1])
                    n += 1
        return n

    def drain(self, timeout_s: float) -> int:
        """Poll until nothing is outstanding or timeout_s passed; returns how many remain."""
        end = self._now() + timeout_s
        while self._pending:
            left = end - self._now()
            if left <= 0:
                break
            self.poll(min(left, 0.05))
        return len(self._pending)

    def fail_outstanding(self, message: str) -> int:
        """Answer every outstanding request CONNECTION_LOST now: the caller knows the controller
        will never answer them (the in-process front end, when the controller's loop ended)."""
        return self._fail_all(CONNECTION_LOST, message)

    def abandon(self) -> list[int]:
        """Forget every outstanding request (their callbacks never run); returns their ids."""
        ids = list(self._pending)
        self._pending.clear()
        for q in self._expiry.values():
            q.clear()
        return ids

    # ------------------------------------------------------------------ blocking calls

    def _wait(self, fut: Future, what: str):
        while not fut.done():
            self.drive(0.05)
        r = fut.response
        if r.status == WRONG_PEER:
            raise WrongPeer(r.message)
        if r.status == NO_ANSWER:
            if not self.connected:
                raise ControllerUnreachable(
                    f"no controller answered at {self.address} ({what}): is `cw controller` running there?")
            raise RequestTimeout(f"{what}: {r.message}")
        return r

    def infer(self, model_id: int, inputs=None, batch_size: int = 1, slo_factor: float = 0.0,
              slo_ns: int = 0, user_id: int = 0, timeout_s: float | None = None) -> InferReply:
        """Blocking Infer. Raises RequestFailed (with .status) unless the answer is success."""
        fut = Future()
        self.infer_async(model_id, fut._set, inputs, batch_size, slo_factor, slo_ns, user_id, timeout_s)
        r = self._wait(fut, f"infer model {model_id}")
        if r.status != Status.SUCCESS:
            raise RequestFailed(f"infer model {model_id}", r.status, r.message)
        output = fut.data[0].bytes if fut.data else b""
        return InferReply(r, output, fut.latency_s)

    @property
    def connected(self) -> bool:
        """Whether a ZeroMQ peer (the controller) ever completed a handshake with us."""
        self._read_monitor()
        return self._transport_up or self.heard_from_controller

    def _read_monitor(self) -> None:
        """Handshakes mark the transport up; a disconnection is failed in the next poll()."""
        mon = self._monitor
        while mon is not None and mon.get(EVENTS) & POLLIN:
            event = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._transport_up = True
                self.handshake_failed = None     # the settings agree with this controller's
                self._link_down = False
                if self._told_down:
                    self._told_down = False
                    self.log(f"connected to a controller at {self.address} again")
            elif event & HANDSHAKE_FAILED:
                self.handshake_failed = handshake_failed_message(self.address, self._secure)
            elif event == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
                self._dropped = True
                self._link_down = True

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None

    def connect(self) -> None:
        """Wait until the controller accepts our connection (at most connect_timeout_s).
        Raises ControllerUnreachable otherwise. Sends nothing."""
        end = self._now() + self.connect_timeout_s
        while not self.connected and self.handshake_failed is None:
            left = end - self._now()
            if left <= 0 or self._monitor is None:
                break
            self._monitor.poll(max(1, int(left * 1000)))
        if self.connected:
            return
        if self.handshake_failed is not None:
            raise ControllerUnreachable(self.handshake_failed)
        raise ControllerUnreachable(f"nothing accepted a connection at {self.address} within "
                                    f"{self.connect_timeout_s:g} s: is `cw controller` running there?")

    def _retrying(self, send: Callable[[Future, float], None], what: str, attempt_timeout: float):
        """Send, and resend every retry_interval_s while the controller answers INITIALIZING (or
        is reconnecting after its connection dropped), for at most connect_timeout_s in all.
        Each attempt waits attempt_timeout for its answer."""
        deadline = self._now() + self.connect_timeout_s
        told = False
        while True:
            fut = Future()
            send(fut, attempt_timeout)
            r = self._wait(fut, what)
            if r.status != Status.INITIALIZING and r.status != CONNECTION_LOST:
                return r
            if self._now() + self.retry_interval_s > deadline:
                state = "initializing" if r.status == Status.INITIALIZING else "unreachable"
                raise RequestFailed(what, r.status, f"controller still {state} after "
                                    f"{self.connect_timeout_s:g} s: {r.message}")
            if not told:
                self.log(f"Clockwork {'initializing' if r.status == Status.INITIALIZING else 'reconnecting'}, "
                         f"retrying: {r.message or 'controller initializing'}")
                told = True
            end = self._now() + self.retry_interval_s
            reconnecting = r.status == CONNECTION_LOST
            while self._now() < end:          # keep serving other traffic while we wait
                self.drive(max(0.0, end - self._now()))
                if reconnecting and not self._link_down:
                    break                     # a controller is back: ask it now

    def load_model(self, path: str, copies: int = 1, timeout_s: float | None = None
                   ) -> tuple[int, int, LoadModelResponse]:
        """Load `copies` instances of the model directory `path` (relative to the workers'
        model dir). Returns (first model id, copies, response); ids are consecutive."""
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.connect()
        r = self._retrying(lambda fut, t: self.load_model_async(path, copies, fut._set, t),
                           f"load model {path!r} x{copies}", self.load_timeout_s if timeout_s is None else timeout_s)
        if r.status != Status.SUCCESS:
            raise RequestFailed(f"load model {path!r} x{copies}", r.status, r.message)
        self._settle(r.epoch, self.load_timeout_s)
        first = self.model_ids.register(path, r.copies, r.model_id)
        return first, r.copies, r

    def ls(self, timeout_s: float | None = None) -> list[ModelInfo]:
        """Every model the controller knows (all pages), retried while it initialises."""
        timeout = self.connect_timeout_s if timeout_s is None else timeout_s
        models: list[ModelInfo] = []
        first = 0
        epoch = None
        while True:
            r = self._retrying(lambda fut, t: self.ls_async(fut._set, t, first), "ls", timeout)
            if r.status != Status.SUCCESS:
                raise RequestFailed("ls", r.status, r.message)
            if epoch is not None and r.epoch != epoch:    # it restarted between pages: start over
                models, first, epoch = [], 0, None
                continue
            epoch = r.epoch
            models.extend(r.models)
            if r.next < 0:
                break
            first = r.next
        self._settle(epoch, self.load_timeout_s)
        if self.model_ids.route is not None:          # name models by the caller's ids
            for m in models:
                m.model_id = self.model_ids.handle_block(m.model_id, 1)
        return models


class _Reload:
    """Loading a Client's models again on a restarted controller: one LoadModel per
    registration, retried while the controller initialises or is unreachable."""

    def __init__(self, client: Client, epoch: int, regs: list[Registration]):
        self.client = client
        self.epoch = epoch
        self.regs = list(regs)
        self.waiting = len(self.regs)
        self.new_first: dict[Registration, int] = {}
        self.retry: list[tuple[float, Registration]] = []
        for reg in self.regs:
            self._send(reg)

    def _send(self, reg: Registration) -> None:
        self.client.load_model_async(reg.path, reg.copies, lambda r, d, lat: self._answer(reg, r),
                                     self.client.load_timeout_s)

    def resend_due(self, now: float) -> None:
        due = [reg for t, reg in self.retry if t <= now]
        self.retry = [(t, reg) for t, reg in self.retry if t > now]
        for reg in due:
            self._send(reg)

    def _answer(self, reg: Registration, r) -> None:
        client = self.client
        if client._reload is not self:
            return                        # superseded (yet another restart)
        if r.status in (Status.INITIALIZING, CONNECTION_LOST, NO_ANSWER, SEND_FAILED):
            self.retry.append((client._now() + client.retry_interval_s, reg))
            return
        if r.status == Status.SUCCESS and r.epoch == self.epoch:
            self.new_first[reg] = r.model_id
        elif r.status == Status.SUCCESS:
            return                        # another lifetime: its own re-registration takes over
        else:
            client.log(f"could not load {reg.path!r} x{reg.copies} again: {status_name(r.status)}"
                       + (f": {r.message}" if r.message else ""))
        self.waiting -= 1
        if self.waiting == 0:
            client._reloaded(self)
