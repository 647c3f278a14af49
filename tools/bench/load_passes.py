"""How often INFER4 plans loads, per request: the 6-GPU 4,026-instance Azure setup (the golden
simulations' synthetic trace, tools/sim_golden.py) at several loads.

    python tools/bench/load_passes.py --trace-dir DIR --loads 0.5,1,2 --duration 5

A pass is a call of load_planning.next_load_pass (one per load pass that finds a GPU with a free
load slot); `ranked` counts the passes that ran load_planning.rank_demand, `empty` those of them
that ranked nothing. Counted by wrapping the two functions where infer4 calls them; the
simulation is otherwise the one tools/sim_golden.py checks (infer4, seed 0).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import sim_golden  # noqa: E402
from clockwork.controller.schedulers import infer4  # noqa: E402
from clockwork.sim.run import simulate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace-dir", default="/tmp/sim-golden-trace",
                    help="synthetic Azure trace (written if absent)")
    ap.add_argument("--loads", default="0.5,1,2")
    ap.add_argument("--duration", type=float, default=5.0, help="simulated seconds of each run")
    a = ap.parse_args()
    trace_dir = Path(a.trace_dir)
    if not (trace_dir / "invocations_per_function_md.anon.d01.csv").exists():
        from clockwork.client import azure as az
        az.write_synthetic_trace(trace_dir / az.FILE_PATTERNS[0].format(1), 8000, 1, 60.0, diurnal_amplitude=0.5)
    counts = {"passes": 0, "ranked": 0, "empty": 0, "waiting": 0}
    next_pass, rank = infer4.next_load_pass, infer4.rank_demand

    def counted_next_pass(now, waiting):
        counts["passes"] += 1
        counts["waiting"] += waiting
        return next_pass(now, waiting)

    def counted_rank(*args, **kwargs):
        ranked, share_of = rank(*args, **kwargs)
        counts["ranked"] += 1
        counts["empty"] += not ranked
        return ranked, share_of

    infer4.next_load_pass, infer4.rank_demand = counted_next_pass, counted_rank
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for load in [float(x) for x in a.loads.split(",")]:
        for k in counts:
            counts[k] = 0
        oc = simulate(sim_golden.azure_cfg(trace_dir, "infer4", load, a.duration), out=lambda line: None)
        n, p, r = oc.sent, counts["passes"], counts["ranked"]
        print(f"azure infer4 {load:g}x {a.duration:g} s: requests={n} passes={p} ({p / n:.2f}/request, "
              f"{counts['waiting'] / max(p, 1):.1f} models waiting) rank_demand={r} ({r / n:.2f}/request, "
              f"{counts['empty'] / max(r, 1):.1%} ranking nothing)  SLO met {oc.slo_attainment:.3f}%", flush=True)


if __name__ == "__main__":
    main()
