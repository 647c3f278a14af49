#!/usr/bin/env python3
"""The floor under each hop of a request: a ZeroMQ message between two processes on one host.

A DEALER in this process and a ROUTER in a child process bounce one small message back and
forth over TCP on 127.0.0.1 (the links clockwork uses), each side waiting as clockwork's loops
do (transport.sockets.wait: select on ZMQ_FD, optionally spinning first). Half the median
round trip is what one hop costs with nothing else to do: every message crosses the sender's
ZeroMQ I/O thread, the kernel, the receiver's I/O thread, and wakes the receiving thread.

    python tools/bench/zmq_hop.py --round-trips 5000 [--spin-us 50] [--pin 2,3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.percentiles import percentile as pct  # noqa: E402
from clockwork.transport.sockets import dealer, free_port, router, wait  # noqa: E402


def echo(port: int, n: int, spin_s: float, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ctx = zmq.Context()
    sock = router(ctx, "127.0.0.1", port)
    for _ in range(n):
        wait([sock], None, spin_s)
        sock.send_multipart(sock.recv_multipart())
    time.sleep(0.2)
    sock.close(0)
    ctx.term()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round-trips", type=int, default=5000)
    ap.add_argument("--spin-us", type=int, default=0, help="both sides spin this long before sleeping")
    ap.add_argument("--pin", default="", metavar="A,B", help="pin this side to core A, the echo to core B "
                    "(each with its ZeroMQ I/O thread)")
    args = ap.parse_args()
    pin = [int(c) for c in args.pin.split(",")] if args.pin else [None, None]
    spin_s = args.spin_us / 1e6
    port = free_port()
    n = args.round_trips + 200
    child = mp.get_context("spawn").Process(target=echo, args=(port, n, spin_s, pin[1]), daemon=True)
    child.start()
    if pin[0] is not None:
        os.sched_setaffinity(0, {pin[0]})
    ctx = zmq.Context()
    sock = dealer(ctx, "127.0.0.1", port)
    rtt = []
    for i in range(n):
        t0 = time.monotonic_ns()
        sock.send(b"x" * 64)
        wait([sock], None, spin_s)
        sock.recv()
        if i >= 200:
            rtt.append((time.monotonic_ns() - t0) / 1e3)
    child.join(5)
    sock.close(0)
    ctx.term()
    print(f"# zmq hop: {args.round_trips} round trips, TCP 127.0.0.1, spin {args.spin_us} us, "
          + (f"pinned {args.pin}, " if args.pin else "") + f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"round trip us: p50={pct(rtt, 50):.1f} p99={pct(rtt, 99):.1f}; one hop ~ {pct(rtt, 50) / 2:.1f} us")


if __name__ == "__main__":
    main()
