"""`cw zoo import`: ONNX graphs through TVM's relax frontend into paged model directories.

Real graphs the onnx wheel ships (SqueezeNet, ShuffleNet) with seeded weights are imported,
compiled for llvm and run through the same WorkerRuntime + CPU backend as the GPU worker; their
outputs are checked against onnxruntime on the same graph and inputs, at batch 1 and at a padded
batch. Every bad-model case must give its one-line error and leave nothing behind. Needs TVM,
onnx and onnxruntime (skipped without them).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install apache-tvm==0.27.0.post1)")
onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[test]')")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from clockwork.model import build, onnx_import as oi  # noqa: E402
from clockwork.model.format import load_spec  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from test_tvm_cpu import PAGE, Driver  # noqa: E402

LIGHT = ("squeezenet", "shufflenet")
SHARE = {"squeezenet": True, "shufflenet": False}     # kernels shared by the batch sizes or not
BATCHES = (1, 2, 4)
pytestmark = pytest.mark.timeout(600)


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnxzoo")
    for name in LIGHT:
        oi.import_onnx_zoo(root, [name], target="llvm", batch_sizes=BATCHES, page_size=PAGE,
                           share_kernels=SHARE[name], log=_quiet)
    return root


def _reference(model, input_name, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {input_name: x})[0]


def _serve(zoo, name, xs):
    """Load `name` on the CPU worker runtime and infer each batch in xs; returns the outputs."""
    spec = load_spec(zoo / name)
    d = Driver(zoo, total_pages=32)
    msg, _ = d.do(s.LoadModelFromDisk, model_id=0, path=name,
                  max_exec_ns=60_000_000_000)       # unscheduled llvm code is slow
    assert isinstance(msg, s.LoadModelFromDiskResult), msg
    assert isinstance(d.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    outs = []
    for x in xs:
        msg, frames = d.do(s.Infer, model_id=0, gpu_id=0, batch_size=len(x), data=[x.tobytes()])
        assert isinstance(msg, s.InferResult), msg
        outs.append(np.frombuffer(frames[0], spec.output_dtype).reshape(len(x), *spec.output_shape))
    return outs


@pytest.mark.parametrize("name", LIGHT)
def test_light_models_match_onnxruntime(zoo, name):
    spec = load_spec(zoo / name)
    meta = json.loads((zoo / name / "model.json").read_text())
    graph = oi.load_graph({"light": name, "seed": 0, "page_size": PAGE})
    assert meta["input"]["name"] == graph.input_name and meta["output"]["name"] == graph.output_name
    assert spec.batch_sizes == list(BATCHES) and spec.code == {"llvm": "llvm.so"}
    assert spec.weights_size == sum(a.nbytes for _, a in graph.weights)
    xs = [oi.sample_input(spec.input_shape, b, seed=b) for b in (1, 3)]   # 3 runs padded to 4
    for x, out in zip(xs, _serve(zoo, name, xs)):
        ref = _reference(graph.model, graph.input_name, x).reshape(out.shape)
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < 1e-4, f"{name} b{len(x)}: relative error {err}"
        if len(x) > 1:          # the check can see items swapped or padding leaking in
            assert np.abs(ref[0] - ref[1]).max() > 100 * 1e-4 * np.abs(ref).max()


def _kernels(job, batch_sizes):
    """The module relax_module makes, legalized, and how many PrimFuncs (kernels) it has."""
    from tvm import relax, tirx
    mod = relax.transform.LegalizeOps()(oi.relax_module(job, batch_sizes)[0])
    return mod, sum(isinstance(f, tirx.PrimFunc) for f in mod.functions.values())


def _calls_shared(func) -> bool:
    return oi.SHARED in func.script()


def test_shared_kernels_make_one_set_for_all_batch_sizes():
    """Compile time grows with the kernels' CUDA source: with share_kernels the batch sizes of
    a conv net call one function imported with a symbolic batch: one set of kernels, not five."""
    job = {"light": "squeezenet", "seed": 0, "page_size": PAGE, "share_kernels": True}
    one_mod, one = _kernels(job, [1])
    mod, five = _kernels(job, [1, 2, 4, 8, 16])
    assert one > 10 and five <= one + 2, (one, five)
    assert all(_calls_shared(mod[f"b{b}"]) for b in (1, 2, 4, 8, 16))
    item = [int(d) for d in one_mod["b1"].ret_ty.shape.values[1:]]
    assert [int(d) for d in mod["b8"].ret_ty.shape.values] == [8, *item]     # static for the worker


def test_batch_one_of_a_net_with_dense_layers_has_its_own_kernels(tmp_path):
    """At batch 1 a dense layer is a GEMV (dlight's fast rule): b1 is imported for batch 1
    even with share_kernels."""
    _dense_model(tmp_path / "dense.onnx")
    job = {"source": str(tmp_path / "dense.onnx"), "page_size": PAGE, "share_kernels": True}
    mod, _ = _kernels(job, [1, 2, 4])
    assert not _calls_shared(mod["b1"]) and _calls_shared(mod["b2"]) and _calls_shared(mod["b4"])


def test_kernels_are_per_batch_size_by_default():
    """Shared kernels are slower at run time (BENCHMARKS.md): only on request."""
    job = {"light": "squeezenet", "seed": 0, "page_size": PAGE}
    mod, _ = _kernels(job, [1, 2, 4])
    assert oi.SHARED not in {gv.name_hint for gv in mod.get_global_vars()}
    assert not any(_calls_shared(mod[f"b{b}"]) for b in (1, 2, 4))


def test_graph_onnx_fed_from_weights_bin_matches(zoo):
    """graph.onnx + weights.bin (read through the pages table) is the model that was imported:
    what a GPU host without the onnx source uses to check outputs."""
    spec = load_spec(zoo / "squeezenet")
    blob = np.fromfile(zoo / "squeezenet" / "weights.bin", np.uint8)
    feeds = {}
    for t in spec.tensors:
        start = spec.pages[t.page][0] + t.offset
        feeds[t.name] = blob[start:start + t.nbytes].view(t.dtype).reshape(t.shape)
    x = oi.sample_input(spec.input_shape, 2, seed=5)
    sess = ort.InferenceSession(str(zoo / "squeezenet" / oi.GRAPH_FILE), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"data_0": x, **feeds})[0]
    graph = oi.load_graph({"light": "squeezenet", "seed": 0, "page_size": PAGE})
    ref = _reference(graph.model, graph.input_name, x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5      # ORT folds initializers


def test_import_is_cached(zoo):
    logs = []
    oi.import_onnx_zoo(zoo, ["squeezenet"], target="llvm", batch_sizes=BATCHES, page_size=PAGE,
                       share_kernels=SHARE["squeezenet"], log=logs.append)
    assert any("up to date" in line for line in logs) and not any("compiling" in line for line in logs)


def test_bundle_regenerates_light_weights(zoo, tmp_path):
    import shutil
    d = tmp_path / "shufflenet"
    d.mkdir()
    shutil.copy(zoo / "shufflenet" / "model.json", d / "model.json")
    build.materialize_weights(d, log=_quiet)
    assert (d / "weights.bin").read_bytes() == (zoo / "shufflenet" / "weights.bin").read_bytes()


# ---------------------------------------------------------------------------------------------
# small hand-made graphs: symbolic and fixed batch, and every bad-model case

def _dense_model(path, batch="N", inputs=1, outputs=1, op="Gemm", k=8, n=4, reshape_to=None):
    """x[batch, k] @ W[k, n] + b (optionally more inputs/outputs, another op, a fixed reshape)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((n,)).astype(np.float32), "b")
    ins = [helper.make_tensor_value_info(f"x{i}" if i else "x", TensorProto.FLOAT, [batch, k])
           for i in range(inputs)]
    nodes = [helper.make_node(op, ["x", "W", "b"], ["y"], name="dense")]
    inits = [w, b]
    last = "y"
    if reshape_to is not None:
        inits.append(numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["y", "shape"], ["z"], name="flatten"))
        last = "z"
    outs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)]
    for i in range(1, outputs):
        nodes.append(helper.make_node("Relu", [last], [f"o{i}"]))
        outs.append(helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, None))
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return model


