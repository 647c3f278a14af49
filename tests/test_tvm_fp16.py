"""float16 models (`cw zoo build --dtype float16`) on the CPU backend, and the refusals.

The GPU zoo is float16 (tensor cores); its numerics are the same on llvm: float16 weights and
activations, float32 accumulation, float32 inputs and outputs. Checked here against the float64
numpy reference with a float16 tolerance, through the same WorkerRuntime as the GPU worker, in
both activation layouts. Also: a module and a model.json that disagree on the dtype, or a CUDA
module without compiled GPU code, are refused with a clear message. Needs TVM (skipped without).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install apache-tvm==0.27.0.post1)")

from clockwork.model import build, nets, tvm_runtime  # noqa: E402
from clockwork.model.backend import LoadError  # noqa: E402
from clockwork.model.cpu import CpuBackend  # noqa: E402
from clockwork.model.format import load_spec  # noqa: E402
from clockwork.status import Status  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from test_tvm_cpu import PAGE, Driver, _infer  # noqa: E402

FP16_TOLERANCE = 1e-2        # max |out - ref| / max |ref|; float32 builds are held to 1e-4
BATCHES = (1, 4)             # float16 on llvm is scalar and slow: two batch sizes are enough
SLOW_OK = 10**12             # max_exec_ns: keep every batch size however loaded the CPU is
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def zoo16(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo16")
    build.build_zoo(["mlp", "tinycnn"], root, "llvm", batch_sizes=BATCHES, page_size=PAGE,
                    log=lambda *a: None, dtype="float16")
    build.build_zoo(["tinycnn"], root / "nhwc", "llvm", batch_sizes=BATCHES, page_size=PAGE,
                    log=lambda *a: None, dtype="float16", layout="NHWC")
    return root


def _rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name,layout", [("mlp", "NCHW"), ("tinycnn", "NCHW"), ("tinycnn", "NHWC")])
def test_fp16_outputs_match_float64_reference(zoo16, name, layout):
    zoo = zoo16 / "nhwc" if layout == "NHWC" else zoo16
    net = nets.get(name, "float16", layout)
    spec = load_spec(zoo / name)
    meta = json.loads((zoo / name / "model.json").read_text())
    assert (meta["dtype"], meta["layout"]) == ("float16", layout)
    assert {t.dtype for t in spec.tensors} == {"float16"}
    assert spec.weights_size == nets.get(name).weights_size // 2      # half the bytes of float32
    d = Driver(zoo)
    assert isinstance(d.do(s.LoadModelFromDisk, model_id=0, path=name, max_exec_ns=SLOW_OK)[0],
                      s.LoadModelFromDiskResult)
    assert isinstance(d.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    weights = net.init_weights(0)
    rng = np.random.default_rng(11)
    for b in (1, 3):                      # 3 runs padded to the compiled batch 4
        x = rng.standard_normal((b, *net.input_shape)).astype(np.float32)
        msg, frames = _infer(d, 0, x)
        assert isinstance(msg, s.InferResult), msg
        out = np.frombuffer(frames[0], np.float32).reshape(b, *net.output_shape)
        err = _rel_err(out, nets.reference(net, x, weights))
        assert err < FP16_TOLERANCE, f"{name} {layout} b{b}: relative error {err}"


def test_fp16_evict_reload_elsewhere_gives_identical_outputs(zoo16):
    d = Driver(zoo16, total_pages=8)
    assert isinstance(d.do(s.LoadModelFromDisk, model_id=0, path="mlp", max_exec_ns=SLOW_OK)[0],
                      s.LoadModelFromDiskResult)
    x = np.random.default_rng(5).standard_normal((2, 784)).astype(np.float32)
    assert isinstance(d.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    first = list(d.rt.gpus[0].resident[0].pages)
    before = _infer(d, 0, x)[1][0]
    assert isinstance(d.do(s.EvictWeights, model_id=0, gpu_id=0)[0], s.EvictWeightsResult)
    msg, _ = _infer(d, 0, x)
    assert isinstance(msg, s.ErrorResult) and msg.status == Status.WEIGHTS_NOT_PRESENT, msg
    for p in first:                                 # garbage where the weights were
        d.backend._caches[0][p * PAGE:(p + 1) * PAGE] = 0x7F
    blocker = d.rt.gpus[0].mem.pages.alloc(len(first))
    assert isinstance(d.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    assert list(d.rt.gpus[0].resident[0].pages) != first
    d.rt.gpus[0].mem.pages.release(blocker)
    assert _infer(d, 0, x)[1][0] == before


def _copy_model(src, dst, **changes):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta.update(changes)
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


def test_module_dtype_must_match_model_json(zoo16, tmp_path):
    """A float16 module with weights declared float32 (e.g. a stale .so next to rebuilt
    weights) is refused at load with a message naming both dtypes, not run on wrong bytes."""
    d = _copy_model(zoo16 / "mlp", tmp_path / "mlp", dtype="float32")
    meta = json.loads((d / "model.json").read_text())
    for t in meta["weights"]["tensors"]:
        t["dtype"] = "float32"
    (d / "model.json").write_text(json.dumps(meta))
    backend = CpuBackend(PAGE, 4, 1 << 20, 1 << 20)
    with pytest.raises(LoadError, match="compiled for float16 weights but model.json says float32"):
        backend.load_host_model(load_spec(d))


def test_tensor_dtypes_must_match_model_dtype(zoo16, tmp_path):
    d = _copy_model(zoo16 / "mlp", tmp_path / "mlp", dtype="float32")
    backend = CpuBackend(PAGE, 4, 1 << 20, 1 << 20)
    with pytest.raises(LoadError, match="says dtype float32 but lists float16 tensors"):
        backend.load_host_model(load_spec(d))


def test_cuda_module_without_gpu_code_is_refused(zoo16, tmp_path):
    """A model.json naming a CUDA module that holds host code only (here an llvm build) is
    refused before anything is loaded."""
    d = _copy_model(zoo16 / "mlp", tmp_path / "mlp", code={"cuda-sm_90": "llvm.so"})
    with pytest.raises(ValueError, match="no compiled GPU code"):
        tvm_runtime.check_runnable(load_spec(d), "cuda-sm_90")


def test_broken_tvm_ffi_is_refused_for_tensor_core_builds(monkeypatch):
    from importlib import metadata
    real = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda p: "0.1.15.post2" if p == "apache-tvm-ffi" else real(p))
    with pytest.raises(build.BuildError, match="apache-tvm-ffi==0.1.14.post0"):
        build.build_zoo(["mlp"], "/nonexistent", "cuda", "sm_90")
    build._check_tvm_ffi("cuda", "float32")        # float32 has no tensorization: allowed


def _tvm_ffi_tensorizes() -> bool:
    from importlib import metadata
    return not metadata.version("apache-tvm-ffi").startswith(build.TVM_FFI_BROKEN_TENSORIZE)


@pytest.mark.skipif(not _tvm_ffi_tensorizes(), reason="this apache-tvm-ffi segfaults in tensorization")
def test_tensor_cores_for_large_fp16_gemms_only():
    """The CUDA schedule (no GPU or nvcc needed to schedule): WMMA tensor cores for the fp16
    MLP's GEMMs whose dims are all >= 16 (batch 16: 16x512x784, 16x512x512), the default rules
    for the rest (batch 1; the 10-wide classifier)."""
    from tvm import relax, tirx
    from tvm.target import Target

    from clockwork.model import schedules
    mod = nets.relax_module(nets.get("mlp", "float16"), [1, 16])
    target = Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    with target:
        mod = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.FuseOps(),
                                        relax.transform.FuseTIR()])(mod)
        tensorized = {}
        for gv, f in mod.functions.items():
            if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint:
                sch = schedules.TensorCoresFirst().apply(f, target, False)
                tensorized[schedules.gemm_dims(f)] = sch is not None and "wmma" in sch.mod.script()
    assert tensorized.pop((16, 512, 784)) and tensorized.pop((16, 512, 512))
    assert tensorized.pop((16, 10, 512)) is False
    assert tensorized and not any(tensorized.values())       # batch 1 (no static GEMM dims)
