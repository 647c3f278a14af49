"""The client messages a controller reads and the Infer requests it holds, from admission to
answer: the per-request half of admission.py, in one plain class so that the opt-in build
compiles it (docs/compiled.md).

`drain` reads the client socket; each Infer (alone or out of an InferRequestBatch, each then
as if it had come alone) is counted in and, while the controller runs, `admit`ted: validated
(known model, batch size, input size, dtype and shape, SLO within clockwork.limits), bounded by
the inputs held in memory, stamped with its arrival, and handed to the scheduler. `respond` is
the Outbox's answer to a request, given exactly once: counted, logged, and queued in Replies
until the loop pass ends. What is not per request (Ls, LoadModel, Infers while the controller
starts) is admission.py's: this class calls back into the controller for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import zmq

from ..limits import MAX_SLO_NS
from ..status import Status
from ..transport import schema as s
from ..transport.schema import ProtocolError
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, recv
from .actions import DRAIN_BATCH
from .logs import TsvLog
from .model_registry import ModelRegistry
from .queuewait import QueueWait
from .replies import Replies
from .scheduler import Request
from .schedulers.common import Settings
from .stats import ControllerStats


def split_infer_batch(batch: s.InferRequestBatch, data: Any) -> tuple[list, list]:
    """([(request, its input frames)], []), or ([], an INVALID_REQUEST answer per request) when
    the frame counts do not fit the frames carried (then no request can be given its inputs).
    The controller and the edge process (controller/edge.py) read batches through this."""
    requests = batch.requests
    per_request, why = s.split_frames(batch.frames, len(requests), data, "requests")
    if why is not None or per_request is None:
        return [], [s.InferResponse(r.request_id, Status.INVALID_REQUEST, why, r.model_id, r.batch_size)
                    for r in requests]
    return list(zip(requests, per_request)), []


class Requests:
    """Admission and answers of Infer requests. `controller` is asked for what may change
    under this object (its scheduler and telemetry: tests and `cw top` replace them)."""

    def __init__(self, controller: Any, clock: Callable[[], int], epoch: int, models: ModelRegistry,
                 settings: Settings, replies: Replies, stats: ControllerStats, request_log: TsvLog,
                 max_input_bytes: int):
        self.controller = controller
        self.clock = clock
        self.epoch = epoch
        self.models = models
        self.settings = settings
        self.replies = replies
        self.stats = stats
        self.request_log = request_log
        self.queue_wait = QueueWait()
        self.next_id = 1
        self.arrivals = 0
        self.departures = 0
        # memory bound on inputs: bytes held by requests not yet answered, beyond which OVERLOADED
        self.max_input_bytes = max_input_bytes
        self.input_bytes = 0
        self.held: dict[int, int] = {}          # request id -> its input bytes, until answered
        self.model_counts: dict[int, list[int]] = {}   # model id -> [arrivals, answers], for the request log

    def reply(self, ident: bytes, msg: Any, data: Sequence = ()) -> None:
        """Answer a client (stamped with this controller's epoch), at the end of this loop pass."""
        msg.epoch = self.epoch
        self.replies.add(ident, msg, data)

    def drain(self, sock: Any, touched: set) -> None:
        """Read up to DRAIN_BATCH requests (a batch counts as its requests: the scheduler must
        tick between bursts, or a burst's first requests would wait behind its last). Called
        when wait() saw a message waiting, so the socket is asked (ZMQ_EVENTS, two system
        calls) only after each message, not before the first; `touched` gets the socket when
        messages may be left (sockets.wait)."""
        controller = self.controller
        budget = DRAIN_BATCH
        while budget > 0:
            budget -= 1
            try:
                ident, msg, data = recv(sock, s.REQUEST_DECODER, routed=True, flags=NOBLOCK)
            except zmq.Again:
                touched.add(sock)
                return
            except ProtocolError as e:
                sender = getattr(e, "ident", None)      # (recv sets it)
                if sender is not None:
                    self.reply(sender, s.ErrorResponse(-1, Status.INVALID_REQUEST, str(e)))
                if not sock.get(EVENTS) & POLLIN:
                    return
                continue
            try:
                t = type(msg)
                if t is s.InferRequest:
                    self.infer(ident, msg, data)
                elif t is s.InferRequestBatch:
                    budget -= max(0, len(msg.requests) - 1)
                    self.infer_batch(ident, msg, data)
                elif t is s.LsRequest:
                    controller._on_ls(ident, msg)
                else:
                    controller._on_load_model(ident, msg)
            except Exception as e:   # a bug must cost one request, not the controller
                rid = getattr(msg, "request_id", -1)      # -1: a batch (its requests answer on their own)
                controller.out(f"internal error handling request {rid}: {e!r}")
                self.reply(ident, s.ErrorResponse(rid, Status.ERROR, f"internal error: {e!r}"))
            if not sock.get(EVENTS) & POLLIN:
                return
        touched.add(sock)     # requests left for the next pass

    def infer_batch(self, ident: bytes, batch: s.InferRequestBatch, data: Any) -> None:
        """Each request of the batch as if it had come alone, with its own input frames."""
        self.replies.client_batches(ident)
        requests, refused = split_infer_batch(batch, data)
        for answer in refused:
            self.reply(ident, answer)
        for msg, frames in requests:
            try:
                self.infer(ident, msg, frames)
            except Exception as e:   # a bug must cost one request, not the controller
                self.controller.out(f"internal error handling request {msg.request_id}: {e!r}")
                self.reply(ident, s.ErrorResponse(msg.request_id, Status.ERROR, f"internal error: {e!r}"))

    def infer(self, ident: bytes, msg: s.InferRequest, data: Any) -> None:
        """One Infer: counted in, then admitted if the controller runs (or has just started
        running: admission.py's `_infer_while_starting` decides, or answers it)."""
        if not self.arrive(ident, msg):
            return
        if self.controller.phase != "running" and not self.controller._infer_while_starting(ident, msg):
            return
        self.admit(ident, msg, data)

    def arrive(self, ident: bytes, msg: s.InferRequest) -> bool:
        """Count an Infer in; False if it was answered already (a model id of another
        controller lifetime)."""
        self.arrivals += 1
        if self.request_log.on:
            counts = self.model_counts.get(msg.model_id)
            if counts is None:
                self.model_counts[msg.model_id] = [1, 0]
            else:
                counts[0] += 1
        if msg.epoch != self.epoch and msg.epoch:
            self.reply(ident, s.InferResponse(
                msg.request_id, Status.STALE_EPOCH, f"model id {msg.model_id} belongs to another controller "
                f"lifetime (epoch {msg.epoch:x}; this controller's is {self.epoch:x}): load the model again",
                msg.model_id, msg.batch_size))
            return False
        return True

    def admit(self, ident: bytes, msg: s.InferRequest, data: Sequence) -> None:
        """An Infer that arrived while the controller runs: refused with one clear error, or
        made a Request and handed to the scheduler."""
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
            for f in data:
                nbytes += len(f.buffer)
            if nbytes != msg.batch_size * model.input_size:
                error = (f"input is {nbytes} bytes; model {msg.model_id} takes "
                         f"{msg.batch_size} x {model.input_size} bytes")
        if model is not None and error is None and not (
                0 <= msg.slo_ns <= MAX_SLO_NS and 0 <= msg.slo_factor * model.exec_ns[0] <= MAX_SLO_NS):
            error = "SLO must be between 0 and 1 hour (slo_ns, or slo_factor x batch-1 exec time)"
        if error is not None:
            self.reply(ident, s.InferResponse(msg.request_id, Status.INVALID_REQUEST, error,
                                              msg.model_id, msg.batch_size))
            return
        if nbytes and self.input_bytes + nbytes > self.max_input_bytes:
            self.reply(ident, s.InferResponse(
                msg.request_id, Status.OVERLOADED, f"queued requests hold {self.input_bytes} bytes of inputs "
                f"(limit {self.max_input_bytes})", msg.model_id, msg.batch_size))
            return
        now = self.clock()
        st = self.settings
        slo = msg.slo_ns or st.default_slo
        # arrival: when the client sent it, as far as we can tell (this loop may have been stalled)
        waited = self.queue_wait.waited(ident, msg.sent_ns, now)
        rid = self.next_id
        self.next_id = rid + 1
        req = Request(rid, ident, msg.request_id, msg.model_id, msg.batch_size, now - waited, slo, data,
                      msg.user_id, msg.slo_factor, st.buffer, st.schedule_ahead)
        if req.deadline <= now:
            self.controller.respond(req, Status.TIMEOUT, f"its SLO ({slo / 1e6:g} ms) had passed when the "
                                    f"controller read it ({waited / 1e6:.0f} ms after it was sent)")
            return
        if nbytes:
            self.input_bytes += nbytes
            self.held[rid] = nbytes
        self.controller.scheduler.on_request(req)

    def respond(self, req: Request, status: int, message: str = "", output: Any = None,
                exec_ns: int = 0) -> None:
        """The answer to `req` (its output a buffer of batch_size x output_size on success)."""
        now = self.clock()
        latency = now - req.arrival
        self.departures += 1
        if self.held:
            self.input_bytes -= self.held.pop(req.id, 0)
        met = now <= req.deadline
        msg = s.InferResponse(req.client_request_id, status, message, req.model_id, req.batch_size,
                              latency, exec_ns, req.is_coldstart, self.epoch, met)
        client = req.client
        if client is not None:
            self.replies.add(client, msg, (output,) if output is not None and status == 0 else ())
        self.stats.request_done(status, latency, met)
        if self.request_log.on:
            counts = self.model_counts.get(req.model_id)
            if counts is None:
                counts = self.model_counts[req.model_id] = [0, 0]
            counts[1] += 1
            self.request_log.add((now, req.id, status, req.user_id, req.model_id, req.slo_factor,
                                  latency, req.slo, int(met and status == Status.SUCCESS),
                                  counts[0], counts[1], int(req.is_coldstart), req.batch_size, req.gpu))
        telemetry = self.controller.telemetry
        if telemetry is not None:
            telemetry.request_done(req, status, latency, now, exec_ns)
