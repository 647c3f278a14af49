#!/usr/bin/env python3
"""Several GPUs of one worker: one model's LoadWeights to every GPU at once, and whether the
GPUs compute the same outputs.

Through the WorkerRuntime (one backend over all visible GPUs, as `cw worker` runs): the model
is loaded from disk once (one pinned host copy), then LoadWeights is sent to every GPU before
any completes, `--runs` times (evicting between). Per GPU: the worker-reported duration (CUDA
events) as GB/s; all at once: G x weights bytes over the host wall time from the first send to
the last result. Beside them the pinned host->device copy limit, per GPU alone and on every
GPU at once (gpu_loadweights.copy_limit's copy, enqueued on every GPU, then all awaited).
Outputs: one Infer of the same input on every GPU; the bytes must be identical.

  python tools/bench/gpu_multi_load.py [--zoo DIR] [--model resnet50] [--runs 20] [--json F]
  python tools/bench/gpu_multi_load.py --backend emulated --gpus 4   # the driving code, no GPU
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import pct  # noqa: E402

from clockwork.model.backend import backend_class  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from clockwork.worker.runtime import WorkerRuntime  # noqa: E402

PAGE = 16 << 20
PAGES = 64


class Runner:
    """Submit several actions at once; spin the runtime until all have answered."""

    def __init__(self, backend, zoo):
        self.results = {}
        self.rt = WorkerRuntime(backend, zoo, self._send, PAGE, PAGES, 64 << 20, 64 << 20)
        self.ids = iter(range(1, 1 << 40))

    def _send(self, reply_to, msg, frames):
        self.results[msg.action_id] = (msg, [bytes(f) for f in frames], time.monotonic_ns())

    def all(self, actions, timeout_s=120):
        """actions: [(cls, data, kw)]; returns [(msg, frames, host time answered)] in order."""
        ids = []
        for cls, data, kw in actions:
            aid = next(self.ids)
            now = time.monotonic_ns()
            self.rt.handle(cls(action_id=aid, earliest=0, latest=now + int(timeout_s * 1e9), **kw),
                           list(data), None, now)
            ids.append(aid)
        end = time.monotonic() + timeout_s
        while not all(a in self.results for a in ids):
            if time.monotonic() > end:
                raise TimeoutError("actions did not complete")
            now = time.monotonic_ns()
            if self.rt.waiting_on_backend():
                self.rt.poll_backend(now)
            self.rt.advance(now)
            t = self.rt.next_time()
            if t is not None and not self.rt.waiting_on_backend() and t > now:
                time.sleep(min(0.001, (t - now) / 1e9))
        return [self.results.pop(a) for a in ids]


def copy_limits(backend, nbytes, runs=10):
    """GB/s of one pinned host->device copy of `nbytes`: each GPU alone, then every GPU at once
    (host wall time from enqueueing the first to the last one finishing)."""
    cu, rt = backend.cu, backend.cu.rt
    host = cu.check(rt.cudaHostAlloc(nbytes, rt.cudaHostAllocPortable), "host")
    devs = []
    try:
        for g in backend._gpus:
            cu.check(rt.cudaSetDevice(g.index))
            devs.append(cu.check(rt.cudaMalloc(nbytes), "dev"))

        def copy(gs):
            t0 = time.monotonic_ns()
            for g in gs:
                cu.check(rt.cudaSetDevice(g.index))
                cu.check(rt.cudaMemcpyAsync(devs[backend._gpus.index(g)], host, nbytes, cu.H2D,
                                            g.s_weights))
            for g in gs:
                cu.check(rt.cudaStreamSynchronize(g.s_weights))
            return time.monotonic_ns() - t0
        alone = [nbytes / pct([copy([g]) for _ in range(runs)], 50) for g in backend._gpus]
        together = len(devs) * nbytes / pct([copy(backend._gpus) for _ in range(runs)], 50)
    finally:
        rt.cudaFreeHost(host)
        for p in devs:
            rt.cudaFree(p)
    return alone, together


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "emulated"])
    ap.add_argument("--gpus", type=int, default=2, help="emulated GPUs (--backend emulated)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cls = backend_class(a.backend)
    if a.backend == "emulated":
        backend = cls(a.gpus, PAGE, PAGES, 64 << 20, 64 << 20)
    else:
        backend = cls(PAGE, PAGES, 64 << 20, 64 << 20)
    G = len(backend.gpu_names())
    run = Runner(backend, Path(a.zoo))
    (msg, _, _), = run.all([(s.LoadModelFromDisk, (), dict(model_id=0, path=a.model, copies=1))])
    if not isinstance(msg, s.LoadModelFromDiskResult):
        sys.exit(f"{a.model}: {msg}")
    size = msg.models[0].weights_size
    per_gpu = [[] for _ in range(G)]
    total = []
    for _ in range(a.runs):
        t0 = time.monotonic_ns()
        res = run.all([(s.LoadWeights, (), dict(model_id=0, gpu_id=g)) for g in range(G)])
        for g, (m, _, _) in enumerate(res):
            if not isinstance(m, s.LoadWeightsResult):
                sys.exit(f"LoadWeights on GPU {g}: {m}")
            per_gpu[g].append(m.duration)
        total.append(G * size / (max(t for _, _, t in res) - t0))
        run.all([(s.EvictWeights, (), dict(model_id=0, gpu_id=g)) for g in range(G)])
    run.all([(s.LoadWeights, (), dict(model_id=0, gpu_id=g)) for g in range(G)])
    info = run.rt.models[0].kind.info
    x = np.random.default_rng(0).standard_normal(info.input_size // 4, np.float32).tobytes()
    outs = run.all([(s.Infer, [x], dict(model_id=0, gpu_id=g, batch_size=1)) for g in range(G)])
    digests = [hashlib.sha256(b"".join(f)).hexdigest()[:16] if isinstance(m, s.InferResult)
               else f"failed: {m}" for m, f, _ in outs]
    r = {"backend": a.backend, "gpus": G, "devices": backend.gpu_names(), "model": a.model,
         "weights_bytes": size, "runs": a.runs,
         "loadweights_GBps_per_gpu": [size / pct(d, 50) for d in per_gpu],
         "loadweights_GBps_all_at_once": pct(total, 50),
         "output_digests": digests, "outputs_identical": len(set(digests)) == 1}
    if a.backend == "cuda":
        alone, together = copy_limits(backend, size)
        r["pinned_limit_GBps_per_gpu_alone"] = alone
        r["pinned_limit_GBps_all_at_once"] = together
    print(json.dumps(r, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    backend.close()
    return 0 if r["outputs_identical"] and not digests[0].startswith("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
