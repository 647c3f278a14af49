#!/usr/bin/env python3
"""Controller cost: controller CPU microseconds per request, and the highest open-loop rate at
which >= 99.9% of requests meet their SLO, against one emulated worker with N GPUs.

Each step runs an open-loop Poisson load (no inputs: this measures scheduling, not copying)
spread evenly over many resnet50 copies, and reads the controller process's CPU time
(utime + stime from /proc) before and after: the whole process ("ctl us/req": the Python
event loop plus ZeroMQ's I/O thread doing the TCP work) and the Python thread alone ("py"). The client is this process; worker, controller
and client share the machine's cores, which the figures printed say.

    python tools/bench/controller_cost.py --gpus 8 --rates 500,1000,2000,4000
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.client.api import Client  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float:
    """Whole process: the Python thread plus ZeroMQ's I/O threads."""
    return _cpu(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """The Python event loop alone (its thread id is the pid)."""
    return _cpu(f"/proc/{pid}/task/{pid}/stat")


def run_step(client: Client, pid: int, model_ids: list[int], rate: float, seconds: float,
             slo_ns: int, rng: random.Random) -> dict:
    lat = []
    statuses = {}

    def done(resp, data, latency_s):
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        if resp.status == 0:
            lat.append(latency_s)

    cpu0 = cpu_seconds(pid)
    py0 = main_thread_cpu_seconds(pid)
    t0 = time.perf_counter()
    next_t = t0
    sent = 0
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while next_t <= now:
            client.infer_async(rng.choice(model_ids), done, slo_ns=slo_ns, timeout_s=5.0)
            sent += 1
            next_t += rng.expovariate(rate)
        client.poll(min(max(0.0, next_t - time.perf_counter()), 0.005))
    client.drain(10.0)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    py = main_thread_cpu_seconds(pid) - py0
    answered = sum(statuses.values())
    ok = sum(1 for x in lat if x * 1e9 <= slo_ns)
    lat.sort()
    return {
        "rate": rate, "sent": sent, "answered": answered, "elapsed": elapsed,
        "within_slo": ok / sent if sent else 0.0,
        "cpu_us_per_req": cpu / max(1, answered) * 1e6,
        "py_us_per_req": py / max(1, answered) * 1e6,
        "controller_cpu_util": cpu / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1e3 if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3 if lat else float("nan"),
        "statuses": statuses,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--copies", type=int, default=0, help="resnet50 copies (default 4 per GPU)")
    ap.add_argument("--rates", default="500,1000,2000,3000,4000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--scheduler", default="infer4")
    args = ap.parse_args()
    copies = args.copies or 4 * args.gpus
    cfg = quick_config(3600)
    print(f"# controller_cost: {args.scheduler}, {args.gpus} emulated H200 GPUs, {copies} resnet50 copies, "
          f"open-loop Poisson, no inputs, SLO {args.slo_ms:g} ms, {args.seconds:g} s per step, "
          f"{os.cpu_count()} cores shared by client, controller and worker")
    with LocalCluster(gpus=args.gpus, scheduler=args.scheduler, config_file=cfg) as cluster:
        client = Client(cluster.address, log=lambda *_: None)
        first, n, _ = client.load_model("resnet50", copies=copies)
        client.ls()
        ids = list(range(first, first + n))
        # warm-up: load weights everywhere they will be needed
        run_step(client, cluster.controller.pid, ids, 200, 3.0, int(args.slo_ms * 1e6), random.Random(0))
        best = None
        print(f"{'rate/s':>8} {'sent':>7} {'in SLO':>8} {'ctl us/req':>10} {'py us/req':>9} {'ctl CPU':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7}  statuses")
        for i, rate in enumerate(float(r) for r in args.rates.split(",")):
            r = run_step(client, cluster.controller.pid, ids, rate, args.seconds,
                         int(args.slo_ms * 1e6), random.Random(i + 1))
            print(f"{r['rate']:8.0f} {r['sent']:7d} {100 * r['within_slo']:7.3f}% "
                  f"{r['cpu_us_per_req']:10.1f} {r['py_us_per_req']:9.1f} {100 * r['controller_cpu_util']:7.1f}% "
                  f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f}  {r['statuses']}", flush=True)
            if r["within_slo"] >= 0.999:
                best = r
        client.close()
    cfg.unlink()
    if best:
        print(f"highest rate with >= 99.9% within SLO: {best['rate']:.0f} r/s "
              f"(controller {best['cpu_us_per_req']:.1f} us CPU per request)")
    else:
        print("no step met 99.9% within SLO")


if __name__ == "__main__":
    main()
