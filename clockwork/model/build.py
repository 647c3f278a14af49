"""`cw zoo build`: compile the zoo's networks (clockwork.model.nets) into model directories.

One directory per model (clockwork.model.format): weights.bin laid out for the page size, one
exported TVM module per target ("llvm" or "cuda-sm_90", ...) holding a function per batch size,
and model.json. Building is cached: a model whose definition, weights and target are unchanged
(hashes recorded in model.json) is skipped.

Compilation runs in a child process (`python -m clockwork.model.build compile ...`) so that
TVM is never imported into the CLI process and, for CUDA on a machine without a GPU driver, the
child can be given a build-time stub libcuda.so.1 (TVM's CUDA runtime library must load for
tvm.compile to produce a binary; without it TVM silently emits CUDA source). The stub is built
with gcc into an ignored folder and is never shipped or used at run time. Every CUDA module is
checked to embed a fatbin/cubin before it is written: a model with uncompiled CUDA code is
refused.

Weights and compute dtype (`--dtype`): float16 (the CUDA default) halves the weights and runs
convs and matmuls on tensor cores with float32 accumulation (clockwork.model.schedules);
inputs and outputs stay float32. model.json records the dtype and every module carries a
marker of the dtype it was compiled for, so a worker refuses a module and weights that disagree.

Convolutions (`--conv`): "tvm" compiles them with TVM's schedules; "cudnn" (float16 NHWC
only) has each conv (+ bias, residual add, relu) call cuDNN through our small library
(clockwork.model.cudnn_conv), which the worker loads; model.json lists it under "ops".
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import nets
from .cudnn_conv import OP
from .format import DEFAULT_PAGE_SIZE, METADATA, layout_pages, write_metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_FILE_ALIGN = 4096
PROGRESS_EVERY_S = 20
_start_child = subprocess.Popen      # (tests replace it)
# apache-tvm 0.27.0.post1 accepts apache-tvm-ffi >= 0.1.14, but 0.1.15.x crashes (segfault in
# s_tir.Tensorize -> ffi::ToJSONGraph) in every tensor-core schedule; 0.1.14.post0 works.
TVM_FFI_BROKEN_TENSORIZE = "0.1.15"
TVM_FFI_PIN = "apache-tvm-ffi==0.1.14.post0"

_STUB_SOURCE = r"""
/* Build-time stand-in for the NVIDIA driver: lets libtvm_runtime_cuda.so load so that
   tvm.compile emits device binaries on a machine with no GPU. Never shipped, never run. */
#define NO_DEVICE 100
int cuInit(unsigned f) { return NO_DEVICE; }
int cuDriverGetVersion(int *v) { if (v) *v = 13000; return 0; }
int cuDeviceGetName(char *n, int len, int d) { return NO_DEVICE; }
int cuFuncSetAttribute(void *f, int a, int v) { return NO_DEVICE; }
int cuGetErrorName(int e, const char **s) { if (s) *s = "CUDA_ERROR_NO_DEVICE (build stub)"; return 0; }
int cuGetErrorString(int e, const char **s) { if (s) *s = "no GPU: build-time stub libcuda"; return 0; }
int cuLaunchKernelEx(const void *c, void *f, void **p, void **e) { return NO_DEVICE; }
int cuModuleGetFunction(void **f, void *m, const char *n) { return NO_DEVICE; }
int cuModuleLoadData(void **m, const void *img) { return NO_DEVICE; }
int cuModuleUnload(void *m) { return NO_DEVICE; }
int cuTensorMapEncodeTiled() { return NO_DEVICE; }
"""


class BuildError(RuntimeError):
    """A model could not be built (bad target, compiler missing, no device code produced)."""


def parse_batch_sizes(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (sorted, unique, positive), for --batch-sizes; ValueError otherwise."""
    try:
        sizes = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise ValueError(f"{text!r}: expected positive integers like 1,2,4,8,16")
    return sizes


