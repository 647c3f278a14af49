#!/usr/bin/env python3
"""Serving overhead: client-observed latency minus the emulated exec time that served it.

One closed-loop client (concurrency 1, this process) sends requests for one model to an
emulated worker through the controller; each response carries the batch's exec time, so
overhead = round trip - exec. Prints p50 / p99 / p99.9 of the overhead (ms), and the
same for the whole round trip.

    python tools/bench/overhead.py --model resnet50 --requests 3000
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.client.api import Client  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402
from clockwork.percentiles import percentile as pct  # noqa: E402




def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--inputs", action="store_true", help="send real input bytes with each request")
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--gc", choices=["on", "freeze", "off"], default="freeze",
                    help="client GC policy: on (default CPython), freeze (gc.freeze after setup), off")
    args = ap.parse_args()
    cfg = quick_config(3600)
    with LocalCluster(gpus=1, scheduler=args.scheduler, config_file=cfg) as cluster:
        client = Client(cluster.address, log=lambda *_: None)
        mid, _, info = client.load_model(args.model, copies=1)
        client.ls()
        size = info.input_size if hasattr(info, "input_size") else 0
        inputs = np.ones(size // 4, dtype=np.float32) if args.inputs and size else None
        for _ in range(200):   # warm-up: weights loaded, estimates settled
            client.infer(mid, inputs=inputs)
        if args.gc == "freeze":
            gc.collect()
            gc.freeze()
        elif args.gc == "off":
            gc.disable()
        rtt, over = [], []
        gc_pauses = []
        gc.callbacks.append(lambda phase, info: gc_pauses.append((phase, time.perf_counter())))
        for _ in range(args.requests):
            reply = client.infer(mid, inputs=inputs)
            rtt.append(reply.latency_s * 1e3)
            over.append(reply.latency_s * 1e3 - reply.response.exec_ns / 1e6)
        client.close()
    cfg.unlink()
    gcs = sum(1 for p, _ in gc_pauses if p == "start")
    print(f"# overhead: {args.model}, {args.requests} closed-loop requests, inputs={'yes' if args.inputs else 'no'}, "
          f"scheduler {args.scheduler}, client GC {args.gc} ({gcs} collections during the run), "
          f"{os.cpu_count()} cores")
    print(f"round trip ms: p50={pct(rtt, 50):.3f} p99={pct(rtt, 99):.3f} p99.9={pct(rtt, 99.9):.3f}")
    print(f"overhead ms (round trip - exec): p50={pct(over, 50):.3f} p99={pct(over, 99):.3f} "
          f"p99.9={pct(over, 99.9):.3f} max={max(over):.3f}")


if __name__ == "__main__":
    main()
