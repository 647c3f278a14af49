"""In-memory stand-ins for ZeroMQ sockets, joined by links with simulated delays.

`SimSocket` implements exactly the calls clockwork's edges make on a zmq.Socket (send with
SNDMORE parts, send_multipart, recv_multipart, recv frame by frame, get(EVENTS),
get_monitor_socket), so the real controller edge and the real encode/decode run unchanged:
every message crosses the wire as bytes, as in production.

A `Link` is one DEALER -> ROUTER connection (controller -> worker, client -> controller). Its
messages take a sampled one-way delay and arrive in send order (TCP: a message never overtakes
an earlier one). TCP loses messages only with their connection, so that is the one way a
message is lost here too: a reset drops what is in flight both ways, the DEALER side's monitor
reports EVENT_DISCONNECTED and, once the peer listens again, EVENT_HANDSHAKE_SUCCEEDED after a
reconnect interval. As with a real DEALER, sends while disconnected wait in the link and go out
after the reconnect; a ROUTER drops what it cannot route.
"""
from __future__ import annotations

import random
import struct
from math import log as _log
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

import zmq

from .events import EventLoop

POLLIN = int(zmq.POLLIN)
SNDMORE = int(zmq.SNDMORE)
DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
HANDSHAKE = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
RECONNECT_NS = 100_000_000         # sockets.dealer(): RECONNECT_IVL 100 ms
DISCONNECT_NOTICE_NS = 50_000      # a closed connection is seen at once (the FIN arrives)


class Frame:
    """What zmq.Frame offers that the edges use: .bytes, .buffer, .more and len(). `buffer` is
    the bytes themselves (a buffer every reader here accepts): no memoryview made per frame."""
    __slots__ = ("bytes", "buffer", "more")
    more: bool      # set by SimSocket.recv

    def __init__(self, data):
        if data.__class__ is not bytes:
            if isinstance(data, Frame):
                data = data.bytes
            else:
                if hasattr(data, "buffer"):          # a zmq.Frame
                    data = data.buffer
                data = data if isinstance(data, bytes) else bytes(data)
        self.bytes = self.buffer = data

    def __len__(self):
        return len(self.bytes)


class SimSocket:
    """One end of one or more links. `on_message()` is called after a message is queued.
    `frames`: whether its messages arrive as Frames (what recv_multipart(copy=False) gives
    the real edges); the simulated worker and client read plain bytes and clear it."""

    def __init__(self, name: str, on_send, on_message=None):
        self.name = name
        self.frames = True
        self.inbox: deque = deque()
        self._parts: list = []
        self._reading: list | None = None     # the message recv() is reading, from frame _next
        self._next = 0
        self._on_send = on_send          # fn(frames): the network takes a complete message
        self.on_message = on_message
        self.monitor: SimSocket | None = None

    # ------------------------------------------------------------------ zmq.Socket subset
    def get(self, option) -> int:
        return POLLIN if self.inbox else 0

    def send(self, data, flags=0, copy=True, track=False) -> None:
        self._parts.append(data)
        if not flags & SNDMORE:
            frames, self._parts = self._parts, []
            self._on_send(frames)

    def send_multipart(self, frames, flags=0, copy=True, track=False) -> None:
        self._on_send(list(frames))

    def recv_multipart(self, flags=0, copy=True) -> list:
        if not self.inbox:
            raise zmq.Again()
        frames = self.inbox.popleft()
        return [f.bytes for f in frames] if copy else frames

    def recv(self, flags=0, copy=True):
        """The next frame of the message being read (the next message's first when none is)."""
        if self._reading is None:
            if not self.inbox:
                raise zmq.Again()
            self._reading, self._next = self.inbox.popleft(), 0
        frames, i = self._reading, self._next
        frame = frames[i]
        frame.more = i + 1 < len(frames)
        if frame.more:
            self._next = i + 1
        else:
            self._reading = None
        return frame.bytes if copy else frame

    def get_monitor_socket(self, events=None) -> "SimSocket":
        if self.monitor is None:
            self.monitor = SimSocket(self.name + " monitor", lambda frames: None)
        return self.monitor

    def disable_monitor(self) -> None:
        pass

    def close(self, linger=None) -> None:
        pass

    # ------------------------------------------------------------------ network side
    def deliver(self, frames: Sequence) -> None:
        self.inbox.append(frames)
        if self.on_message is not None:
            self.on_message()

    def link_event(self, event: int) -> None:
        """Queue a monitor event (the frames zmq.utils.monitor.recv_monitor_message parses)."""
        if self.monitor is not None:
            self.monitor.deliver([Frame(struct.pack("=hi", event, 0)), Frame(b"sim")])


class Delay:
    """One-way message delay: `min_ns` plus a random part of mean `jitter_ns`, drawn from
    `kind`: "exp" (exponential tail), "uniform" (0..2 x jitter) or "const" (no jitter)."""
    KINDS: ClassVar[tuple[str, ...]] = ("exp", "uniform", "const")

    def __init__(self, min_ns: int, jitter_ns: int, kind: str, rng: random.Random):
        if kind not in self.KINDS:
            raise ValueError(f"network delay distribution {kind!r}: use one of {', '.join(self.KINDS)}")
        self.min_ns = int(min_ns)
        self.jitter_ns = int(jitter_ns)
        self.kind = kind
        self.rng = rng
        # one draw per message, from the delay's own generator: drawn BLOCK at a time (the
        # same values in the same order as one by one, for less per message); the exponential
        # one computes exactly what rng.expovariate(1 / jitter) does
        self._ready: list[int] = []
        min_ns, jitter = self.min_ns, self.jitter_ns
        if self.jitter_ns <= 0 or kind == "const":
            self._draw = None
        elif kind == "exp":
            lambd = 1.0 / self.jitter_ns
            self._draw = lambda rnd, n: [min_ns + int(-_log(1.0 - rnd()) / lambd) for _ in range(n)]
        else:
            self._draw = lambda rnd, n: [min_ns + int(rnd() * 2 * jitter) for _ in range(n)]

    BLOCK: ClassVar[int] = 1024

    def sample(self) -> int:
        ready = self._ready
        if not ready:
            if self._draw is None:
                return self.min_ns
            ready.extend(reversed(self._draw(self.rng.random, self.BLOCK)))
        return ready.pop()


