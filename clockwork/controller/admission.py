"""Request admission: every client message is read here and answered exactly once. An Infer is
validated (known model, batch size, input size, SLO within clockwork.limits), bounded by the
inputs held in memory, stamped with its arrival, and handed to the scheduler; Ls and
LoadModel likewise. respond() is the Outbox's answer to a request.

A client may send several Infers in one InferRequestBatch; each is admitted (or refused) on its
own, as if it had come alone. Answers wait in Replies until the loop pass that produced them
ends (the controller flushes them before it waits again), then go out as one message per client:
an InferResponseBatch to a client that batches its requests, single messages to any other.

Admission is one part of Controller (controller/server.py), a mixin.
"""
from __future__ import annotations

import bisect

import zmq

from ..limits import MAX_SLO_NS
from ..status import Status
from ..transport import schema as s
from ..transport.schema import ProtocolError
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, recv, send
from .scheduler import Request
from .worker_links import DRAIN_BATCH


# Clients known to accept InferResponseBatch, at most this many (forgotten all at once beyond:
# a forgotten client gets single answers until its next batch, which is correct, just dearer).
MAX_BATCH_CLIENTS = 100_000


class Replies:
    """Answers to clients, held until flush() (the end of the loop pass that made them), then
    sent as one message per client. With batching off, add() sends at once, one message each."""

    def __init__(self, sock, batching: bool):
        self.sock = sock
        self.batching = batching
        self.waiting: dict[bytes, list] = {}     # client -> [(message, data frames), ...]
        self.batch_clients: set[bytes] = set()
        self.sent = False       # since the loop last waited: then its wait must ask the socket

    def client_batches(self, ident: bytes) -> None:
        """`ident` sent an InferRequestBatch, so it reads InferResponseBatch."""
        if ident not in self.batch_clients:
            if len(self.batch_clients) >= MAX_BATCH_CLIENTS:
                self.batch_clients.clear()
            self.batch_clients.add(ident)

    def add(self, ident: bytes, msg, data=()) -> None:
        if not self.batching:
            self.sent = True
            send(self.sock, msg, data, ident=ident)
            return
        queue = self.waiting.get(ident)
        if queue is None:
            self.waiting[ident] = [(msg, data)]
        else:
            queue.append((msg, data))

    def flush(self) -> None:
        """Send everything waiting in the order it was made: a batching client's consecutive
        InferResponses as one InferResponseBatch, everything else as it is (so an Ls answered
        after some Infers still reaches the client after their answers)."""
        sock = self.sock
        if self.waiting:
            self.sent = True
        for ident, queue in self.waiting.items():
            if len(queue) == 1 or ident not in self.batch_clients:
                for msg, data in queue:
                    send(sock, msg, data, ident=ident)
                continue
            responses, counts, frames = [], [], []
            for msg, data in queue:
                if type(msg) is s.InferResponse:
                    responses.append(msg)
                    counts.append(len(data))
                    frames.extend(data)
                    continue
                if responses:
                    _send_responses(sock, ident, responses, counts, frames)
                    responses, counts, frames = [], [], []
                send(sock, msg, data, ident=ident)
            if responses:
                _send_responses(sock, ident, responses, counts, frames)
        self.waiting.clear()


def _send_responses(sock, ident: bytes, responses: list, counts: list, frames: list) -> None:
    """One InferResponse as itself, several as one InferResponseBatch."""
    if len(responses) == 1:
        send(sock, responses[0], frames, ident=ident)
    else:
        send(sock, s.InferResponseBatch(responses, counts if frames else []), frames, ident=ident)


def split_infer_batch(batch: s.InferRequestBatch, data) -> tuple[list, str | None]:
    """([(request, its input frames)], None), or (requests, why) when the frame counts do not
    fit the frames carried (then no request can be given its inputs). Admission and the edge
    process (controller/edge.py) read batches through this."""
    requests = batch.requests
    per_request, why = s.split_frames(batch.frames, len(requests), data, "requests")
    if why is not None:
        return requests, why
    return list(zip(requests, per_request)), None


