#!/usr/bin/env python3
"""Serving overhead: client-observed latency minus the emulated exec time that served it.

One closed-loop client (concurrency 1, this process) sends requests for one model to an
emulated worker through the controller; each response carries the batch's exec time, so
overhead = round trip - exec. Prints p50 / p99 / p99.9 of the overhead (ms), and the
same for the whole round trip, and the CPU the controller and this client burned per request.

--spin-us N makes the controller and the client busy-wait up to N us for a message before
sleeping (config spin_us): less wake-up latency, more CPU. --wire single: one message per
request and answer (the format before batching; at concurrency 1 the two send the same).

    python tools/bench/overhead.py --model resnet50 --requests 3000
    python tools/bench/overhead.py --requests 3000 --spin-us 200
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.client.api import Client, RequestFailed  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402
from clockwork.percentiles import percentile as pct  # noqa: E402
from controller_cost import cpu_seconds  # noqa: E402




def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--inputs", action="store_true", help="send real input bytes with each request")
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--gc", choices=["on", "freeze", "off"], default="freeze",
                    help="client GC policy: on (default CPython), freeze (gc.freeze after setup), off")
    ap.add_argument("--spin-us", type=int, default=0, help="controller and client spin before sleeping")
    ap.add_argument("--wire", choices=["batched", "single"], default="batched")
    args = ap.parse_args()
    batched = str(args.wire == "batched").lower()
    cfg = quick_config(3600, {"controller": {"spin_us": args.spin_us, "batch_replies": batched}})
    with LocalCluster(gpus=1, scheduler=args.scheduler, config_file=cfg) as cluster:
        client = Client(cluster.address, log=lambda *_: None, spin_us=args.spin_us,
                        coalesce=args.wire == "batched")
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
        pid = cluster.controller.pid
        ctl0, me0 = cpu_seconds(pid), time.process_time()
        rtt, over = [], []
        gc_pauses = []
        gc.callbacks.append(lambda phase, info: gc_pauses.append((phase, time.perf_counter())))
        failed = Counter()        # on a starved machine a request can miss its window: count it, go on
        for _ in range(args.requests):
            try:
                reply = client.infer(mid, inputs=inputs)
            except RequestFailed as e:
                failed[e.status] += 1
                continue
            rtt.append(reply.latency_s * 1e3)
            over.append(reply.latency_s * 1e3 - reply.response.exec_ns / 1e6)
        ctl_us = (cpu_seconds(pid) - ctl0) / args.requests * 1e6
        me_us = (time.process_time() - me0) / args.requests * 1e6
        client.close()
    cfg.unlink()
    gcs = sum(1 for p, _ in gc_pauses if p == "start")
    print(f"# overhead: {args.model}, {args.requests} closed-loop requests, inputs={'yes' if args.inputs else 'no'}, "
          f"scheduler {args.scheduler}, client GC {args.gc} ({gcs} collections during the run), "
          f"{os.cpu_count()} cores, spin {args.spin_us} us, wire {args.wire}, load average {os.getloadavg()[0]:.1f}")
    print(f"round trip ms: p50={pct(rtt, 50):.3f} p99={pct(rtt, 99):.3f} p99.9={pct(rtt, 99.9):.3f}")
    print(f"overhead ms (round trip - exec): p50={pct(over, 50):.3f} p99={pct(over, 99):.3f} "
          f"p99.9={pct(over, 99.9):.3f} max={max(over):.3f}")
    print(f"CPU per request: controller {ctl_us:.1f} us, client {me_us:.1f} us"
          + (f"; failed (not in the percentiles): {dict(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