@pytest.mark.parametrize("batch", ["N", 1])
def test_symbolic_or_fixed_batch_imports_and_matches(tmp_path, batch):
    model = _dense_model(tmp_path / "dense.onnx", batch=batch)
    d = oi.import_model(tmp_path / "dense.onnx", tmp_path / "zoo", target="llvm",
                        batch_sizes=[1, 2], page_size=PAGE, log=_quiet)
    meta = json.loads((d / "model.json").read_text())
    assert meta["input"] == {"name": "x", "shape": [8], "dtype": "float32"}
    assert meta["output"] == {"name": "y", "shape": [4], "dtype": "float32"}
    x = oi.sample_input((8,), 2, seed=1)
    out = _serve(tmp_path / "zoo", "dense", [x])[0]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(out, x @ w["W"] + w["b"], rtol=1e-5, atol=1e-5)


def test_float16_stores_half_precision_weights_and_stays_close(tmp_path):
    model = _dense_model(tmp_path / "dense.onnx", k=64, n=16)
    d = oi.import_model(tmp_path / "dense.onnx", tmp_path / "zoo", target="llvm",
                        batch_sizes=[2, 4], page_size=PAGE, dtype="float16", log=_quiet)
    spec = load_spec(d)
    assert spec.input_dtype == "float32" and {t.dtype for t in spec.tensors} == {"float16"}
    assert spec.weights_size == sum(t.nbytes for t in spec.tensors) == (64 * 16 + 16) * 2
    x = oi.sample_input((64,), 2, seed=4)
    out = _serve(tmp_path / "zoo", "dense", [x])[0]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ref = x @ w["W"] + w["b"]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-2


