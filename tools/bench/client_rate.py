#!/usr/bin/env python3
"""How many requests/s one client process sustains open loop, without inputs.

Starts the echo controller (clockwork.client.echo: answers every request at once, no output
frames) in another process, loads N model instances (default 4026, the paper's Azure
experiment), and drives Poisson open loops whose rates add up to each offered rate in turn,
through the real workload engine. For each rate it prints what was offered, sent and answered
per second, the client's CPU time per request, how many requests left more than 1 ms after
their arrival time, and whether it kept up (>= 98% of the due arrivals sent, <= 1% late).

    python tools/bench/client_rate.py [--instances 4026] [--rates 5000,10000,20000,40000] [--duration 5]
                                      [--inputs --model mlp] [--shards K]

--shards K: K echo controllers standing for the shards of a sharded controller (each answering
ids of its own block), one ShardedClient (clockwork.client.shards) connected to all of them, the
instances loaded in K equal blocks (one per shard): what routing over K connections costs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from clockwork.client import arrivals
from clockwork.client.shards import make_client
from clockwork.limits import SHARD_ID_BITS
from clockwork.orphans import stop_all
from clockwork.client.stats import Stats
from clockwork.client.workloads.engine import Engine
from clockwork.transport.sockets import free_ports


def run_rate(address: str, instances: int, rate: float, duration: float, seed: int,
             inputs: bool = False, model: str = "resnet50", shards: int = 1) -> dict:
    client = make_client(address, timeout_s=30, connect_timeout_s=10, log=lambda m: None)
    try:
        stats = Stats(print_interval_s=1e9, log=lambda m: None)
        engine = Engine(client, stats, send_inputs=inputs, seed=seed, duration_s=duration, log=lambda m: None)
        models = [m for k in range(shards)         # one block per shard (loads go round-robin)
                  for m in engine.load(model, instances * (k + 1) // shards - instances * k // shards)]
        offered = 0
        for i, m in enumerate(models):          # count first; the engine gets fresh generators
            s = seed * 1_000_003 + i
            offered += sum(1 for _ in _until(arrivals.poisson(rate / instances, s), duration))
            engine.open_loop(m, arrivals.poisson(rate / instances, s), i)
        cpu0, t0 = time.process_time(), time.perf_counter()
        engine.run(drain_s=10)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {"offered": offered, "sent": stats.sent, "answered": stats.answered, "wall": wall,
                "late": engine.late_sends, "max_lag_ms": 1e3 * engine.max_lag_s,
                "cpu_us_per_req": 1e6 * cpu / max(stats.sent, 1), "lat": stats.all_latencies}
    finally:
        client.close()


def _until(gen, horizon):
    for t in gen:
        if t >= horizon:
            return
        yield t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=4026)
    ap.add_argument("--rates", default="5000,10000,20000,40000")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", action="store_true", help="send inputs (one shared zero-copy buffer)")
    ap.add_argument("--model", default="resnet50", help="resnet50 (588 KiB inputs), resnet18 or mlp (3 KiB)")
    ap.add_argument("--shards", type=int, default=1, help="echo controllers standing for K shards")
    a = ap.parse_args()
    port = free_ports(a.shards)
    echoes = [subprocess.Popen([sys.executable, "-m", "clockwork.client.echo", "--port", str(port + k), "--no-outputs",
                                "--first-id", str(k << SHARD_ID_BITS)]) for k in range(a.shards)]
    try:
        address = ",".join(f"127.0.0.1:{port + k}" for k in range(a.shards))
        print(f"client_rate: {a.instances} x {a.model}, Poisson open loop, "
              f"{'inputs sent' if a.inputs else 'no inputs'}, {a.duration:g} s per rate, "
              f"{a.shards} echo controller(s) in pids {','.join(str(e.pid) for e in echoes)}, {os.cpu_count()} CPUs")
        print(f"{'offered/s':>10} {'sent/s':>10} {'answered/s':>11} {'due sent':>9} {'cpu us/req':>11} "
              f"{'rtt p50 ms':>10} {'rtt p99 ms':>10} {'>1ms late':>9} {'max lag ms':>10}  kept up")
        for rate in [float(r) for r in a.rates.split(",")]:
            r = run_rate(address, a.instances, rate, a.duration, a.seed, a.inputs, a.model, a.shards)
            import numpy as np
            lat = np.asarray(r["lat"]) * 1e3 if r["lat"] else np.zeros(1)
            frac = r["sent"] / max(r["offered"], 1)
            late = r["late"] / max(r["sent"], 1)
            kept = frac >= 0.98 and late <= 0.01
            print(f"{r['offered'] / a.duration:10.0f} {r['sent'] / a.duration:10.0f} "
                  f"{r['answered'] / a.duration:11.0f} {100 * frac:8.1f}% {r['cpu_us_per_req']:11.1f} "
                  f"{np.percentile(lat, 50):10.2f} {np.percentile(lat, 99):10.2f} {100 * late:8.2f}% "
                  f"{r['max_lag_ms']:10.1f}  {'yes' if kept else 'NO'}",
                  flush=True)
    finally:
        stop_all(echoes, 5)


if __name__ == "__main__":
    main()
