#!/usr/bin/env python3
"""Socket calls the controller's loop makes per request: ZMQ_EVENTS asks (a poll() and a
getpid() system call each), ZMQ_RCVMORE and ZMQ_FD asks, and recv calls (one per frame).

A real Controller (INFER4) and --workers emulated WorkerServers (2 GPUs each) run on threads
of this process over loopback TCP; a client sends --requests requests open loop at --rate r/s
over 8 resnet50 copies. zmq.Socket's get/recv are wrapped to count the calls made on the
controller's loop thread. Counts, not times: they repeat on any machine while the load lets
the loop handle each message in a pass of its own (at higher rates, how many messages share a
pass depends on the machine, and so do the counts).

    python tools/bench/controller_asks.py --workers 4 --requests 1000 --rate 500
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.client.api import Client  # noqa: E402
from clockwork.config import load_config  # noqa: E402
from clockwork.controller import server as server_mod  # noqa: E402
from clockwork.model.emulated import EmulatedBackend  # noqa: E402
from clockwork.model.zoo import write_emulated_zoo  # noqa: E402
from clockwork.transport import sockets  # noqa: E402
from clockwork.worker import server as worker_server  # noqa: E402
from clockwork.worker.runtime import WorkerRuntime  # noqa: E402

NAMES = {int(zmq.EVENTS): "EVENTS", int(zmq.RCVMORE): "RCVMORE", int(zmq.FD): "FD"}
counts: collections.Counter = collections.Counter()
counted_thread = [None]         # the controller loop's thread id


def count_socket_calls() -> None:
    real_get, real_recv = zmq.Socket.get, zmq.Socket.recv

    def get(self, option):
        if threading.get_ident() == counted_thread[0]:
            counts[NAMES.get(int(option), f"get {option}")] += 1
        return real_get(self, option)

    def recv(self, *args, **kw):
        if threading.get_ident() == counted_thread[0]:
            counts["recv"] += 1
        return real_recv(self, *args, **kw)
    zmq.Socket.get = zmq.Socket.getsockopt = get
    zmq.Socket.recv = recv


def start_workers(n: int, zoo: str) -> list[int]:
    ports = []
    for _ in range(n):
        rt = WorkerRuntime(EmulatedBackend(2, 16 << 20, 1024, 1 << 24, 1 << 24), zoo, None, 16 << 20, 1024,
                           1 << 24, 1 << 24)
        port = sockets.free_port()
        server = worker_server.WorkerServer(rt, "127.0.0.1", port, log=lambda *a: None, ctx=zmq.Context())
        threading.Thread(target=server.serve, daemon=True).start()
        ports.append(port)
    return ports


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500.0)
    args = ap.parse_args()
    count_socket_calls()
    zoo = tempfile.mkdtemp(prefix="controller-asks-")
    write_emulated_zoo(zoo, models=["resnet50"], log=lambda *a: None)
    ports = start_workers(args.workers, zoo)
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    port = sockets.free_port()
    ctl = server_mod.Controller(config, [f"127.0.0.1:{p}" for p in ports], scheduler="infer4",
                                client_port=port, out=lambda *a: None)

    def loop():
        counted_thread[0] = threading.get_ident()
        ctl.run()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    client = Client(f"127.0.0.1:{port}", log=lambda *a: None)
    first, n, _ = client.load_model("resnet50", copies=8)
    for i in range(50):                     # warm: every copy loaded somewhere
        client.infer_async(first + i % n, lambda *a: None)
        client.drain(10)
    counts.clear()
    statuses: collections.Counter = collections.Counter()
    t0 = time.monotonic()
    for i in range(args.requests):
        due = t0 + i / args.rate
        while time.monotonic() < due:
            client.poll(max(0.0, due - time.monotonic()))
        client.infer_async(first + i % n, lambda r, d, lat: statuses.update([r.status]))
    client.drain(30)
    per = {k: v / args.requests for k, v in sorted(counts.items())}
    print(f"{args.workers} worker(s), {args.requests} requests at {args.rate:g} r/s, statuses {dict(statuses)}; "
          "controller loop per request: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    ctl.stop()
    thread.join(5)
    client.close()


if __name__ == "__main__":
    main()
