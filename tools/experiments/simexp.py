"""Shared by the experiment scripts: run one simulated point, read its logs, plot, tabulate.

Each point is `cw simulate` in this process (clockwork.sim): the real scheduler and worker
runtime in simulated time, writing the controller's TSV logs; figures come from `cw plot`.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from clockwork.sim import config as sim_config  # noqa: E402
from clockwork.sim.run import simulate  # noqa: E402

SECOND = 1_000_000_000
# docs/experiments.md was measured with the float32 H200 profile (named h200 then; issue 11 made
# h200 the float16 one): pinned so the scripts reproduce it
PROFILE = "h200-fp32"


def workers_for(gpus: int, per_worker: int = 8) -> tuple[int, int]:
    """(workers, gpus each): whole workers of up to `per_worker` GPUs."""
    if gpus <= per_worker:
        return 1, gpus
    per = next(n for n in (per_worker, 10, 6, 5, 4, 3, 2, 1) if gpus % n == 0)
    return gpus // per, per


def run_point(out_dir: Path, scheduler: str, gpus: int, workload: list[str], duration: float,
              seed: int = 0, controller: dict | None = None, slo_ms: float = 0.0,
              controller_us: float = 0.0) -> dict:
    """One simulation; its logs go to out_dir. Returns the figures of docs/experiments.md."""
    cfg = sim_config.load(None)
    cfg.profile = PROFILE
    cfg.scheduler = scheduler
    cfg.workers, cfg.gpus = workers_for(gpus)
    cfg.duration_s = duration
    cfg.seed = seed
    cfg.slo_ms = slo_ms
    cfg.controller_us = controller_us
    cfg.measure_cpu = True              # the controller's CPU per request (scalability.py)
    cfg.workload, cfg.workload_args = workload[0], list(workload[1:])
    cfg.log_dir = str(out_dir)
    cfg.base["controller"]["max_models"] = cfg.base["controller"]["max_models_per_client"] = 10_000_000
    cfg.base["controller"]["print_interval_s"] = 3600
    cfg.base["controller"].update(controller or {})
    cpu0 = time.process_time()
    oc = simulate(cfg, out=lambda line: None)
    cpu = time.process_time() - cpu0
    f = figures(out_dir / "clockwork_request_log.tsv", duration)
    f.update(sent=oc.sent, unanswered=oc.unanswered, wall=oc.wall_s, cpu_s=cpu,
             cpu_us_per_request=1e6 * cpu / max(oc.sent, 1),
             controller_us_per_request=1e6 * oc.controller_cpu_s / max(oc.sent, 1))
    return f


def figures(request_log: Path, duration: float) -> dict:
    n = ok = met = cold = cold_met = 0
    lat = []
    with open(request_log, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            n += 1
            c = row["is_coldstart"] == "1"
            cold += c
            if row["result"] == "0":
                ok += 1
                lat.append(int(row["latency"]))
                if int(row["latency"]) <= int(row["deadline"]):     # deadline: the SLO
                    met += 1
                    cold_met += c
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] / 1e6 if lat else float("nan")
    return dict(requests=n, successes=ok, slo_met=met, attainment=100.0 * met / max(n, 1),
                goodput=met / duration, cold=cold, cold_met=cold_met, p50=pct(50), p99=pct(99),
                p9999=pct(99.99))


def plot(out_dir: Path) -> None:
    """`cw plot` on a point's logs (figures in out_dir/plots)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "clockwork.cli", "plot", str(out_dir)], env=env,
                   stdout=subprocess.DEVNULL, check=True)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table: columns are (header, key, format)."""
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(format(r[k], f) for _, k, f in columns) + " |")
    return "\n".join(out)