def target_key(target: str, arch: str | None = None) -> str:
    """The name of a compiled module in a model directory: "llvm" or "cuda-sm_90"."""
    if target == "llvm":
        return "llvm"
    if target == "cuda":
        if not arch or not arch.startswith("sm_") or not arch[3:].isdigit():
            raise BuildError(f"CUDA needs an arch like sm_90, got {arch!r}")
        return f"cuda-{arch}"
    raise BuildError(f"unknown target {target!r} (llvm or cuda)")


def _tvm_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        raise BuildError("TVM is not installed: pip install apache-tvm==0.27.0.post1") from None


def default_dtype(target: str) -> str:
    """float16 on CUDA (tensor cores, half the weight pages), float32 on the CPU."""
    return "float16" if target == "cuda" else "float32"


def default_layout(target: str, dtype: str) -> str:
    """Activation layout inside models (inputs are NCHW either way): channels last for tensor
    cores (contiguous Cin in every conv GEMM's K), NCHW otherwise."""
    return "NHWC" if target == "cuda" and dtype == "float16" else "NCHW"


def default_conv(target: str, dtype: str, layout: str) -> str:
    """cuDNN for CUDA float16 NHWC (measured faster on the H200, BENCHMARKS.md), else TVM."""
    return "cudnn" if (target, dtype, layout) == ("cuda", "float16", "NHWC") else "tvm"


def check_conv(conv: str, dtype: str, layout: str) -> None:
    from .cudnn_conv import CONV_CHOICES
    if conv not in CONV_CHOICES:
        raise BuildError(f"unknown conv {conv!r} ({' or '.join(CONV_CHOICES)})")
    if conv == "cudnn" and (dtype, layout) != ("float16", "NHWC"):
        raise BuildError(f"--conv cudnn needs --dtype float16 --layout NHWC (got {dtype} {layout})")


def _check_tvm_ffi(target: str, dtype: str) -> None:
    from importlib import metadata
    try:
        v = metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        return
    if target == "cuda" and dtype == "float16" and v.startswith(TVM_FFI_BROKEN_TENSORIZE):
        raise BuildError(f"apache-tvm-ffi {v} crashes in TVM's tensor-core schedules; "
                         f"pip install {TVM_FFI_PIN} (or build with --dtype float32)")


class _ConvCounter:
    """Runs a net's forward with no data, counting its convs."""
    n = 0

    def conv(self, *a):
        self.n += 1

    def __getattr__(self, name):
        return lambda *a: None


def _has_convs(net: nets.Net) -> bool:
    ops = _ConvCounter()
    net.forward(ops, None, {name: None for name, _, _ in net.weights})
    return ops.n > 0


def _hash(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def stub_dir() -> Path:
    """Build (once) and return a folder holding the stub libcuda.so.1."""
    d = Path(os.environ.get("CLOCKWORK_STUB_DIR", REPO_ROOT / ".stub"))
    lib = d / "libcuda.so.1"
    if not lib.exists():
        if not shutil.which("gcc"):
            raise BuildError("cross-compiling for CUDA without a GPU driver needs gcc (for a stub libcuda)")
        d.mkdir(parents=True, exist_ok=True)
        src = d / "stub_libcuda.c"
        src.write_text(_STUB_SOURCE)
        r = subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1",
                            "-o", str(lib), str(src)], capture_output=True, text=True)
        if r.returncode:
            raise BuildError(f"building the stub libcuda failed:\n{r.stderr}")
    return d


def _has_driver() -> bool:
    import ctypes.util
    if ctypes.util.find_library("cuda"):
        return True
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def has_device_code(so_path: Path) -> bool:
    """True if the exported module embeds compiled CUDA (a fatbin or a cubin), not source."""
    from .tvm_runtime import has_device_code as check
    return check(so_path)


# ---------------------------------------------------------------------------------------------
# weights

