"""The paper's slo-exp, simulated: SLO attainment against the SLO, from 10 ms to 500 ms, for
infer4 and fifo, on a Poisson open loop over copies of resnet50.

    python tools/experiments/slo_sweep.py --out /tmp/exp-slo

Every request carries the same SLO (`cw client --slo-ms`); the load is a fraction of the GPUs'
batch-1 capacity (resnet50 on the h200-fp32 profile: 4.9 ms, ~204 r/s per GPU).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from simexp import plot, run_point, table

B1_CAPACITY = 1e9 / 4_880_896     # resnet50 batch 1 on simexp.PROFILE (float32 H200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="exp-slo")
    ap.add_argument("--slos", default="10,25,50,100,250,500", help="SLOs in ms")
    ap.add_argument("--schedulers", default="infer4,fifo")
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--copies", type=int, default=32)
    ap.add_argument("--load", type=float, default=1.0, help="fraction of batch-1 capacity")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args()
    rate = a.load * B1_CAPACITY * a.gpus
    rows = []
    for sched in a.schedulers.split(","):
        for slo in [float(x) for x in a.slos.split(",")]:
            d = Path(a.out) / f"{sched}-{slo:g}ms"
            f = run_point(d, sched, a.gpus, ["poisson-open-loop", str(a.copies), f"{rate:.1f}"], a.duration,
                          slo_ms=slo)
            f.update(scheduler=sched, slo=slo)
            rows.append(f)
            print(f"{sched} SLO {slo:g} ms: {f['attainment']:.3f}% within SLO, goodput {f['goodput']:.0f} r/s",
                  flush=True)
            if not a.no_plots:
                plot(d)
    print(f"\n{a.gpus} GPUs, {a.copies} resnet50 instances, {rate:.0f} r/s offered ({a.load:g}x batch-1 capacity)")
    print(table(rows, [("scheduler", "scheduler", "s"), ("SLO ms", "slo", "g"), ("SLO met %", "attainment", ".3f"),
                       ("goodput r/s", "goodput", ".0f"), ("p50 ms", "p50", ".1f"), ("p99 ms", "p99", ".1f")]))


if __name__ == "__main__":
    main()
