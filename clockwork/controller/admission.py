"""Request admission: every client message is read here and answered exactly once. An Infer is
validated (known model, batch size, input size, SLO within clockwork.limits), bounded by the
inputs held in memory, stamped with its arrival, and handed to the scheduler; Ls and
LoadModel likewise. respond() is the Outbox's answer to a request. The per-request work of an
Infer, from admission to answer, is requests.py's (a plain class the opt-in build compiles).

A client may send several Infers in one InferRequestBatch; each is admitted (or refused) on its
own, as if it had come alone. Answers wait in Replies (replies.py) until the loop pass that
produced them ends, then go out as one message per client.

Admission is one part of Controller (controller/server.py), a mixin.
"""
from __future__ import annotations

import itertools

import zmq

from ..status import Status
from ..transport import schema as s
from ..transport.schema import ProtocolError
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, recv
from .actions import DRAIN_BATCH
from .scheduler import Request


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
        self.requests.respond(req, status, message, output, exec_ns)

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
        requests = self.requests
        if not requests.arrive(ident, msg):
            return
        if self.phase != "running":
            if self.phase == "loading" and not self.load_jobs:
                self._start_scheduling()
            else:
                self._reply(s.InferResponse(msg.request_id, Status.INITIALIZING,
                                            "Controller initializing", msg.model_id), ident=ident)
                return
        requests.admit(ident, msg, data)

    def _on_ls(self, ident: bytes, msg: s.LsRequest) -> None:
        if self.phase == "loading" and not self.load_jobs:
            self._start_scheduling()
        if self.phase != "running":
            self._reply(s.LsResponse(msg.request_id, Status.INITIALIZING,
                                                "Controller initializing"), ident=ident)
            return
        n = self.ls_page_size
        page = [m for _, m in itertools.islice(self.models.items(msg.first), n + 1)]
        self._reply(s.LsResponse(msg.request_id, Status.SUCCESS, "", page[:n],
                                 next=page[n].model_id if len(page) > n else -1), ident=ident)
