"""The paper's 10 ms-SLO comparison experiment (comparison_experiment2), simulated: 15 copies of
resnet50, each driven by a closed loop of 16 clients, every request with a 10 ms SLO, on one
GPU; infer4 against the fifo baseline (reactive, no admission control) and clipper (fifo with
Clipper's AIMD adaptive batch sizes).

    python tools/experiments/comparison.py --out /tmp/exp-comparison
"""
from __future__ import annotations

import argparse
from pathlib import Path

from simexp import plot, run_point, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="exp-comparison")
    ap.add_argument("--schedulers", default="infer4,fifo,clipper")
    ap.add_argument("--slos", default="10,25,100", help="SLOs in ms")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--controller-us", type=float, default=0.0,
                    help="controller CPU per message (us): closed loops resend at once after a "
                         "rejection, so with a free controller they spin (see docs/experiments.md)")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args()
    rows = []
    for sched in a.schedulers.split(","):
        for slo in [float(x) for x in a.slos.split(",")]:
            d = Path(a.out) / f"{sched}-{slo:g}ms"
            f = run_point(d, sched, a.gpus, ["comparison_experiment2", "15", "16"], a.duration, slo_ms=slo,
                          controller_us=a.controller_us)
            f.update(scheduler=sched, slo=slo, throughput=f["requests"] / a.duration)
            rows.append(f)
            print(f"{sched} SLO {slo:g} ms: {f['attainment']:.3f}% within SLO, goodput {f['goodput']:.0f} r/s",
                  flush=True)
            if not a.no_plots:
                plot(d)
    print(table(rows, [("scheduler", "scheduler", "s"), ("SLO ms", "slo", "g"),
                       ("answered r/s", "throughput", ".0f"), ("SLO met %", "attainment", ".3f"),
                       ("goodput r/s", "goodput", ".0f"), ("p50 ms", "p50", ".1f"), ("p99 ms", "p99", ".1f")]))


if __name__ == "__main__":
    main()
