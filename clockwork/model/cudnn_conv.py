"""Convolutions served by cuDNN (`cw zoo build --conv cudnn`).

Build side: `rewrite()` replaces, in every function of a float16 NHWC Relax module, each
conv2d (+ its bias) (+ a residual add) (+ relu) by one `call_dps_packed(OP, x, w, bias, [z],
attrs)`. The weights stay function parameters, so the paged weights cache, fixed-address CUDA
graphs and the exec gate work as for any model; TVM compiles what is left (transposes,
pooling, the classifier).

Worker side: OP is a global function of our small C++ library (native/cudnn_conv.cc, built
by `build_library()` against cuDNN 9 and apache-tvm-ffi) that the Relax VM resolves when a
model is loaded; `require()` loads it (with the host's libcudnn.so.9) or refuses the model in
one line. model.json lists the model's external functions under "ops".

Tests (no GPU): `register_reference()` registers a float32 numpy implementation under the
same name, so a rewritten model runs on the llvm target and its outputs can be compared with
the unrewritten model's and the float64 reference.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

OP = "clockwork.cudnn.conv2d"
LIB_NAME = "libclockwork_cudnn.so"
SOURCE = Path(__file__).parent / "native" / "cudnn_conv.cc"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIB = REPO_ROOT / ".build" / LIB_NAME
# cuDNN 9 is a small front library that loads these beside itself (it aborts if one is missing)
CUDNN_PARTS = ("libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9")
CONV_CHOICES = ("tvm", "cudnn")


class OpsUnavailable(RuntimeError):
    """An external function a model needs cannot be provided here (the message says why)."""


# ---------------------------------------------------------------------------------------------
# build side: the Relax rewrite (imports TVM; runs in the compiling child)

def rewrite(mod):
    """(module, number of convs replaced): every NHWC/OHWI float16 conv2d of every Relax
    function whose result feeds only its bias add becomes one call of OP, fused with a
    following residual add and relu where each intermediate has no other use."""
    from tvm import relax
    total = 0
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            new, n = _rewrite_function(func)
            if n:
                mod[gv] = new
                total += n
    return mod, total


def _uses(func) -> dict:
    """Var -> how many times it is used anywhere in the function."""
    from tvm import relax
    counts: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1
    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _call(value, op_name):
    import tvm
    from tvm import relax
    return (value if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name == op_name else None)


def _rewrite_function(func):
    from tvm import relax
    uses = _uses(func)
    params = set(func.params)
    blocks, replaced = [], 0
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            blocks.append(block)
            continue
        value_of = {b.var: b.value for b in block.bindings}
        consumer: dict = {}                 # var -> the binding var that uses it (single use only)
        for b in block.bindings:
            if isinstance(b.value, relax.Call):
                for a in b.value.args:
                    if isinstance(a, relax.Var) and uses.get(a) == 1:
                        consumer[a] = b.var
        drop, new_value = set(), {}
        for b in block.bindings:
            chain = _match(b.var, b.value, value_of, consumer, params, drop)
            if chain is None:
                continue
            last, args, dead = chain
            new_value[last] = args
            drop.update(dead)
            drop.add(last)          # (taken by this chain; its binding is replaced, not dropped)
        bindings = []
        for b in block.bindings:
            if b.var in new_value:
                x, w, bias, z, attrs = new_value[b.var]
                ty = b.var.ty
                call = relax.call_dps_packed(
                    OP, [x, w, bias, *([z] if z is not None else []), relax.ShapeExpr(attrs)],
                    relax.TensorType(ty.shape, ty.dtype))
                bindings.append(relax.VarBinding(b.var, call))
                replaced += 1
            elif b.var not in drop:
                bindings.append(b)
        blocks.append(relax.DataflowBlock(bindings))
    if not replaced:
        return func, 0
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs), replaced


def _match(var, value, value_of, consumer, params, taken):
    """If `var = conv2d(...)` starts a conv -> [astype] -> add(bias) -> [add(z)] -> [relu]
    chain that one call can replace: (last var, (x, w, bias, z, attrs), vars to drop).
    Bindings in `taken` belong to another chain already (two conv chains meeting in one
    residual add: the first one takes it, the other one's result is its z)."""
    from tvm import relax

    def next_of(v):
        n = consumer.get(v)
        return None if n is None or n in taken else n

    conv = _call(value, "relax.nn.conv2d")
    if conv is None:
        return None
    a = conv.attrs
    x, w = conv.args
    if (a.data_layout != "NHWC" or a.kernel_layout != "OHWI" or a.out_layout != "NHWC"
            or int(a.groups) != 1 or x.ty.dtype != "float16"
            or w.ty.dtype != "float16"):
        return None
    pad = [int(p) for p in a.padding]
    if pad[0] != pad[2] or pad[1] != pad[3]:
        return None
    dead = [var]
    cur = var
    nxt = next_of(cur)
    cast = _call(value_of.get(nxt), "relax.astype") if nxt is not None else None
    if cast is not None and cast.attrs.dtype == "float16":
        dead.append(nxt)
        cur, nxt = nxt, next_of(nxt)
    elif var.ty.dtype != "float16":
        return None
    add = _call(value_of.get(nxt), "relax.add") if nxt is not None else None
    cout = int(w.ty.shape[0])
    if add is None:
        return None
    bias = add.args[1] if add.args[0].same_as(cur) else add.args[0]
    if (bias not in params or bias.ty.dtype != "float16"
            or [int(d) for d in bias.ty.shape] not in ([1, 1, cout], [cout])):
        return None
    dead.append(nxt)
    cur, nxt = nxt, next_of(nxt)
    z = None
    res = _call(value_of.get(nxt), "relax.add") if nxt is not None else None
    if res is not None:
        other = res.args[1] if res.args[0].same_as(cur) else res.args[0]
        if (not other.same_as(cur) and isinstance(other.ty, relax.TensorType)
                and other.ty.dtype == "float16"
                and [int(d) for d in other.ty.shape] == [int(d) for d in cur.ty.shape]):
            z = other
            dead.append(nxt)
            cur, nxt = nxt, next_of(nxt)
    relu = 0
    if nxt is not None and _call(value_of.get(nxt), "relax.nn.relu") is not None:
        relu = 1
        dead.append(nxt)
        cur = nxt
    strides = [int(s) for s in a.strides]
    dilation = [int(d) for d in a.dilation]
    attrs = [strides[0], strides[1], pad[0], pad[1], dilation[0], dilation[1], relu]
    dead.remove(cur)
    return cur, (x, w, bias, z, attrs), dead


# ---------------------------------------------------------------------------------------------
# the CPU reference (tests): OP in float32 numpy

def reference_conv2d(x, w, bias, z, attrs) -> np.ndarray:
    """What OP computes, in float32: x NHWC, w OHWI, bias (.., Cout), z like the output or None,
    attrs (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, relu); result float16."""
    sh, sw, ph, pw, dh, dw, relu = (int(v) for v in attrs)
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    n, h, wd, c = x.shape
    k, r, s, _ = w.shape
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    oh = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (s - 1) - 1) // sw + 1
    out = np.zeros((n, oh, ow, k), np.float32)
    for i in range(r):
        for j in range(s):
            patch = xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
            out += patch @ w[:, i, j, :].T
    out += np.asarray(bias, np.float32).reshape(k)
    if z is not None:
        out += np.asarray(z, np.float32)
    if relu:
        out = np.maximum(out, 0)
    return out.astype(np.float16)


