#!/usr/bin/env python3
"""The imported ONNX zoo (`cw zoo import --onnx-zoo`) on a GPU: per model, outputs through the
worker runtime (CUDA backend) against onnxruntime on the same graph and weights, at batch 1 and
a padded batch 3; exec p50/p99 per batch size (CUDA events); weights MB, pages, LoadWeights
time and GB/s; and, for the architectures torchvision also has, PyTorch fp16 as a CUDA graph
(random weights: time does not depend on values) at b1 and b16.

onnxruntime runs graph.onnx (the imported graph, weights as inputs) fed from weights.bin
through the model's tensor table, so the check covers the page layout too. --toml writes
conf/profiles entries (exec p50/p99, weights load) for `cw zoo emulated`.

  python tools/bench/onnx_zoo.py --zoo DIR [--models a,b] [--runs 100] [--json F] [--toml F] [--no-torch]
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
from benchutil import pct  # noqa: E402
from rtdriver import Driver  # noqa: E402

from clockwork.model.commands import profile_toml  # noqa: E402
from clockwork.model.format import load_spec  # noqa: E402
from clockwork.model.onnx_import import GRAPH_FILE, ONNX_ZOO, sample_input  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402

TORCHVISION = {"alexnet": "alexnet", "densenet121": "densenet121", "inception_v1": "googlenet",
               "resnet50_onnx": "resnet50", "shufflenet": "shufflenet_v2_x1_0",
               "squeezenet": "squeezenet1_0", "vgg19": "vgg19"}


def onnxruntime_outputs(spec, x):
    """onnxruntime (CPU) on graph.onnx with the weights read from weights.bin by the tensor table."""
    import onnxruntime as ort
    meta = json.loads((spec.path / "model.json").read_text())
    blob = np.fromfile(spec.path / spec.weights_file, np.uint8)
    feeds = {meta["input"]["name"]: x}
    for t in spec.tensors:
        start = spec.pages[t.page][0] + t.offset
        w = blob[start:start + t.nbytes].view(t.dtype).reshape(t.shape)
        feeds[t.name] = w.astype(np.float32) if t.dtype == "float16" else w   # graph.onnx is fp32
    sess = ort.InferenceSession(str(spec.path / GRAPH_FILE), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def torch_fp16_graph(arch, batch, runs):
    """p50, p99 ns of a torchvision model in fp16 replayed as a CUDA graph."""
    import torch
    import torchvision
    torch.backends.cudnn.benchmark = True
    kw = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = getattr(torchvision.models, arch)(weights=None, **kw).cuda().half().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.half)
    st = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(st):
        for _ in range(10):
            model(x)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=st):
            model(x)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(runs):
            e0.record(st)
            g.replay()
            e1.record(st)
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1e6)
    return pct(times, 50), pct(times, 99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=os.environ.get("CLOCKWORK_MODEL_DIR", "zoo"))
    ap.add_argument("--models", default=",".join(ONNX_ZOO))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--json", default=None)
    ap.add_argument("--toml", default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"], help="cpu: try it without a GPU")
    a = ap.parse_args()
    zoo = Path(a.zoo)
    names = [n for n in a.models.split(",") if (zoo / n / "weights.bin").exists()]
    page = load_spec(zoo / names[0]).page_size
    pages = max(load_spec(zoo / n).num_pages(page) for n in names) + 1
    if a.backend == "cpu":
        from clockwork.model.cpu import CpuBackend as Backend
    else:
        from clockwork.model.cuda import CudaBackend as Backend
    backend = Backend(page, pages, 256 << 20, 256 << 20)
    d = Driver(backend, zoo, page, pages, 256 << 20, 256 << 20)
    dev = backend.gpu_names()[0]
    report = {"device": dev, "runs": a.runs, "models": {}}
    toml = []
    rows = []
    for i, name in enumerate(names):
        spec = load_spec(zoo / name)
        r = {"weights_mb": spec.weights_size / 1e6, "pages": len(spec.pages)}
        t0 = time.time()
        msg, _ = d.do(s.LoadModelFromDisk, model_id=i, path=name, max_exec_ns=10**12, timeout_s=600)
        assert isinstance(msg, s.LoadModelFromDiskResult), msg
        r["load_model_s"] = time.time() - t0
        msg, _ = d.do(s.LoadWeights, model_id=i, gpu_id=0)
        assert isinstance(msg, s.LoadWeightsResult), msg
        r["rel_err"] = {}
        for b in (1, 3) if 4 in spec.batch_sizes else (1,):   # 3 runs padded to batch 4
            x = sample_input(spec.input_shape, b, seed=b)
            msg, frames = d.infer(i, x)
            assert isinstance(msg, s.InferResult), msg
            out = np.frombuffer(frames[0], spec.output_dtype).reshape(b, *spec.output_shape)
            ref = onnxruntime_outputs(spec, x).reshape(out.shape)
            r["rel_err"][b] = float(np.abs(out - ref).max() / np.abs(ref).max())
        assert isinstance(d.do(s.EvictWeights, model_id=i, gpu_id=0)[0], s.EvictWeightsResult)
        hm = d.rt.models[i].kind.host          # the runtime's host model (profile uses scratch memory)
        prof = backend.profile(hm, 0, a.runs)
        load = pct(prof["load"], 50)
        r["load_p50_ms"] = load / 1e6
        r["load_gbps"] = spec.weights_size / load
        r["exec"] = {b: {"p50_ms": pct(prof[b], 50) / 1e6, "p99_ms": pct(prof[b], 99) / 1e6}
                     for b in spec.batch_sizes}
        toml.append(profile_toml(spec, load, {b: pct(prof[b], 50) for b in spec.batch_sizes},
                                 {b: pct(prof[b], 99) for b in spec.batch_sizes}))
        if not a.no_torch and a.backend == "cuda" and name in TORCHVISION:
            try:
                r["torch_fp16_graph"] = {b: [v / 1e6 for v in torch_fp16_graph(TORCHVISION[name], b, a.runs)]
                                         for b in (1, 16)}
            except Exception as e:           # torchvision missing or an arch argument changed
                r["torch_error"] = f"{type(e).__name__}: {e}"
        report["models"][name] = r
        e = dict(r["exec"])
        e.setdefault(16, e[max(e)])
        tv = r.get("torch_fp16_graph", {})
        row = (f"| {name} | {r['weights_mb']:.1f} | {r['pages']} | {r['load_p50_ms']:.3f} | "
               f"{r['load_gbps']:.1f} | {e[1]['p50_ms']:.3f} | {e[1]['p99_ms']:.3f} | "
               f"{e[16]['p50_ms']:.3f} | {e[16]['p99_ms']:.3f} | "
               f"{tv[1][0] if tv else float('nan'):.3f} | {tv[16][0] if tv else float('nan'):.3f} | "
               f"{max(r['rel_err'].values()):.1e} |")
        rows.append(row)
        print(row, flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1))
    print(f"\n## imported ONNX zoo on {dev}, {a.runs} runs (CUDA events)\n")
    print("| model | weights MB | pages | LoadWeights p50 ms | GB/s | b1 p50 ms | b1 p99 ms | "
          "b16 p50 ms | b16 p99 ms | torch fp16 graph b1 ms | b16 ms | max rel err vs ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if a.toml:
        Path(a.toml).write_text("\n".join(toml))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