class Admission:
    def _reply(self, msg, data=(), *, ident: bytes) -> None:
        """Answer a client (stamped with this controller's epoch), at the end of this loop pass."""
        msg.epoch = self.epoch
        self.replies.add(ident, msg, data)

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
            self.replies.add(req.client, msg, (output,) if output is not None and status == 0 else ())
        self.stats.request_done(status, latency, met)
        if self.request_log.on:
            counts = self._model_counts.setdefault(req.model_id, [0, 0])
            counts[1] += 1
            self.request_log.add((now, req.id, status, req.user_id, req.model_id, req.slo_factor,
                                  latency, req.slo, int(met and status == Status.SUCCESS),
                                  counts[0], counts[1], int(req.is_coldstart), req.batch_size, req.gpu))
        if self.telemetry is not None:
            self.telemetry.request_done(req, status, latency, now, exec_ns)

    def _drain_clients(self) -> None:
        """Read up to DRAIN_BATCH requests (a batch counts as its requests: the scheduler must
        tick between bursts, or a burst's first requests would wait behind its last). Called
        when wait() saw a message waiting, so the socket is asked (ZMQ_EVENTS, two system
        calls) only after each message, not before the first."""
        sock = self.client_sock
        budget = DRAIN_BATCH
        while budget > 0:
            budget -= 1
            try:
                ident, msg, data = recv(sock, s.REQUEST_DECODER, routed=True, flags=NOBLOCK)
            except zmq.Again:
                self._touched.add(sock)
                return
            except ProtocolError as e:
                if e.ident is not None:
                    self._reply(s.ErrorResponse(-1, Status.INVALID_REQUEST, str(e)), ident=e.ident)
                if not sock.get(EVENTS) & POLLIN:
                    return
                continue
            try:
                if type(msg) is s.InferRequest:
                    self._on_infer(ident, msg, data)
                elif type(msg) is s.InferRequestBatch:
                    budget -= max(0, len(msg.requests) - 1)
                    self._on_infer_batch(ident, msg, data)
                elif type(msg) is s.LsRequest:
                    self._on_ls(ident, msg)
                else:
                    self._on_load_model(ident, msg)
            except Exception as e:   # a bug must cost one request, not the controller
                rid = getattr(msg, "request_id", -1)      # -1: a batch (its requests answer on their own)
                self.out(f"internal error handling request {rid}: {e!r}")
                self._reply(s.ErrorResponse(rid, Status.ERROR, f"internal error: {e!r}"), ident=ident)
            if not sock.get(EVENTS) & POLLIN:
                return
        self._touched.add(sock)     # requests left for the next pass

    def _on_infer_batch(self, ident: bytes, batch: s.InferRequestBatch, data) -> None:
        """Each request of the batch as if it had come alone, with its own input frames."""
        self.replies.client_batches(ident)
        requests, error = split_infer_batch(batch, data)
        if error is not None:
            for msg in requests:
                self._reply(s.InferResponse(msg.request_id, Status.INVALID_REQUEST, error,
                                            msg.model_id, msg.batch_size), ident=ident)
            return
        for msg, frames in requests:
            try:
                self._on_infer(ident, msg, frames)
            except Exception as e:   # a bug must cost one request, not the controller
                self.out(f"internal error handling request {msg.request_id}: {e!r}")
                self._reply(s.ErrorResponse(msg.request_id, Status.ERROR, f"internal error: {e!r}"), ident=ident)

    def _on_infer(self, ident: bytes, msg: s.InferRequest, data) -> None:
        self.arrivals += 1
        if self.request_log.on:
            self._model_counts.setdefault(msg.model_id, [0, 0])[0] += 1
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
        st = self.settings
        slo = msg.slo_ns or st.default_slo
        # arrival: when the client sent it, as far as we can tell (this loop may have been stalled)
        waited = self.queue_wait.waited(ident, msg.sent_ns, now)
        req = Request(next(self.request_ids), ident, msg.request_id, msg.model_id, msg.batch_size,
                      now - waited, slo, data, msg.user_id, msg.slo_factor, st.buffer, st.schedule_ahead)
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