def write_weights(net: nets.Net, model_dir: Path, page_size: int, seed: int) -> dict:
    """Write weights.bin page by page; return the "weights" entry of model.json."""
    arrays = net.init_weights(seed)
    placements, used = layout_pages([a.nbytes for a in arrays], page_size)
    page_offsets, off = [], 0
    for n in used:
        page_offsets.append(off)
        off += (n + PAGE_FILE_ALIGN - 1) // PAGE_FILE_ALIGN * PAGE_FILE_ALIGN
    blob = np.zeros(off, np.uint8)
    tensors = []
    for (name, shape, _), a, (page, poff) in zip(net.weights, arrays, placements):
        start = page_offsets[page] + poff
        blob[start:start + a.nbytes] = np.frombuffer(a.tobytes(), np.uint8)
        tensors.append({"name": name, "shape": list(shape), "dtype": str(a.dtype),
                        "page": page, "offset": poff, "nbytes": a.nbytes})
    tmp = model_dir / "weights.bin.tmp"
    blob.tofile(tmp)
    os.replace(tmp, model_dir / "weights.bin")
    return {"size": net.weights_size, "page_size": page_size, "file": "weights.bin",
            "sha256": hashlib.sha256(blob.data).hexdigest(),
            "pages": [{"offset": o, "nbytes": n} for o, n in zip(page_offsets, used)],
            "tensors": tensors}


def materialize_weights(model_dir: str | Path, log=print) -> Path:
    """Re-create a zoo model's weights.bin from its seed (bundles ship without the weights:
    they are seeded random, so regenerating them is cheaper than carrying them). The result is
    checked against the sha256 recorded at build time."""
    d = Path(model_dir)
    meta = json.loads((d / METADATA).read_text())
    w = meta["weights"]
    target = d / w.get("file", "weights.bin")
    if target.exists() and target.stat().st_size >= sum(p["nbytes"] for p in w["pages"]):
        return target
    if "import" in meta:                  # an ONNX import (clockwork.model.onnx_import)
        from .onnx_import import materialize_weights as from_recipe
        return from_recipe(d, meta, log)
    net = nets.for_model(meta)
    made = write_weights(net, d, int(w["page_size"]), int(meta.get("seed", 0)))
    if w.get("sha256") and made["sha256"] != w["sha256"]:
        target.unlink()
        raise BuildError(f"{d}: regenerated weights differ from the built ones (numpy's random "
                         "stream changed?); copy weights.bin from the build host instead")
    log(f"  {meta['name']}: weights.bin regenerated ({net.weights_size / 2**20:.1f} MiB)")
    return target


# ---------------------------------------------------------------------------------------------
# compiling (in a child process)

def _compile_child(name: str, target: str, arch: str | None, dtype: str, layout: str,
                   batch_sizes: list[int], out: str, conv: str = "tvm") -> None:
    """Runs inside the child: define, (rewrite convs,) compile, export."""
    mod = nets.relax_module(nets.get(name, dtype, layout), batch_sizes)
    if conv == "cudnn":
        from . import cudnn_conv
        mod, n = cudnn_conv.rewrite(mod)
        print(f"convs served by cuDNN: {n}", flush=True)
    compile_relax(mod, target, arch, out)


def compile_relax(mod, target: str, arch: str | None, out: str) -> None:
    """Compile a Relax IRModule (functions b1, b2, ...) for `target` and export it to `out`
    (also used by clockwork.model.onnx_import's compiling child)."""
    import tvm
    from tvm.target import Target

    if target == "llvm":
        ex = tvm.compile(mod, target="llvm")
    else:
        from . import cuda_pieces, schedules
        cuda_pieces.install()             # nvcc in pieces: its front end is superlinear
        tgt = Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
        with tgt:
            ex = tvm.compile(mod, target=tgt, relax_pipeline=schedules.cuda_pipeline(tgt))
        st = schedules.TensorCoresFirst.stats
        print(f"GEMM kernels on tensor cores: {st['tensor_cores']} of "
              f"{st['tensor_cores'] + st['other']}", flush=True)
    ex.export_library(out)


