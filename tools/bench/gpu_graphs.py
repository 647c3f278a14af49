#!/usr/bin/env python3
"""Would CUDA graphs pay? Each model's compiled function called directly (as the worker does)
beside a CUDA graph of the same call replayed, at fixed weight addresses.

For every model and batch size asked: capture one call of the TVM function on the exec stream
(cudaStreamBeginCapture / EndCapture, TVM's pools already warm so nothing is allocated while
capturing), instantiate, replay; exec p50/p99 from CUDA events for both, and whether the graph's
output bytes equal the direct call's. The graph bakes in the weights' addresses: serving from
graphs needs weights at fixed virtual addresses (CUDA VM API), which this does not build.

  python tools/bench/gpu_graphs.py [--zoo DIR] [--models mlp,resnet50] [--batches 1,16] [--runs 200] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from clockwork.model import tvm_runtime as tr
from clockwork.model.cuda import CudaBackend
from clockwork.model.format import load_spec
from benchutil import pct


def measure(backend, hm, b, runs):
    cu, rt = backend.cu, backend.cu.rt
    g = backend._gpus[0]
    n_pages = len(hm.page_slices)
    scratch = cu.check(rt.cudaMalloc(n_pages * backend.page_size), "weights")
    xin = cu.check(rt.cudaMalloc(b * hm.input_size), "input")
    e0, e1 = g.events.pop(), g.events.pop()
    try:
        pages = list(range(n_pages))
        backend._copy_pages(g, hm, pages, scratch)
        cu.check(rt.cudaStreamSynchronize(g.s_weights), "sync")
        rng = np.random.default_rng(1)
        x_host = rng.standard_normal((b, *hm.spec.input_shape)).astype(np.float32)
        cu.check(rt.cudaMemcpy(xin, x_host.ctypes.data, x_host.nbytes, cu.H2D), "input copy")
        views = tr.weight_views(scratch, backend.page_size, pages, hm.spec.tensors, g.dev)
        x = tr.raw_view(xin, (b, *hm.spec.input_shape), hm.spec.input_dtype, g.dev)
        f = hm.compiled[0].function(b)

        def timed(launch):
            out = []
            for _ in range(runs):
                cu.check(rt.cudaEventRecord(e0, g.s_exec), "event")
                launch()
                cu.check(rt.cudaEventRecord(e1, g.s_exec), "event")
                cu.check(rt.cudaEventSynchronize(e1), "sync")
                out.append(int(cu.check(rt.cudaEventElapsedTime(e0, e1), "elapsed") * 1e6))
            return out

        for _ in range(3):
            direct_out = f(x, *views)
        cu.check(rt.cudaStreamSynchronize(g.s_exec), "sync")
        direct_bytes = direct_out.numpy().tobytes()
        direct = timed(lambda: f(x, *views))
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed
        cu.check(rt.cudaStreamBeginCapture(g.s_exec, mode), "begin capture")
        graph_out = f(x, *views)
        graph = cu.check(rt.cudaStreamEndCapture(g.s_exec), "end capture")
        gexec = cu.check(rt.cudaGraphInstantiate(graph, 0), "instantiate")
        nodes = rt.cudaGraphGetNodes(graph, 0)[-1]         # (err, [nodes], count)
        cu.check(rt.cudaMemsetAsync(graph_out.data_ptr(), 0, len(direct_bytes), g.s_exec), "clear")
        cu.check(rt.cudaGraphLaunch(gexec, g.s_exec), "launch")
        cu.check(rt.cudaStreamSynchronize(g.s_exec), "sync")
        same = graph_out.numpy().tobytes() == direct_bytes
        replay = timed(lambda: rt.cudaGraphLaunch(gexec, g.s_exec))
        rt.cudaGraphExecDestroy(gexec)
        rt.cudaGraphDestroy(graph)
        return {"nodes": int(nodes), "identical": same,
                "direct_p50_ms": pct(direct, 50) / 1e6, "direct_p99_ms": pct(direct, 99) / 1e6,
                "graph_p50_ms": pct(replay, 50) / 1e6, "graph_p99_ms": pct(replay, 99) / 1e6}
    finally:
        cu.check(rt.cudaStreamSynchronize(g.s_exec), "sync")
        rt.cudaFree(scratch)
        rt.cudaFree(xin)
        g.events += [e0, e1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--models", default="mlp,tinycnn,resnet18,resnet34,resnet50,resnet101")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    backend = CudaBackend(16 << 20, 1, 16 << 20, 16 << 20)
    report = {"device": backend.gpu_names()[0], "models": {}}
    print(f"## direct call vs CUDA graph replay on {report['device']}, {a.runs} runs (CUDA events)\n")
    print("| model | batch | kernels | direct p50 ms | direct p99/p50 | graph p50 ms | graph p99/p50 "
          "| graph/direct | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        hm = backend.load_host_model(load_spec(Path(a.zoo) / name))
        report["models"][name] = {}
        for b in (int(v) for v in a.batches.split(",")):
            try:
                r = measure(backend, hm, b, a.runs)
            except Exception as e:       # report and go on: this is an experiment
                print(f"| {name} | {b} | capture failed: {type(e).__name__}: {e} |", flush=True)
                report["models"][name][b] = {"error": str(e)}
                continue
            report["models"][name][b] = r
            print(f"| {name} | {b} | {r['nodes']} | {r['direct_p50_ms']:.3f} | "
                  f"{r['direct_p99_ms'] / r['direct_p50_ms']:.3f} | {r['graph_p50_ms']:.3f} | "
                  f"{r['graph_p99_ms'] / r['graph_p50_ms']:.3f} | "
                  f"{r['graph_p50_ms'] / r['direct_p50_ms']:.2f} | {r['identical']} |", flush=True)
        hm.close()
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
