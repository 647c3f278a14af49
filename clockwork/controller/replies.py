"""Answers to clients, coalesced: held until the loop pass that made them ends (the controller
flushes them before it waits again), then sent as one message per client: an
InferResponseBatch to a client that batches its requests, single messages to any other.
Used by the controller (admission.py, requests.py) and the edge process (edge.py); compiled in
the opt-in build (docs/compiled.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..transport import schema as s
from ..transport.sockets import send

# Clients known to accept InferResponseBatch, at most this many (forgotten all at once beyond:
# a forgotten client gets single answers until its next batch, which is correct, just dearer).
MAX_BATCH_CLIENTS = 100_000


class Replies:
    """Answers to clients, held until flush() (the end of the loop pass that made them), then
    sent as one message per client. With batching off, add() sends at once, one message each."""

    def __init__(self, sock: Any, batching: bool):
        self.sock: Any = sock     # a ROUTER (or the simulator's in-memory socket; tests wrap it)
        self.batching = batching
        self.waiting: dict[bytes, list[tuple[Any, Sequence]]] = {}    # client -> [(message, data frames)]
        self.batch_clients: set[bytes] = set()
        self.sent = False       # since the loop last waited: then its wait must ask the socket

    def client_batches(self, ident: bytes) -> None:
        """`ident` sent an InferRequestBatch, so it reads InferResponseBatch."""
        if ident not in self.batch_clients:
            if len(self.batch_clients) >= MAX_BATCH_CLIENTS:
                self.batch_clients.clear()
            self.batch_clients.add(ident)

    def add(self, ident: bytes, msg: Any, data: Sequence = ()) -> None:
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
            responses: list[s.InferResponse] = []
            counts: list[int] = []
            frames: list = []
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


def _send_responses(sock: Any, ident: bytes, responses: list, counts: list, frames: list) -> None:
    """One InferResponse as itself, several as one InferResponseBatch."""
    if len(responses) == 1:
        send(sock, responses[0], frames, ident=ident)
    else:
        send(sock, s.InferResponseBatch(responses, counts if frames else []), frames, ident=ident)


