"""Request admission: every client message is answered exactly once. An Infer is validated
(known model, batch size, input size, SLO within clockwork.limits), bounded by the inputs held
in memory, stamped with its arrival, and handed to the scheduler; Ls and LoadModel likewise.
respond() is the Outbox's answer to a request.

The per-request work (reading the client socket, an Infer from admission to answer) is
requests.py's, a plain class the opt-in build compiles; this part keeps what is not per
request: Ls, LoadModel's entry (model_loading.py), and Infers while the controller starts.
A client may send several Infers in one InferRequestBatch; each is admitted (or refused) on its
own, as if it had come alone. Answers wait in Replies (replies.py) until the loop pass that
produced them ends, then go out as one message per client.

Admission is one part of Controller (controller/server.py), a mixin.
"""
from __future__ import annotations

import itertools

from ..status import Status
from ..transport import schema as s
from .scheduler import Request


class Admission:
    def _reply(self, msg, data=(), *, ident: bytes) -> None:
        """Answer a client (stamped with this controller's epoch), at the end of this loop pass."""
        self.requests.reply(ident, msg, data)

    def respond(self, req: Request, status: int, message: str = "", output=None, exec_ns: int = 0) -> None:
        self.requests.respond(req, status, message, output, exec_ns)

    def _drain_clients(self) -> None:
        """Read what clients sent (requests.Requests.drain)."""
        self.requests.drain(self.client_sock, self._touched)

    def _infer_while_starting(self, ident: bytes, msg: s.InferRequest) -> bool:
        """An Infer before the controller runs: it starts running now if every model load has
        finished (True: admit it), else the Infer is answered INITIALIZING (False)."""
        if self.phase == "loading" and not self.load_jobs:
            self._start_scheduling()
            return True
        self._reply(s.InferResponse(msg.request_id, Status.INITIALIZING,
                                    "Controller initializing", msg.model_id), ident=ident)
        return False

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
