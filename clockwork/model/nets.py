"""Model definitions for the real zoo, written once and interpreted twice.

Each network is a `forward(ops, x, w)` function over a handful of operators (conv with folded
batchnorm bias, relu, add, max pool, global average pool, dense). The same definition is run by
`RelaxOps` (emits TVM Relax through a BlockBuilder, for compiling) and by `NumpyOps` (float64
numpy, the reference outputs are checked against). Weights are seeded random (no downloads)
and every weight is a function PARAMETER, in the order of `Net.weights`, so the worker can pass
them from wherever they sit in its paged weights cache.

Importing this module does not import TVM; only `relax_module()` does.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

BATCH_SIZES = (1, 2, 4, 8, 16)
DTYPES = ("float32", "float16")
LAYOUTS = ("NCHW", "NHWC")       # of activations inside the model; conv weights OIHW / OHWI


@dataclass
class Net:
    name: str
    input_shape: tuple[int, ...]           # one item, batch dim excluded
    output_shape: tuple[int, ...]
    forward: Callable                       # forward(ops, x, w: dict[name, tensor]) -> tensor
    weights: list[tuple[str, tuple[int, ...], float]] = field(default_factory=list)  # name, shape, std
    dtype: str = "float32"                  # of the weights and the compute; float32 or float16
    io_dtype: str = "float32"               # inputs and outputs stay float32 for every dtype
    layout: str = "NCHW"                    # inputs are NCHW for every layout

    @property
    def weights_size(self) -> int:
        return sum(int(np.prod(s)) for _, s, _ in self.weights) * np.dtype(self.dtype).itemsize

    def init_weights(self, seed: int = 0) -> list[np.ndarray]:
        """Seeded random weights, one array per parameter (He-style scale, small biases)."""
        rng = np.random.default_rng(seed)
        return [(rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(self.dtype)
                for _, shape, std in self.weights]

    def definition_hash(self) -> str:
        """Changes when what gets compiled changes: the weights list and the code that emits IR."""
        h = hashlib.sha256(repr((self.name, self.input_shape, self.output_shape, self.dtype,
                                 self.layout, self.weights)).encode())
        for obj in (_DEFS[self.name], _mlp, _tiny_cnn, _resnet, RelaxOps, relax_module):
            h.update(inspect.getsource(obj).encode())
        return h.hexdigest()


class _Recorder:
    """Collects weight declarations while a network is traced once with shapes only."""

    def __init__(self, layout: str = "NCHW"):
        self.layout = layout
        self.weights: list[tuple[str, tuple[int, ...], float]] = []

    def add(self, name, shape, std):
        self.weights.append((name, tuple(int(s) for s in shape), float(std)))
        return name


# ---------------------------------------------------------------------------------------------
# network definitions: declare(rec) lists the weights; forward(ops, x, w) computes the output

def _conv_decl(rec, name, cin, cout, k, gain=1.0):
    """Conv weight OIHW and bias (C,1,1) for NCHW; OHWI and (1,1,C) for NHWC (channels last)."""
    nhwc = rec.layout == "NHWC"
    rec.add(f"{name}.w", (cout, k, k, cin) if nhwc else (cout, cin, k, k),
            gain * np.sqrt(2.0 / (cin * k * k)))
    rec.add(f"{name}.b", (1, 1, cout) if nhwc else (cout, 1, 1), 0.01)


def _dense_decl(rec, name, cin, cout):
    rec.add(f"{name}.wT", (cin, cout), np.sqrt(1.0 / cin))   # stored pre-transposed: x @ wT
    rec.add(f"{name}.b", (cout,), 0.01)


def _mlp(sizes=(784, 512, 512, 10)):
    def declare(rec):
        for i in range(len(sizes) - 1):
            _dense_decl(rec, f"fc{i}", sizes[i], sizes[i + 1])

    def forward(ops, x, w):
        for i in range(len(sizes) - 1):
            x = ops.dense(x, w[f"fc{i}.wT"], w[f"fc{i}.b"])
            if i < len(sizes) - 2:
                x = ops.relu(x)
        return x
    return declare, forward, (sizes[0],), (sizes[-1],)


def _tiny_cnn():
    def declare(rec):
        _conv_decl(rec, "conv0", 3, 16, 3)
        _conv_decl(rec, "conv1", 16, 32, 3)
        _dense_decl(rec, "fc", 32, 10)

    def forward(ops, x, w):
        x = ops.relu(ops.conv(x, w["conv0.w"], w["conv0.b"], 1, 1))
        x = ops.maxpool(x)
        x = ops.relu(ops.conv(x, w["conv1.w"], w["conv1.b"], 1, 1))
        return ops.dense(ops.gap(x), w["fc.wT"], w["fc.b"])
    return declare, forward, (3, 32, 32), (10,)


def _resnet(layers, bottleneck):
    """ResNet v1.5 (stride in the 3x3 conv), batchnorm folded into each conv's bias."""
    exp = 4 if bottleneck else 1
    widths = (64, 128, 256, 512)

    def blocks():
        cin = 64
        for s, (n, width) in enumerate(zip(layers, widths)):
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                down = stride != 1 or cin != width * exp
                yield f"l{s}.{i}", cin, width, stride, down
                cin = width * exp

    def declare(rec):
        _conv_decl(rec, "stem", 3, 64, 7)
        for name, cin, width, stride, down in blocks():
            if bottleneck:
                _conv_decl(rec, f"{name}.c0", cin, width, 1)
                _conv_decl(rec, f"{name}.c1", width, width, 3)
                _conv_decl(rec, f"{name}.c2", width, width * exp, 1, gain=0.3)
            else:
                _conv_decl(rec, f"{name}.c0", cin, width, 3)
                _conv_decl(rec, f"{name}.c1", width, width, 3, gain=0.3)
            if down:
                _conv_decl(rec, f"{name}.down", cin, width * exp, 1, gain=0.5)
        _dense_decl(rec, "fc", 512 * exp, 1000)

    def forward(ops, x, w):
        x = ops.relu(ops.conv(x, w["stem.w"], w["stem.b"], 2, 3))
        x = ops.maxpool(x)
        for name, cin, width, stride, down in blocks():
            def c(part, x, s, p):
                return ops.conv(x, w[f"{name}.{part}.w"], w[f"{name}.{part}.b"], s, p)
            if bottleneck:
                y = ops.relu(c("c0", x, 1, 0))
                y = ops.relu(c("c1", y, stride, 1))
                y = c("c2", y, 1, 0)
            else:
                y = ops.relu(c("c0", x, stride, 1))
                y = c("c1", y, 1, 1)
            x = ops.relu(ops.add(y, c("down", x, stride, 0) if down else x))
        return ops.dense(ops.gap(x), w["fc.wT"], w["fc.b"])
    return declare, forward, (3, 224, 224), (1000,)