class Link:
    """A DEALER (`dealer`) connected to a ROUTER (`router`, reached under `ident`)."""
    __slots__ = ("net", "name", "ident", "ident_frame", "dealer", "router", "up", "listening", "epoch",
                 "last", "queued", "droppable", "reconnecting")

    def __init__(self, net: "Network", name: str, ident: bytes, router: SimSocket, droppable: bool):
        self.net = net
        self.name = name
        self.ident = ident
        self.ident_frame = Frame(ident)     # what the ROUTER reads first off each message
        self.router = router
        self.dealer = SimSocket(name, self._from_dealer)
        self.up = True
        self.listening = True      # the ROUTER's process is there to accept a reconnect
        self.epoch = 0             # bumped by every reset: messages of an older one are lost
        self.last = [0, 0]         # latest arrival time per direction (FIFO)
        self.queued: list = []     # DEALER sends while disconnected
        self.droppable = droppable
        self.reconnecting = False

    def _from_dealer(self, frames) -> None:
        if not self.up:
            self.queued.append(frames)
            return
        self.net.transmit(self, 0, frames)

    def from_router(self, frames) -> None:
        if self.up:
            self.net.transmit(self, 1, frames)


class Network:
    """All links of one simulation; `drop_rate` is the chance that a message on a droppable link
    (controller <-> worker) is lost together with its connection."""

    def __init__(self, loop: EventLoop, delay: Delay, rng: random.Random, drop_rate: float = 0.0):
        self.loop = loop
        self.delay = delay
        self.rng = rng
        self.drop_rate = drop_rate
        self.routes: dict[bytes, Link] = {}
        self.resets = 0
        self.delivered = 0

    def link(self, name: str, router: SimSocket, droppable: bool = False) -> Link:
        lk = Link(self, name, f"{name}.0".encode(), router, droppable)
        self.routes[lk.ident] = lk
        return lk

    def router_socket(self, name: str, on_message=None) -> SimSocket:
        """A ROUTER: sends are routed by their first frame (the peer's identity)."""
        return SimSocket(name, self._route, on_message)

    def _route(self, frames) -> None:
        ident = frames[0]
        lk = self.routes.get(ident if isinstance(ident, bytes) else bytes(ident))
        if lk is not None:
            lk.from_router(frames[1:])

    def transmit(self, lk: Link, direction: int, frames: Sequence) -> None:
        if lk.droppable and self.drop_rate and self.rng.random() < self.drop_rate:
            self.reset(lk)
            return
        loop = self.loop
        t = loop.now + self.delay.sample()
        last = lk.last
        if t < last[direction]:
            t = last[direction]
        last[direction] = t
        if (lk.router if direction == 0 else lk.dealer).frames:
            frames = [Frame(f) for f in frames]
        else:                               # a copy, as the network makes (sends may be zero-copy)
            frames = [f if f.__class__ is bytes else Frame(f).bytes for f in frames]
        loop.at(t, self._arrive, (lk, lk.epoch, direction, frames))

    def _arrive(self, args) -> None:
        lk, epoch, direction, frames = args
        if epoch != lk.epoch:
            return                          # lost with its connection
        self.delivered += 1
        if direction == 0:
            router = lk.router
            frames.insert(0, lk.ident_frame if router.frames else lk.ident)
            router.deliver(frames)
        else:
            lk.dealer.deliver(frames)

    # ------------------------------------------------------------------ connection events
    def reset(self, lk: Link) -> None:
        """The connection breaks: what is in flight is lost; the DEALER side notices, and
        reconnects once the ROUTER side listens."""
        if not lk.up:
            return
        self.resets += 1
        lk.up = False
        lk.epoch += 1
        lk.last = [0, 0]
        self.loop.after(DISCONNECT_NOTICE_NS, self._notice, lk)

    def _notice(self, lk: Link) -> None:
        lk.dealer.link_event(DISCONNECTED)
        self._try_reconnect(lk)

    def _try_reconnect(self, lk: Link) -> None:
        if not lk.reconnecting:
            lk.reconnecting = True
            self.loop.after(RECONNECT_NS, self._reconnect, lk)

    def _reconnect(self, lk: Link) -> None:
        lk.reconnecting = False
        if lk.up:
            return
        if not lk.listening:
            self._try_reconnect(lk)
            return
        lk.up = True
        # a new connection: the ROUTER sees a new identity (a DEALER without a fixed one)
        del self.routes[lk.ident]
        lk.ident = f"{lk.name}.{lk.epoch}".encode()
        lk.ident_frame = Frame(lk.ident)
        self.routes[lk.ident] = lk
        lk.dealer.link_event(HANDSHAKE)
        queued, lk.queued = lk.queued, []
        for frames in queued:
            self.transmit(lk, 0, frames)

    def peer_down(self, lk: Link) -> None:
        """The ROUTER's process died: its connection closes; no reconnect until peer_up()."""
        lk.listening = False
        self.reset(lk)

    def peer_up(self, lk: Link) -> None:
        lk.listening = True
        if not lk.up:
            self._try_reconnect(lk)
