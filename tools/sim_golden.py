"""Golden simulations: the request and action logs (and printed lines) of eight fixed `cw simulate`
runs, hashed, so a change meant to make simulations faster can be checked to leave every
decision, byte for byte, as it was.

    python tools/sim_golden.py record golden.json   # on the code before the change
    python tools/sim_golden.py check golden.json    # after: exit 1 and name what differs

The eight runs: the 6-GPU 4,026-instance Azure setup (tools/bench/simulate.py azure) at 1x and
2x for infer4 and fifo, and the determinism test's faulty run (tests/test_simulate.py: skewed
drifting clocks, exec noise, dropped connections, a stall and a crash) for infer4, fifo,
clipper and direct. The synthetic Azure trace is written once into --trace-dir (seed 0).
`--keep DIR` keeps each run's logs in DIR/<run> for diffing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clockwork.sim import config as sim_config  # noqa: E402
from clockwork.sim.run import simulate  # noqa: E402

PROFILE = "h200-fp32"
B1_CAPACITY = 1e9 / 4_880_896          # resnet50 batch 1 on that profile, r/s per GPU
LOGS = ("clockwork_request_log.tsv", "clockwork_action_log.tsv")


def azure_cfg(trace_dir: Path, scheduler: str, load: float, duration: float) -> sim_config.SimConfig:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
    import azure as azb                     # tools/bench/azure.py: the capacity figure
    from clockwork.client import azure as az
    from clockwork.model.zoo import load_profile
    trace = az.read_trace(az.trace_path(1, str(trace_dir)))
    prof = load_profile(PROFILE)["models"]
    zoo = sorted(prof)
    exec_s = {m: {int(b): v / 1e9 for b, v in prof[m]["exec_ns"].items()} for m in zoo}
    names, shares, count0 = azb.instance_shares(trace, 4, zoo, 0, 0)
    cap = azb.capacity(6, names, shares, exec_s, 0.05)
    base = count0 / 60.0 * az.LOAD_PER_WORKER
    cfg = sim_config.load(None)
    cfg.profile, cfg.scheduler, cfg.workers, cfg.gpus = PROFILE, scheduler, 1, 6
    cfg.duration_s, cfg.seed = duration, 0
    cfg.workload = "azure"
    cfg.workload_args = ["--num_workers=1", f"--load_factor={load * cap / base}", "--memory_load_factor=4",
                         f"--trace_dir={trace_dir}"]
    cfg.base["controller"]["max_models"] = cfg.base["controller"]["max_models_per_client"] = 10_000_000
    return cfg


def faulty_cfg(scheduler: str) -> sim_config.SimConfig:
    """tests/test_simulate.py's byte-for-byte run."""
    cfg = sim_config.load(None)
    cfg.profile, cfg.scheduler, cfg.workers, cfg.gpus = PROFILE, scheduler, 2, 1
    cfg.duration_s, cfg.seed = 4.0, 0
    cfg.base["controller"]["max_batch_size"] = 1
    cfg.workload = "poisson-open-loop"
    cfg.workload_args = ["8", f"{1.0 * B1_CAPACITY * 2:.3f}"]
    cfg.skew_ms, cfg.drift_ppm, cfg.exec_sigma, cfg.drop_rate = 20.0, 200.0, 0.05, 0.001
    cfg.faults = [sim_config.Fault("stall", 1, 1.0, 1.2), sim_config.Fault("crash", 0, 2.0, 0.5)]
    return cfg


def runs(trace_dir: Path, duration: float):
    for sched in ("infer4", "fifo"):
        for load in (1.0, 2.0):
            yield f"azure-{sched}-{load:g}x", lambda s=sched, x=load: azure_cfg(trace_dir, s, x, duration)
    for sched in ("infer4", "fifo", "clipper", "direct"):
        yield f"faulty-{sched}", lambda s=sched: faulty_cfg(s)


def digest(cfg, log_dir: Path) -> dict:
    cfg.log_dir = str(log_dir)
    lines: list[str] = []
    t0 = time.process_time()
    oc = simulate(cfg, out=lines.append)
    cpu = time.process_time() - t0
    printed = "\n".join(l for l in lines if not l.startswith(("Simulated", "Logging"))).encode()
    d = {f: hashlib.sha256((log_dir / f).read_bytes()).hexdigest() for f in LOGS}
    d["printed"] = hashlib.sha256(printed).hexdigest()
    d["rows"] = sum(1 for _ in (log_dir / LOGS[0]).open()) - 1
    d["cpu_s"] = round(cpu, 2)
    d["summary"] = f"sent={oc.sent} slo_met={oc.slo_attainment:.3f}%"
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["record", "check"])
    ap.add_argument("file", help="the JSON of digests (written by record, read by check)")
    ap.add_argument("--trace-dir", default="/tmp/sim-golden-trace", help="synthetic Azure trace (written if absent)")
    ap.add_argument("--duration", type=float, default=5.0, help="simulated seconds of each Azure run")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all eight)")
    ap.add_argument("--keep", default="", help="keep each run's logs under this directory")
    a = ap.parse_args()
    trace_dir = Path(a.trace_dir)
    if not (trace_dir / "invocations_per_function_md.anon.d01.csv").exists():
        from clockwork.client import azure as az
        az.write_synthetic_trace(trace_dir / az.FILE_PATTERNS[0].format(1), 8000, 1, 60.0, diurnal_amplitude=0.5)
    if a.what == "check" and not Path(a.file).is_file():
        ap.error(f"{a.file}: no such file (make it with `record` on the code before the change)")
    want = json.loads(Path(a.file).read_text()) if a.what == "check" else {}
    only = set(a.only.split(",")) - {""}
    got, bad = {}, []
    for name, make in runs(trace_dir, a.duration):
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            log_dir = Path(a.keep, name) if a.keep else Path(tmp)
            log_dir.mkdir(parents=True, exist_ok=True)
            d = got[name] = digest(make(), log_dir)
        same = ""
        if a.what == "check":
            w = want.get(name)
            diff = [k for k in (*LOGS, "printed") if w is None or w[k] != d[k]]
            same = "SAME" if not diff else "DIFFERS: " + ", ".join(diff)
            bad += [name] if diff else []
        print(f"{name:<20} {d['summary']:<32} rows={d['rows']:<7} cpu={d['cpu_s']:6.2f} s  {same}", flush=True)
    if a.what == "record":
        Path(a.file).write_text(json.dumps(got, indent=1) + "\n")
        return 0
    print("all the same" if not bad else f"{len(bad)} differ: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
