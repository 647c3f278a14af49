"""ZeroMQ plumbing shared by every process: socket setup, multipart send/receive, waiting.

Links (all TCP, see README's diagram):
  client  DEALER --connect--> controller ROUTER  (client port, 12346)
  controller DEALER --connect--> worker ROUTER   (one per worker process, 12345)
  controller PUB --bind--> `cw top` SUB           (telemetry port, 12347)

Event loops here are single-threaded: a process waits on its sockets with `wait()`, which
honours sub-millisecond timeouts (zmq_poll only has milliseconds, which would distort the
emulated 3 ms executions the scheduler plans around).
"""
from __future__ import annotations

import select
import time
import socket as _socket
import weakref

import zmq

from .schema import Message, ProtocolError, decode, encode

# Plain ints: pyzmq's getsockopt(zmq.EVENTS) & zmq.POLLIN goes through enum objects, which
# costs ~0.8 us per check on the event loops' hottest line.
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)

# Frames larger than this are refused by libzmq before they reach Python (oversized-frame guard).
MAX_MESSAGE_SIZE = 256 * 1024 * 1024
PR_SET_TIMERSLACK = 29


def parse_address(addr: str, default_port: int) -> tuple[str, int]:
    """'host:port', 'host' or ':port' -> (host, port), with a clear error for nonsense."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        host, port = addr, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_num = int(port)
    except ValueError:
        raise ValueError(f"bad address {addr!r}: port {port!r} is not a number") from None
    if not 0 < port_num < 65536:
        raise ValueError(f"bad address {addr!r}: port out of range")
    return host, port_num


def tcp(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock


def router(ctx: zmq.Context, host: str, port: int, secure=None) -> zmq.Socket:
    """A listening ROUTER. Unroutable sends (peer gone) are dropped silently, as they must be:
    a client that disconnects mid-request cannot be allowed to disturb anyone else.
    `secure(sock)`, if given, sets CURVE options (transport.security) before binding."""
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    if secure is not None:
        secure(sock)
    sock.bind(tcp(host, port))
    return sock


def dealer(ctx: zmq.Context, host: str, port: int, identity: bytes | None = None,
           secure=None) -> zmq.Socket:
    """A connecting DEALER; `secure(sock)`, if given, sets CURVE options before connecting."""
    sock = _common(ctx.socket(zmq.DEALER))
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if secure is not None:
        secure(sock)
    sock.connect(tcp(host, port))
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (tests bind to 127.0.0.1 on free ports)."""
    with _socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> int:
    """The first of n consecutive ports nothing listens on right now (a sharded controller's)."""
    while True:
        first = free_port(host)
        if first + n > 65536:
            continue
        try:
            for port in range(first + 1, first + n):
                with _socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return first


def send(sock: zmq.Socket, msg: Message, data=(), ident: bytes | None = None, flags: int = 0) -> None:
    """Send header + data frames; data buffers go zero-copy (copy=False).

    Pass flags=NOBLOCK on DEALER sockets whose peer may be gone: zmq.Again is raised instead
    of blocking once the send queue is full. Flags are plain ints: or-ing pyzmq's enum flags
    builds enum objects, several per message.
    """
    header = encode(msg)
    more = flags | SNDMORE
    if ident is not None:
        sock.send(ident, more)
    if data:
        sock.send(header, more)
        last = len(data) - 1
        for i, frame in enumerate(data):
            sock.send(frame, more if i < last else flags, copy=False)
    else:
        sock.send(header, flags)


