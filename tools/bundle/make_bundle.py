#!/usr/bin/env python3
"""Pack a relocatable worker bundle for a GPU host that has no TVM compiler and no internet.

The bundle holds:
  lib/tvm/      a runtime-only slice of the installed apache-tvm (the Python modules that a
                runtime-only `import tvm` + VM actually load, libtvm_runtime.so,
                libtvm_runtime_cuda.so and the libcudart.so.13 it links; no libtvm_compiler.so);
                libclockwork_cudnn.so when a model's convs are served by cuDNN (`--conv cudnn`):
                built here against cuDNN 9 headers, it loads the host's libcudnn.so.9 (the
                nvidia-cudnn wheel PyTorch installs, or CUDNN_LIB_DIR)
  wheels/       wheels for the host's Python that it lacks (default cp312: apache-tvm-ffi,
                ml_dtypes, pyzmq, msgspec), taken from --wheels or downloaded with pip
  src/          the clockwork package (with its conf/) and tools/bench/
  zoo/          compiled models: model.json, measurements.json, *.so -- without weights.bin:
                zoo weights are seeded random, so setup.sh regenerates them (checked by sha256;
                the onnx light models' regeneration needs onnx and onnxruntime on the host)
  env.sh        PYTHONPATH, TVM_USE_RUNTIME_LIB=1, TVM_FFI_DISABLE_TORCH_C_DLPACK=1,
                CLOCKWORK_MODEL_DIR, CLOCKWORK_CUDNN_LIB, bin/cw on PATH
  setup.sh      installs the wheels into site/ (pip --no-index) and regenerates the weights

Usage (on the build machine):
  python tools/bundle/make_bundle.py --zoo .bundle/zoo --out .bundle/clockwork-worker [--tar]
On the GPU host:
  bash clockwork-worker/setup.sh && source clockwork-worker/env.sh && cw worker --backend cuda
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# apache-tvm-ffi as pinned in setup.py (0.1.15.x crashes in TVM's tensor-core schedules; the
# runtime must match the version the zoo was compiled with)
WHEELS = ["apache-tvm-ffi==0.1.14.post0", "ml_dtypes==0.6.0", "pyzmq==27.3.0", "msgspec==0.22.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
CUDART_CANDIDATES = ["/usr/local/cuda/lib64/libcudart.so.13", "/usr/local/cuda/lib/libcudart.so.13",
                     "/usr/local/cuda-13.0/lib/libcudart.so.13",
                     "/usr/local/cuda-13.0/targets/x86_64-linux/lib/libcudart.so.13"]

# what a runtime-only import needs, found by running it (so the slice follows TVM's own imports)
_TRACE = r"""
import os, sys
import tvm
from tvm.runtime import vm  # noqa
import tvm.runtime, tvm.runtime.module, tvm.runtime.vm  # noqa
root = os.path.dirname(tvm.__file__)
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if (name == "tvm" or name.startswith("tvm.")) and f and f.startswith(root):
        print(os.path.relpath(f, root))
"""


def log(msg):
    print(msg, flush=True)


def tvm_slice(dest: Path) -> int:
    """Copy the runtime-only part of the installed tvm package to dest/tvm; returns bytes."""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", TVM_FFI_DISABLE_TORCH_C_DLPACK="1")
    r = subprocess.run([sys.executable, "-c", _TRACE], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"tracing a runtime-only tvm import failed (is apache-tvm installed?):\n{r.stderr}")
    import importlib.util
    src = Path(importlib.util.find_spec("tvm").submodule_search_locations[0])
    files = set(r.stdout.split())
    files |= {str(p.relative_to(src)) for p in (src / "runtime").rglob("*.py")}
    out = dest / "tvm"
    total = 0
    for rel in sorted(files):
        parts = Path(rel).parts
        for i in range(1, len(parts)):            # every package on the way needs its __init__
            init = Path(*parts[:i]) / "__init__.py"
            if (src / init).exists():
                files.add(str(init))
    for rel in sorted(files):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, out / rel)
        total += (src / rel).stat().st_size
    (out / "lib").mkdir(exist_ok=True)
    for lib in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        shutil.copy2(src / "lib" / lib, out / "lib" / lib)
        total += (src / "lib" / lib).stat().st_size
    cudart = next((Path(p) for p in CUDART_CANDIDATES if Path(p).exists()), None)
    if cudart is None:
        try:
            import nvidia.cuda_runtime as ncr   # the nvidia-cuda-runtime wheel
            cudart = next(Path(ncr.__path__[0]).rglob("libcudart.so.13"), None)
        except ImportError:
            pass
    if cudart is None:
        log("  warning: libcudart.so.13 not found here; the host must provide it")
    else:
        shutil.copy2(cudart.resolve(), out / "lib" / "libcudart.so.13")
        total += cudart.resolve().stat().st_size
    for extra in ("LICENSE", "NOTICE"):
        if (src / extra).exists():
            shutil.copy2(src / extra, out / extra)
    return total


def wheels(dest: Path, cache: Path | None, pyver: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    have = list(cache.glob("*.whl")) if cache and cache.is_dir() else []
    tag = f"cp{pyver.replace('.', '')}"
    for spec in WHEELS:
        name = spec.split("==")[0].replace("-", "_").lower()
        got = [w for w in have if w.name.lower().startswith(name + "-") and (tag in w.name or "abi3" in w.name)]
        if got:
            shutil.copy2(got[0], dest / got[0].name)
            continue
        log(f"  downloading {spec} for {tag}")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", pyver, "--implementation", "cp", "-d", str(dest), spec]
        for p in PLATFORMS:
            cmd += ["--platform", p]
        if subprocess.run(cmd).returncode:
            sys.exit(f"could not get a wheel of {spec} for {tag}; pass --wheels DIR with it")


def zoo_ops(zoo: Path) -> set[str]:
    """The external functions (model.json "ops") the zoo's models call."""
    import json
    ops = set()
    for meta in zoo.glob("*/model.json"):
        ops.update(json.loads(meta.read_text()).get("ops", []))
    return ops


