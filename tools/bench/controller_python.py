#!/usr/bin/env python3
"""The controller's Python CPU per request, without sockets and without the machine's noise.

Runs `cw simulate` in this process: the real controller (edge, INFER4, codec) and worker
runtime in simulated time, one worker with --gpus emulated GPUs, an open-loop Poisson load
over --copies resnet50 copies. Simulated time makes the load the same whatever the machine is
doing; the figure is the process CPU time spent in the controller's handlers (SimController
cpu_ns) per request: the Python work of admission, answers, actions, results, clock
conversion and the policy, with in-memory sockets instead of ZeroMQ. The figure includes the
simulator's own accounting (two process_time_ns() calls per handled event) and its in-memory
network, together about 45% of it in a py-spy profile (BENCHMARKS.md, issue 13 part 2): compare
runs with each other, not with a real controller's CPU. Prints the median and range over
--repeats runs; --profile FILE also writes a cProfile of one more run.

    python tools/bench/controller_python.py --gpus 64 --copies 256 --rate 10000 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.sim import config as sim_config  # noqa: E402
from clockwork.sim.run import simulate  # noqa: E402


def one_run(args, seed: int) -> tuple[float, float]:
    """(controller us per request, % answered within SLO)"""
    cfg = sim_config.load(None)
    cfg.scheduler = args.scheduler
    cfg.workers, cfg.gpus = 1, args.gpus
    cfg.duration_s = args.seconds
    cfg.drain_s = 1.0
    cfg.seed = seed
    cfg.measure_cpu = True          # (off by default in cw simulate since it costs time)
    cfg.workload, cfg.workload_args = "poisson-open-loop", [str(args.copies), str(args.rate)]
    cfg.base["controller"]["print_interval_s"] = 3600
    for kv in args.set:
        key, _, value = kv.partition("=")
        cfg.base["controller"][key] = {"true": True, "false": False}.get(value, value)
    oc = simulate(cfg, out=lambda line: None)
    return 1e6 * oc.controller_cpu_s / max(oc.sent, 1), 100.0 * oc.slo_met / max(oc.sent, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--copies", type=int, default=256)
    ap.add_argument("--rate", type=float, default=10000)
    ap.add_argument("--seconds", type=float, default=2.0, help="simulated seconds of sending per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a [controller] setting")
    ap.add_argument("--profile", default=None, metavar="FILE", help="cProfile one more run into FILE")
    args = ap.parse_args()
    runs = [one_run(args, seed) for seed in range(args.repeats)]
    us = [u for u, _ in runs]
    print(f"controller Python CPU per request ({args.scheduler}, {args.gpus} GPUs, {args.copies} copies, "
          f"{args.rate:g} r/s, {args.seconds:g} simulated s, {args.repeats} runs): "
          f"{statistics.median(us):.1f} us ({min(us):.1f}-{max(us):.1f}); within SLO "
          f"{min(p for _, p in runs):.3f}-{max(p for _, p in runs):.3f}%")
    if args.profile:
        import cProfile
        cProfile.runctx("one_run(args, 0)", globals(), {"args": args}, args.profile)
        print(f"profile written to {args.profile} (python -m pstats {args.profile})")


if __name__ == "__main__":
    main()
