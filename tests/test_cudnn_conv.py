"""Convs served by cuDNN (`cw zoo build --conv cudnn`), checked without a GPU.

The Relax rewrite (conv2d + bias [+ residual add] [+ relu] -> one call of
clockwork.cudnn.conv2d) runs on the llvm target with a float32 numpy implementation registered
under the same global name: the rewritten model must give the unrewritten model's outputs and
the float64 reference's. The numpy implementation itself is checked against nets.NumpyOps (so
a wrong layout in it cannot hide a wrong rewrite). Models that need the op are refused, in one
line, by a worker that cannot provide it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install apache-tvm==0.27.0.post1)")

import tvm_ffi  # noqa: E402
from tvm import relax  # noqa: E402

from clockwork.model import build, cudnn_conv, nets  # noqa: E402
from clockwork.model.backend import LoadError  # noqa: E402
from clockwork.model.cpu import CpuBackend  # noqa: E402
from clockwork.model.format import load_spec  # noqa: E402

pytestmark = pytest.mark.timeout(300)
PAGE = 2 << 20


def tiny_resnet() -> nets.Net:
    """Stem, a block with a strided downsample conv, a block with an identity residual."""
    def declare(rec):
        nets._conv_decl(rec, "stem", 3, 8, 3)
        nets._conv_decl(rec, "a.c0", 8, 16, 3)
        nets._conv_decl(rec, "a.c1", 16, 16, 3, gain=0.3)
        nets._conv_decl(rec, "a.down", 8, 16, 1, gain=0.5)
        nets._conv_decl(rec, "b.c0", 16, 16, 1)
        nets._conv_decl(rec, "b.c1", 16, 16, 3, gain=0.3)
        nets._dense_decl(rec, "fc", 16, 10)

    def forward(ops, x, w):
        def c(name, x, s, p):
            return ops.conv(x, w[f"{name}.w"], w[f"{name}.b"], s, p)
        x = ops.relu(c("stem", x, 1, 1))
        y = c("a.c1", ops.relu(c("a.c0", x, 2, 1)), 1, 1)
        x = ops.relu(ops.add(y, c("a.down", x, 2, 0)))
        y = c("b.c1", ops.relu(c("b.c0", x, 1, 0)), 1, 1)
        x = ops.relu(ops.add(y, x))
        return ops.dense(ops.gap(x), w["fc.wT"], w["fc.b"])

    rec = nets._Recorder("NHWC")
    declare(rec)
    return nets.Net("tinyres", (3, 12, 12), (10,), forward, rec.weights, "float16", layout="NHWC")


@pytest.fixture
def reference_op():
    """The numpy implementation registered as the op for one test, removed afterwards."""
    cudnn_conv.register_reference()
    yield
    tvm_ffi.remove_global_func(cudnn_conv.OP)


def _run(mod, x, weights, batch):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in [x, *weights]]
    return vm[f"b{batch}"](*args).numpy()


def _ops_in(func) -> list[str]:
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.append(e.op.name)
        elif isinstance(e, relax.Call) and isinstance(e.op, relax.ExternFunc):
            names.append(e.op.global_symbol)
    relax.analysis.post_order_visit(func.body, visit)
    return names


def _packed_calls(func) -> list[relax.Call]:
    calls = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_dps_packed":
            calls.append(e)
    relax.analysis.post_order_visit(func.body, visit)
    return calls


def test_rewrite_replaces_every_conv_and_fuses_bias_residual_relu():
    mod, n = cudnn_conv.rewrite(nets.relax_module(tiny_resnet(), [2]))
    assert n == 6
    f = mod["b2"]
    ops = _ops_in(f)
    assert "relax.nn.conv2d" not in ops and "relax.nn.relu" not in ops
    calls = _packed_calls(f)
    assert len(calls) == 6
    args = [c.args[1].fields for c in calls]
    with_residual = [a for a in args if len(a) == 5]           # x, w, bias, z, attrs
    assert len(with_residual) == 2
    relu = [int(a[-1].values[6]) for a in args]
    assert relu.count(1) == 5                                   # every conv but the downsample


def test_rewritten_model_matches_unrewritten_and_float64_reference(reference_op):
    net = tiny_resnet()
    rng = np.random.default_rng(1)
    weights = net.init_weights(seed=3)
    x = rng.standard_normal((2, *net.input_shape)).astype(np.float32)
    plain = _run(nets.relax_module(net, [2]), x, weights, 2)
    mod, n = cudnn_conv.rewrite(nets.relax_module(net, [2]))
    assert n == 6
    got = _run(mod, x, weights, 2)
    ref = nets.reference(net, x, weights)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() / scale < 1e-2
    assert np.abs(got - plain).max() / scale < 1e-2


@pytest.mark.parametrize("stride,pad,k,residual,relu", [(1, 1, 3, False, True), (2, 1, 3, True, True),
                                                        (2, 0, 1, False, False), (1, 3, 7, True, False)])
def test_reference_op_matches_numpy_conv(stride, pad, k, residual, relu):
    """The CPU stand-in computes what NumpyOps does (NCHW/OIHW, float64) on NHWC/OHWI data."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 10, 5)).astype(np.float16)          # NHWC
    w = (rng.standard_normal((6, k, k, 5)) * 0.3).astype(np.float16)   # OHWI
    b = rng.standard_normal((1, 1, 6)).astype(np.float16)
    want = nets.NumpyOps.conv(x.astype(np.float64).transpose(0, 3, 1, 2),
                              w.astype(np.float64).transpose(0, 3, 1, 2),
                              b.astype(np.float64).reshape(6, 1, 1), stride, pad).transpose(0, 2, 3, 1)
    z = rng.standard_normal(want.shape).astype(np.float16) if residual else None
    if residual:
        want = want + z
    if relu:
        want = np.maximum(want, 0)
    got = cudnn_conv.reference_conv2d(x, w, b, z, [stride, stride, pad, pad, 1, 1, int(relu)])
    assert got.dtype == np.float16 and got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-3


