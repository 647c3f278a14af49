"""`cw zoo import MODEL.onnx`: bring your own model, through TVM's Relax ONNX frontend.

The graph's floating-point initializers become the model's weights, laid out in pages like a
zoo model's (clockwork.model.format), and `tvm.relax.frontend.onnx.from_onnx(...,
keep_params_in_input=True)` makes them function parameters after the input: the calling
convention the paged weights cache uses. Integer initializers (shapes, indices) are folded into
the graph as constants. Every batch size gets its own function (b1, b2, ...): the graph is
imported once per batch size with the input's first dimension set to it (fixed or symbolic in
the file), and must give an output whose first dimension is that batch size.

Compiling reuses clockwork.model.build (same child process, stub libcuda, refusal of modules
without GPU code, progress lines, cache keyed on the graph's hash). Nothing is written unless
everything succeeded: the model is made in a staging folder and moved into place at the end.

`--onnx-zoo` imports the small real graphs the onnx wheel ships (onnx/backend/test/data/light:
AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512),
whose weights are ConstantOfShape nodes: they are replaced by seeded random initializers
scaled per use (He scale for conv/dense weights, ~1 for scales and variances, ~0 for biases),
so the weights can be regenerated from the seed with numpy alone (bundles ship without them).

This module imports onnx lazily and TVM only in its child processes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import build, nets
from .format import DEFAULT_PAGE_SIZE, METADATA, layout_pages, write_metadata

MAX_INPUTS = 1          # the wire format carries one input tensor per item
MAX_OUTPUTS = 1         # ... and one output tensor
GRAPH_FILE = "graph.onnx"           # the imported graph without its weights (they are inputs)
ONNX_ZOO = ("alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50_onnx",
            "shufflenet", "squeezenet", "vgg19", "zfnet512")
_LIGHT_FILES = {"alexnet": "light_bvlc_alexnet.onnx", "resnet50_onnx": "light_resnet50.onnx"}
FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
ERROR_PREFIX = "import error: "


class ImportFailed(build.BuildError):
    """An ONNX model cannot be imported; the message names the problem in one line."""


@dataclass
class Graph:
    """An ONNX graph ready for from_onnx, and what the parent needs to know about it."""
    model: object                              # onnx.ModelProto, weights as initializers
    input_name: str
    input_shape: tuple[int, ...]               # one item (batch dim excluded)
    input_dtype: str
    output_name: str
    weights: list[tuple[str, np.ndarray]]      # in initializer order = parameter order


# ---------------------------------------------------------------------------------------------
# reading and checking a graph (parent, onnx only)

def _onnx():
    try:
        import onnx
        return onnx
    except ImportError:
        raise ImportFailed("importing ONNX models needs the onnx package: pip install onnx") from None


def read_onnx(path: str | Path):
    """Load an ONNX file with its external data; a clear error if it is not one."""
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:     # protobuf DecodeError, ...
        raise ImportFailed(f"{path}: not an ONNX model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    try:
        from onnx.external_data_helper import load_external_data_for_model
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:     # a file it names is missing or short
        raise ImportFailed(f"{path}: its external weights could not be read "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not model.graph.node:
        raise ImportFailed(f"{path}: not an ONNX model (no graph nodes)")
    return model


def _dims(value_info) -> list:
    """Dims of a graph input/output: ints, names of symbolic dims, or None (unknown)."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _names(values, most=4) -> str:
    names = [v.name for v in values]
    return ", ".join(names[:most]) + (f", ... {len(names) - most} more" if len(names) > most else "") \
        if names else "none"


def prepare(model, path: str | Path = "model", page_size: int = DEFAULT_PAGE_SIZE) -> Graph:
    """Check the graph's inputs and outputs and return it ready for import: integer
    initializers folded into Constant nodes, float initializers kept as the weights, dense
    layers whose weight exceeds a page split into column blocks (split_dense)."""
    onnx = _onnx()
    from onnx import helper, numpy_helper
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != MAX_INPUTS or len(g.output) != MAX_OUTPUTS:
        raise ImportFailed(
            f"{path}: {len(inputs)} input(s) ({_names(inputs)}) and {len(g.output)} output(s) "
            f"({_names(g.output)}); the model format takes exactly {MAX_INPUTS} input and "
            f"{MAX_OUTPUTS} output tensor")
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    try:
        in_dtype = str(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        raise ImportFailed(f"{path}: input {inp.name!r} is not a tensor of a numeric type") from None
    dims = _dims(inp)
    if not dims:
        raise ImportFailed(f"{path}: input {inp.name!r} has no batch dimension (rank 0 or unknown "
                           "rank); the first dimension must be the batch")
    for i, d in enumerate(dims[1:], 1):
        if not isinstance(d, int) or d <= 0:
            raise ImportFailed(f"{path}: input {inp.name!r} dim {i} is {d!r}; only the batch "
                               "dimension (dim 0) may be symbolic, the others must be fixed")
    constants, kept = [], []
    for t in g.initializer:
        if t.data_type in FLOAT_TYPES:
            kept.append(t)
        else:                                  # shapes, indices: constants, not weights
            constants.append(helper.make_node("Constant", [], [t.name], value=t,
                                              name=f"{t.name}__const"))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    del out.graph.input[:]
    out.graph.input.extend([inp])
    nodes = constants + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    untranspose_dense(out)
    split_dense(out, page_size)
    weights = [(t.name, numpy_helper.to_array(t)) for t in out.graph.initializer]
    return Graph(out, inp.name, tuple(dims[1:]), in_dtype, g.output[0].name, weights)


def untranspose_dense(model) -> None:
    """Gemm with transB=1 over a weight initializer -> transB=0 with the weight stored
    transposed (K x N, as clockwork.model.nets stores dense weights): the same function
    without the transpose TVM's Gemm importer would put in front of every matmul, and the
    layout split_dense cuts into column blocks."""
    from onnx import helper, numpy_helper
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    for node in g.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits[node.input[1]]
        if not attrs.get("transB", 0) or len(w.dims) != 2 or uses[w.name] != 1:
            continue
        w.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(w).T), w.name))
        attrs["transB"] = 0
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())