def copy_zoo(zoo: Path, dest: Path) -> list[str]:
    names = []
    for d in sorted(p for p in zoo.iterdir() if (p / "model.json").exists()):
        out = dest / d.name
        out.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():     # .onnx: an import's graph (checked against onnxruntime there)
            if f.suffix in (".json", ".so", ".onnx") and not f.name.endswith(".tmp"):
                shutil.copy2(f, out / f.name)
        names.append(d.name)
    return names


ENV_SH = """# source this file: sets up the clockwork worker bundle in this shell
_CWB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$_CWB/src:$_CWB/site:$_CWB/lib${PYTHONPATH:+:$PYTHONPATH}"
export TVM_USE_RUNTIME_LIB=1                 # runtime-only TVM (no compiler in this bundle)
export TVM_FFI_DISABLE_TORCH_C_DLPACK=1      # else tvm_ffi tries to build a torch extension
export CLOCKWORK_MODEL_DIR="${CLOCKWORK_MODEL_DIR:-$_CWB/zoo}"
export CLOCKWORK_CUDNN_LIB="${CLOCKWORK_CUDNN_LIB:-$_CWB/lib/libclockwork_cudnn.so}"
export PATH="$_CWB/bin:$PATH"
"""

SETUP_SH = """#!/usr/bin/env bash
# One-time setup on the GPU host: install the bundled wheels (no index, no internet) into
# site/ and regenerate the zoo's seeded weights (checked against their sha256).
set -euo pipefail
_CWB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$_CWB/env.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
    --target "$_CWB/site" "$_CWB"/wheels/*.whl
python3 -m clockwork.model.build weights "$_CWB"/zoo/*/
python3 -c "import tvm, zmq, msgspec; print('bundle ready: tvm', tvm.__version__, '(runtime only)' if tvm.base._RUNTIME_ONLY else '')"
"""

CW = """#!/bin/sh
exec python3 -m clockwork.cli "$@"
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True, help="built model directories (cw zoo build)")
    ap.add_argument("--out", type=Path, default=REPO / ".bundle" / "clockwork-worker")
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl", help="wheels to reuse (else pip download)")
    ap.add_argument("--python", default="3.12", help="the GPU host's Python version")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another zoo copied to <out>/<its folder name> (e.g. a comparison build)")
    ap.add_argument("--tar", action="store_true", help="also write <out>.tar.gz")
    a = ap.parse_args()
    if not a.zoo.is_dir():
        sys.exit(f"{a.zoo} is not a directory (build models with `cw zoo build` first)")
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    log(f"bundle -> {a.out}")
    n = tvm_slice(a.out / "lib")
    log(f"  runtime-only tvm slice: {n / 2**20:.1f} MiB")
    ops = zoo_ops(a.zoo)
    for extra in a.also:
        ops |= zoo_ops(extra)
    if ops:
        sys.path.insert(0, str(REPO))
        from clockwork.model import cudnn_conv
        unknown = ops - {cudnn_conv.OP}
        if unknown:
            sys.exit(f"models call {', '.join(sorted(unknown))}, which no library of ours provides")
        try:
            cudnn_conv.build_library(a.out / "lib" / cudnn_conv.LIB_NAME, log=log)
        except cudnn_conv.OpsUnavailable as e:
            sys.exit(f"the zoo's convs are served by cuDNN, but {e}")
    wheels(a.out / "wheels", a.wheels, a.python)
    log("  wheels: " + ", ".join(p.name.split("-")[0] + "-" + p.name.split("-")[1]
                                  for p in sorted((a.out / "wheels").glob("*.whl"))))
    src = a.out / "src"
    shutil.copytree(REPO / "clockwork", src / "clockwork",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO / "tools" / "bench", src / "tools" / "bench",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    names = copy_zoo(a.zoo, a.out / "zoo")
    log(f"  models: {', '.join(names)} (weights regenerated by setup.sh)")
    for extra in a.also:
        log(f"  {extra.name}: {', '.join(copy_zoo(extra, a.out / extra.name))}")
    (a.out / "env.sh").write_text(ENV_SH)
    (a.out / "setup.sh").write_text(SETUP_SH)
    (a.out / "bin").mkdir()
    (a.out / "bin" / "cw").write_text(CW)
    for f in (a.out / "setup.sh", a.out / "bin" / "cw"):
        f.chmod(0o755)
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    log(f"  total {size / 2**20:.1f} MiB")
    if a.tar:
        tgz = a.out.with_name(a.out.name + ".tar.gz")
        with tarfile.open(tgz, "w:gz") as t:
            t.add(a.out, arcname=a.out.name)
        log(f"  {tgz} ({tgz.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