def send_raw(sock: zmq.Socket, header: bytes, ident: bytes | None = None) -> None:
    if ident is None:
        sock.send(header)
    else:
        sock.send_multipart([ident, header])


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """The frames (zmq.Frame, zero-copy) of one message. recv_multipart does the same but asks
    the socket for ZMQ_RCVMORE after every frame, a getsockopt that costs more than the frame's
    own recv; a frame's `more` says it without asking."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(0, copy=False)
        frames.append(frame)
    return frames


def recv(sock: zmq.Socket, decoder, routed: bool, flags: int = 0):
    """Receive one message without blocking the caller more than zmq does (flags=NOBLOCK:
    zmq.Again when none is waiting).

    Returns (ident, msg, data_frames). `routed` says whether the first frame is a ROUTER
    identity. Raises ProtocolError (with the ident available as .ident) on a bad header, after
    the whole multipart message has been consumed, so the stream stays in step.
    """
    frames = recv_frames(sock, flags)
    ident = None
    if routed:
        ident = frames[0].bytes
        frames = frames[1:]
    if not frames:
        raise _protocol_error("message with no header frame", ident)
    try:
        msg = decode(frames[0], decoder)
    except ValueError as e:
        raise _protocol_error(str(e), ident) from None
    return ident, msg, frames[1:]


def _protocol_error(text: str, ident):
    err = ProtocolError(text)
    err.ident = ident
    return err


def set_timer_slack(ns: int = 1) -> bool:
    """Linux rounds timed waits up by the thread's timer slack (50 us by default): set it to
    `ns` so a planned wake-up in wait() happens when planned (tools/bench/python_tails.py
    measures the difference). Best effort; returns whether it worked."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def stop_on_signals(stop) -> None:
    """SIGINT and SIGTERM call `stop()`, so a loop ends its pass and cleans up. Off the main
    thread (tests run loops on threads) signals cannot be set: stop() still works there."""
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, lambda *_: stop())
        except ValueError:
            pass


# socket -> its ZMQ_FD, which never changes: reading it is a getsockopt (and a pyzmq enum) per call
_FDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fd(sock: zmq.Socket) -> int:
    fd = _FDS.get(sock)
    if fd is None:
        fd = _FDS[sock] = sock.getsockopt(zmq.FD)
    return fd


def wait(sockets: list[zmq.Socket], timeout_s: float | None, spin_s: float = 0.0,
         touched: set | None = None, fds: list[int] | None = None) -> list[zmq.Socket]:
    """Sockets among `sockets` with a message ready, waiting at most timeout_s (None: forever).

    Uses each socket's ZMQ_FD with select(), which has microsecond resolution. ZMQ_FD is
    edge-triggered and may wake us spuriously, so readiness is always checked through
    ZMQ_EVENTS and the wait resumes until the deadline. Every socket is checked before the
    first sleep (with `touched`, only those that may have changed); after one, only the sockets whose ZMQ_FD woke it: a socket found without a
    message has its descriptor signalled when one comes (each check costs a system call and
    a pyzmq enum, several us on a loaded machine; tools/bench/overhead_hops.py). A wait that
    times out looks at every socket once more.

    touched: the sockets sent on or read from since ZMQ_EVENTS last found them empty, or never
    asked yet (after a send or a recv, a message may be waiting without its descriptor
    signalling; a socket never asked does not signal its first message): only those are asked
    before waiting; the others only once their descriptor signals, as does any socket after
    the sleep. Each ask is two system calls (poll, getpid), so a loop with many links
    asks where something may have changed, not everywhere. None: every socket is asked.
    fds: the sockets' ZMQ_FDs, if the caller keeps them.

    spin_s > 0: first check readiness in a busy loop for up to spin_s (never past the deadline),
    so a message arriving soon is read without a sleep and a wake-up, at the cost of a core
    spinning meanwhile ([controller] / [client] spin_us; tools/bench/overhead.py measures it).
    """
    now = time.monotonic()
    deadline = None if timeout_s is None else now + max(0.0, timeout_s)
    if spin_s > 0:
        spin_end = now + spin_s if deadline is None else min(deadline, now + spin_s)
        while now < spin_end:
            ready = [s for s in sockets if s.get(EVENTS) & POLLIN]
            if ready:
                return ready
            now = time.monotonic()
    if fds is None:
        fds = [_fd(s) for s in sockets]
    ask = sockets
    if touched is not None and len(touched) < len(sockets):
        signalled = select.select(fds, [], [], 0)[0]       # one system call for the others
        ask = [s for s, fd in zip(sockets, fds) if s in touched or fd in signalled]
    while True:
        ready = [s for s in ask if s.get(EVENTS) & POLLIN]
        if ready:
            return ready
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            # a wait that times out looks at every socket it has not just asked, once
            return ready if ask is sockets else [s for s in sockets if s.get(EVENTS) & POLLIN]
        signalled = select.select(fds, [], [], remaining)[0]
        # every socket asked above was found empty: only a signal can mean something new
        ask = [s for s, fd in zip(sockets, fds) if fd in signalled]
