#!/usr/bin/env python3
"""Faults under load: how fast the controller notices, and what the clients see meanwhile.

A LocalCluster with two emulated workers (one GPU each) serves one model while this process
sends Infers open loop at `--rate`. In turn: worker 0 is SIGKILLed, restarted, SIGSTOPped,
SIGCONTinued; then the controller is SIGKILLed and restarted. For each step the time until
the controller (or client) reacts is measured by watching the processes' output every
~2 ms, and the answers to requests sent during the step are counted by status. At the end
every request sent must have been answered (sent == answered, no client timeouts).

    python tools/bench/faults.py --rate 2000
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import OpenLoop  # noqa: E402

from clockwork.client.api import NO_ANSWER, Client, status_name  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0, help="about 2/3 of two GPUs' resnet50 capacity")
    ap.add_argument("--model", default="resnet50")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    with LocalCluster(gpus=1, workers=2, config_file=quick_config(3600)) as cluster:
        client = Client(cluster.address, log=lambda *_: None)
        mid, _, _ = client.load_model(args.model, copies=1)
        client.ls()
        gen = OpenLoop(client, mid, args.rate, 100_000_000, timeout_s=30)
        gen.run(2.0)

        def step(name, act, pattern, source="controller"):
            mark = len(cluster.output.get(source, []))
            before = Counter(gen.statuses)
            t0 = time.perf_counter()
            act()
            found = {}

            def tick(_):
                for line in cluster.output.get(source, [])[mark:]:
                    m = re.search(pattern, line)
                    if m:
                        found["t"] = time.perf_counter() - t0
                        found["line"] = line.strip()
                        return True
                return False

            gen.run(30.0, every_s=0.002, on_tick=tick)
            gen.run(0.5)                                   # the aftermath
            delta = gen.statuses - before
            rows.append((name, found.get("t"), found.get("line", "not seen"), delta))
            print(f"{name}: {found.get('t', float('nan')) * 1e3:.0f} ms -> {found.get('line')}", flush=True)

        w0 = lambda: cluster.worker_procs[0]                 # noqa: E731
        step("SIGKILL worker 0", lambda: w0().send_signal(signal.SIGKILL), r"Worker 0 .* lost")
        step("restart worker 0", lambda: cluster.start_worker(0), r"Worker 0 .* joined")
        step("SIGSTOP worker 0", lambda: w0().send_signal(signal.SIGSTOP), r"Worker 0 .* lost")
        step("SIGCONT worker 0", lambda: w0().send_signal(signal.SIGCONT), r"Worker 0 .* joined")
        gen.run(1.0)
        before = Counter(gen.statuses)
        n = client.outstanding
        t0 = time.perf_counter()
        cluster.controller.send_signal(signal.SIGKILL)
        while client.outstanding:
            client.poll(0.001)
        rows.append(("SIGKILL controller", time.perf_counter() - t0,
                     f"all {n} outstanding requests answered by the client", gen.statuses - before))
        cluster.controller.wait()
        t0 = time.perf_counter()
        cluster.start_controller()
        client2_ok = False
        while not client2_ok and time.perf_counter() - t0 < 60:
            try:
                mid, _, _ = client.load_model(args.model, copies=1)
                client2_ok = client.infer(mid).response.status == 0
            except Exception:
                time.sleep(0.05)
        rows.append(("restart controller", time.perf_counter() - t0,
                     "same Client reloaded the model and was served" if client2_ok else "FAILED", Counter()))
        left = client.drain(30)
        client.close()

    print("\n| fault | reaction (ms) | seen | answers received meanwhile (signal .. reaction + 0.5 s) |")
    print("|---|---|---|---|")
    for name, t, line, delta in rows:
        counts = ", ".join(f"{status_name(k)} {v}" for k, v in sorted(delta.items()))
        print(f"| {name} | {t * 1e3:.0f} | {line} | {counts} |" if t is not None else f"| {name} | - | {line} | {counts} |")
    print(f"\nsent {gen.sent}, answered {gen.answered}, outstanding {left}, "
          f"client timeouts {gen.statuses.get(NO_ANSWER, 0)}")


if __name__ == "__main__":
    main()
