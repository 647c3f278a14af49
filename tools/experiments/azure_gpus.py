"""The paper's Azure experiment, simulated: the trace replayed onto 4,026 model instances on
1-12 GPUs at a fixed offered load; SLO attainment, goodput and cold starts per GPU count.

    cw trace synth /tmp/trace        # or the real trace: AzurePublicDataset 2019, day 1
    python tools/experiments/azure_gpus.py --trace-dir /tmp/trace --out /tmp/exp-azure

Load: `load_factor` of the azure workload (1.0 = the original's per-worker share of the trace,
x num_workers); the same offered load for every GPU count, so more GPUs mean fewer cold starts
and more room. Figures for each point from `cw plot` under OUT/<scheduler>-<gpus>gpu/plots.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from simexp import plot, run_point, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace-dir", required=True)
    ap.add_argument("--out", default="exp-azure")
    ap.add_argument("--gpus", default="1,2,4,6,8,12")
    ap.add_argument("--schedulers", default="infer4,fifo")
    ap.add_argument("--load-factor", type=float, default=3.0, help="azure load_factor (6 H200 GPUs: ~1x at 3)")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args()
    rows = []
    for sched in a.schedulers.split(","):
        for g in [int(x) for x in a.gpus.split(",")]:
            d = Path(a.out) / f"{sched}-{g}gpu"
            wl = ["azure", "--num_workers=1", f"--load_factor={a.load_factor}", "--memory_load_factor=4",
                  f"--trace_dir={a.trace_dir}"]
            f = run_point(d, sched, g, wl, a.duration)
            f.update(scheduler=sched, gpus=g, offered=f["sent"] / a.duration)
            rows.append(f)
            print(f"{sched} {g} GPUs: {f['attainment']:.3f}% within SLO, goodput {f['goodput']:.0f} r/s, "
                  f"cold starts {f['cold']}", flush=True)
            if not a.no_plots:
                plot(d)
    print(table(rows, [("scheduler", "scheduler", "s"), ("GPUs", "gpus", "d"), ("offered r/s", "offered", ".0f"),
                       ("SLO met", "attainment", ".3f"), ("goodput r/s", "goodput", ".0f"),
                       ("cold-start requests", "cold", "d"), ("p99 ms", "p99", ".1f")]))


if __name__ == "__main__":
    main()
