#!/usr/bin/env python3
"""ResNet-50 b1 and b16 exec time: our TVM-compiled model(s) (CUDA events, weights passed from
device memory) beside PyTorch's torchvision ResNet-50 on the same GPU, as ratios.

PyTorch variants, all with random weights (architecture only; time does not depend on values),
cudnn.benchmark on, timed with CUDA events, p50 (and p99) of runs: fp32 with TF32 off (the same
arithmetic as a float32 zoo), fp32 with TF32, each eager and as a CUDA graph replay; fp16 NCHW
and fp16 channels_last as CUDA graphs. The last one is the anchor (the fastest way PyTorch runs
ResNet-50 here): every zoo is also reported as ours/anchor.

  python tools/bench/gpu_vs_torch.py [--zoo DIR] [--also DIR ...] [--runs 200] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchutil import pct

ANCHOR = "fp16 channels_last, CUDA graph"


def torch_times(batch, runs, tf32, graph, half=False, channels_last=False):
    import torch
    import torchvision
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    model = torchvision.models.resnet50(weights=None).cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    if half:
        model, x = model.half(), x.half()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    s = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(s):
        for _ in range(10):
            model(x)
        torch.cuda.synchronize()
        fn = lambda: model(x)  # noqa: E731
        if graph:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=s):
                model(x)
            fn = g.replay
        times = []
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(runs):
            e0.record(s)
            fn()
            e1.record(s)
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1e6)
    return pct(times, 50), pct(times, 99)


def ours_times(backend, zoo, runs):
    from clockwork.model.format import load_spec
    spec = load_spec(Path(zoo) / "resnet50")
    meta = json.loads((spec.path / "model.json").read_text())
    label = (f"ours, TVM {meta.get('dtype', 'float32')} {meta.get('layout', 'NCHW')}, convs by "
             f"{meta.get('conv', 'tvm')}"
             f"{', CUDA graph' if backend.graphs else ''} ({zoo})")
    hm = backend.load_host_model(spec)
    prof = backend.profile(hm, 0, runs, [1, 16])
    hm.close()
    return label, {b: (pct(prof[b], 50), pct(prof[b], 99)) for b in (1, 16)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--also", action="append", default=[], help="another zoo to compare (repeatable)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from clockwork.model.cuda import CudaBackend
    backend = CudaBackend(16 << 20, 1, 16 << 20, 16 << 20, graphs=False)
    ours = dict(ours_times(backend, z, a.runs) for z in [a.zoo, *a.also])
    device = backend.gpu_names()[0]
    backend.close()
    backend = CudaBackend(16 << 20, 1, 16 << 20, 16 << 20, graphs=True)  # as the worker
    ours.update([ours_times(backend, a.zoo, a.runs)])            # runs with CLOCKWORK_CUDA_GRAPHS=1
    backend.close()
    r = {"device": device, "ours": {}, "torch": {}}
    variants = [(f"fp32{' +TF32' if tf32 else ' (no TF32)'}, {'CUDA graph' if graph else 'eager'}",
                 dict(tf32=tf32, graph=graph)) for tf32 in (False, True) for graph in (False, True)]
    variants += [("fp16 NCHW, CUDA graph", dict(tf32=True, graph=True, half=True)),
                  (ANCHOR, dict(tf32=True, graph=True, half=True, channels_last=True))]
    print(f"ResNet-50 on {r['device']}, p50 (p99) of {a.runs} runs, CUDA events\n")
    print("| what | b1 ms | b16 ms |")
    print("|---|---|---|")
    torch_t = {}
    for name, kw in variants:
        t = torch_t[name] = {b: torch_times(b, a.runs, **kw) for b in (1, 16)}
        r["torch"][name] = {b: {"p50_ms": t[b][0] / 1e6, "p99_ms": t[b][1] / 1e6} for b in (1, 16)}
        print(f"| PyTorch {name} | {t[1][0] / 1e6:.3f} ({t[1][1] / 1e6:.3f}) | "
              f"{t[16][0] / 1e6:.3f} ({t[16][1] / 1e6:.3f}) |", flush=True)
    anchor = torch_t[ANCHOR]
    for label, t in ours.items():
        r["ours"][label] = {b: {"p50_ms": t[b][0] / 1e6, "p99_ms": t[b][1] / 1e6,
                                "over_anchor": t[b][0] / anchor[b][0]} for b in (1, 16)}
        print(f"| {label} | {t[1][0] / 1e6:.3f} ({t[1][1] / 1e6:.3f}) | "
              f"{t[16][0] / 1e6:.3f} ({t[16][1] / 1e6:.3f}) |")
    print(f"\nours / anchor ({ANCHOR}), p50:")
    for label, t in ours.items():
        print(f"  {label}: b1 {t[1][0] / anchor[1][0]:.2f}, b16 {t[16][0] / anchor[16][0]:.2f}")
    import torch
    r["torch_version"] = torch.__version__
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    sys.exit(main())
