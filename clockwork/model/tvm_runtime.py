"""Running exported TVM modules with weights that already sit in memory we own.

Works with the full `apache-tvm` wheel and with a runtime-only slice of it (a GPU host with no
compiler, see tools/bench/../bundle): libtvm_compiler.so is never needed to run. Only the VM
entry points `b1`, `b2`, ... of a zoo module (clockwork.model.build) are used, each called as
f(x, *weights) with tensors that are views into our own allocations (no copies).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .nets import DTYPES

_tvm = None


class TvmUnavailable(RuntimeError):
    """TVM (or its CUDA runtime library) cannot be imported here; the message says why."""


def import_tvm(cuda: bool = False):
    """Import tvm lazily (1-2 s with the compiler, ~0.3 s runtime-only) and, for CUDA, make
    sure libtvm_runtime_cuda.so is loaded (a runtime-only import does not load it)."""
    global _tvm
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")   # else tvm_ffi builds a torch ext
    if _tvm is None:
        try:
            import tvm
            from tvm.runtime import vm as _vm  # noqa: F401  (registers the VM)
        except ImportError as e:
            raise TvmUnavailable(f"TVM is not installed ({e}); pip install apache-tvm==0.27.0.post1 "
                                 "or use a worker bundle (docs/real-worker.md)") from None
        _tvm = tvm
    if cuda and "tvm_runtime_cuda" not in _tvm.base._LOADED_LIBS:
        from tvm_ffi.libinfo import load_lib_ctypes
        runtime_dir = Path(_tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            _tvm.base._LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
                mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as e:
            raise TvmUnavailable(f"TVM's CUDA runtime (libtvm_runtime_cuda.so) did not load: {e}") from None
    return _tvm


def device(kind: str, index: int = 0):
    tvm = import_tvm(cuda=kind == "cuda")
    return tvm.cuda(index) if kind == "cuda" else tvm.cpu(index)


class CompiledModel:
    """One exported module loaded on one device; `function(b)` is the VM entry for batch b."""

    def __init__(self, so_path: str | Path, dev):
        tvm = import_tvm(cuda=dev.dlpack_device_type() == 2)
        from tvm.runtime.vm import VirtualMachine
        self.path = Path(so_path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} not found")
        self.lib = tvm.runtime.load_module(str(self.path))
        self.vm = VirtualMachine(self.lib, dev)
        self.device = dev
        self._funcs = {}

    def dtype(self) -> str:
        """The weight dtype the module was compiled for (its dtype marker function, see
        nets.dtype_marker); modules built before markers existed are float32."""
        for dt in DTYPES:
            if self.vm.module.implements_function(f"dtype_{dt}"):
                return dt
        return "float32"

    def check_dtype(self, spec) -> None:
        """Refuse (ValueError) a module whose dtype is not the one model.json records."""
        have = self.dtype()
        if have != spec.dtype:
            raise ValueError(f"{self.path} was compiled for {have} weights but model.json says "
                             f"{spec.dtype}; rebuild with `cw zoo build --dtype {spec.dtype}`")

    def function(self, batch_size: int):
        f = self._funcs.get(batch_size)
        if f is None:
            f = self._funcs[batch_size] = self.vm[f"b{batch_size}"]
        return f


# ---------------------------------------------------------------------------------------------
# Zero-copy tensors over raw memory, through DLPack. (Tensor._create_view records a byte_offset,
# which compiled kernels reject: every view here has its own data pointer and byte_offset 0.)

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                             ("deleter", _DELETER)]
_DTYPES = {"float32": (2, 32), "float16": (2, 16), "float64": (2, 64), "int32": (0, 32),
           "int64": (0, 64), "int8": (0, 8), "uint8": (1, 8), "bfloat16": (4, 16)}
_alive: dict[int, tuple] = {}       # managed tensor address -> what it points at, until deleted


@_DELETER
def _delete(managed):
    _alive.pop(ctypes.addressof(managed.contents), None)


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def raw_view(ptr: int, shape, dtype: str, dev, owner=None):
    """A TVM tensor over `ptr` (device memory of `dev`, or host memory for a CPU device)
    with `shape`/`dtype`. `owner` is kept alive as long as the tensor."""
    tvm = import_tvm()
    shape = tuple(int(d) for d in shape)
    code, bits = _DTYPES[dtype]
    m = _DLManagedTensor()
    dims = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    m.dl_tensor = _DLTensor(ctypes.c_void_p(int(ptr)), _DLDevice(dev.dlpack_device_type(), dev.index),
                            len(shape), _DLDataType(code, bits, 1), dims, None, 0)
    m.deleter = _delete
    _alive[ctypes.addressof(m)] = (m, dims, owner)
    return tvm.runtime.from_dlpack(_capsule_new(ctypes.addressof(m), b"dltensor", None))


def weight_views(base_ptr: int, page_size: int, pages: list[int], tensors, dev, owner=None) -> list:
    """Views of a model's weights where they sit in a weights cache starting at `base_ptr`:
    tensor t of model page t.page is at cache page pages[t.page], offset t.offset."""
    return [raw_view(base_ptr + pages[t.page] * page_size + t.offset, t.shape, t.dtype, dev, owner)
            for t in tensors]


def set_stream(dev, stream_handle: int) -> None:
    """Make TVM launch on `stream_handle` for this device (kernels of every later call)."""
    from tvm_ffi import core
    core._env_set_current_stream(dev.dlpack_device_type(), dev.index, stream_handle)


def weights_image_size(spec) -> int:
    """Bytes of a model's weights.bin image (every page at its file offset)."""
    return max((off + n for off, n in spec.pages), default=0)