_DEFS = {
    "mlp": _mlp,
    "tinycnn": _tiny_cnn,
    "resnet18": lambda: _resnet((2, 2, 2, 2), False),
    "resnet34": lambda: _resnet((3, 4, 6, 3), False),
    "resnet50": lambda: _resnet((3, 4, 6, 3), True),
    "resnet101": lambda: _resnet((3, 4, 23, 3), True),
}
NAMES = tuple(_DEFS)


def get(name: str, dtype: str = "float32", layout: str = "NCHW") -> Net:
    """The network `name` with weights (and compute) in `dtype` and activations in `layout`;
    float16 keeps float32 inputs, outputs and accumulation (see relax_module)."""
    if name not in _DEFS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(NAMES)})")
    if dtype not in DTYPES:
        raise KeyError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if layout not in LAYOUTS:
        raise KeyError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    declare, forward, ishape, oshape = _DEFS[name]()
    rec = _Recorder(layout)
    declare(rec)
    return Net(name, ishape, oshape, forward, rec.weights, dtype, layout=layout)


# ---------------------------------------------------------------------------------------------
# interpreters

class NumpyOps:
    """float64 numpy reference (slow but exact enough to judge fp32 code)."""

    @staticmethod
    def conv(x, w, b, stride, pad):
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, ::stride, ::stride]                       # n, c, ho, wo, kh, kw
        out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))   # n, ho, wo, o
        return out.transpose(0, 3, 1, 2) + b[None]

    @staticmethod
    def relu(x):
        return np.maximum(x, 0)

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def maxpool(x):
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
        return win.max(axis=(4, 5))

    @staticmethod
    def gap(x):
        return x.mean(axis=(2, 3))

    @staticmethod
    def dense(x, wT, b):
        return x @ wT + b


