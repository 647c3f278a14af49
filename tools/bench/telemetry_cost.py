#!/usr/bin/env python3
"""Costs of telemetry: the controller's hot-path hooks, one snapshot, and `cw plot` on a big log.

1. request_done / action_done per call (the per-request price of telemetry on the controller);
2. the longest single maybe_publish call while building a snapshot of N active models (the
   longest the controller's event loop is held by telemetry), and the whole snapshot's cost;
3. `cw plot` wall time and peak memory (ru_maxrss) on a synthetic log of R requests.

    python tools/bench/telemetry_cost.py [--models 4000] [--requests 1000000]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from telemetry_fakes import MS, FakeController  # noqa: E402

from clockwork.controller.logs import ACTION_COLUMNS, REQUEST_COLUMNS  # noqa: E402
from clockwork.controller.scheduler import Request  # noqa: E402
from clockwork.telemetry.publisher import TelemetryPublisher  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402


def hooks(n: int = 200_000) -> None:
    ctl = FakeController(models=100)
    pub = TelemetryPublisher(ctl, zmq.Context.instance(), "127.0.0.1", 0)
    reqs = [Request(i, None, i, i % 100, 1, 0, 100 * MS, []) for i in range(1000)]
    t = time.perf_counter()
    for i in range(n):
        pub.request_done(reqs[i % 1000], 0, 5 * MS, 1000, 3 * MS)
    per_req = (time.perf_counter() - t) / n
    w = ctl.workers[0]
    a = s.Infer(1, 0, 0, 3, 0, 4, 3 * MS)
    r = s.InferResult(1, 0, 0, 0, 0, 0, 3 * MS, 3 * MS, 0, 0, 1980, 1980)
    t = time.perf_counter()
    for _ in range(n):
        pub.action_done(w, a, r, 1000)
    per_act = (time.perf_counter() - t) / n
    print(f"request_done {per_req * 1e6:.2f} us/call   action_done {per_act * 1e6:.2f} us/call")
    pub.close()


def snapshot(models: int) -> None:
    ctl = FakeController(models=models)
    pub = TelemetryPublisher(ctl, zmq.Context.instance(), "127.0.0.1", 0)
    ctl.telemetry = pub
    for m in range(models):
        for k in range(5):
            ctl.answer(m, 0, (3 + k) * MS, exec_ns=3 * MS)
    ctl.advance(1_000_000_000)
    before = pub.last_snapshot
    longest = total = 0.0
    calls = 0
    while pub.last_snapshot is before:
        t = time.perf_counter()
        pub.maybe_publish(ctl.now)
        d = time.perf_counter() - t
        longest, total, calls = max(longest, d), total + d, calls + 1
    print(f"snapshot of {models} active models: {total * 1e3:.1f} ms in {calls} calls, "
          f"longest call {longest * 1e3:.2f} ms")
    pub.close()


def write_logs(d: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    t0 = 10**12
    t = t0 + np.sort(rng.integers(0, n // 1000 * 10**9, n))        # ~1000 requests/s
    lat = (rng.lognormal(np.log(8e6), 0.3, n)).astype(np.int64)
    status = np.where(rng.random(n) < 0.995, 0, 8)
    with open(d / "clockwork_request_log.tsv", "w") as f:
        f.write("\t".join(REQUEST_COLUMNS) + "\n")
        rows = np.column_stack([t, np.arange(n), status, np.zeros(n, int), rng.integers(0, 100, n),
                                np.zeros(n, int), lat, t - lat + 100 * MS, (lat <= 100 * MS).astype(int),
                                np.arange(n), np.arange(n), rng.random(n) < 0.01, np.ones(n, int),
                                np.zeros(n, int)])
        np.savetxt(f, rows, fmt="%d", delimiter="\t")
    m = n // 4
    ta = t0 + np.sort(rng.integers(0, n // 1000 * 10**9, m))
    exp = rng.integers(2 * MS, 10 * MS, m)
    with open(d / "clockwork_action_log.tsv", "w") as f:
        f.write("\t".join(ACTION_COLUMNS) + "\n")
        for i in range(m):
            f.write(f"{ta[i]}\t{i}\tInfer\t0\t0\t0\t{i % 100}\t4\t{exp[i]}\t{exp[i] - 20000}"
                    "\t0\t0\t0\t1980\t0\t0\t0\t0\t0\t0\t0\n")


def plot(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        write_logs(Path(d), n)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clockwork.telemetry.plot", d], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"cw plot on {n} requests + {n // 4} actions: {wall:.1f} s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=4000)
    ap.add_argument("--requests", type=int, default=1_000_000)
    args = ap.parse_args()
    hooks()
    snapshot(args.models)
    plot(args.requests)
