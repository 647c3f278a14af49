#!/usr/bin/env python3
"""The azure experiment on emulated H200 GPUs: infer4 against the fifo baseline at fractions of
capacity, replaying one minute of an Azure Functions 2019 trace (real or `cw trace synth`) onto
the `azure` workload's model instances, without inputs.

Capacity (requests/s) is computed before running, from the trace, the workload's own mapping of
trace rows onto instances and the profiled exec times (clockwork/conf/profiles/h200.toml):
  - each instance i gets the share p_i of the replayed minute's requests (exactly as the workload
    maps rows), so at total rate L it receives p_i x L;
  - its requests arriving within one batching window W (default 50 ms, half the 100 ms SLO) are
    assumed to run as one batch of n_i = clamp(round(p_i L W), 1, 16), padded to a compiled size;
  - capacity is the L at which the GPUs' exec time is exactly used up:
    sum_i p_i L exec(pad(n_i)) / n_i = GPUs.
Weight loads are not counted (they run on their own executor), so this is an optimistic figure
for the exec executors. The bench also prints the batch-1 figure (W = 0) for comparison.

Each point starts a fresh LocalCluster (emulated worker with --gpus GPUs, controller with the
scheduler, TSV logs), runs `cw client --workload azure` for --duration seconds, and reads the
controller's request log (status, latency from arrival at the controller to answer, cold start)
and action log (LoadWeights = cold loads). SLO attainment = successes answered within 100 ms /
all requests the controller received; goodput = those per second of the run. The CPU seconds
used by client, controller and worker are read from /proc so CPU saturation shows.

    cw trace synth /tmp/azure-trace
    python tools/bench/azure.py --trace-dir /tmp/azure-trace --gpus 6 --duration 60 \
        --schedulers infer4,fifo --loads 0.5,1,2
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.client import azure as az  # noqa: E402
from clockwork.client.workloads import azure_replay  # noqa: E402
from clockwork.local import LocalCluster  # noqa: E402
from clockwork.model.zoo import load_profile  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SLO_NS = 100_000_000
BATCHES = (1, 2, 4, 8, 16)


class _MappingEngine:
    """Just enough of the workload Engine for azure_replay._load_instances: records which zoo
    model each instance is, in the workload's (shuffled) order."""

    def __init__(self, zoo, seed):
        self.zoo, self.seed = zoo, seed

    def load(self, name, n):
        return [name] * n


def instance_shares(trace: az.Trace, memory_level: int, zoo: list[str], seed: int, minute: int):
    """(model name per instance, share of the minute's requests per instance, total count)."""
    names = azure_replay._load_instances(_MappingEngine(zoo, seed), memory_level, True, "")
    counts = az.per_model_counts(trace, len(names))[:, minute].astype(float)
    return names, counts / counts.sum(), counts.sum()


def gpu_seconds_per_s(rate: float, names, shares, exec_s: dict, window_s: float) -> float:
    """GPU exec seconds needed per second at total rate `rate` (see the module docstring)."""
    total = 0.0
    for name in set(names):
        sel = np.array([n == name for n in names])
        lam = shares[sel] * rate
        n = np.clip(np.rint(lam * window_s), 1, 16)
        pad = np.array([min(b for b in BATCHES if b >= k) for k in n])
        ex = np.array([exec_s[name][b] for b in pad])
        total += float((lam * ex / n).sum())
    return total


def capacity(gpus: int, names, shares, exec_s, window_s: float) -> float:
    """The rate at which the GPUs' exec time is used up (bisection; work grows with rate)."""
    lo, hi = 1.0, 1e7
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        if gpu_seconds_per_s(mid, names, shares, exec_s, window_s) > gpus:
            hi = mid
        else:
            lo = mid
    return lo


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except OSError:
        return float("nan")


def read_tsv(path: Path, columns: list[str]) -> dict[str, np.ndarray]:
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        idx = [header.index(c) for c in columns]
        rows = [line.rstrip("\n").split("\t") for line in f]
    return {c: np.array([r[i] for r in rows]) for c, i in zip(columns, idx)}


