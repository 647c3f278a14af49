"""How fast `cw simulate` runs: wall time against GPUs, model instances and request rate, the
6-GPU 4,026-instance Azure setup against real time, and (optionally) fidelity against real
processes at heavier loads than the CI test.

    python tools/bench/simulate.py sweep                  # GPUs, instances, rate
    python tools/bench/simulate.py azure --trace-dir DIR  # 6 GPUs, 4026 instances, 0.5x/1x/2x
    python tools/bench/simulate.py fidelity --loads 0.5,1,2 --schedulers infer4,fifo
    python tools/bench/simulate.py million --trace-dir DIR --instances 1000000 --rate 10000
    python tools/bench/simulate.py point --gpus 6 --duration 3 poisson-open-loop 2000 1356

`point` runs one simulation (for callgrind: the instructions of a 3 s run minus a 1 s run,
divided by the requests between, are a cost per request that the machine's load leaves alone):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python tools/bench/simulate.py point ...

Every point is one fresh simulation in this process (one core). `speed` is simulated seconds
(from the workload's start to the last answer) per wall second over the same span, model loading
excluded (setup: loading the models and building the workload, reported apart);
`us/request` is that run's wall time per request sent. `cpu` is this process's CPU time for the
whole point, and after setup simulated seconds per CPU second and CPU per request: the figures
that do not depend on what else the machine runs.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clockwork.sim import config as sim_config  # noqa: E402
from clockwork.sim.fidelity import from_request_log  # noqa: E402
from clockwork.sim.run import simulate  # noqa: E402

GPUS_PER_WORKER = 8
# The figures in BENCHMARKS.md were taken with the float32 H200 profile (named h200 then; issue
# 11 made h200 the float16 one): keep it for comparable numbers.
PROFILE = "h200-fp32"
B1_CAPACITY = 1e9 / 4_880_896          # resnet50 batch 1 on that profile, r/s per GPU


def point(scheduler: str, gpus: int, workload: list[str], duration: float, seed: int = 0,
          log_dir: str = "", controller: dict | None = None, drain: float | None = None,
          controller_us: float = 0.0, slo_ms: float = 0.0) -> dict:
    cfg = sim_config.load(None)
    cfg.profile = PROFILE
    cfg.scheduler = scheduler
    per = next(n for n in (GPUS_PER_WORKER, 10, 5, 4, 2, 1) if gpus % n == 0) if gpus > GPUS_PER_WORKER else gpus
    cfg.workers, cfg.gpus = gpus // per, per
    cfg.duration_s = duration
    cfg.seed = seed
    cfg.workload, cfg.workload_args = workload[0], workload[1:]
    cfg.log_dir = log_dir
    cfg.controller_us = controller_us
    cfg.slo_ms = slo_ms
    if drain is not None:
        cfg.drain_s = drain
    cfg.base["controller"]["max_models"] = cfg.base["controller"]["max_models_per_client"] = 10_000_000
    cfg.base["controller"].update(controller or {})
    cpu0 = time.process_time()
    oc = simulate(cfg, out=lambda line: None)
    cpu = time.process_time() - cpu0
    assert oc.duplicates == 0 and (oc.unanswered == 0 or drain is not None), oc.line()
    return dict(gpus=cfg.workers * cfg.gpus, sent=oc.sent, unanswered=oc.unanswered, wall=oc.wall_s, setup=oc.wall_s - oc.run_wall_s,
                sim=oc.run_sim_s, events=oc.events, speed=oc.run_sim_s / oc.run_wall_s,
                us_per_request=1e6 * oc.run_wall_s / max(oc.sent, 1), cpu=cpu,
                cpu_speed=oc.run_sim_s / max(oc.run_cpu_s, 1e-9),
                cpu_us_per_request=1e6 * oc.run_cpu_s / max(oc.sent, 1), run_cpu=oc.run_cpu_s,
                attainment=oc.slo_attainment, goodput=oc.goodput)


def show(label: str, p: dict) -> None:
    print(f"{label:<34} gpus={p['gpus']:<4} requests={p['sent']:<8} wall={p['wall']:7.1f} s "
          f"(setup {p['setup']:5.1f} s) "
          f"speed={p['speed']:6.2f}x  {p['us_per_request']:7.0f} us/request  cpu={p['cpu']:6.1f} s "
          f"(after setup: {p['cpu_speed']:5.2f}x, {p['cpu_us_per_request']:4.0f} us/request)  events={p['events']}  "
          f"SLO met {p['attainment']:.2f}%", flush=True)


def sweep(a) -> None:
    d = a.duration
    for g in [int(x) for x in a.gpus.split(",")]:
        rate = 0.5 * B1_CAPACITY * g
        show(f"gpus {g} (0.5x, {rate:.0f} r/s, 100 inst)",
             point(a.scheduler, g, ["poisson-open-loop", "100", f"{rate:.1f}"], d))
    for n in [int(x) for x in a.instances.split(",")]:
        show(f"instances {n} (4 gpus, 400 r/s)", point(a.scheduler, 4, ["poisson-open-loop", str(n), "400"], d))
    for r in [float(x) for x in a.rates.split(",")]:
        show(f"rate {r:g} r/s (4 gpus, 100 inst)", point(a.scheduler, 4, ["poisson-open-loop", "100", str(r)], d))


def scale(a) -> None:
    """Many GPUs (workers of 8) and instances at 0.5x of batch-1 capacity."""
    for spec in a.scale.split(","):
        g, n = (int(x) for x in spec.split("x"))
        rate = 0.5 * B1_CAPACITY * g
        show(f"scale {g} gpus x {n} inst ({rate:.0f} r/s)",
             point(a.scheduler, g, ["poisson-open-loop", str(n), f"{rate:.1f}"], a.duration))


def azure(a) -> None:
    import azure as azb                     # tools/bench/azure.py: the same capacity figure
    from clockwork.client import azure as az
    from clockwork.model.zoo import load_profile
    trace = az.read_trace(az.trace_path(1, a.trace_dir))
    prof = load_profile(PROFILE)["models"]
    zoo = sorted(prof)
    exec_s = {m: {int(b): v / 1e9 for b, v in prof[m]["exec_ns"].items()} for m in zoo}
    names, shares, count0 = azb.instance_shares(trace, 4, zoo, 0, 0)
    cap = azb.capacity(a.azure_gpus, names, shares, exec_s, 0.05)
    base = count0 / 60.0 * az.LOAD_PER_WORKER
    print(f"azure: {len(names)} instances on {a.azure_gpus} GPUs, capacity {cap:.0f} r/s; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    for sched in a.schedulers.split(","):
        for x in [float(v) for v in a.loads.split(",")]:
            wl = ["azure", "--num_workers=1", f"--load_factor={x * cap / base}", "--memory_load_factor=4",
                  f"--trace_dir={a.trace_dir}"]
            for us in [float(v) for v in a.controller_us.split(",")]:
                show(f"azure {sched} {x:g}x ({x * cap:.0f} r/s)" + (f" ctl {us:g} us" if us else ""),
                     point(sched, a.azure_gpus, wl, a.duration, controller_us=us))


def million(a) -> None:
    """Issue 14's scale goal: the azure workload spread over --instances instances (a trace of
    fewer functions: each row's requests go to a block of instances) on --million-gpus GPUs at
    --rate r/s in all, for --duration simulated s. One point per run, so that the process's peak
    memory (/usr/bin/time -v, or maxrss below) is that point's."""
    import resource
    from clockwork.client import azure as az
    t0 = time.perf_counter()
    trace = az.read_trace(az.trace_path(1, a.trace_dir))
    count0 = float(trace.counts[:, 0].sum())           # minute 0: what a replay of < 60 s plays
    del trace
    read_s = time.perf_counter() - t0
    base = count0 / 60.0 * az.LOAD_PER_WORKER            # r/s at load_factor 1, num_workers 1
    for n in [int(x) for x in a.instances.split(",")]:
        wl = ["azure", "--num_workers=1", f"--load_factor={a.rate / base}", f"--instances={n}",
              f"--trace_dir={a.trace_dir}"]
        w0 = time.perf_counter()
        p = point(a.scheduler, a.million_gpus, wl, a.duration)
        wall = time.perf_counter() - w0
        show(f"million {a.million_gpus} gpus x {n} inst ({a.rate:.0f} r/s)", p)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"  wall {wall:.1f} s = setup {wall - p['wall'] + p['setup']:.1f} s + run {p['wall'] - p['setup']:.1f} s "
              f"(trace read for the rate, before: {read_s:.1f} s); CPU {p['cpu']:.1f} s = setup "
              f"{p['cpu'] - p['run_cpu']:.1f} s + run {p['run_cpu']:.1f} s; goodput {p['goodput']:.0f} r/s; "
              f"peak RSS so far {rss:.2f} GiB", flush=True)


