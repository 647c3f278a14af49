#!/usr/bin/env python3
"""Endurance: N minutes at a fraction of the emulated capacity, RSS of every process sampled.

Starts a LocalCluster (emulated worker + INFER4 controller), loads one model and sends Infers
open loop from this process at `--load` x capacity (capacity = GPUs x 16 / exec(batch 16)).
Every `--sample` seconds it records the RSS of the controller, the worker and this client.
Growth is measured from the first sample after `--warmup` seconds (allocators, caches and
estimate windows fill up first) to the mean of the last three samples. At the end every
request must have been answered: sent == answered, and none of them NO_ANSWER.

    python tools/bench/soak.py --minutes 30 --load 0.8
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import OpenLoop, capacity, pct, pids_of, rss_kib  # noqa: E402

from clockwork.client.api import NO_ANSWER, Client, status_name  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402
from clockwork.status import Status  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the emulated capacity")
    ap.add_argument("--model", default="resnet101")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the cluster on the way out

    cfg = quick_config(3600)
    with LocalCluster(gpus=args.gpus, config_file=cfg) as cluster:
        cap = capacity(cluster.model_dir, args.model, args.gpus)
        rate = args.load * cap
        client = Client(cluster.address, log=lambda *_: None)
        mid, _, _ = client.load_model(args.model, copies=1)
        client.ls()
        pids = pids_of(cluster)
        print(f"soak: {args.model} on {args.gpus} emulated GPU(s), capacity {cap:.0f} r/s, "
              f"offering {rate:.0f} r/s ({args.load:.0%}) for {args.minutes:g} min, SLO {args.slo_ms:g} ms",
              flush=True)
        samples: list[tuple[float, dict]] = []
        gen = OpenLoop(client, mid, rate, int(args.slo_ms * 1e6))

        def tick(t):
            row = {name: rss_kib(pid) for name, pid in pids.items()}
            samples.append((t, row))
            if len(samples) % max(1, int(60 / args.sample)) == 0:
                print(f"  t={t / 60:5.1f} min sent={gen.sent} answered={gen.answered} good={gen.good} "
                      + " ".join(f"{k}={v / 1024:.1f}MiB" for k, v in row.items()), flush=True)

        t0 = time.perf_counter()
        gen.run(args.minutes * 60, every_s=args.sample, on_tick=tick)
        elapsed = time.perf_counter() - t0
        left = gen.drain(60)
        alive = {name: cluster.controller.poll() is None if name == "controller" else True for name in pids}
        client.close()

    base = next((row for t, row in samples if t >= args.warmup), samples[0][1] if samples else {})
    tail = [row for _, row in samples[-3:]]
    print(f"\nduration {elapsed / 60:.1f} min; sent {gen.sent}, answered {gen.answered}, "
          f"outstanding after drain {left}, no answer {gen.statuses.get(NO_ANSWER, 0)}")
    print("statuses: " + ", ".join(f"{status_name(k)}={v}" for k, v in sorted(gen.statuses.items())))
    print(f"goodput {gen.good / elapsed:.0f} r/s ({gen.good / elapsed / cap:.1%} of capacity, "
          f"{gen.good / max(1, gen.sent):.2%} of sent); success latency p50 {pct(gen.ok_latency, 50) * 1e3:.1f} ms "
          f"p99 {pct(gen.ok_latency, 99) * 1e3:.1f} ms")
    print("process      RSS at baseline   RSS at end (mean of last 3)   growth")
    for name in pids:
        b = base.get(name, 0)
        e = sum(r.get(name, 0) for r in tail) / max(1, len(tail))
        g = (e - b) / b if b else float("nan")
        print(f"{name:12s} {b / 1024:10.1f} MiB   {e / 1024:10.1f} MiB                 {g:+.2%}")
    print(f"controller alive at end: {alive.get('controller')}")
    unanswered = gen.sent - gen.answered + gen.statuses.get(NO_ANSWER, 0)
    ok = unanswered == 0 and gen.statuses.get(Status.SUCCESS, 0) > 0
    print(f"unanswered: {unanswered} -> {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
