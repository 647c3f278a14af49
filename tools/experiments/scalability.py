"""The paper's controller scalability experiment, simulated: GPUs from 10 to 1,000 at a fixed
load per GPU; controller CPU per request (measured: CPU time inside the simulated controller's
handlers -- edge, scheduler, codec -- beside that of the whole simulation) and SLO attainment.

    python tools/experiments/scalability.py --out /tmp/exp-scale

Workers of 10 GPUs (8 up to 8); instances = 10 per GPU, Poisson open loop at `load` x batch-1
capacity of resnet50 per GPU. Every simulated second at 1,000 GPUs is ~100,000 requests.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from simexp import run_point, table

B1_CAPACITY = 1e9 / 4_880_896     # resnet50 batch 1 on simexp.PROFILE (float32 H200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="exp-scale")
    ap.add_argument("--gpus", default="10,30,100,300,1000")
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--load", type=float, default=0.5)
    ap.add_argument("--per-gpu-instances", type=int, default=10)
    ap.add_argument("--duration", type=float, default=2.0)
    a = ap.parse_args()
    rows = []
    for g in [int(x) for x in a.gpus.split(",")]:
        rate = a.load * B1_CAPACITY * g
        f = run_point(Path(a.out) / f"{g}gpu", a.scheduler, g,
                      ["poisson-open-loop", str(a.per_gpu_instances * g), f"{rate:.1f}"], a.duration)
        f.update(gpus=g, rate=rate)
        rows.append(f)
        print(f"{g} GPUs: controller {f['controller_us_per_request']:.0f} us CPU per request "
              f"(whole simulation {f['cpu_us_per_request']:.0f}), {f['attainment']:.3f}% within SLO, "
              f"wall {f['wall']:.0f} s", flush=True)
    print(table(rows, [("GPUs", "gpus", "d"), ("offered r/s", "rate", ".0f"), ("requests", "requests", "d"),
                       ("controller CPU us/request", "controller_us_per_request", ".0f"),
                       ("whole simulation CPU us/request", "cpu_us_per_request", ".0f"),
                       ("SLO met %", "attainment", ".3f"), ("wall s", "wall", ".0f")]))


if __name__ == "__main__":
    main()
