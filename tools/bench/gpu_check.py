#!/usr/bin/env python3
"""Correctness of the real CUDA worker path on a GPU (run on the H200 from a worker bundle).

Through the same WorkerRuntime the worker uses, with the CUDA backend: for each model, outputs
of padded and unpadded batches against the numpy float64 reference; evict, reload into other
pages, identical outputs; an Infer on evicted weights fails with WEIGHTS_NOT_PRESENT; then a
series of b1 Infers through the runtime for exec/copy timings (CUDA events) and SM clocks.

  python tools/bench/gpu_check.py [--zoo DIR] [--models mlp,resnet18,resnet50] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtdriver import Driver  # noqa: E402

from clockwork.model import nets  # noqa: E402
from clockwork.model.cuda import CudaBackend  # noqa: E402
from clockwork.model.format import load_spec  # noqa: E402
from clockwork.status import Status  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from benchutil import pct  # noqa: E402

PAGE = 16 << 20
TOLERANCE = {"float32": 1e-3, "float16": 1e-2}   # max |out - ref| / max |ref| vs float64 numpy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--models", default="mlp,tinycnn,resnet18,resnet34,resnet50,resnet101")
    ap.add_argument("--infers", type=int, default=200, help="b1 Infers timed per model")
    ap.add_argument("--json", default=None)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"], help="cpu: try it without a GPU")
    a = ap.parse_args()
    zoo = Path(a.zoo)
    t0 = time.time()
    if a.backend == "cpu":
        from clockwork.model.cpu import CpuBackend
        backend = CpuBackend(PAGE, 64, 256 << 20, 256 << 20)
    else:
        backend = CudaBackend(PAGE, 64, 256 << 20, 256 << 20)
    print(f"backend up in {time.time() - t0:.1f} s: {backend.gpu_names()}", flush=True)
    d = Driver(backend, zoo, PAGE, 64, 256 << 20, 256 << 20)
    report = {"device": backend.gpu_names()[0], "models": {}}
    ok_all = True
    for i, name in enumerate(a.models.split(",")):
        spec = load_spec(zoo / name)
        net = nets.for_model(json.loads((spec.path / "model.json").read_text()))
        mid = 100 * i
        t0 = time.time()
        msg, _ = d.do(s.LoadModelFromDisk, model_id=mid, path=name, copies=2)
        assert isinstance(msg, s.LoadModelFromDiskResult), msg
        info = msg.models[0]
        load_s = time.time() - t0
        msg, _ = d.do(s.LoadWeights, model_id=mid, gpu_id=0)
        assert isinstance(msg, s.LoadWeightsResult), msg
        weights = net.init_weights(spec_seed(spec))
        rng = np.random.default_rng(11)
        errs = {}
        outs = {}
        for b in ((1, 3, 16) if name in ("mlp", "tinycnn") else (1, 3)):
            x = rng.standard_normal((b, *net.input_shape)).astype(np.float32)
            msg, frames = d.infer(mid, x)
            assert isinstance(msg, s.InferResult), msg
            out = np.frombuffer(frames[0], np.float32).reshape(b, *net.output_shape)
            ref = nets.reference(net, x, weights)
            errs[b] = float(np.abs(out - ref).max() / np.abs(ref).max())
            outs[b] = (x, frames[0])
        x1, before = outs[1]
        # evict; infer must fail; reload into other pages; identical outputs
        assert isinstance(d.do(s.LoadWeights, model_id=mid + 1, gpu_id=0)[0], s.LoadWeightsResult)
        pages0 = list(d.rt.gpus[0].resident[mid].pages)
        assert isinstance(d.do(s.EvictWeights, model_id=mid, gpu_id=0)[0], s.EvictWeightsResult)
        msg, frames = d.infer(mid, x1)
        evicted_status = Status(msg.status).name if isinstance(msg, s.ErrorResult) else "SUCCEEDED?!"
        blocker = d.rt.gpus[0].mem.pages.alloc(len(pages0))
        assert isinstance(d.do(s.LoadWeights, model_id=mid, gpu_id=0)[0], s.LoadWeightsResult)
        pages1 = list(d.rt.gpus[0].resident[mid].pages)
        d.rt.gpus[0].mem.pages.release(blocker)
        after = d.infer(mid, x1)[1][0]
        copy = d.infer(mid + 1, x1)[1][0]
        reload_same = after == before and copy == before
        # timings through the runtime (b1)
        ex, cin, cout, wall, clk = [], [], [], [], []
        for _ in range(a.infers):
            t = time.perf_counter_ns()
            msg, _ = d.infer(mid, x1)
            wall.append(time.perf_counter_ns() - t)
            ex.append(msg.exec_duration)
            cin.append(msg.copy_input_end - msg.copy_input_begin)
            cout.append(msg.copy_output_end - msg.copy_output_begin)
            clk.append((msg.gpu_clock_before, msg.gpu_clock))
        ok = max(errs.values()) < TOLERANCE[spec.dtype] and evicted_status == "WEIGHTS_NOT_PRESENT" and reload_same \
            and pages0 != pages1
        ok_all &= ok
        r = {"ok": ok, "dtype": spec.dtype, "rel_err": errs, "evicted_infer": evicted_status, "pages_before": pages0,
             "pages_after": pages1, "reload_identical": reload_same, "load_model_s": round(load_s, 2),
             "batch_sizes": info.batch_sizes, "exec_ns_at_load": info.exec_ns,
             "weights_load_ns_at_load": info.weights_load_ns,
             "runtime_b1": {"exec_p50_ms": pct(ex, 50) / 1e6, "exec_p99_ms": pct(ex, 99) / 1e6,
                            "exec_p99_p50": pct(ex, 99) / pct(ex, 50),
                            "copy_in_p50_us": pct(cin, 50) / 1e3, "copy_out_p50_us": pct(cout, 50) / 1e3,
                            "infer_wall_p50_ms": pct(wall, 50) / 1e6, "infer_wall_p99_ms": pct(wall, 99) / 1e6,
                            "sm_clock_mhz_min": min(min(c) for c in clk),
                            "sm_clock_mhz_max": max(max(c) for c in clk)}}
        report["models"][name] = r
        print(f"{name} ({spec.dtype}): {'OK' if ok else 'FAILED'} rel_err {errs} evicted->{evicted_status} "
              f"reload identical {reload_same} pages {pages0}->{pages1}; runtime b1 exec "
              f"p50 {r['runtime_b1']['exec_p50_ms']:.3f} ms p99 {r['runtime_b1']['exec_p99_ms']:.3f} ms, "
              f"infer wall p50 {r['runtime_b1']['infer_wall_p50_ms']:.3f} ms, clocks "
              f"{r['runtime_b1']['sm_clock_mhz_min']}-{r['runtime_b1']['sm_clock_mhz_max']} MHz", flush=True)
        for m in (mid, mid + 1):
            d.do(s.EvictWeights, model_id=m, gpu_id=0)
    report["ok"] = ok_all
    errors = getattr(backend, "graph_errors", [])
    if errors:                     # CUDA-graph mode: batch sizes that fell back to direct calls
        print("graph captures that failed:", *errors, sep="\n  ")
    report["graphs"] = getattr(backend, "graphs", False)
    report["graph_errors"] = errors
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    print("ALL OK" if ok_all else "SOME CHECKS FAILED")
    return 0 if ok_all else 1


def spec_seed(spec) -> int:
    meta = json.loads((spec.path / "model.json").read_text())
    return int(meta.get("seed", 0))


if __name__ == "__main__":
    sys.exit(main())