def test_dense_weight_larger_than_a_page_is_split(tmp_path):
    """A Gemm whose weight exceeds a page runs as column blocks, each in its own page."""
    k, n = 512, 2048                          # 4 MiB weight, 2 MiB pages
    model = _dense_model(tmp_path / "wide.onnx", k=k, n=n)
    d = oi.import_model(tmp_path / "wide.onnx", tmp_path / "zoo", target="llvm", batch_sizes=[2],
                        page_size=PAGE, log=_quiet)
    spec = load_spec(d)
    assert max(t.nbytes for t in spec.tensors) <= PAGE and len(spec.pages) >= 2
    x = oi.sample_input((k,), 2, seed=2)
    out = _serve(tmp_path / "zoo", "wide", [x])[0]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(out, x @ w["W"] + w["b"], rtol=1e-4, atol=1e-4)


def test_inputs_and_weights_are_renamed_to_c_identifiers(tmp_path):
    """CUDA source names kernel parameters after them: 'gpu_0/data_0' would not compile."""
    import re
    model = _dense_model(tmp_path / "m.onnx")
    g = model.graph
    renames = {"x": "gpu_0/data_0", "W": "fc6/w.0", "b": "1b"}
    for v in list(g.input) + list(g.initializer):
        v.name = renames.get(v.name, v.name)
    g.node[0].input[:] = [renames[n] for n in g.node[0].input]
    renamed, mapping = oi.c_identifiers(model)
    assert set(mapping) == set(renames.values())
    names = [v.name for v in list(renamed.graph.input) + list(renamed.graph.initializer)]
    assert all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names), names
    x = oi.sample_input((8,), 2, seed=3)
    np.testing.assert_array_equal(_reference(renamed, mapping["gpu_0/data_0"], x),
                                  _reference(model, "gpu_0/data_0", x))


def _refused(tmp_path, match, **kw):
    out = tmp_path / "zoo"                 # a zoo with a model already: left as it was
    (out / "other").mkdir(parents=True)
    (out / "other" / "model.json").write_text("{}")
    with pytest.raises(oi.ImportFailed, match=match) as e:
        oi.import_model(kw.pop("source", tmp_path / "m.onnx"), out, target="llvm",
                        batch_sizes=kw.pop("batch_sizes", [1, 2]), page_size=PAGE, log=_quiet, **kw)
    assert "\n" not in str(e.value)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["other", "other/model.json"]
    return str(e.value)


def test_not_onnx_is_refused(tmp_path):
    (tmp_path / "m.onnx").write_text("this is not a protobuf\n" * 10)
    _refused(tmp_path, "not an ONNX model")


def test_external_data_is_read_and_its_absence_is_named(tmp_path):
    model = _dense_model(tmp_path / "m.onnx")
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
    d = oi.import_model(tmp_path / "m.onnx", tmp_path / "ok", target="llvm", batch_sizes=[1],
                        page_size=PAGE, log=_quiet)
    assert load_spec(d).weights_size == (8 * 4 + 4) * 4
    (tmp_path / "m.weights").unlink()
    _refused(tmp_path, "external weights could not be read")


def test_op_tvm_cannot_import_is_named_with_its_node(tmp_path):
    _dense_model(tmp_path / "m.onnx", op="MysteryOp")
    msg = _refused(tmp_path, "MysteryOp")
    assert "'dense'" in msg