def register_reference() -> None:
    """Register reference_conv2d as OP in this process (CPU tensors), replacing any other."""
    import tvm_ffi

    def conv2d(*args):
        x, w, bias = (a.numpy() for a in args[:3])
        z = args[3].numpy() if len(args) == 6 else None
        args[-1].copyfrom(reference_conv2d(x, w, bias, z, list(args[-2])))
    tvm_ffi.register_global_func(OP, conv2d, override=True)


# ---------------------------------------------------------------------------------------------
# the library: build (on the build machine) and load (in the worker)

def cudnn_home() -> Path | None:
    """The folder holding cuDNN 9's include/ and lib/: $CUDNN_HOME, else the nvidia-cudnn wheel."""
    env = os.environ.get("CUDNN_HOME")
    if env:
        return Path(env)
    try:
        import nvidia.cudnn as nc           # nvidia-cudnn-cu13 (or -cu12): headers and libraries
    except ImportError:
        return None
    return Path(list(nc.__path__)[0])


def build_library(out: Path = DEFAULT_LIB, log=print) -> Path:
    """Compile native/cudnn_conv.cc into `out` (g++; no GPU needed). Needs cuDNN 9 headers
    (pip install nvidia-cudnn-cu13, or CUDNN_HOME), the CUDA toolkit's headers and libcudart
    (CUDA_HOME, default /usr/local/cuda) and apache-tvm-ffi."""
    import tvm_ffi.libinfo as ffi_info
    home = cudnn_home()
    if home is None or not (home / "include" / "cudnn.h").exists():
        raise OpsUnavailable("building the cuDNN conv library needs cuDNN 9 headers: "
                             "pip install nvidia-cudnn-cu13 (or set CUDNN_HOME)")
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    if not (cuda / "include" / "cuda_runtime.h").exists():
        raise OpsUnavailable(f"no CUDA toolkit headers in {cuda} (set CUDA_HOME)")
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if not cxx:
        raise OpsUnavailable("building the cuDNN conv library needs a C++ compiler (g++)")
    ffi_lib = Path(ffi_info.find_libtvm_ffi())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wno-deprecated-declarations",
           f"-I{cuda / 'include'}", f"-I{home / 'include'}", f"-I{ffi_info.find_include_path()}",
           str(SOURCE), "-o", str(tmp),
           f"-L{home / 'lib'}", "-l:libcudnn.so.9", f"-L{ffi_lib.parent}", "-ltvm_ffi",
           f"-L{cuda / 'lib64'}", "-l:libcudart.so.13"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tmp.unlink(missing_ok=True)
        raise OpsUnavailable(f"compiling {SOURCE.name} failed:\n{r.stderr[-2000:]}")
    os.replace(tmp, out)
    log(f"  {out.name}: built ({out.stat().st_size // 1024} KiB)")
    return out


