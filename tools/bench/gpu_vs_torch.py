#!/usr/bin/env python3
"""ResNet-50 b1 and b16 exec time: our TVM-compiled model (CUDA events, weights passed from
device memory) beside PyTorch's torchvision ResNet-50 on the same GPU, as a ratio.

PyTorch variants, all with random weights (architecture only; time does not depend on values):
fp32 with TF32 off (the same arithmetic as ours), fp32 with TF32 (PyTorch's default for convs),
each eager and as a CUDA graph replay; cudnn.benchmark on. Timed with CUDA events, p50 of runs.

  python tools/bench/gpu_vs_torch.py [--zoo DIR] [--runs 200] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchutil import pct


def torch_times(batch, runs, tf32, graph):
    import torch
    import torchvision
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    model = torchvision.models.resnet50(weights=None).cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from clockwork.model.cuda import CudaBackend
    from clockwork.model.format import load_spec
    backend = CudaBackend(16 << 20, 1, 16 << 20, 16 << 20)
    hm = backend.load_host_model(load_spec(Path(a.zoo) / "resnet50"))
    prof = backend.profile(hm, 0, a.runs, [1, 16])
    ours = {b: (pct(prof[b], 50), pct(prof[b], 99)) for b in (1, 16)}
    hm.close()
    r = {"device": backend.gpu_names()[0], "ours_ms": {b: v[0] / 1e6 for b, v in ours.items()}, "torch": {}}
    print(f"ResNet-50 on {r['device']}: ours (TVM 0.27 dlight, fp32) b1 {ours[1][0] / 1e6:.3f} ms, "
          f"b16 {ours[16][0] / 1e6:.3f} ms")
    print("| PyTorch variant | b1 ms | ours/torch b1 | b16 ms | ours/torch b16 |")
    print("|---|---|---|---|---|")
    import torch
    for tf32 in (False, True):
        for graph in (False, True):
            name = f"fp32{' +TF32' if tf32 else ' (no TF32)'}, {'CUDA graph' if graph else 'eager'}"
            t = {b: torch_times(b, a.runs, tf32, graph) for b in (1, 16)}
            r["torch"][name] = {b: {"p50_ms": t[b][0] / 1e6, "p99_ms": t[b][1] / 1e6,
                                    "ours_over_torch": ours[b][0] / t[b][0]} for b in (1, 16)}
            print(f"| {name} | {t[1][0] / 1e6:.3f} | {ours[1][0] / t[1][0]:.2f} | {t[16][0] / 1e6:.3f} | "
                  f"{ours[16][0] / t[16][0]:.2f} |", flush=True)
    r["torch_version"] = torch.__version__
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    sys.exit(main())