@pytest.mark.parametrize("inputs,outputs", [(2, 1), (1, 3)])
def test_too_many_inputs_or_outputs_say_how_many(tmp_path, inputs, outputs):
    _dense_model(tmp_path / "m.onnx", inputs=inputs, outputs=outputs)
    msg = _refused(tmp_path, "takes exactly 1 input and 1 output")
    assert f"{inputs} input(s)" in msg and f"{outputs} output(s)" in msg


def test_weights_larger_than_the_cache_are_refused(tmp_path):
    _dense_model(tmp_path / "m.onnx", k=1024, n=1024)          # 4 MiB: two 2 MiB pages
    _refused(tmp_path, "more than the .* weights cache", cache_size=PAGE)


def test_batch_dimension_that_cannot_be_set_is_refused(tmp_path):
    _dense_model(tmp_path / "m.onnx", batch=1, reshape_to=[1, 4])    # batch baked into a Reshape
    msg = _refused(tmp_path, "batch dimension of input 'x' cannot be set to 2", batch_sizes=[1, 2, 4])
    assert "first dimension" in msg or "TVM could not" in msg


def test_symbolic_item_dimension_is_refused(tmp_path):
    _dense_model(tmp_path / "m.onnx")
    m = onnx.load(str(tmp_path / "m.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    onnx.save(m, str(tmp_path / "m.onnx"))
    _refused(tmp_path, "only the batch dimension")


def test_cli_error_is_one_line(tmp_path):
    from click.testing import CliRunner
    from clockwork.model.commands import zoo_group
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage")
    r = CliRunner().invoke(zoo_group, ["import", str(tmp_path / "m.onnx"), "-t", "llvm",
                                       "-o", str(tmp_path / "zoo")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error:") and "not an ONNX model" in r.output
    assert not (tmp_path / "zoo").exists()


# ---------------------------------------------------------------------------------------------
# end to end: an imported model served by a real CPU worker process through the controller

@pytest.mark.timeout(420)
def test_imported_model_served_end_to_end_by_the_cpu_worker(zoo, tmp_path):
    from clockwork.client.api import Client
    from clockwork.local import PY, LocalCluster
    from clockwork.status import Status

    class CpuCluster(LocalCluster):
        """The controller as usual, the worker a real `cw worker --backend cpu` process."""

        def start_worker(self, index=0):
            proc = self._spawn("worker", [PY, "-m", "clockwork.worker.command", "--backend", "cpu",
                                          "--host", "127.0.0.1", "--port", str(self.worker_ports[index]),
                                          "--model-dir", str(self.model_dir)])
            self.worker_procs.append(proc)
            return proc

    # Unscheduled llvm code runs for up to seconds, and on a loaded machine far from its
    # profiled time: the FIFO scheduler (runs what is queued at once, wide windows) with
    # generous limits (also for heartbeats, which a running CPU exec holds up), so the answer
    # never depends on timing. INFER4 is what the emulated
    # end-to-end tests exercise.
    cfg = tmp_path / "cw.toml"
    cfg.write_text(f"[worker]\npage_size = {PAGE}\nweights_cache_size = {32 * PAGE}\n"
                   f"io_pool_size = {64 << 20}\nworkspace_pool_size = {64 << 20}\n"
                   "[controller]\nmax_exec_ms = 120000.0\ndefault_slo_ms = 600000.0\n"
                   "worker_timeout_ms = 600000\n")   # the CPU backend's exec blocks heartbeats
    spec = load_spec(zoo / "shufflenet")
    graph = oi.load_graph({"light": "shufflenet", "seed": 0, "page_size": PAGE})
    with CpuCluster(model_dir=zoo, config_file=cfg, scheduler="fifo") as cluster:
        client = Client(cluster.address, log=_quiet)
        try:
            model_id, _, _ = client.load_model("shufflenet", timeout_s=300)
            for b in (1, 3):
                x = oi.sample_input(spec.input_shape, b, seed=10 + b)
                reply = client.infer(model_id, inputs=x, batch_size=b, timeout_s=120)
                assert reply.response.status == Status.SUCCESS, reply.response
                out = np.frombuffer(reply.output, spec.output_dtype).reshape(b, *spec.output_shape)
                ref = _reference(graph.model, graph.input_name, x).reshape(out.shape)
                assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
        finally:
            client.close()
