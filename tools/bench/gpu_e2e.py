#!/usr/bin/env python3
"""End to end on a real device: controller (INFER4) + real worker + the `simple` workload.

Starts `cw worker --backend cuda` (or cpu), `cw controller`, and `cw client --workload simple`
on 127.0.0.1 free ports, runs for --duration seconds, stops everything, and reports the
success rate, client latency p50/p99 and the worker-measured exec time side by side (from the
client's request log and the controller's action log).

  python tools/bench/gpu_e2e.py [--model resnet50] [--duration 30] [--backend cuda] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clockwork.transport.sockets import free_port
from benchutil import pct

PY = sys.executable


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--workload", default="simple")
    ap.add_argument("--args", default="", help="workload arguments before the model, e.g. '16 200'")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--weights-cache", default="4GiB")
    ap.add_argument("--clients", type=int, default=1,
                    help="client processes, each running the workload with --args (one Python "
                         "client sends a few thousand r/s)")
    ap.add_argument("--emulate", type=int, default=0, help="an emulated worker with N GPUs instead")
    ap.add_argument("--out", default=None, help="directory for logs and e2e.json")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="cw-e2e-"))
    out.mkdir(parents=True, exist_ok=True)
    wport, cport = free_port(), free_port()
    env = dict(os.environ, CLOCKWORK_MODEL_DIR=str(Path(a.zoo).resolve()), PYTHONUNBUFFERED="1")
    procs = []

    def start(name, args):
        f = open(out / f"{name}.log", "w")
        p = subprocess.Popen([PY, "-m", "clockwork.cli", *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append((name, p, f))
        return p

    result = {"model": a.model, "workload": " ".join([a.workload, *a.args.split()]),
              "weights_cache": a.weights_cache,
              "backend": f"emulated x{a.emulate}" if a.emulate else a.backend, "duration_s": a.duration}
    try:
        wl_args = a.args.split()     # the model positionally, or by name after named arguments
        wl_args.append(f"--model={a.model}" if any(x.startswith("--") and "=" in x for x in wl_args)
                       else a.model)
        dev = ["--emulate", str(a.emulate)] if a.emulate else ["--backend", a.backend]
        start("worker", ["worker", *dev, "--host", "127.0.0.1", "--port", str(wport),
                         "--weights-cache", a.weights_cache])
        time.sleep(0.5)
        start("controller", ["controller", f"127.0.0.1:{wport}", "--host", "127.0.0.1", "--port", str(cport),
                             "--telemetry-port", "0", "--log-dir", str(out)])
        clients = [start(f"client{k}" if k else "client",
                         ["client", f"127.0.0.1:{cport}", "--workload", a.workload,
                          "--duration", str(a.duration), "--seed", str(k),
                          "--request-log", str(out / f"client_requests{k or ''}.tsv"),
                          "--print-interval", "5", *wl_args])
                   for k in range(a.clients)]
        rcs = []
        for c in clients:
            try:
                rcs.append(c.wait(timeout=a.duration + 180))
            except subprocess.TimeoutExpired:
                rcs.append("timeout")
        result["client_rc"] = rcs[0] if a.clients == 1 else rcs
    finally:
        for name, p, f in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            f.close()
    try:
        reqs = [r for k in range(a.clients) for r in read_tsv(out / f"client_requests{k or ''}.tsv")]
        ok = [r for r in reqs if r["status"] in ("0", "SUCCESS", "success")]
        lat = [float(r["latency_ms"]) for r in ok]
        result.update(requests=len(reqs), succeeded=len(ok),
                      success_pct=100.0 * len(ok) / len(reqs) if reqs else 0.0,
                      latency_p50_ms=pct(lat, 50), latency_p99_ms=pct(lat, 99))
    except (OSError, KeyError, ValueError) as e:
        result["client_log_error"] = str(e)
    try:
        acts = [r for r in read_tsv(next(out.glob("*action_log*.tsv")))]
        inf = [r for r in acts if r["action_type"].lower() in ("infer", "23") and r["status"] in ("0", "success")]
        ex = [float(r["worker_exec_duration"]) for r in inf]
        scale = 1e6 if ex and pct(ex, 50) > 1e4 else 1.0    # ns -> ms when logged in ns
        kinds = {}
        for r in acts:
            key = f"{r['action_type']}:{'ok' if r['status'] in ('0', 'success') else 'status ' + r['status']}"
            kinds[key] = kinds.get(key, 0) + 1
        result["actions"] = kinds
        result.update(infer_actions=len(inf), exec_p50_ms=pct(ex, 50) / scale, exec_p99_ms=pct(ex, 99) / scale,
                      batch_sizes=sorted({int(r["batch_size"]) for r in inf}))
        per_gpu = {}                    # several GPUs: each one's share, exec spread and busy time
        for gpu in sorted({r["gpu_id"] for r in inf}):
            e = [float(r["worker_exec_duration"]) for r in inf if r["gpu_id"] == gpu]
            per_gpu[gpu] = {"infers": len(e), "exec_p50_ms": pct(e, 50) / scale,
                            "exec_p99_over_p50": pct(e, 99) / pct(e, 50),
                            "busy_pct": 100.0 * sum(e) / scale / 1e3 / a.duration}
        result["per_gpu"] = per_gpu
        result["action_too_late"] = sum(1 for r in acts if r["status"] in ("21", "ACTION_TOO_LATE"))
    except (OSError, KeyError, ValueError, StopIteration) as e:
        result["action_log_error"] = repr(e)
    (out / "e2e.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print("--- client output (tail) ---")
    print("\n".join((out / "client.log").read_text().splitlines()[-12:]))
    return 0 if result.get("success_pct") == 100.0 else 1


if __name__ == "__main__":
    sys.exit(main())
