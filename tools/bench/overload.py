#!/usr/bin/env python3
"""Overload: offer `--factor` x the emulated capacity and measure what the system keeps.

Starts a LocalCluster (emulated worker + INFER4 controller), loads one model, warms up at 50%
of capacity, then sends Infers open loop at factor x capacity (capacity = GPUs x 16 /
exec(batch 16)) from this process for `--seconds`. Reports:

- goodput: successes within the SLO per second, and as a fraction of capacity;
- how the excess was answered (status counts) and how fast (latency of non-success answers);
- RSS of the controller and worker, sampled every second (bounded: queue limits);
- unanswered requests after a drain (must be 0).

    python tools/bench/overload.py --factor 10 --seconds 30
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import OpenLoop, capacity, pct, pids_of, rss_kib  # noqa: E402

from clockwork.client.api import NO_ANSWER, Client, status_name  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factor", type=float, default=10.0, help="offered load / capacity")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--model", default="resnet101")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cfg = quick_config(3600)
    with LocalCluster(gpus=args.gpus, config_file=cfg) as cluster:
        cap = capacity(cluster.model_dir, args.model, args.gpus)
        client = Client(cluster.address, log=lambda *_: None)
        mid, _, _ = client.load_model(args.model, copies=1)
        client.ls()
        pids = pids_of(cluster)
        slo = int(args.slo_ms * 1e6)
        OpenLoop(client, mid, 0.5 * cap, slo).run(3.0)        # warm-up: weights in, estimates set
        client.drain(10)
        base = {k: rss_kib(p) for k, p in pids.items()}
        peak = dict(base)

        def sample(_t):
            for k, p in pids.items():
                peak[k] = max(peak[k], rss_kib(p))

        rate = args.factor * cap
        print(f"overload: {args.model} on {args.gpus} emulated GPU(s), capacity {cap:.0f} r/s, offering "
              f"{rate:.0f} r/s ({args.factor:g}x) for {args.seconds:g} s, SLO {args.slo_ms:g} ms", flush=True)
        gen = OpenLoop(client, mid, rate, slo)
        import time
        t0 = time.perf_counter()
        gen.run(args.seconds, every_s=1.0, on_tick=sample)
        elapsed = time.perf_counter() - t0
        left = gen.drain(60)
        sample(0)
        alive = cluster.controller.poll() is None
        client.close()

    good = gen.good / elapsed
    rej = list(gen.reject_latency)
    print(f"sent {gen.sent} ({gen.sent / elapsed:.0f} r/s achieved), answered {gen.answered}, "
          f"outstanding after drain {left}, no answer {gen.statuses.get(NO_ANSWER, 0)}")
    print("statuses: " + ", ".join(f"{status_name(k)}={v}" for k, v in sorted(gen.statuses.items())))
    print(f"goodput {good:.0f} r/s = {good / cap:.1%} of capacity")
    print(f"success latency p50 {pct(gen.ok_latency, 50) * 1e3:.1f} ms, p99 {pct(gen.ok_latency, 99) * 1e3:.1f} ms; "
          f"rejection latency p50 {pct(rej, 50) * 1e3:.1f} ms, p99 {pct(rej, 99) * 1e3:.1f} ms, "
          f"max {max(rej, default=float('nan')) * 1e3:.1f} ms")
    print("RSS (MiB) before -> peak: " + ", ".join(f"{k} {base[k] / 1024:.1f} -> {peak[k] / 1024:.1f}"
                                                  for k in pids))
    print(f"controller alive at end: {alive}")


if __name__ == "__main__":
    main()