def test_only_float16_nhwc_convs_are_rewritten():
    for dtype, layout in (("float32", "NHWC"), ("float16", "NCHW")):
        _, n = cudnn_conv.rewrite(nets.relax_module(nets.get("tinycnn", dtype, layout), [1]))
        assert n == 0, (dtype, layout)


def test_conv_option_checks_and_defaults():
    assert build.default_conv("cuda", "float16", "NHWC") == "cudnn"
    assert build.default_conv("cuda", "float32", "NCHW") == "tvm"
    assert build.default_conv("llvm", "float16", "NHWC") == "tvm"
    with pytest.raises(build.BuildError, match="needs --dtype float16 --layout NHWC"):
        build.check_conv("cudnn", "float32", "NHWC")
    with pytest.raises(build.BuildError, match="unknown conv"):
        build.check_conv("cutlass", "float16", "NHWC")


@pytest.fixture(scope="module")
def cudnn_zoo(tmp_path_factory):
    """tinycnn built for llvm with --conv cudnn: its model.json lists the op."""
    root = tmp_path_factory.mktemp("zoo")
    build.build_zoo(["tinycnn"], root, "llvm", page_size=PAGE, log=lambda *a: None,
                    dtype="float16", layout="NHWC", conv="cudnn")
    return root


def test_model_json_records_the_op_and_worker_without_it_refuses(cudnn_zoo):
    meta = json.loads((cudnn_zoo / "tinycnn" / "model.json").read_text())
    assert meta["conv"] == "cudnn" and meta["ops"] == [cudnn_conv.OP]
    spec = load_spec(cudnn_zoo / "tinycnn")
    assert spec.ops == [cudnn_conv.OP]
    backend = CpuBackend(PAGE, 4, 1 << 20, 1 << 20)
    with pytest.raises(LoadError) as e:
        backend.load_host_model(spec)
    msg = str(e.value)
    assert "\n" not in msg and "--conv cudnn" in msg and "only a CUDA worker" in msg


def test_cpu_worker_runs_the_cudnn_build_with_the_reference_op(cudnn_zoo, reference_op):
    spec = load_spec(cudnn_zoo / "tinycnn")
    backend = CpuBackend(PAGE, 4, 1 << 20, 1 << 20)
    hm = backend.load_host_model(spec)
    net = nets.get("tinycnn", "float16", "NHWC")
    weights = net.init_weights(0)
    x = np.random.default_rng(2).standard_normal((1, *net.input_shape)).astype(np.float32)
    f = hm.compiled.function(1)
    got = f(*[tvm.runtime.tensor(a) for a in [x, *weights]]).numpy()
    ref = nets.reference(net, x, weights)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-2


def test_cuda_worker_without_the_library_refuses_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CLOCKWORK_CUDNN_LIB", str(tmp_path / "missing.so"))
    monkeypatch.setattr(cudnn_conv, "_loaded", None)
    with pytest.raises(ValueError) as e:
        cudnn_conv.require([cudnn_conv.OP], "zoo/resnet50", "cuda")
    msg = str(e.value)
    assert "\n" not in msg and "cannot serve cuDNN convs" in msg and "missing.so not found" in msg
    with pytest.raises(ValueError, match="needs clockwork.other.op, which this worker does not know"):
        cudnn_conv.require(["clockwork.other.op"], "zoo/x", "cuda")
    cudnn_conv.require([], "zoo/x", "cuda")        # a model with no external ops needs nothing


def test_cudnn_without_its_parts_is_refused(monkeypatch, tmp_path):
    """cuDNN 9's front library aborts the process when a part is missing: checked first."""
    lib = tmp_path / "libclockwork_cudnn.so"
    lib.write_bytes(b"")
    (tmp_path / "cudnn").mkdir()
    (tmp_path / "cudnn" / "libcudnn.so.9").write_bytes(b"")
    monkeypatch.setenv("CLOCKWORK_CUDNN_LIB", str(lib))
    monkeypatch.setenv("CUDNN_LIB_DIR", str(tmp_path / "cudnn"))
    monkeypatch.setattr(cudnn_conv, "_loaded", None)
    with pytest.raises(cudnn_conv.OpsUnavailable, match="lacks libcudnn_graph.so.9"):
        cudnn_conv.load()
