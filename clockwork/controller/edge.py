"""`cw edge`: a client-facing process in front of one controller (docs/design.md, "Edges").

Clients connect to an edge as to a controller: same wire, same client library. The edge does
the per-client socket work: it reads every client's messages, forwards the Infers read in one
pass of its loop, from all its clients, to the controller as one InferRequestBatch, and routes
the answers back, coalesced per client per pass as the controller does (replies.Replies).
The controller then reads one message per edge pass instead of one per client message, and
answers each edge with one message per pass. Several edges can serve one controller, each on
its own port; the controller needs no option for it (an edge is one batching client to it).

- Ids: a forwarded request gets an id unique in this edge (clients' own ids collide), mapped
  back on its answer. Ls and LoadModel are forwarded as they come, after the Infers read
  before them, so a client's requests reach the controller in the order it sent them.
- Queue wait: a request's `sent_ns` (client clock) becomes the edge's receive time less how
  long it waited beyond the fastest delivery from that client (controller.queuewait), so the
  controller's own estimate (it sees the edge as one client) covers both hops.
- Exactly one answer per request: a request the controller cannot be sent (send queue full)
  or whose answer cannot come any more (the controller's connection closed) is answered
  ERROR by the edge at once.
- What the controller sees: one client per edge, so [controller] max_models_per_client bounds
  all of an edge's clients together. No CURVE security on the edge's ports yet.
"""
from __future__ import annotations

import itertools
import sys
import time

import click
import zmq
from zmq.utils.monitor import recv_monitor_message

from ..status import Status
from ..transport import schema as s
from ..transport.schema import ProtocolError
from ..transport.sockets import (EVENTS, NOBLOCK, POLLIN, dealer, parse_address, recv, router, send,
                                 set_timer_slack, stop_on_signals, wait)
from .actions import DRAIN_BATCH
from .queuewait import QueueWait
from .replies import Replies
from .requests import split_infer_batch

STOP_CHECK_NS = 100_000_000     # the loop looks at stop() (SIGTERM) at least this often


