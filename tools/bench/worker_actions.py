#!/usr/bin/env python3
"""Worker action throughput with many emulated GPUs.

    runtime:  WorkerRuntime alone (no sockets), hand-driven clock: the cost of the action logic.
    process:  a real `cw worker --emulate N` process fed pipelined Infers over ZeroMQ by this
              process (which is itself part of the cost: ~20-40k msgs/s per Python thread).

Prints actions/s for each. The emulated model is the MLP (23 us exec at batch 1), so the
GPUs are never the bottleneck.

    python tools/bench/worker_actions.py --gpus 64 --actions 50000
"""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import zmq  # noqa: E402

from clockwork.model.emulated import EmulatedBackend  # noqa: E402
from clockwork.model.zoo import write_emulated_zoo  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from clockwork.transport import sockets  # noqa: E402
from clockwork.worker.runtime import WorkerRuntime  # noqa: E402

PAGE = 16 * 1024 * 1024
POOL = 512 * 1024 * 1024


def bench_runtime(zoo: Path, gpus: int, actions: int, copies: int) -> float:
    sent = []
    backend = EmulatedBackend(gpus, PAGE, 1376, POOL, POOL)
    rt = WorkerRuntime(backend, zoo, lambda r, m, d: sent.append(m), PAGE, 1376, POOL, POOL)
    now = 1_000_000_000
    rt.handle(s.LoadModelFromDisk(0, 0, 0, 0, "mlp", copies=copies), [], None, now)
    for g in range(gpus):
        rt.handle(s.LoadWeights(1 + g, 0, 0, g, g), [], None, now)
    while rt.next_time() is not None:
        now = rt.next_time()
        rt.advance(now)
    sent.clear()
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    for i in range(actions):
        g = i % gpus
        rt.handle(s.Infer(100 + i, now, now + 10**12, g, g, 1), [], None, now)
        if i % 64 == 63:      # time moves on as actions arrive
            now += 100_000
            rt.advance(now)
    while rt.next_time() is not None:
        now = rt.next_time()
        rt.advance(now)
    wall = time.perf_counter() - t0
    ok = sum(1 for m in sent if isinstance(m, s.InferResult))
    assert ok == actions, f"only {ok} of {actions} infers succeeded"
    return actions / wall


def bench_process(zoo: Path, gpus: int, actions: int, copies: int, window: int) -> tuple[float, int]:
    port = sockets.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clockwork.worker.command", "--emulate", str(gpus),
                             "--host", "127.0.0.1", "--port", str(port), "--model-dir", str(zoo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    ctx = zmq.Context()
    sock = sockets.dealer(ctx, "127.0.0.1", port)

    held = []       # results of a ResultBatch not yet returned

    def recv():
        while True:
            if held:
                return held.pop(0)
            if not sockets.wait([sock], 30):
                raise SystemExit("worker did not answer within 30 s")
            frames = sock.recv_multipart(copy=False)
            msg = s.decode(frames[0], s.RESULT_DECODER)
            if type(msg) is s.ResultBatch:
                held.extend(m for m, _ in s.unbatch(msg, frames[1:]))
            elif not isinstance(msg, s.Heartbeat):
                return msg

    try:
        sockets.send(sock, s.Reset(0))              # the handshake: this socket is the controller
        recv()
        sockets.send(sock, s.LoadModelFromDisk(0, 0, 0, 0, "mlp", copies=copies))
        recv()
        for g in range(gpus):
            sockets.send(sock, s.LoadWeights(1 + g, 0, 0, g, g))
        for _ in range(gpus):
            recv()
        sent = done = errors = 0
        t0 = time.perf_counter()
        while done < actions:
            while sent < actions and sent - done < window:
                g = sent % gpus
                sockets.send(sock, s.Infer(100 + sent, 0, 0, g, g, 1))
                sent += 1
            msg = recv()
            done += 1
            errors += not isinstance(msg, s.InferResult)
        return actions / (time.perf_counter() - t0), errors
    finally:
        sock.close(0)
        ctx.term()
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--actions", type=int, default=50_000)
    ap.add_argument("--copies", type=int, default=4000, help="model copies loaded (ids 0..copies-1)")
    ap.add_argument("--window", type=int, default=1000, help="Infers in flight (process mode)")
    ap.add_argument("--mode", choices=["runtime", "process", "both"], default="both")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        zoo = Path(d)
        write_emulated_zoo(zoo, models=["mlp"], log=lambda *a: None)
        if args.mode in ("runtime", "both"):
            rate = bench_runtime(zoo, args.gpus, args.actions, args.copies)
            print(f"runtime: {rate:,.0f} Infer actions/s ({args.gpus} emulated GPUs, "
                  f"{args.copies} models, no sockets)")
        if args.mode in ("process", "both"):
            rate, errors = bench_process(zoo, args.gpus, args.actions, args.copies, args.window)
            print(f"process: {rate:,.0f} Infer actions/s over ZeroMQ ({args.gpus} emulated GPUs, "
                  f"{args.window} in flight, {errors} errors)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