def library_path() -> Path:
    """Our library: $CLOCKWORK_CUDNN_LIB (worker bundles set it), else .build/ of the repo."""
    return Path(os.environ.get("CLOCKWORK_CUDNN_LIB", DEFAULT_LIB))


def cudnn_lib_dir() -> Path | None:
    """Where libcudnn.so.9 and its parts sit on this host: $CUDNN_LIB_DIR, else the nvidia-cudnn
    wheel (PyTorch's), else the system's default paths (None: let the loader search)."""
    env = os.environ.get("CUDNN_LIB_DIR")
    if env:
        return Path(env)
    home = cudnn_home()
    if home is not None and (home / "lib" / "libcudnn.so.9").exists():
        return home / "lib"
    for entry in sys.path:                  # wheels of another layout (nvidia/cu13/lib)
        for sub in ("nvidia/cudnn/lib", "nvidia/cu13/lib", "nvidia/cu12/lib"):
            if (Path(entry) / sub / "libcudnn.so.9").exists():
                return Path(entry) / sub
    return None


_loaded: str | None = None


def load() -> str:
    """Load libcudnn.so.9 and our library into this process once (registers OP); returns a
    description. Raises OpsUnavailable with the reason."""
    global _loaded
    if _loaded is not None:
        return _loaded
    lib = library_path()
    if not lib.exists():
        raise OpsUnavailable(f"{lib} not found (build it: python -m clockwork.model.cudnn_conv build; "
                             "bundles carry it in lib/)")
    d = cudnn_lib_dir()
    if d is not None:
        missing = [p for p in CUDNN_PARTS if not (d / p).exists()]
        if missing:
            raise OpsUnavailable(f"cuDNN 9 in {d} lacks {', '.join(missing)}")
        front = str(d / "libcudnn.so.9")
    else:
        front = "libcudnn.so.9"
    try:
        ctypes.CDLL(front, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise OpsUnavailable(f"cuDNN 9 not found ({e}); pip install nvidia-cudnn-cu13 or set "
                             "CUDNN_LIB_DIR") from None
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise OpsUnavailable(f"{lib} did not load: {e}") from None
    import tvm_ffi
    version = tvm_ffi.get_global_func("clockwork.cudnn.version")()
    _loaded = f"{lib.name} with cuDNN {version // 10000}.{version // 100 % 100}.{version % 100} ({front})"
    return _loaded


def require(ops, spec_path, device: str) -> None:
    """Make sure every external function in `ops` (model.json "ops") is registered here, loading
    our cuDNN library for a CUDA device; ValueError (one line) if one cannot be."""
    if not ops:
        return
    import tvm_ffi
    for op in ops:
        if tvm_ffi.get_global_func(op, allow_missing=True) is not None:
            continue
        if op != OP:
            raise ValueError(f"{spec_path}: needs {op}, which this worker does not know")
        if device != "cuda":
            raise ValueError(f"{spec_path}: built with --conv cudnn (its convs call {OP}): only a "
                             "CUDA worker with cuDNN runs it; rebuild with --conv tvm")
        try:
            load()
        except OpsUnavailable as e:
            raise ValueError(f"{spec_path}: built with --conv cudnn, but this worker cannot serve "
                             f"cuDNN convs: {e}") from None


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        try:
            build_library(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_LIB)
        except OpsUnavailable as e:
            sys.exit(f"error: {e}")
    else:
        sys.exit("usage: python -m clockwork.model.cudnn_conv build [OUT.so]")