def one(a) -> None:
    """One simulation of any workload on --gpus GPUs."""
    if not a.workload:
        sys.exit("point: name a workload and its arguments, e.g. poisson-open-loop 2000 1356")
    show(f"point {' '.join(a.workload)}", point(a.scheduler, int(a.gpus), a.workload, a.duration))


def fidelity(a) -> None:
    """The CI fidelity case at more loads: real processes (LocalCluster) vs the simulation."""
    from clockwork.local import LocalCluster
    from clockwork.model.zoo import write_emulated_zoo
    for sched in a.schedulers.split(","):
        for x in [float(v) for v in a.loads.split(",")]:
            rate = x * B1_CAPACITY
            wl = ["poisson-open-loop", "4", f"{rate:.1f}"]
            with tempfile.TemporaryDirectory() as tmp:
                write_emulated_zoo(Path(tmp, "zoo"), PROFILE, log=lambda *_: None)
                conf = Path(tmp, "c.toml")
                conf.write_text("[controller]\nmax_batch_size = 1\n")
                load0 = os.getloadavg()[0]
                with LocalCluster(gpus=1, scheduler=sched, log_dir=Path(tmp, "real"), config_file=conf,
                                  model_dir=Path(tmp, "zoo")) as c:
                    r = c.run_client(wl[0], ["--duration", str(a.duration), "--no-inputs", "--slo-ms",
                                             str(a.slo_ms), *wl[1:]], timeout=600)
                    assert r.returncode == 0, r.stdout[-2000:]
                sent = int(re.search(r"Summary: .* sent=(\d+)", r.stdout).group(1))
                real = from_request_log(Path(tmp, "real", "clockwork_request_log.tsv"), a.duration, sent)
                # as the real client: wait 5 s for answers, then count what is missing as missed
                p = point(sched, 1, wl, a.duration, log_dir=str(Path(tmp, "sim")),
                          controller={"max_batch_size": 1}, drain=5.0, slo_ms=a.slo_ms)
                sim = from_request_log(Path(tmp, "sim", "clockwork_request_log.tsv"), a.duration, p["sent"])
            print(f"fidelity {sched} {x:g}x ({rate:.0f} r/s, batch 1, 1 GPU, SLO {a.slo_ms:g} ms, {a.duration:g} s, load average "
                  f"{load0:.1f}): real SLO met {real.attainment:.2f}% goodput {real.goodput:.1f} | sim "
                  f"{sim.attainment:.2f}% {sim.goodput:.1f} | diff {sim.attainment - real.attainment:+.2f} points, "
                  f"goodput {100 * (sim.goodput / max(real.goodput, 1e-9) - 1):+.1f}%", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["sweep", "azure", "fidelity", "scale", "million", "point"])
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--schedulers", default="infer4")
    ap.add_argument("--duration", type=float, default=5.0, help="simulated seconds of sending per point")
    ap.add_argument("--gpus", default="1,2,4,8,16,32")
    ap.add_argument("--instances", default="100,1000,10000,100000")
    ap.add_argument("--rates", default="100,200,400,800,1600")
    ap.add_argument("--scale", default="100x1000,300x3000,1000x10000", help="GPUSxINSTANCES,...")
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--million-gpus", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="million: requests/s in all")
    ap.add_argument("--azure-gpus", type=int, default=6)
    ap.add_argument("--loads", default="0.5,1,2")
    ap.add_argument("--slo-ms", type=float, default=100.0, help="fidelity: every request's SLO")
    ap.add_argument("--controller-us", default="0", help="controller CPU per message (us), a list")
    a, a.workload = ap.parse_known_args()       # point: the rest is a workload and its arguments
    if a.workload and a.what != "point":
        ap.error(f"unrecognized arguments: {' '.join(a.workload)}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    {"sweep": sweep, "azure": azure, "fidelity": fidelity, "scale": scale, "million": million,
     "point": one}[a.what](a)


if __name__ == "__main__":
    main()
