#!/usr/bin/env python3
"""LoadWeights bandwidth for a model (default ResNet-50) against the pinned host->device copy
limit measured in the same run (goal: >= 90% of it).

The limit: one cudaMemcpyAsync of a large pinned buffer (and of 16 MiB chunks), CUDA events.
LoadWeights: real LoadWeights actions through the WorkerRuntime and the CUDA backend (weights
copied page by page from pinned host memory into weights-cache pages), the duration being the
one the worker reports (CUDA events), evicting between runs.

  python tools/bench/gpu_loadweights.py [--zoo DIR] [--model resnet50] [--runs 50] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtdriver import Driver  # noqa: E402

from clockwork.model.cuda import CudaBackend  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from benchutil import pct  # noqa: E402

PAGE = 16 << 20


def copy_limit(backend, nbytes, chunk, runs):
    """GB/s of pinned host -> device copies of `nbytes` in `chunk`-byte pieces (p50 of runs)."""
    cu, rt = backend.cu, backend.cu.rt
    g = backend._gpus[0]
    host = cu.check(rt.cudaHostAlloc(nbytes, rt.cudaHostAllocPortable), "host")
    dev = cu.check(rt.cudaMalloc(nbytes), "dev")
    e0, e1 = g.events.pop(), g.events.pop()
    times = []
    try:
        for _ in range(runs + 2):
            cu.check(rt.cudaEventRecord(e0, g.s_weights))
            for off in range(0, nbytes, chunk):
                cu.check(rt.cudaMemcpyAsync(dev + off, host + off, min(chunk, nbytes - off), cu.H2D,
                                            g.s_weights))
            cu.check(rt.cudaEventRecord(e1, g.s_weights))
            cu.check(rt.cudaEventSynchronize(e1))
            times.append(cu.check(rt.cudaEventElapsedTime(e0, e1)) * 1e6)
    finally:
        rt.cudaFreeHost(host)
        rt.cudaFree(dev)
        g.events += [e0, e1]
    t = pct(times[2:], 50)
    return nbytes / t   # bytes per ns == GB/s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    backend = CudaBackend(PAGE, 64, 64 << 20, 64 << 20)
    d = Driver(backend, Path(a.zoo), PAGE, 64)
    msg, _ = d.do(s.LoadModelFromDisk, model_id=0, path=a.model)
    assert isinstance(msg, s.LoadModelFromDiskResult), msg
    size = msg.models[0].weights_size
    limits = {f"{c >> 20} MiB chunks": copy_limit(backend, 256 << 20, c, 20)
              for c in (256 << 20, 16 << 20)}
    limits["model-sized, 1 copy"] = copy_limit(backend, size, size, 20)
    durs = []
    for _ in range(a.runs):
        msg, _ = d.do(s.LoadWeights, model_id=0, gpu_id=0)
        assert isinstance(msg, s.LoadWeightsResult), msg
        durs.append(msg.duration)
        d.do(s.EvictWeights, model_id=0, gpu_id=0)
    p50 = pct(durs, 50)
    bw = size / p50
    limit = max(limits.values())
    r = {"device": backend.gpu_names()[0], "model": a.model, "weights_bytes": size,
         "pages": msg_pages(d), "loadweights_p50_ms": p50 / 1e6, "loadweights_p99_ms": pct(durs, 99) / 1e6,
         "loadweights_GBps": bw, "pinned_limit_GBps": limits, "fraction_of_limit": bw / limit}
    print(f"{a.model}: {size / 1e6:.1f} MB in {r['pages']} pages; LoadWeights p50 {p50 / 1e6:.3f} ms "
          f"(p99 {r['loadweights_p99_ms']:.3f}) = {bw:.1f} GB/s; pinned copy limit "
          + ", ".join(f"{k}: {v:.1f} GB/s" for k, v in limits.items())
          + f"; LoadWeights at {100 * bw / limit:.0f}% of the best")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))


def msg_pages(d):
    return d.rt.models[0].kind.info.num_pages


if __name__ == "__main__":
    sys.exit(main())