class Edge:
    def __init__(self, config: dict, controller: str, host: str, port: int, out=print,
                 ctx: zmq.Context | None = None):
        if config.get("security", {}).get("enabled"):
            raise ValueError("cw edge does not support [security] enabled = true yet: connect clients "
                             "to the controller directly")
        cc = config["controller"]
        self.ctx = ctx or zmq.Context.instance()
        self.out = out
        self.clock = time.monotonic_ns
        chost, cport = parse_address(controller, cc["client_port"])
        self.controller = f"{chost}:{cport}"
        try:
            self.clients = router(self.ctx, host, port)
        except zmq.ZMQError as e:
            raise ValueError(f"cannot listen for clients on {host}:{port}: {e}") from None
        self.address = f"{host}:{port}"
        self.upstream = dealer(self.ctx, chost, cport)
        self.monitor = self.upstream.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.routes: dict[int, tuple[bytes, int]] = {}   # forwarded id -> (client, client's request id)
        self.ids = itertools.count(1)
        self.queue_wait = QueueWait()
        self.replies = Replies(self.clients, True)
        self.epoch = 0                      # the controller's, as last seen (stamped on our own answers)
        self._infers: list[s.InferRequest] = []      # read this pass, not yet forwarded
        self._frames: list[list] = []                # their input frames
        self.forwarded = self.answered = 0
        self.print_ns = int(float(cc["print_interval_s"]) * 1e9)
        self._running = False

    # ------------------------------------------------------------------ loop
    def run(self, duration_s: float | None = None) -> None:
        set_timer_slack(1)
        self._running = True
        stop_on_signals(self.stop)
        self.out(f"Edge listening for clients on {self.address}, forwarding to the controller at {self.controller}")
        socks = [self.upstream, self.clients, self.monitor]     # answers first: they free clients
        end = None if duration_s is None else self.clock() + int(duration_s * 1e9)
        next_print = self.clock() + self.print_ns
        try:
            while self._running:
                now = self.clock()
                if end is not None and now >= end:
                    break
                self.queue_wait.sweep(now)          # forget clients gone (cheap until due)
                if now >= next_print:
                    next_print = now + self.print_ns
                    self.out(f"Edge forwarded={self.forwarded} answered={self.answered} in flight={len(self.routes)}")
                wake = min(next_print, now + STOP_CHECK_NS) if end is None else min(next_print, end, now + STOP_CHECK_NS)
                for sock in wait(socks, max(0, wake - self.clock()) / 1e9):
                    if sock is self.clients:
                        self._drain_clients()
                    elif sock is self.upstream:
                        self._drain_upstream()
                    else:
                        self._upstream_events()
                self._forward()
                if self.replies.waiting:
                    self.replies.flush()
        finally:
            self.close()

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        self.replies.flush()
        self.upstream.disable_monitor()
        for sock in (self.clients, self.upstream, self.monitor):
            sock.close(0)

    # ------------------------------------------------------------------ clients -> controller
    def _drain_clients(self) -> None:
        sock = self.clients
        now = self.clock()
        for _ in range(DRAIN_BATCH):
            if not sock.get(EVENTS) & POLLIN:
                return
            try:
                ident, msg, data = recv(sock, s.REQUEST_DECODER, routed=True)
            except ProtocolError as e:
                if e.ident is not None:
                    self._answer(e.ident, s.ErrorResponse(-1, Status.INVALID_REQUEST, str(e)))
                continue
            t = type(msg)
            if t is s.InferRequest:
                self._hold(ident, msg, data, now)
            elif t is s.InferRequestBatch:
                self.replies.client_batches(ident)
                requests, refused = split_infer_batch(msg, data)
                for answer in refused:
                    self._answer(ident, answer)
                for r, frames in requests:
                    self._hold(ident, r, frames, now)
            else:                           # Ls, LoadModel: after the Infers read before them
                self._forward()
                self._send_up(ident, msg, [])

    def _hold(self, ident: bytes, msg: s.InferRequest, frames, now: int) -> None:
        fid = next(self.ids)
        self.routes[fid] = (ident, msg.request_id)
        msg.request_id = fid
        if msg.sent_ns:
            msg.sent_ns = now - self.queue_wait.waited(ident, msg.sent_ns, now)
        self._infers.append(msg)
        self._frames.append(frames)

    def _forward(self) -> None:
        """The Infers read so far, as one InferRequestBatch."""
        if not self._infers:
            return
        infers, frames = self._infers, self._frames
        self._infers, self._frames = [], []
        data = [f for fs in frames for f in fs]
        batch = s.InferRequestBatch(infers, [len(fs) for fs in frames] if data else [])
        self.forwarded += len(infers)
        try:
            send(self.upstream, batch, data, flags=NOBLOCK)
        except zmq.Again:
            for msg in infers:
                self._unroutable(msg.request_id, "the controller is not reading (edge send queue full)")

    def _send_up(self, ident: bytes, msg, data) -> None:
        fid = next(self.ids)
        self.routes[fid] = (ident, msg.request_id)
        msg.request_id = fid
        self.forwarded += 1
        try:
            send(self.upstream, msg, data, flags=NOBLOCK)
        except zmq.Again:
            self._unroutable(fid, "the controller is not reading (edge send queue full)")

    # ------------------------------------------------------------------ controller -> clients
    def _drain_upstream(self) -> None:
        sock = self.upstream
        for _ in range(DRAIN_BATCH):
            if not sock.get(EVENTS) & POLLIN:
                return
            try:
                _, msg, data = recv(sock, s.RESPONSE_DECODER, routed=False)
            except ProtocolError as e:
                self.out(f"Edge: unreadable message from the controller: {e}")
                continue
            if type(msg) is not s.InferResponseBatch:
                self._route(msg, data)
                continue
            per_answer, why = s.split_frames(msg.frames, len(msg.responses), data, "answers")
            if why is not None:
                self.out(f"Edge: unreadable answer batch from the controller: {why}")
                per_answer = [()] * len(msg.responses)   # its requests answered, without outputs
            for resp, outputs in zip(msg.responses, per_answer):
                self._route(resp, outputs)

    def _route(self, msg, data) -> None:
        route = self.routes.pop(msg.request_id, None)
        if route is None:
            self.out(f"Edge: an answer to no request of ours ({type(msg).__name__} {msg.request_id}: "
                     f"{getattr(msg, 'message', '')})")
            return
        ident, msg.request_id = route
        self.epoch = msg.epoch
        self.answered += 1
        self.replies.add(ident, msg, data)

    def _upstream_events(self) -> None:
        """The controller's connection closed: no answer can come for what is in flight."""
        while self.monitor.get(EVENTS) & POLLIN:
            if recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"] == zmq.EVENT_DISCONNECTED and self.routes:
                self.out(f"Edge: the controller's connection closed; {len(self.routes)} requests in flight "
                         "answered ERROR")
                for fid in list(self.routes):
                    self._unroutable(fid, "the connection to the controller closed before it answered")

    def _unroutable(self, fid: int, why: str) -> None:
        route = self.routes.pop(fid, None)
        if route is not None:
            ident, rid = route
            self.answered += 1
            self._answer(ident, s.ErrorResponse(rid, Status.ERROR, why))

    def _answer(self, ident: bytes, msg) -> None:
        msg.epoch = self.epoch
        self.replies.add(ident, msg)


@click.command("edge")
@click.argument("controller")
@click.option("--bind", "--host", "host", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Interface for the clients' port (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="The port clients connect to.")
@click.option("--config", "config_file", default=None, help="TOML config (default $CLOCKWORK_CONFIG_FILE).")
def edge_command(controller, host, port, config_file):
    """Serve clients in front of the controller at CONTROLLER (HOST:PORT, its client port):
    their requests go on to it batched, its answers come back through here."""
    from ..config import ConfigError, load_config
    from ..console import timestamped
    try:
        edge = Edge(load_config(config_file), controller, host, port, out=timestamped())
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e))
    try:
        edge.run()
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    edge_command(sys.argv[1:])
