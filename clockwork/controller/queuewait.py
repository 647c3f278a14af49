"""How long a client's request waited before the controller read it.

A controller that was stalled (SIGSTOP, swapped out, a long GC) finds requests in its socket that
were sent long ago; measured from when it reads them they look fresh. Each InferRequest carries
the client's monotonic send time. Client and controller clocks differ by an unknown offset, but
d = (controller receive time - client send time) = offset + transit + queueing, and the smallest d
recently seen from that client is offset + the least transit: d minus that minimum is how long
this request waited beyond the fastest delivery (the min-delay idea of transport.clocksync).

The minimum is kept over two consecutive windows so a drifting clock or a new route is followed;
pure logic, a dict lookup and a few integer compares per request. The two clocks drifting apart
makes the estimate up to drift x 2 windows too large: at most 10 ms for NTP's largest slew
(500 ppm), typically well under 1 ms.
"""
from __future__ import annotations

WINDOW_NS = 10_000_000_000


class QueueWait:
    __slots__ = ("_clients", "_next_sweep")

    def __init__(self):
        self._clients: dict[bytes, list[int]] = {}    # ident -> [min this window, min last window, window end]
        self._next_sweep = 0

    def waited(self, client: bytes, sent_ns: int, now: int) -> int:
        """Nanoseconds the request sent at `sent_ns` (client clock) waited beyond the least
        delay seen from that client; 0 when unknown (sent_ns 0: an older client)."""
        if not sent_ns:
            return 0
        d = now - sent_ns
        w = self._clients.get(client)
        if w is None:
            self._clients[client] = [d, d, now + WINDOW_NS]
            return 0
        if now >= w[2]:
            w[1] = w[0] if now - w[2] < WINDOW_NS else d    # a silent client: nothing recent to keep
            w[0] = d
            w[2] = now + WINDOW_NS
        elif d < w[0]:
            w[0] = d
        base = w[0] if w[0] < w[1] else w[1]
        return d - base if d > base else 0

    def sweep(self, now: int) -> None:
        """Forget clients silent for two windows (disconnected ones: idents are never reused)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + WINDOW_NS
        stale = [c for c, w in self._clients.items() if now - w[2] > WINDOW_NS]
        for c in stale:
            del self._clients[c]

    def __len__(self) -> int:
        return len(self._clients)