def split_dense(model, page_size: int) -> None:
    """A weight tensor must sit inside one weights-cache page, but dense layers often exceed
    one (AlexNet's fc6: 144 MiB). Split each such Gemm/MatMul into Gemms/MatMuls over blocks of
    output columns, each block's weight (and bias) a tensor that fits a page, and concatenate
    their outputs (small: batch x columns). Other oversized weights are left for
    check_weights_fit to refuse."""
    from onnx import helper, numpy_helper
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    replaced: dict[str, list] = {}             # initializer name -> its pieces
    nodes = []
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 \
            else None
        if w is None or w.data_type not in FLOAT_TYPES or len(w.dims) != 2:
            nodes.append(node)
            continue
        W = numpy_helper.to_array(w)
        if W.nbytes <= page_size:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        trans_b = node.op_type == "Gemm" and attrs.get("transB", 0)
        n = W.shape[0] if trans_b else W.shape[1]
        cols = page_size // (W.nbytes // n)            # most columns a page holds
        if cols >= 1:
            cols = -(-n // -(-n // cols))               # as few blocks, of even widths
        c = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if cols < 1 or (len(node.input) > 2 and node.input[2] and c is None):
            nodes.append(node)
            continue
        C = numpy_helper.to_array(c) if c is not None else None
        outs = []
        for k, start in enumerate(range(0, n, cols)):
            stop = min(n, start + cols)
            wk = np.ascontiguousarray(W[start:stop] if trans_b else W[:, start:stop])
            pieces = replaced.setdefault(w.name, [])
            pieces.append(numpy_helper.from_array(wk, f"{w.name}.{k}"))
            inputs = [node.input[0], f"{w.name}.{k}"]
            if C is not None:
                if C.ndim and C.shape[-1] == n:
                    replaced.setdefault(c.name, []).append(
                        numpy_helper.from_array(np.ascontiguousarray(C[..., start:stop]), f"{c.name}.{k}"))
                    inputs.append(f"{c.name}.{k}")
                else:
                    inputs.append(c.name)
            outs.append(f"{node.output[0]}.{k}")
            nodes.append(helper.make_node(node.op_type, inputs, [outs[-1]],
                                          name=f"{node.name or node.output[0]}.{k}", **attrs))
        nodes.append(helper.make_node("Concat", outs, list(node.output), axis=-1,
                                      name=f"{node.name or node.output[0]}.concat"))
    if not replaced:
        return
    used = {i for nd in nodes for i in nd.input}
    new_inits = []
    for t in g.initializer:
        if t.name in used:
            new_inits.append(t)
        new_inits.extend(replaced.get(t.name, []))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.node[:]
    g.node.extend(nodes)


def graph_hash(graph: Graph, extra=()) -> str:
    """Changes when what gets compiled or stored changes (graph, weights, this importer)."""
    h = hashlib.sha256()
    h.update(graph.model.SerializeToString())
    h.update(repr(extra).encode())
    h.update(inspect.getsource(sys.modules[__name__]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# the onnx wheel's light models, with seeded random weights

def light_path(name: str) -> Path:
    """The light model's file: in $CLOCKWORK_ONNX_LIGHT_DIR if set (a copy, for hosts whose
    onnx wheel lacks its test data), else in the onnx wheel."""
    fname = _LIGHT_FILES.get(name, f"light_{name}.onnx")
    base = os.environ.get("CLOCKWORK_ONNX_LIGHT_DIR")
    if not base:
        base = Path(_onnx().__file__).parent / "backend" / "test" / "data" / "light"
    p = Path(base) / fname
    if name not in ONNX_ZOO or not p.exists():
        raise ImportFailed(f"no light model {name!r} in the onnx wheel (known: {', '.join(ONNX_ZOO)})")
    return p


def _init_recipe(model, name: str, shape) -> tuple[float, float]:
    """(mean, std) of a seeded weight, from how the graph uses it: He scale for conv and
    dense weights, ~1 for scales and variances, ~0 for biases and shifts."""
    for node in model.graph.node:
        if name not in node.input:
            continue
        slot = list(node.input).index(name)
        if node.op_type == "Conv" and slot == 1:
            return 0.0, float(np.sqrt(2.0 / max(1, int(np.prod(shape[1:])))))
        if node.op_type in ("Gemm", "MatMul") and slot == 1 and len(shape) == 2:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            fan_in = shape[1] if trans_b else shape[0]
            return 0.0, float(np.sqrt(2.0 / max(1, fan_in)))
        if node.op_type == "BatchNormalization" and slot in (1, 4):
            return 1.0, 0.1                    # scale, variance: positive, near 1
        if node.op_type in ("Mul", "Div"):
            return 1.0, 0.1
        if node.op_type in ("Unsqueeze", "Reshape", "Squeeze", "Cast", "Identity") and slot == 0:
            return _init_recipe(model, node.output[0], shape)   # judged by the real consumer
    return 0.0, 0.01


def seed_light_model(model, seed: int = 0, values: bool = True):
    """Replace ConstantOfShape weights (and any other float initializer) by seeded random
    initializers, and make the batch-1 graph batch-agnostic (input and output dim 0 symbolic,
    Reshape targets' leading 1 -> 0, ONNX's "copy this dim"). values=False: zeros instead
    (enough where only the graph's structure matters: the compiling child)."""
    onnx = _onnx()
    from onnx import numpy_helper
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    made, drop = [], set()
    for k, node in enumerate(g.node):
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = numpy_helper.to_array(inits[node.input[0]]).astype(int).tolist()
            made.append((node.output[0], shape))
            drop.add(k)
    for node in g.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            t = inits[node.input[1]]
            s = numpy_helper.to_array(t).copy()
            if s.ndim == 1 and s.size > 1 and s[0] == 1:
                s[0] = 0
                t.CopyFrom(numpy_helper.from_array(s, t.name))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [n for k, n in enumerate(model.graph.node) if k not in drop]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    shapes = [(n, s) for n, s in made]
    shapes += [(t.name, list(t.dims)) for t in g.initializer
               if t.data_type in FLOAT_TYPES and t.name in used]
    rng = np.random.default_rng(seed)
    arrays = []
    for n, shape in shapes:
        mean, std = _init_recipe(model, n, shape)
        arrays.append(np.zeros(shape, np.float32) if not values else
                      rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
                      + np.float32(mean))
    keep = [t for t in g.initializer if t.data_type not in FLOAT_TYPES and t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + [numpy_helper.from_array(a, n)
                                         for (n, _), a in zip(shapes, arrays)])
    weights = {n for n, _ in shapes}
    data_inputs = [i for i in g.input if i.name in used and i.name not in weights
                   and i.name not in inits]
    del out.graph.input[:]
    out.graph.input.extend(data_inputs)
    for v in list(out.graph.input) + list(out.graph.output):     # batch 1 -> any batch
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    if values:
        _calibrate_logits(out, seed)
    return out


_HOMOGENEOUS = ("Relu", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Identity",
                "GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool")


def sample_input(item_shape, batch: int, seed: int = 0) -> np.ndarray:
    """Float32 inputs whose items differ in scale and per-channel offset, so a deep random
    network's outputs differ per item (plain noise images give nearly equal outputs)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *item_shape), dtype=np.float32)
    scale = rng.uniform(0.5, 2.0, (batch,) + (1,) * len(item_shape)).astype(np.float32)
    shift = rng.uniform(-1, 1, (batch, item_shape[0]) + (1,) * (len(item_shape) - 1)) \
        if item_shape else 0.0
    return (x * scale + np.float32(1) * shift).astype(np.float32)


def _calibrate_logits(model, seed: int, target_std: float = 2.0) -> None:
    """Random weights give logits that saturate the final softmax (a one-hot output hides
    numerical errors) or flatten it. Scale the last layer's weight and bias by a power of two
    (exact, and robust to another onnxruntime's rounding) so the logits' std is ~target_std.
    Only through ops that scale with their input (ReLU, pooling, reshapes)."""
    from onnx import helper, numpy_helper
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if len(softmax) != 1:
        return
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(softmax[0].input[0])
    while node is not None and node.op_type in _HOMOGENEOUS:
        node = producers.get(node.input[0])
    inits = {t.name: t for t in model.graph.initializer}
    if node is None or node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits:
        return
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportFailed("the onnx light models need onnxruntime to scale their seeded "
                           "weights: pip install onnxruntime") from None
    probe = type(model)()
    probe.CopyFrom(model)
    logits = softmax[0].input[0]
    del probe.graph.output[:]
    probe.graph.output.append(helper.make_empty_tensor_value_info(logits))
    inp = probe.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    std = float(sess.run([logits], {inp.name: sample_input(shape, 4, seed)})[0].std())
    if not np.isfinite(std) or std <= 0:
        return
    factor = np.float32(2.0 ** round(np.log2(target_std / std)))
    for name in node.input[1:3]:
        if name in inits:
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, name))


def read_light(name: str, seed: int = 0, values: bool = True):
    """A light model of the onnx wheel with seeded weights."""
    return seed_light_model(read_onnx(light_path(name)), seed, values)


# ---------------------------------------------------------------------------------------------
# importing (parent: no TVM)

def load_graph(job: dict, values: bool = True) -> Graph:
    """The graph an import job describes ({"source", "light", "seed", "page_size"}), prepared;
    parent and children call this so both see the same graph (children without the light
    models' weight values, which compiling does not need)."""
    if job.get("light"):
        model = read_light(job["light"], int(job.get("seed", 0)), values)
    else:
        model = read_onnx(job["source"])
    return prepare(model, job.get("source") or job["light"],
                   int(job.get("page_size", DEFAULT_PAGE_SIZE)))


class _Weights:
    """Adapter so build.write_weights lays out an imported graph's arrays like a zoo net's."""

    def __init__(self, named: list[tuple[str, np.ndarray]]):
        self._arrays = [a for _, a in named]
        self.weights = [(n, tuple(a.shape), 0.0) for n, a in named]
        self.weights_size = sum(a.nbytes for a in self._arrays)

    def init_weights(self, seed: int = 0) -> list[np.ndarray]:
        return self._arrays


def check_weights_fit(graph: Graph, page_size: int, cache_size: int | None, dtypes=None) -> int:
    """Pages the weights take; ImportFailed if a tensor exceeds a page or all exceed the cache."""
    sizes = [a.size * np.dtype(dt or a.dtype).itemsize
             for (_, a), dt in zip(graph.weights, dtypes or [None] * len(graph.weights))]
    big = max(range(len(sizes)), key=sizes.__getitem__, default=None)
    if big is not None and sizes[big] > page_size:
        raise ImportFailed(f"weight {graph.weights[big][0]!r} is {sizes[big] / 2**20:.1f} MiB, larger "
                           f"than a {page_size / 2**20:.0f} MiB weights-cache page (--page-size)")
    pages = len(layout_pages(sizes, page_size)[1]) if sizes else 0
    if cache_size is not None and pages * page_size > cache_size:
        raise ImportFailed(f"the weights take {pages} pages of {page_size / 2**20:.0f} MiB "
                           f"({pages * page_size / 2**30:.2f} GiB), more than the "
                           f"{cache_size / 2**30:.2f} GiB weights cache (worker.weights_cache_size)")
    return pages


def _run_probe(job_file: Path, batch_sizes) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=os.environ.get("TVM_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(build.REPO_ROOT), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-m", __name__, "probe", str(job_file),
                        ",".join(map(str, batch_sizes))], env=env, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    for line in reversed(r.stderr.splitlines()):
        if line.startswith(ERROR_PREFIX):
            raise ImportFailed(line[len(ERROR_PREFIX):])
    tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise ImportFailed(f"importing the graph failed: {tail}")


def _weightless_graph(graph: Graph):
    """The graph with its weights turned into inputs: small, for checking outputs elsewhere
    (onnxruntime fed the weights from weights.bin)."""
    onnx = _onnx()
    from onnx import helper
    g = onnx.ModelProto()
    g.CopyFrom(graph.model)
    del g.graph.initializer[:]
    for t in graph.model.graph.initializer:
        g.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return g


def import_model(source: str | Path | None, out_root: str | Path, name: str | None = None,
                 target: str = "llvm", arch: str | None = None, batch_sizes=(1, 2, 4, 8, 16),
                 page_size: int = DEFAULT_PAGE_SIZE, dtype: str = "float32",
                 cache_size: int | None = None, force: bool = False, light: str | None = None,
                 seed: int = 0, share_kernels: bool = False, log=print) -> Path:
    """Import one ONNX file (or, with `light`, one of the onnx wheel's light models with seeded
    weights) into out_root/NAME. Skips what is unchanged; writes nothing on failure.
    share_kernels: batch sizes share kernels compiled for a symbolic batch (relax_module)."""
    if dtype not in ("float32", "float16"):
        raise ImportFailed(f"--dtype {dtype!r}: float32 or float16")
    key = build.target_key(target, arch)
    batch_sizes = sorted(int(b) for b in batch_sizes)
    name = name or light or Path(source).stem
    if not name or "/" in name or name.startswith("."):
        raise ImportFailed(f"{name!r} is not a model name (use --name)")
    job_spec = {"source": str(light_path(light) if light else source), "light": light,
                "seed": seed, "dtype": dtype, "page_size": page_size, "share_kernels": share_kernels}
    graph = load_graph(job_spec)
    source = job_spec["source"]
    check_weights_fit(graph, page_size, cache_size,
                      ["float16" if dtype == "float16" else None] * len(graph.weights))
    g_hash = graph_hash(graph, (dtype, share_kernels))
    w_hash = build._hash(g_hash, page_size)
    c_hash = build._hash(g_hash, key, batch_sizes, build._tvm_version())
    out_root = Path(out_root)
    d = out_root / name
    old = {}
    try:
        old = json.loads((d / METADATA).read_text())
    except (OSError, json.JSONDecodeError):
        pass
    hashes = dict(old.get("build", {}))
    code = dict(old.get("code", {}))
    reusable = (hashes.get("weights") == w_hash and old.get("batch_sizes") == batch_sizes
                and (d / "weights.bin").exists())
    if not force and reusable and hashes.get(key) == c_hash and (d / code.get(key, "-")).exists():
        log(f"  {name}: {key} up to date, skipped")
        return d

    made_root = not out_root.exists()
    out_root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.importing.", dir=out_root))
    stage.chmod(0o755)
    try:
        job = stage / "job.json"
        job.write_text(json.dumps(job_spec))
        info = _run_probe(job, batch_sizes)
        dtypes = info["weight_dtypes"]                 # float16 keeps some weights float32
        check_weights_fit(graph, page_size, cache_size, dtypes)
        if not (reusable and not force):
            code, hashes = {}, {}
        for k, f in code.items():                     # other targets' code stays valid
            shutil.copy2(d / f, stage / f)
        log(f"  {name}: compiling for {key}, batch sizes {','.join(map(str, batch_sizes))} ...")
        so = stage / f"{key}.so"
        took = build.compile_model(name, target, arch, batch_sizes, so, log,
                                   entry=__name__, job=str(job))
        log(f"  {name}: {key} done in {took:.0f} s ({so.stat().st_size / 2**20:.1f} MiB)")
        code[key], hashes[key] = so.name, c_hash
        arrays = [(n, a.astype(dt, copy=False)) for (n, a), dt in zip(graph.weights, dtypes)]
        weights = build.write_weights(_Weights(arrays), stage, page_size, seed)
        hashes["weights"] = w_hash
        log(f"  {name}: weights {weights['size'] / 2**20:.1f} MiB in {len(weights['pages'])} page(s)")
        _onnx().save(_weightless_graph(graph), str(stage / GRAPH_FILE))
        job.unlink()
        write_metadata(stage, {
            "name": name,
            "dtype": dtype,
            "input": {"name": graph.input_name, "shape": list(graph.input_shape),
                      "dtype": graph.input_dtype},
            "output": info["output"],
            "batch_sizes": batch_sizes,
            "weights": weights,
            "code": code,
            "source": (f"onnx wheel light model {light}, seeded random weights (seed {seed})"
                       if light else f"ONNX {Path(source).name}") +
                      f", dtype {dtype}, TVM {build._tvm_version()} relax ONNX frontend",
            "import": {"graph": GRAPH_FILE, "onnx": Path(source).name, "dtype": dtype,
                       **({"light": light} if light else {})},
            "seed": seed,
            "build": hashes,
        })
        _replace_dir(stage, d)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if made_root:
            shutil.rmtree(out_root, ignore_errors=True)
        raise
    return d


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished model directory into place (the old one, if any, goes last)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def materialize_weights(model_dir: Path, meta: dict, log=print) -> Path:
    """Regenerate a light model's seeded weights.bin (bundles ship without weights; needs the
    onnx package, not TVM). Checked against the sha256 recorded at import."""
    w = meta["weights"]
    light = meta.get("import", {}).get("light")
    if not light:
        raise build.BuildError(f"{model_dir}: imported from ONNX with its own weights; copy its "
                               "weights.bin from the build host")
    graph = load_graph({"light": light, "seed": int(meta.get("seed", 0)),
                        "page_size": int(w["page_size"])})
    arrays = [(n, a.astype(t["dtype"], copy=False)) for (n, a), t in zip(graph.weights, w["tensors"])]
    made = build.write_weights(_Weights(arrays), model_dir, int(w["page_size"]), 0)
    target = model_dir / w.get("file", "weights.bin")
    if w.get("sha256") and made["sha256"] != w["sha256"]:
        target.unlink()
        raise build.BuildError(f"{model_dir}: regenerated weights differ from the built ones")
    log(f"  {meta['name']}: weights.bin regenerated ({made['size'] / 2**20:.1f} MiB)")
    return target


def import_onnx_zoo(out_root, names=ONNX_ZOO, log=print, **kw) -> list[Path]:
    """Import the onnx wheel's light models (seeded weights): a varied zoo, no downloads."""
    names = list(names)
    for n in names:
        light_path(n)
    out = []
    for i, n in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {n}")
        out.append(import_model(None, out_root, light=n, log=log, **kw))
    return out


# ---------------------------------------------------------------------------------------------
# `cw zoo import` (registered with the other zoo commands by clockwork.model.commands)

import click  # noqa: E402  (the CLI is an edge; the library code above does not need it)

from ..worker.command import _Bytes  # noqa: E402


@click.command("import", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Model name (directory) [default: the file's stem].")
@click.option("--onnx-zoo", is_flag=True,
              help=f"Import the onnx wheel's light models with seeded weights ({', '.join(ONNX_ZOO)}).")
@click.option("--out", "-o", default=None, help="Zoo directory [default: $CLOCKWORK_MODEL_DIR or ./zoo].")
@click.option("--target", "-t", type=click.Choice(["llvm", "cuda"]), default="cuda", show_default=True,
              help="llvm: CPU backend; cuda: GPU backend (cross-compiles where there is no GPU).")
@click.option("--arch", default="sm_90", show_default=True, help="CUDA architecture (H100/H200: sm_90).")
@click.option("--batch-sizes", default="1,2,4,8,16", show_default=True, help="Compiled batch sizes.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="float16: weights stored in fp16, convolutions and matmuls in fp16 (fp32 "
                   "accumulation); inputs and outputs keep the graph's dtype.")
@click.option("--page-size", default=DEFAULT_PAGE_SIZE, show_default=True, type=click.IntRange(4096),
              help="Weights-cache page size the weights are laid out for (must match the worker).")
@click.option("--weights-cache", type=_Bytes(), default=None,
              help="Weights cache the model must fit [default: worker.weights_cache_size].")
@click.option("--seed", default=0, show_default=True, help="Seed of the --onnx-zoo weights.")
@click.option("--share-kernels", is_flag=True,
              help="Batch sizes share one set of kernels compiled for a symbolic batch (batch 1 "
                   "keeps its own if the graph has dense layers): several times less compile "
                   "time, exec 4-50% slower at b2-b16 (BENCHMARKS.md).")
@click.option("--force", is_flag=True, help="Rebuild even what is up to date.")
def zoo_import_command(model, name, onnx_zoo, out, target, arch, batch_sizes, dtype, page_size,
                       weights_cache, seed, share_kernels, force):
    """Import an ONNX model (weights from its initializers) into a model directory, compiled
    for every batch size: weights.bin, <target>.so, model.json, graph.onnx.

    The input's first dimension (fixed or symbolic) is the batch. Cached like `cw zoo build`.
    """
    from ..config import load_config, model_dir
    if bool(model) == onnx_zoo:
        raise click.UsageError("give an ONNX file or --onnx-zoo (not both)")
    if onnx_zoo and name:
        raise click.UsageError("--name is for one ONNX file, not --onnx-zoo")
    try:
        bs = build.parse_batch_sizes(batch_sizes)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--batch-sizes") from None
    arch = arch if target == "cuda" else None
    try:
        build.target_key(target, arch)
    except build.BuildError as e:
        raise click.BadParameter(str(e), param_hint="--arch") from None
    cache = weights_cache or int(load_config()["worker"]["weights_cache_size"])
    target_dir = model_dir(out)
    where = "llvm (CPU)" if target == "llvm" else f"CUDA {arch}"
    kw = dict(target=target, arch=arch, batch_sizes=bs, page_size=page_size, dtype=dtype,
              cache_size=cache, force=force, seed=seed, share_kernels=share_kernels, log=click.echo)
    try:
        if onnx_zoo:
            click.echo(f"Importing {len(ONNX_ZOO)} onnx light model(s) for {where} into {target_dir}")
            import_onnx_zoo(target_dir, **kw)
        else:
            click.echo(f"Importing {model} for {where} into {target_dir}")
            import_model(model, target_dir, name=name, **kw)
    except build.BuildError as e:
        raise click.ClickException(str(e)) from None


# ---------------------------------------------------------------------------------------------
# the child processes (TVM): probe the import, compile it

def c_identifiers(model):
    """A copy of the graph whose inputs and weights are named as C identifiers, and the
    renaming. TVM names kernel parameters after them unchanged, and a '/' (DenseNet's
    'conv5_9/x1_w_0') breaks the generated CUDA source. Order, hence parameter order, is kept."""
    import re
    taken = {n for node in model.graph.node for n in node.output}
    mapping = {}
    for name in [i.name for i in model.graph.input] + [t.name for t in model.graph.initializer]:
        new = re.sub(r"\W", "_", name)
        if not new or not (new[0].isalpha() or new[0] == "_"):
            new = "t_" + new
        if new == name and name not in mapping.values():
            continue
        while new in taken or new in mapping.values():
            new += "_"
        mapping[name] = new
    if not mapping:
        return model, {}
    out = type(model)()
    out.CopyFrom(model)
    g = out.graph
    for v in list(g.input) + list(g.initializer):
        v.name = mapping.get(v.name, v.name)
    for node in g.node:
        for i, n in enumerate(node.input):
            if n in mapping:
                node.input[i] = mapping[n]
    return out, mapping


SHARED = "batch_any"     # with share_kernels: the function the batch sizes call (symbolic batch)


def relax_module(job: dict, batch_sizes) -> tuple[object, dict]:
    """Runs in a child: an IRModule with one function per batch size (b1, b2, ...), each taking
    the input then every weight, and what the import found ({"output": ..., "weights": ...}).
    Raises ImportFailed with a one-line reason.

    By default every batch size is imported with the batch set to it: kernels compiled for
    each exact shape. With job["share_kernels"] the batch sizes call one function, SHARED,
    imported once with a symbolic batch bounded by the largest size: one set of kernels for
    all of them. Compiling is almost all CUDA source (dlight unrolls a conv kernel into ~100
    KB), once per batch size; the shared kernels compile several times faster and run 4-50%
    slower (BENCHMARKS.md, "Compiling the imported zoo"). Batch 1 keeps kernels of its own
    where the graph has dense layers (at batch 1 dlight schedules them as GEMVs, much faster
    than its generic matmul). A graph that cannot be imported with a symbolic batch (a Reshape
    that fixes it, ...) falls back to one import per batch size, and so does float16 (TVM
    0.27's ToMixedPrecision fails on symbolic shapes)."""
    import warnings
    warnings.simplefilter("ignore")            # from_onnx warns about every renamed tensor
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    graph = load_graph(job, values=False)
    known = _get_convert_map()
    for k, node in enumerate(graph.model.graph.node):
        if node.op_type not in known and node.op_type not in ("Constant", "If"):
            raise ImportFailed(f"op {node.op_type} (node {node.name or f'#{k}'!r}) is not "
                               f"supported by TVM {tvm.__version__}'s ONNX importer")
    model, names = c_identifiers(graph.model)
    input_name = names.get(graph.input_name, graph.input_name)
    dtype = job.get("dtype", "float32")
    own_b1 = has_dense_layers(graph.model)
    shared_sizes = [b for b in batch_sizes if b > 1 or not own_b1]
    shared = None                # TVM 0.27's ToMixedPrecision fails on symbolic shapes
    if job.get("share_kernels") and len(shared_sizes) > 1 and dtype != "float16":
        shared = _import_symbolic(model, input_name, graph, max(shared_sizes))
    mod, out = tvm.IRModule(), None
    for b in batch_sizes:
        if b in shared_sizes and shared is not None:
            continue
        f, shape = _import_at(model, input_name, graph, b)
        if out is None:
            out = {"name": graph.output_name, "shape": shape[1:], "dtype": str(f.ret_ty.dtype)}
        elif shape[1:] != out["shape"]:
            raise ImportFailed(f"the batch dimension of input {graph.input_name!r} cannot be set "
                               f"to {b}: the output item shape changes with the batch "
                               f"({out['shape']} at batch {batch_sizes[0]}, {shape[1:]} at {b})")
        mod[f"b{b}"] = f.with_attr("global_symbol", f"b{b}")
    if shared is not None:
        f, item = shared
        if out is None:
            out = {"name": graph.output_name, "shape": item, "dtype": str(f.ret_ty.dtype)}
        elif item != out["shape"]:
            raise ImportFailed(f"the output item shape changes with the batch ({out['shape']} "
                               f"at batch {batch_sizes[0]}, {item} at a symbolic batch)")
        mod[SHARED] = f.with_attr("global_symbol", SHARED)
    if dtype == "float16":
        first = next(iter(mod.functions.values()))
        names = [p.name for p in list(first.params)[1:]]
        mod = relax.transform.ToMixedPrecision("float32", fp16_input_names=names)(mod)
    if shared is not None:
        mod = _call_shared(mod, shared_sizes, graph.input_shape, graph.input_dtype, out["shape"])
    bb = relax.BlockBuilder()                  # the dtype marker every zoo module carries
    marker = relax.Var("x", relax.TensorType((1,), "float32"))
    with bb.function(nets.dtype_marker(dtype), [marker]):
        bb.emit_func_output(marker)
    mod[nets.dtype_marker(dtype)] = bb.get()[nets.dtype_marker(dtype)]
    weights = [str(p.ty.dtype) for p in list(mod[f"b{batch_sizes[0]}"].params)[1:]]
    return mod, {"output": out, "weight_dtypes": weights}


def has_dense_layers(model) -> bool:
    """A Gemm or MatMul over a 2-D weight initializer (a GEMV at batch 1)."""
    inits = {t.name: t for t in model.graph.initializer}
    return any(n.op_type in ("Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2 for n in model.graph.node)


def _import_at(model, input_name: str, graph: Graph, b: int):
    """from_onnx with the batch dimension set to b: (function, output shape), or ImportFailed."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    where = f"the batch dimension of input {graph.input_name!r} cannot be set to {b}"
    try:
        m = from_onnx(model, shape_dict={input_name: [b, *graph.input_shape]},
                      dtype_dict={input_name: graph.input_dtype}, keep_params_in_input=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise ImportFailed(f"{where}: TVM could not import the graph ({first})" if b != 1 else
                           f"TVM could not import the graph: {type(e).__name__}: {first}") from None
    f = relax.frontend.detach_params(m)[0]["main"]
    ret = f.ret_ty
    shape = [_static(d) for d in getattr(getattr(ret, "shape", None), "values", None) or []] \
        if isinstance(ret, relax.TensorType) else []
    if not shape or None in shape:
        raise ImportFailed(f"the output is {ret} for batch {b}; the model format needs one "
                           "tensor of a fixed shape")
    if shape[0] != b:
        raise ImportFailed(f"{where}: the output's first dimension is {shape[0]} "
                           f"(output shape {shape}), not the batch")
    _check_params(f, graph)
    return f, shape


def _import_symbolic(model, input_name: str, graph: Graph, most: int):
    """from_onnx with a symbolic batch (at most `most`, for memory planning): (function, output
    item shape), or None where the graph does not keep the batch symbolic through to its output."""
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx import from_onnx
    batch = tirx.Var("batch", "int64")
    try:
        m = from_onnx(model, shape_dict={input_name: [batch, *graph.input_shape]},
                      dtype_dict={input_name: graph.input_dtype}, keep_params_in_input=True)
        f = relax.frontend.detach_params(m)[0]["main"]
    except Exception:
        return None
    ret = f.ret_ty
    dims = list(getattr(getattr(ret, "shape", None), "values", None) or []) \
        if isinstance(ret, relax.TensorType) else []
    item = [_static(d) for d in dims[1:]]
    if not dims or not dims[0].same_as(batch) or None in item:
        return None
    _check_params(f, graph)
    return f.with_attr("tir_var_upper_bound", {"batch": most}), item


def _check_params(f, graph: Graph) -> None:
    if [tuple(int(d) for d in p.ty.shape) for p in list(f.params)[1:]] != \
            [tuple(a.shape) for _, a in graph.weights]:
        raise ImportFailed("TVM's parameters do not match the graph's weights (internal error)")


def _call_shared(mod, batch_sizes, item_shape, input_dtype: str, out_item):
    """Add b{b} for each batch size: the input at that batch and the weights, passed to SHARED,
    whose output is cast to the static shape the worker expects."""
    from tvm import relax
    bb = relax.BlockBuilder()
    for gv, f in mod.functions.items():
        bb.add_func(f, gv.name_hint)
    shared = bb.get().get_global_var(SHARED)
    params = list(mod[SHARED].params)[1:]
    out_dtype = mod[SHARED].ret_ty.dtype
    for b in batch_sizes:
        x = relax.Var("x", relax.TensorType([b, *item_shape], input_dtype))
        ws = [relax.Var(p.name, p.ty) for p in params]
        with bb.function(f"b{b}", [x, *ws], attrs={"num_input": 1}):
            with bb.dataflow():
                y = bb.emit(relax.Call(shared, [x, *ws]))
                y = bb.emit_output(bb.match_cast(y, relax.TensorType([b, *out_item], out_dtype)))
            bb.emit_func_output(y)
    return bb.get()


def _static(dim) -> int | None:
    """A shape dimension as an int, None if it is symbolic."""
    try:
        return int(dim)
    except (TypeError, ValueError):
        return None


def _child(argv: list[str]) -> int:
    """`probe JOB BATCHES` prints what the import found; `compile JOB TARGET ARCH BATCHES OUT`
    (run by build.compile_model) compiles. A bad model exits 3 with one error line."""
    try:
        job = json.loads(Path(argv[1]).read_text())
        if argv[0] == "probe" and len(argv) == 3:
            _, info = relax_module(job, [int(b) for b in argv[2].split(",")])
            print("PROBE " + json.dumps(info), flush=True)
        elif argv[0] == "compile" and len(argv) >= 6:    # compile JOB TARGET ARCH [...] BATCHES OUT
            target, arch, bs, out = argv[2], argv[3], argv[-2], argv[-1]
            mod, _ = relax_module(job, [int(b) for b in bs.split(",")])
            build.compile_relax(mod, target, None if arch == "-" else arch, out)
        else:
            print("internal entry points: probe JOB BATCHES | compile JOB TARGET ARCH BATCHES OUT; "
                  "use `cw zoo import`", file=sys.stderr)
            return 2
    except ImportFailed as e:
        print(ERROR_PREFIX + str(e), file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
