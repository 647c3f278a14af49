#!/usr/bin/env python3
"""Exec time per model and batch size on a GPU: p50, p99, p99/p50 (goal <= 1.02), from CUDA
events around the compiled function called with weights passed from device memory; also the
weights-load time. --write stores each model's measurements.json (what `cw profile model`
does) and --toml prints clockwork/conf/profiles entries.

  python tools/bench/gpu_exec.py [--zoo DIR] [--models ...] [--runs 200] [--write] [--toml F] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clockwork.model.commands import profile_toml
from clockwork.model.cuda import CudaBackend
from clockwork.model.format import load_spec, write_measurements
from benchutil import pct


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--models", default="mlp,resnet18,resnet34,resnet50,resnet101")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--write", action="store_true", help="write measurements.json into each model dir")
    ap.add_argument("--toml", default=None, help="write clockwork/conf/profiles entries to this file")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    backend = CudaBackend(16 << 20, 1, 16 << 20, 16 << 20)
    dev = backend.gpu_names()[0]
    report = {"device": dev, "runs": a.runs, "models": {}}
    toml = []
    print(f"## exec on {dev}, {a.runs} runs per batch size (CUDA events)\n")
    print("| model | batch | p50 ms | p99 ms | p99/p50 | items/s |")
    print("|---|---|---|---|---|---|")
    for name in a.models.split(","):
        spec = load_spec(Path(a.zoo) / name)
        hm = backend.load_host_model(spec)
        prof = backend.profile(hm, 0, a.runs)
        r = {"weights_load_p50_ns": pct(prof["load"], 50), "weights_size": spec.weights_size, "exec": {}}
        for b in spec.batch_sizes:
            p50, p99 = pct(prof[b], 50), pct(prof[b], 99)
            r["exec"][b] = {"p50_ns": p50, "p99_ns": p99, "ratio": p99 / p50}
            print(f"| {name} | {b} | {p50 / 1e6:.3f} | {p99 / 1e6:.3f} | {p99 / p50:.3f} | {b / (p50 / 1e9):.0f} |",
                  flush=True)
        report["models"][name] = r
        exec_ns = {b: r["exec"][b]["p50_ns"] for b in spec.batch_sizes}
        p99 = {b: r["exec"][b]["p99_ns"] for b in spec.batch_sizes}
        if a.write:
            write_measurements(spec.path, dev, r["weights_load_p50_ns"], exec_ns, p99)
        toml.append(profile_toml(spec, r["weights_load_p50_ns"], exec_ns, p99))
        hm.close()
    if a.toml:
        Path(a.toml).write_text("\n".join(toml))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