def compile_model(name: str, target: str, arch: str | None, batch_sizes: list[int], out: Path,
                  log=print, dtype: str = "float32", layout: str = "NCHW",
                  entry: str = "clockwork.model.build", job: str | None = None,
                  conv: str = "tvm") -> float:
    """Compile `name` for `target` into `out` (verified); returns seconds taken. The child runs
    `python -m ENTRY compile JOB TARGET ARCH DTYPE LAYOUT BATCHES OUT [CONV]` (JOB: the name)."""
    env = dict(os.environ)
    env.setdefault("TVM_NUM_THREADS", "1")
    if target == "cuda":
        if not _has_driver():
            env["LD_LIBRARY_PATH"] = f"{stub_dir()}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        if shutil.which("nvcc"):
            env.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    tmp = out.with_name(out.name + ".tmp")
    cmd = [sys.executable, "-m", entry, "compile", job or name, target, arch or "-",
           dtype, layout, ",".join(map(str, batch_sizes)), str(tmp)] + ([conv] if conv != "tvm" else [])
    t0 = time.monotonic()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile("w+") as out_log:
        p = _start_child(cmd, env=env, stdout=out_log, stderr=subprocess.STDOUT, text=True)
        while True:                       # progress for long compiles (ResNets take ~1 min)
            try:
                p.wait(timeout=PROGRESS_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                log(f"    ... still compiling {name} ({time.monotonic() - t0:.0f} s)")
            except BaseException:
                p.kill()
                p.wait()
                tmp.unlink(missing_ok=True)
                raise
        out_log.seek(0)
        output = out_log.read()
    took = time.monotonic() - t0
    if p.returncode:
        tail = "\n".join(output.strip().splitlines()[-15:])
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {name} for {target} failed:\n{tail}")
    if target == "cuda" and not has_device_code(tmp):
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{name}: TVM produced CUDA source, not a binary (libtvm_runtime_cuda.so "
                         "could not load or no CUDA compiler); refusing to write this model")
    os.replace(tmp, out)
    for line in output.splitlines():
        if line.startswith(("GEMM kernels", "convs served")):
            log(f"    {line}")
    return took


# ---------------------------------------------------------------------------------------------
# the zoo

def build_model(name: str, out_root: str | Path, target: str = "llvm", arch: str | None = None,
                batch_sizes=nets.BATCH_SIZES, page_size: int = DEFAULT_PAGE_SIZE, seed: int = 0,
                force: bool = False, log=print, dtype: str | None = None,
                layout: str | None = None, conv: str | None = None) -> Path:
    """Build one model directory (or add a target to it). Skips what is unchanged. One
    directory holds one dtype, layout and conv: building another rewrites the weights and
    drops the code of other targets."""
    dtype = dtype or default_dtype(target)
    layout = layout or default_layout(target, dtype)
    conv = conv or default_conv(target, dtype, layout)
    check_conv(conv, dtype, layout)
    net = nets.get(name, dtype, layout)
    key = target_key(target, arch)
    batch_sizes = sorted(int(b) for b in batch_sizes)
    d = Path(out_root) / name
    d.mkdir(parents=True, exist_ok=True)
    old = {}
    if (d / METADATA).exists():
        try:
            old = json.loads((d / METADATA).read_text())
        except json.JSONDecodeError:
            old = {}
    defn = net.definition_hash()
    w_hash = _hash(defn, seed, page_size)
    c_hash = _hash(defn, key, batch_sizes, _tvm_version(),
                   (Path(__file__).parent / "schedules.py").read_bytes() if target == "cuda" else "",
                   conv, (Path(__file__).parent / "cudnn_conv.py").read_bytes() if conv == "cudnn" else "")
    hashes = dict(old.get("build", {}))
    same_batches = (old.get("batch_sizes") == batch_sizes and old.get("dtype", "float32") == dtype
                    and old.get("layout", "NCHW") == layout and old.get("conv", "tvm") == conv)
    if not same_batches:                   # code of other targets has other functions: drop it
        hashes = {k: v for k, v in hashes.items() if k == "weights"}

    if force or hashes.get("weights") != w_hash or not (d / "weights.bin").exists():
        weights = write_weights(net, d, page_size, seed)
        hashes["weights"] = w_hash    # compiled code does not depend on weight values or layout
        log(f"  {name}: weights {net.weights_size / 2**20:.1f} MiB in {len(weights['pages'])} page(s)")
    else:
        weights = old["weights"]

    code = dict(old.get("code", {})) if same_batches else {}
    so = d / f"{key}.so"
    if not force and hashes.get(key) == c_hash and so.exists() and code.get(key) == so.name:
        log(f"  {name}: {key} up to date, skipped")
    else:
        log(f"  {name}: compiling for {key}, batch sizes {','.join(map(str, batch_sizes))} ...")
        took = compile_model(name, target, arch, batch_sizes, so, log, dtype, layout, conv=conv)
        log(f"  {name}: {key} done in {took:.0f} s ({so.stat().st_size / 2**20:.1f} MiB)")
        code[key] = so.name
        hashes[key] = c_hash

    write_metadata(d, {
        "name": name,
        "dtype": dtype,
        "layout": layout,
        "conv": conv,
        "ops": [OP] if conv == "cudnn" and _has_convs(net) else [],   # external functions called
        "input": {"shape": list(net.input_shape), "dtype": net.io_dtype},
        "output": {"shape": list(net.output_shape), "dtype": net.io_dtype},
        "batch_sizes": batch_sizes,
        "weights": weights,
        "code": code,
        "source": f"clockwork.model.nets:{name}, seeded random weights (seed {seed}), "
                  f"TVM {_tvm_version()}",
        "seed": seed,
        "build": hashes,
    })
    return d


def build_zoo(names, out_root, target="llvm", arch=None, batch_sizes=nets.BATCH_SIZES,
              page_size=DEFAULT_PAGE_SIZE, seed=0, force=False, log=print,
              dtype: str | None = None, layout: str | None = None,
              conv: str | None = None) -> list[Path]:
    names = list(names)
    unknown = [n for n in names if n not in nets.NAMES]
    if unknown:
        raise BuildError(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(nets.NAMES)})")
    target_key(target, arch)
    dtype = dtype or default_dtype(target)
    if dtype not in nets.DTYPES:
        raise BuildError(f"unknown dtype {dtype!r} ({' or '.join(nets.DTYPES)})")
    if layout is not None and layout not in nets.LAYOUTS:
        raise BuildError(f"unknown layout {layout!r} ({' or '.join(nets.LAYOUTS)})")
    if conv is not None:
        check_conv(conv, dtype, layout or default_layout(target, dtype))
    _tvm_version()
    _check_tvm_ffi(target, dtype)
    out = []
    for i, n in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {n}")
        out.append(build_model(n, out_root, target, arch, batch_sizes, page_size, seed, force, log,
                               dtype, layout, conv))
    return out


if __name__ == "__main__":
    if len(sys.argv) in (9, 10) and sys.argv[1] == "compile":
        _, _, name, tgt, arch, dt, layout, bs, path, *conv = sys.argv
        _compile_child(name, tgt, None if arch == "-" else arch, dt, layout,
                       [int(b) for b in bs.split(",")], path, *conv)
    elif len(sys.argv) >= 3 and sys.argv[1] == "weights":      # bundles: regenerate weights.bin
        try:
            for d in sys.argv[2:]:
                materialize_weights(d)
        except (BuildError, OSError, KeyError, ValueError) as e:
            sys.exit(f"error: {e}")
    else:
        print("internal entry points: compile NAME TARGET ARCH DTYPE LAYOUT BATCHES OUT [CONV] | weights DIR...; "
              "use `cw zoo build`", file=sys.stderr)
        sys.exit(2)