def figures(log_dir: Path, duration: float) -> dict:
    req = read_tsv(log_dir / "clockwork_request_log.tsv", ["t", "result", "latency", "is_coldstart"])
    act = read_tsv(log_dir / "clockwork_action_log.tsv", ["action_type", "status", "worker_exec_duration"])
    status = req["result"].astype(int)
    lat = req["latency"].astype(np.int64)
    ok = status == 0
    met = ok & (lat <= SLO_NS)
    n = len(status)
    codes, counts = np.unique(status, return_counts=True)
    lat_ms = lat[ok] / 1e6 if ok.any() else np.zeros(1)
    loads = (act["action_type"] == "LoadWeights")
    return {
        "requests": n, "succeeded": int(ok.sum()), "met": int(met.sum()),
        "attainment": met.sum() / max(n, 1), "goodput": met.sum() / duration,
        "cold_requests": int((req["is_coldstart"].astype(int) == 1).sum()),
        "loads": int((loads & (act["status"] == "0")).sum()),
        "loads_failed": int((loads & (act["status"] != "0")).sum()),
        "p50": float(np.percentile(lat_ms, 50)), "p99": float(np.percentile(lat_ms, 99)),
        "p9999": float(np.percentile(lat_ms, 99.99)), "max": float(lat_ms.max()),
        "by_status": {int(c): int(k) for c, k in zip(codes, counts)},
        "exec_s": float(act["worker_exec_duration"][(act["action_type"] == "Infer") & (act["status"] == "0")]
                        .astype(np.int64).sum()) / 1e9,
    }


