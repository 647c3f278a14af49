#!/usr/bin/env python3
"""Draining a ZeroMQ ROUTER: CPU per message for the ways an event loop can read what waits.

A DEALER sends --messages two-frame messages (ident + a 40-byte header on the ROUTER side),
then one way drains them all; repeated --repeats times per way, interleaved, process CPU
time per message (median over repeats). Ways:

  events+multipart   ask ZMQ_EVENTS before each message, recv_multipart(copy=False)
                     (the controller's and the worker's drains before issue 13 part 3)
  multipart+again    recv_multipart(NOBLOCK, copy=False) until zmq.Again
  events+frames      ask ZMQ_EVENTS after each message, recv frame by frame reading
                     Frame.more (transport.sockets.recv_frames; the drains now)
  frames+again       recv frame by frame until zmq.Again

ZMQ_EVENTS costs a poll() and a getpid() system call each time; recv_multipart asks the socket
for ZMQ_RCVMORE after every frame; zmq.Again is an exception raised after the same two calls.

    python tools/bench/socket_reads.py --messages 1,4,500
"""
from __future__ import annotations

import argparse
import statistics
import time

import zmq

EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


def events_multipart(r) -> int:
    n = 0
    while r.get(EVENTS) & POLLIN:
        r.recv_multipart(copy=False)
        n += 1
    return n


def multipart_again(r) -> int:
    n = 0
    while True:
        try:
            r.recv_multipart(NOBLOCK, copy=False)
        except zmq.Again:
            return n
        n += 1


def _frames(r, flags):
    f = r.recv(flags, copy=False)
    while f.more:
        f = r.recv(0, copy=False)


def events_frames(r) -> int:
    n = 0
    while True:                 # the first without asking: the caller's wait saw it
        _frames(r, NOBLOCK)
        n += 1
        if not r.get(EVENTS) & POLLIN:
            return n


def frames_again(r) -> int:
    n = 0
    while True:
        try:
            _frames(r, NOBLOCK)
        except zmq.Again:
            return n
        n += 1


WAYS = {"events+multipart": events_multipart, "multipart+again": multipart_again,
        "events+frames": events_frames, "frames+again": frames_again}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", default="1,4,500", help="messages waiting per drain (comma list)")
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    d = ctx.socket(zmq.DEALER)
    d.connect(f"tcp://127.0.0.1:{port}")
    for n in (int(x) for x in args.messages.split(",")):
        cpu = {w: [] for w in WAYS}
        for _ in range(max(3, args.repeats // max(1, n // 10))):
            for name, way in WAYS.items():
                for _ in range(n):
                    d.send(b"x" * 40)
                while not r.poll(1000):
                    pass
                time.sleep(0.002)          # all n in the ROUTER's pipe
                t = time.process_time_ns()
                got = way(r)
                cpu[name].append((time.process_time_ns() - t) / got / 1e3)
                assert got == n, (name, got, n)
        print(f"{n} message(s) per drain: " + ", ".join(
            f"{name} {statistics.median(v):.2f}" for name, v in cpu.items()) + " us CPU per message (median)")
    r.close(0)
    d.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