def read_weights(spec, buf) -> None:
    """Read weights.bin into `buf` (a writable buffer of weights_image_size bytes, e.g. pinned
    host memory), so host page k starts at spec.pages[k][0]."""
    size = weights_image_size(spec)
    mv = memoryview(buf).cast("B")[:size]
    with open(spec.path / spec.weights_file, "rb") as f:
        got = f.readinto(mv)
    if got < size:
        raise OSError(f"{spec.path / spec.weights_file}: {got} bytes, expected {size}")


def check_runnable(spec, code_key: str) -> None:
    """Raise ValueError (with a reason for users) if `spec` cannot run as a real model."""
    if not spec.weights_file or not spec.tensors or not spec.pages:
        raise ValueError(f"{spec.path}: a profile-only model (no weights/tensors); the real "
                         "worker needs a model built by `cw zoo build`")
    if code_key not in spec.code:
        have = ", ".join(spec.code) or "none"
        raise ValueError(f"{spec.path}: no code for {code_key} (compiled for: {have}); "
                         f"build it with `cw zoo build --target ...`")
    wrong = {t.dtype for t in spec.tensors} - {spec.dtype}
    if wrong:
        raise ValueError(f"{spec.path}: model.json says dtype {spec.dtype} but lists "
                         f"{', '.join(sorted(wrong))} tensors")
    if code_key.startswith("cuda") and not has_device_code(spec.path / spec.code[code_key]):
        raise ValueError(f"{spec.path / spec.code[code_key]}: holds no compiled GPU code (CUDA "
                         "source or host code only); rebuild it with `cw zoo build --target cuda`")
    from .cudnn_conv import require         # the external functions the code calls (cuDNN convs)
    require(spec.ops, spec.path, "cuda" if code_key.startswith("cuda") else "cpu")


FATBIN_MAGIC = b"\x50\xed\x55\xba"          # 0xBA55ED50, little endian
CUBIN_ELF = b"\x7fELF\x02\x01\x01\x33"       # ELF64 with the CUDA OS/ABI byte


def has_device_code(so_path) -> bool:
    """True if an exported module embeds compiled CUDA (a fatbin or a cubin), not source."""
    try:
        data = Path(so_path).read_bytes()
    except FileNotFoundError:
        return False
    return FATBIN_MAGIC in data or CUBIN_ELF in data
