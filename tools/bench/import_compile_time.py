#!/usr/bin/env python3
"""Where `cw zoo import` spends its compile time, phase by phase, for one model and a set of
batch sizes: ONNX import (relax_module), TVM's relax pipeline (with its slowest passes), TIR
lowering + codegen (with the nvcc call inside it: CUDA source size, kernels, seconds) and the
export. Run it in the same environment as the compiling child (a stub libcuda where there is
no GPU driver: clockwork.model.build.stub_dir()).

  python tools/bench/import_compile_time.py densenet121 --batch-sizes 1 [--share-kernels] [--cuda-out F.cu]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.model import build, onnx_import  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an onnx light model (" + ", ".join(onnx_import.ONNX_ZOO) + ")")
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--share-kernels", action="store_true")
    ap.add_argument("--cuda-out", default=None, help="write the CUDA source nvcc compiled here")
    ap.add_argument("--top", type=int, default=5, help="slowest relax passes to list")
    a = ap.parse_args()
    if not build._has_driver():
        sys.exit("run with LD_LIBRARY_PATH=" + str(build.stub_dir()) + " (no GPU driver here)")
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")

    t0 = time.monotonic()
    import tvm
    import tvm.support.nvcc as nvcc
    from tvm.ir.instrument import PassTimingInstrument
    from tvm.target import Target

    from clockwork.model import schedules

    compile_cuda = nvcc.compile_cuda

    def timed(code, *args, **kw):           # the one nvcc call of the build
        t = time.monotonic()
        out = compile_cuda(code, *args, **kw)
        kernels = len(re.findall(r'extern "C" __global__[^;{]*\{', code))
        print(f"  nvcc: {len(code) / 1e6:.2f} MB of CUDA, {kernels} kernels, "
              f"{time.monotonic() - t:.1f} s", flush=True)
        if a.cuda_out:
            Path(a.cuda_out).write_text(code)
        return out
    nvcc.compile_cuda = timed

    job = {"light": a.model, "seed": 0, "page_size": 16 << 20, "share_kernels": a.share_kernels}
    mod, _ = onnx_import.relax_module(job, build.parse_batch_sizes(a.batch_sizes))
    print(f"import (from_onnx, all batch sizes): {time.monotonic() - t0:.1f} s", flush=True)
    tgt = Target({"kind": "cuda", "arch": a.arch}, host={"kind": "llvm"})
    timing = PassTimingInstrument()
    t = time.monotonic()
    with tgt, tvm.transform.PassContext(opt_level=3, instruments=[timing]):
        mod = schedules.cuda_pipeline(tgt)(mod)
        passes = timing.render()
    funcs = sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())
    print(f"relax pipeline (legalize, fuse, dlight schedules): {time.monotonic() - t:.1f} s, "
          f"{funcs} kernels", flush=True)
    rows = sorted(((int(m.group(3)), m.group(1)) for m in
                   re.finditer(r"^\s*(\S+): (\d+)us \[(\d+)us\]", passes, re.M)), reverse=True)
    for us, name in rows[:a.top]:
        print(f"  {name}: {us / 1e6:.1f} s")
    t = time.monotonic()
    with tgt:
        ex = tvm.compile(mod, target=tgt, relax_pipeline=None)
    print(f"TIR lowering + codegen (nvcc included): {time.monotonic() - t:.1f} s", flush=True)
    t = time.monotonic()
    out = Path("/tmp") / f"import_compile_time_{os.getpid()}.so"
    ex.export_library(str(out))
    print(f"export (host code, link): {time.monotonic() - t:.1f} s; "
          f"{out.stat().st_size / 2**20:.1f} MiB", flush=True)
    out.unlink()
    print(f"total: {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