def reference(net: Net, x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The network's output in float64 (x has the batch dim). NHWC nets' channels-last conv
    weights and biases are moved to the NCHW positions NumpyOps computes with."""
    w = {name: np.asarray(a, np.float64) for (name, _, _), a in zip(net.weights, weights)}
    if net.layout == "NHWC":
        w = {k: a.transpose(0, 3, 1, 2) if a.ndim == 4 else a.transpose(2, 0, 1) if a.ndim == 3
             else a for k, a in w.items()}
    return net.forward(NumpyOps, np.asarray(x, np.float64), w)


class RelaxOps:
    """Emits Relax operators into an open BlockBuilder dataflow block."""

    def __init__(self, bb, layout="NCHW"):
        from tvm import relax
        self.bb, self.op = bb, relax.op
        self.layout = layout
        self.kernel_layout = "OHWI" if layout == "NHWC" else "OIHW"
        self.spatial = [1, 2] if layout == "NHWC" else [2, 3]

    def conv(self, x, w, b, stride, pad):
        y = self.bb.emit(self.op.nn.conv2d(x, w, strides=(stride, stride), padding=(pad, pad),
                                           data_layout=self.layout,
                                           kernel_layout=self.kernel_layout))
        return self.bb.emit(self.op.add(y, b))

    def relu(self, x):
        return self.bb.emit(self.op.nn.relu(x))

    def add(self, a, b):
        return self.bb.emit(self.op.add(a, b))

    def maxpool(self, x):
        return self.bb.emit(self.op.nn.max_pool2d(x, pool_size=(3, 3), strides=(2, 2), padding=(1, 1),
                                                  layout=self.layout))

    def gap(self, x):
        return self.bb.emit(self.op.mean(x, axis=self.spatial))

    def dense(self, x, wT, b):
        return self.bb.emit(self.op.add(self.bb.emit(self.op.matmul(x, wT)), b))


def for_model(meta: dict) -> Net:
    """The Net a zoo model.json was built from (name, dtype, layout)."""
    return get(meta["name"], meta.get("dtype", "float32"), meta.get("layout", "NCHW"))


def dtype_marker(dtype: str) -> str:
    """Name of the tiny function every zoo module carries to say which weight dtype its
    functions take (so a module and a model.json that disagree are refused at load)."""
    return f"dtype_{dtype}"


def relax_module(net: Net, batch_sizes=BATCH_SIZES):
    """An IRModule with one function per batch size ("b1", "b2", ...), each taking the input
    then every weight as parameters (attribute num_input=1), plus dtype_marker(net.dtype).

    NHWC: the NCHW input is transposed once, then every conv runs channels last (conv weights
    stored OHWI), which gives tensor-core GEMMs contiguous K (Cin innermost) loads.
    float16: the float32 definition goes through ToMixedPrecision, which makes every weight a
    float16 parameter (half the pages), runs convs and matmuls on float16 operands with float32
    accumulation (tensor cores on a GPU) and keeps the float32 input and output."""
    from tvm import relax

    bb = relax.BlockBuilder()
    weight_vars = []
    for b in batch_sizes:
        x = relax.Var("x", relax.TensorType((b, *net.input_shape), net.io_dtype))
        params = {name: relax.Var(name.replace(".", "_"), relax.TensorType(shape, "float32"))
                  for name, shape, _ in net.weights}
        weight_vars = [n.replace(".", "_") for n in params]
        with bb.function(f"b{b}", [x, *params.values()], attrs={"num_input": 1}):
            with bb.dataflow():
                xl = x
                if net.layout == "NHWC" and len(net.input_shape) == 3:   # NCHW in, channels last
                    xl = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
                out = bb.emit_output(net.forward(RelaxOps(bb, net.layout), xl, params))
            bb.emit_func_output(out)
    marker = relax.Var("x", relax.TensorType((1,), "float32"))
    with bb.function(dtype_marker(net.dtype), [marker]):
        bb.emit_func_output(marker)
    mod = bb.get()
    if net.dtype == "float16":
        mod = relax.transform.ToMixedPrecision(out_dtype="float32",
                                               fp16_input_names=weight_vars)(mod)
    return mod
