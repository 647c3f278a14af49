#!/usr/bin/env python3
"""ResNet-50 with convs served by cuDNN (`cw zoo build --conv cudnn`): the library's plan modes
side by side, each conv's cuDNN plan, and where the GPU time goes (kernels by total time,
torch.profiler over our direct calls and over PyTorch's fp16 channels_last ResNet-50).

  python tools/bench/gpu_cudnn.py [--zoo DIR] [--model resnet50] [--runs 200] [--json F]

Modes (CLOCKWORK_CUDNN_MODE, read when a plan is made): graph (the default; cuDNN graph API:
conv -> +bias -> +z -> relu as one operation graph, its execution plan built once per shape),
fused (legacy API: one cudnnConvolutionBiasActivationForward per conv, relu fused:
IMPLICIT_PRECOMP_GEMM) and heuristic (legacy API, cuDNN's first heuristic algorithm, relu as
a second call). --modes picks some. Timings are CUDA-event p50 (p99) of `runs` execs,
direct calls and CUDA graph replays (the worker's CLOCKWORK_CUDA_GRAPHS mode).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchutil import pct

MODES = ("graph", "fused", "heuristic")


def top_kernels(prof, n=14) -> list[tuple[str, int, float]]:
    """(kernel name, calls, total ms) of the `n` kernels with the most GPU time."""
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if t:
            rows.append((e.key[:90], e.count, t / 1e3))
    rows.sort(key=lambda r: -r[2])
    return rows[:n]


def profile_ours(backend, hm, batch, runs):
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        backend.profile(hm, 0, runs, [batch])
        torch.cuda.synchronize()
    return top_kernels(prof)


def profile_torch(batch, runs):
    import torch
    import torchvision
    from torch.profiler import ProfilerActivity, profile
    torch.backends.cudnn.benchmark = True
    m = torchvision.models.resnet50(weights=None).cuda().eval().half().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").half().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(10):
            m(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                m(x)
            torch.cuda.synchronize()
    return top_kernels(prof)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--profile-runs", type=int, default=20)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--kernels", action="store_true", help="also GPU time per kernel (torch.profiler)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import tvm_ffi
    from clockwork.model import cudnn_conv
    from clockwork.model.cuda import CudaBackend
    from clockwork.model.format import load_spec
    spec = load_spec(Path(a.zoo) / a.model)
    report = {"model": a.model, "modes": {}, "plans": {}, "kernels": {}}
    print(f"{a.model}: p50 (p99) ms of {a.runs} execs, CUDA events\n")
    print("| mode | b1 direct | b16 direct | b1 graph | b16 graph |")
    print("|---|---|---|---|---|")
    modes = a.modes.split(",")
    for mode in modes:
        os.environ["CLOCKWORK_CUDNN_MODE"] = mode
        row = {}
        for graphs in (False, True):
            backend = CudaBackend(16 << 20, 1, 16 << 20, 16 << 20, graphs=graphs)
            cudnn_conv.load()                      # (once) so that plans can be dropped
            tvm_ffi.get_global_func("clockwork.cudnn.reset")()
            hm = backend.load_host_model(spec)
            prof = backend.profile(hm, 0, a.runs, [1, 16])
            for b in (1, 16):
                row[f"b{b}{' graph' if graphs else ''}"] = (pct(prof[b], 50) / 1e6, pct(prof[b], 99) / 1e6)
            if not graphs:
                report["plans"][mode] = tvm_ffi.get_global_func("clockwork.cudnn.plans")()
                if a.kernels and mode == modes[0]:
                    for b in (1, 16):
                        report["kernels"][f"ours b{b}"] = profile_ours(backend, hm, b, a.profile_runs)
            hm.close()
            backend.close()
        report["modes"][mode] = row
        print(f"| {mode} | " + " | ".join(f"{row[k][0]:.3f} ({row[k][1]:.3f})"
                                         for k in ("b1", "b16", "b1 graph", "b16 graph")) + " |", flush=True)
    os.environ.pop("CLOCKWORK_CUDNN_MODE")
    for b in (1, 16) if a.kernels else ():
        report["kernels"][f"torch b{b}"] = profile_torch(b, a.profile_runs)
    for mode, text in report["plans"].items():
        print(f"\nplans ({mode}):\n{text}")
    for what, rows in report["kernels"].items():
        print(f"\nGPU time by kernel, {what}, {a.profile_runs} runs (ms total, calls):")
        for name, calls, ms in rows:
            print(f"  {ms:8.3f} {calls:6d}  {name}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