def run_point(args, scheduler: str, load_factor: float, log_dir: Path) -> dict:
    cfg = log_dir / "config.toml"
    cfg.write_text("[worker]\nprint_interval_s = 3600\n[controller]\nprint_interval_s = 3600\n"
                   "[client]\nprint_interval_s = 10\n")
    cluster = LocalCluster(gpus=args.gpus, scheduler=scheduler, log_dir=log_dir, config_file=cfg)
    with cluster:
        pids = {"worker": cluster.worker_procs[0].pid, "controller": cluster.controller.pid}
        cpu0: dict = {}

        def mark_start():          # CPU counted from the client's "Starting workload" line
            while not cpu0:
                if any(l.startswith("Starting workload") for l in cluster.output.get("client", ())):
                    cpu0.update({k: cpu_seconds(p) for k, p in pids.items()}, t=time.monotonic())
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=mark_start, daemon=True)
        watcher.start()
        wl = ["--num_workers=1", f"--load_factor={load_factor}", f"--memory_load_factor={args.memory_level}",
              f"--interval={args.interval}", f"--trace_dir={args.trace_dir}", "--use_all_models=1"]
        res = cluster.run_client("azure", ["--duration", str(args.duration), "--no-inputs",
                                           "--seed", str(args.seed), "--drain", "10", *wl],
                                 timeout=args.duration + 600)
        cpu = {k: cpu_seconds(p) - cpu0.get(k, 0.0) for k, p in pids.items()}
        wall = time.monotonic() - cpu0.get("t", time.monotonic())
        cpu0.setdefault("t", 0)
    out = res.stdout
    if res.returncode != 0:
        raise SystemExit(f"client failed ({res.returncode}):\n{out[-3000:]}")
    f = figures(log_dir, args.duration)
    f["client_summary"] = [l for l in out.splitlines() if l.startswith(("Summary", "  status", "  latency",
                                                                        "  goodput", "note:"))]
    # Requests the client sent but the controller never answered (still queued when the run
    # ended: fifo under overload) are in no controller log; they count as SLO misses.
    sent = int(re.search(r"Summary: .* sent=(\d+)", out).group(1))
    f["unanswered"] = max(0, sent - f["requests"])
    f["requests"] = max(sent, f["requests"])
    f["attainment"] = f["met"] / max(f["requests"], 1)
    f["busy"] = f["exec_s"] / (args.duration * args.gpus)    # GPU exec executors busy, on average
    f["cpu"] = cpu          # CPU seconds from the workload's start to the client's exit
    f["wall"] = wall
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace-dir", required=True, help="directory or file of the trace (cw trace synth DIR)")
    ap.add_argument("--gpus", type=int, default=6)
    ap.add_argument("--memory-level", type=int, default=4, help="azure memory_load_factor: 4 = 4026 instances")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per point")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per trace minute")
    ap.add_argument("--schedulers", default="infer4,fifo")
    ap.add_argument("--loads", default="0.5,1,2", help="multiples of capacity")
    ap.add_argument("--window-ms", type=float, default=50.0, help="batching window for the capacity figure")
    ap.add_argument("--capacity", type=float, default=0.0, help="use this capacity (r/s) instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-logs", default=None, help="keep each point's TSV logs under this directory")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # stop the cluster on the way out

    try:
        trace = az.read_trace(az.trace_path(1, a.trace_dir))
    except az.TraceError as e:
        raise SystemExit(f"azure bench: {e}") from None
    prof = load_profile("h200")["models"]
    zoo = sorted(prof)
    exec_s = {m: {int(b): v / 1e9 for b, v in prof[m]["exec_ns"].items()} for m in zoo}
    names, shares, count0 = instance_shares(trace, a.memory_level, zoo, a.seed, 0)
    cap_b1 = capacity(a.gpus, names, shares, exec_s, 0.0)
    cap_w = capacity(a.gpus, names, shares, exec_s, a.window_ms / 1e3)
    cap = a.capacity or cap_w
    base_rate = count0 / 60.0 * az.LOAD_PER_WORKER       # load_factor 1, num_workers 1, minute 1
    print(f"azure bench: {len(names)} instances ({', '.join(f'{m} {names.count(m)}' for m in zoo)}), "
          f"{a.gpus} emulated H200 GPUs, trace {trace.path.name} minute 1, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"capacity: {cap_b1:.0f} r/s at batch 1, {cap_w:.0f} r/s batching {a.window_ms:g} ms windows"
          f"; using {cap:.0f} r/s")
    print(f"busiest instance {100 * shares.max():.2f}% of requests; instances with requests "
          f"{int((shares > 0).sum())}")
    rows = []
    keep = Path(a.keep_logs) if a.keep_logs else None
    for sched in a.schedulers.split(","):
        for x in [float(v) for v in a.loads.split(",")]:
            rate = x * cap
            lf = rate / base_rate
            with tempfile.TemporaryDirectory(prefix="azure-bench-") as tmp:
                d = (keep / f"{sched}-{x:g}x") if keep else Path(tmp)
                d.mkdir(parents=True, exist_ok=True)
                load0 = os.getloadavg()[0]
                f = run_point(a, sched, lf, d)
            f.update(scheduler=sched, x=x, rate=rate, load_factor=lf, loadavg=(load0, os.getloadavg()[0]))
            rows.append(f)
            print(f"\n== {sched} {x:g}x: offered {rate:.0f} r/s (load_factor {lf:.4g}), run+drain {f['wall']:.0f} s, "
                  f"CPU over the run: controller {100 * f['cpu']['controller'] / f['wall']:.0f}%, "
                  f"worker {100 * f['cpu']['worker'] / f['wall']:.0f}% of a core, "
                  f"load average {f['loadavg'][0]:.2f} -> {f['loadavg'][1]:.2f}")
            for line in f["client_summary"]:
                print("   client:", line)
            print(f"   controller: {f['requests']} requests, SLO met {100 * f['attainment']:.4f}%, goodput "
                  f"{f['goodput']:.0f} r/s ({100 * f['goodput'] / cap:.1f}% of capacity), "
                  f"cold-start requests {f['cold_requests']}, LoadWeights {f['loads']} (+{f['loads_failed']} failed), "
                  f"latency p50 {f['p50']:.1f} p99 {f['p99']:.1f} p99.99 {f['p9999']:.1f} max {f['max']:.1f} ms, "
                  f"GPU exec busy {100 * f['busy']:.0f}%, by status {f['by_status']}, never answered {f['unanswered']}", flush=True)
    print("\n| scheduler | load | offered r/s | requests | SLO met (100 ms) | goodput r/s | % of capacity "
          "| cold-start requests | LoadWeights | GPU busy | p50 ms | p99 ms | p99.99 ms | by status | controller CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in rows:
        st = " ".join(f"{k}:{v}" for k, v in sorted(f["by_status"].items()))
        if f["unanswered"]:
            st += f" unanswered:{f['unanswered']}"
        print(f"| {f['scheduler']} | {f['x']:g}x | {f['rate']:.0f} | {f['requests']} | {100 * f['attainment']:.3f}% "
              f"| {f['goodput']:.0f} | {100 * f['goodput'] / cap:.1f}% | {f['cold_requests']} | {f['loads']} "
              f"| {100 * f['busy']:.0f}% "
              f"| {f['p50']:.1f} | {f['p99']:.1f} | {f['p9999']:.1f} | {st} "
              f"| {100 * f['cpu']['controller'] / f['wall']:.0f}% |")


if __name__ == "__main__":
    main()
