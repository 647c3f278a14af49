"""The model directory format, one design for every backend (docs/design.md, "Model format").

    <model>/model.json         metadata (below)
    <model>/measurements.json  profiled timings on one device (needed by the emulated worker)
    <model>/weights.bin        weights, laid out page by page (absent for profile-only models)
    <model>/<target>.so        compiled code: one exported TVM module per target (e.g. "llvm",
                               "cuda-sm_90") holding one function per batch size ("b1", "b2", ...)

model.json:
    {"format": 1, "name": "resnet50",
     "dtype": "float16",              # of weights and compute (absent: float32); every compiled
                                      # module is checked to be compiled for it
     "input":  {"shape": [3, 224, 224], "dtype": "float32"},   # one item; batch dim excluded
     "output": {"shape": [1000], "dtype": "float32"},
     "batch_sizes": [1, 2, 4, 8, 16],
     "weights": {"size": 102000000, "page_size": 16777216,
                 "file": "weights.bin",                         # optional
                 "pages": [{"offset": 0, "nbytes": 16000000}, ...],   # file extent of each page
                 "tensors": [{"name": "w0", "shape": [...], "dtype": "float32",
                              "page": 0, "offset": 0, "nbytes": 4096}, ...]},
     "code": {"llvm": "llvm.so"},                               # target -> file
     "ops": ["clockwork.cudnn.conv2d"],   # optional: functions the code calls that the worker
                                          # must provide (a worker lacking one refuses the model)
     "source": "how it was made"}

A weight tensor never straddles a page, so a model's pages can sit anywhere in a GPU's weights
cache and each tensor is one contiguous, 256-byte aligned view of one page. Tensors are passed
to the compiled functions as parameters in the order of "tensors".

measurements.json:
    {"device": "NVIDIA H200", "weights_load_ns": 1900000,
     "exec_ns": {"1": 4970000, "2": 5130000, ...}, "exec_p99_ns": {...}}   # p99 optional
A profile-only model (model.json with just weights.size, plus measurements.json) is enough for
the emulated worker.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
DEFAULT_PAGE_SIZE = 16 * 1024 * 1024
TENSOR_ALIGN = 256
METADATA = "model.json"
MEASUREMENTS = "measurements.json"


# Sanity bounds of the format itself (a worker then checks sizes against its own cache and pools).
MAX_BYTES = 1 << 40               # any size: 1 TiB
MAX_DIM = 1 << 31                 # one dimension of a shape
MAX_BATCH = 4096
MAX_NS = 3_600_000_000_000        # any profiled time: 1 hour


class ModelFormatError(ValueError):
    """A model directory is missing files or has inconsistent metadata."""


def _int(value, where: str, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi, else a one-line ModelFormatError naming the field."""
    if type(value) is not int or not lo <= value <= hi:
        raise ModelFormatError(f"{where} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _str(value, where: str) -> str:
    if type(value) is not str or not value:
        raise ModelFormatError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _list(value, where: str) -> list:
    if type(value) is not list:
        raise ModelFormatError(f"{where} must be a list, got {value!r}")
    return value


def _dict(value, where: str) -> dict:
    if type(value) is not dict:
        raise ModelFormatError(f"{where} must be an object, got {value!r}")
    return value


def _dtype(value, where: str) -> str:
    try:
        np.dtype(_str(value, where))
    except TypeError:
        raise ModelFormatError(f"{where} {value!r} is not a numpy dtype") from None
    return value


def _shape(value, where: str) -> tuple[int, ...]:
    dims = tuple(_int(d, f"{where}[{i}]", 1, MAX_DIM) for i, d in enumerate(_list(value, where)))
    if math.prod(dims) > MAX_BYTES:
        raise ModelFormatError(f"{where} {list(dims)} has more than {MAX_BYTES} elements")
    return dims


def _tensor_bytes(shape: tuple[int, ...], dtype: str, where: str) -> int:
    n = math.prod(shape) * np.dtype(dtype).itemsize
    if n > MAX_BYTES:
        raise ModelFormatError(f"{where} is {n} bytes (limit {MAX_BYTES})")
    return n


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    page: int = 0
    offset: int = 0
    nbytes: int = 0


@dataclass
class ModelSpec:
    """Everything a worker needs to know about a model directory (weights not read yet)."""
    path: Path
    name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str
    batch_sizes: list[int]
    weights_size: int
    page_size: int
    pages: list[tuple[int, int]] = field(default_factory=list)   # (file offset, nbytes)
    tensors: list[TensorSpec] = field(default_factory=list)
    weights_file: str | None = None
    code: dict[str, str] = field(default_factory=dict)
    weights_load_ns: int | None = None
    exec_ns: dict[int, int] = field(default_factory=dict)
    exec_p99_ns: dict[int, int] = field(default_factory=dict)
    device: str | None = None
    dtype: str = "float32"               # weights/compute dtype the code was compiled for
    ops: list[str] = field(default_factory=list)   # external functions the code calls

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape)) * np.dtype(self.input_dtype).itemsize

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape)) * np.dtype(self.output_dtype).itemsize

    def num_pages(self, page_size: int) -> int:
        """Pages this model occupies in a weights cache of `page_size` pages."""
        if self.pages and page_size == self.page_size:
            return len(self.pages)
        if self.tensors:
            return len(layout_pages([t.nbytes for t in self.tensors], page_size)[1])
        return max(1, math.ceil(self.weights_size / page_size))

    @property
    def has_measurements(self) -> bool:
        return self.weights_load_ns is not None and all(b in self.exec_ns for b in self.batch_sizes)

    def padded_batch(self, batch_size: int) -> int | None:
        """Smallest compiled batch size >= batch_size (the worker pads), None if too big."""
        pad = pad_table(self.batch_sizes)
        return pad[batch_size] if 1 <= batch_size < len(pad) else None


def pad_table(batch_sizes) -> list[int]:
    """pad[n] = the smallest compiled batch size >= n, for n in 1..max (pad[0] unused): a batch
    of n items runs the kernel of pad[n], its inputs padded. The one definition of padding, for
    the worker and the schedulers alike."""
    sizes = sorted(set(batch_sizes))
    pad = [0] * (sizes[-1] + 1 if sizes else 1)
    i = 0
    for n in range(1, len(pad)):
        while sizes[i] < n:
            i += 1
        pad[n] = sizes[i]
    return pad


def layout_pages(sizes: list[int], page_size: int, align: int = TENSOR_ALIGN):
    """Pack tensors of `sizes` bytes into pages in order, none straddling a page.

    Returns ([(page, offset)] per tensor, [used bytes per page]).
    """
    placements, used = [], []
    for i, n in enumerate(sizes):
        if n > page_size:
            raise ModelFormatError(f"tensor {i} is {n} bytes, larger than a {page_size}-byte page")
        if not used or _align(used[-1], align) + n > page_size:
            used.append(0)
        off = _align(used[-1], align)
        placements.append((len(used) - 1, off))
        used[-1] = off + n
    return placements, used


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}: not valid JSON ({e})") from None


def load_spec(path: str | os.PathLike) -> ModelSpec:
    """Read model.json (+ measurements.json if present) and check they agree."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFormatError(f"{path} is not a model directory")
    where = path / METADATA
    try:
        spec = _parse_metadata(path, _dict(_read_json(where), "model.json"))
    except ModelFormatError as e:
        raise ModelFormatError(f"{where}: {e}") from None
    except KeyError as e:
        raise ModelFormatError(f"{where}: missing field {e}") from None
    if spec.weights_file and not (path / spec.weights_file).exists():
        raise ModelFormatError(f"{path}: weights file {spec.weights_file} missing")
    if (path / MEASUREMENTS).exists():
        where = path / MEASUREMENTS
        try:
            _parse_measurements(spec, _dict(_read_json(where), "measurements.json"))
        except ModelFormatError as e:
            raise ModelFormatError(f"{where}: {e}") from None
        except KeyError as e:
            raise ModelFormatError(f"{where}: missing field {e}") from None
    return spec


def _parse_metadata(path: Path, meta: dict) -> ModelSpec:
    """model.json -> ModelSpec, every field checked for type and range (see the module doc)."""
    if meta.get("format") != FORMAT_VERSION:
        raise ModelFormatError(f"format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    io = {}
    for key in ("input", "output"):
        d = _dict(meta[key], key)
        shape = _shape(d["shape"], f"{key}.shape")
        dtype = _dtype(d["dtype"], f"{key}.dtype")
        _tensor_bytes(shape, dtype, f"one {key}")
        io[key] = (shape, dtype)
    batches = [_int(b, f"batch_sizes[{i}]", 1, MAX_BATCH) for i, b in enumerate(_list(meta["batch_sizes"], "batch_sizes"))]
    if not batches or len(set(batches)) != len(batches):
        raise ModelFormatError(f"batch_sizes must be a non-empty list of distinct sizes, got {batches}")
    w = _dict(meta["weights"], "weights")
    page_size = _int(w.get("page_size", DEFAULT_PAGE_SIZE), "weights.page_size", TENSOR_ALIGN, 1 << 32)
    pages = []
    for i, p in enumerate(_list(w.get("pages", []), "weights.pages")):
        p = _dict(p, f"weights.pages[{i}]")
        pages.append((_int(p["offset"], f"weights.pages[{i}].offset", 0, MAX_BYTES),
                      _int(p["nbytes"], f"weights.pages[{i}].nbytes", 0, page_size)))
    tensors = []
    for i, t in enumerate(_list(w.get("tensors", []), "weights.tensors")):
        t = _dict(t, f"weights.tensors[{i}]")
        where = f"weights.tensors[{i}]"
        ts = TensorSpec(_str(t["name"], f"{where}.name"), _shape(t["shape"], f"{where}.shape"),
                        _dtype(t["dtype"], f"{where}.dtype"),
                        _int(t["page"], f"{where}.page", 0, max(0, len(pages) - 1) if pages else MAX_BYTES),
                        _int(t["offset"], f"{where}.offset", 0, page_size),
                        _int(t["nbytes"], f"{where}.nbytes", 0, page_size))
        if ts.offset + ts.nbytes > page_size:
            raise ModelFormatError(f"{where} ends at {ts.offset + ts.nbytes}, past its {page_size}-byte page")
        tensors.append(ts)
    code = _dict(meta.get("code", {}), "code")
    for target, file in code.items():
        _str(file, f"code.{target}")
    weights_file = w.get("file")
    return ModelSpec(
        path=path,
        name=_str(meta.get("name", path.name), "name"),
        input_shape=io["input"][0], input_dtype=io["input"][1],
        output_shape=io["output"][0], output_dtype=io["output"][1],
        batch_sizes=sorted(batches),
        weights_size=_int(w["size"], "weights.size", 0, MAX_BYTES),
        page_size=page_size,
        pages=pages,
        tensors=tensors,
        weights_file=None if weights_file is None else _str(weights_file, "weights.file"),
        code=code,
        dtype=_dtype(meta.get("dtype", "float32"), "dtype"),
        ops=[_str(o, f"ops[{i}]") for i, o in enumerate(_list(meta.get("ops", []), "ops"))],
    )


def _parse_measurements(spec: ModelSpec, m: dict) -> None:
    device = m.get("device")
    spec.device = None if device is None else _str(device, "device")
    spec.weights_load_ns = _int(m["weights_load_ns"], "weights_load_ns", 0, MAX_NS)
    for key, target in (("exec_ns", spec.exec_ns), ("exec_p99_ns", spec.exec_p99_ns)):
        for b, v in _dict(m.get(key, {}) if key == "exec_p99_ns" else m[key], key).items():
            if not (type(b) is str and b.isdigit()):
                raise ModelFormatError(f"{key} keys must be batch sizes, got {b!r}")
            target[_int(int(b), f"{key} batch size", 1, MAX_BATCH)] = _int(v, f"{key}[{b}]", 1, MAX_NS)


def write_metadata(path: str | os.PathLike, meta: dict) -> None:
    _write_json(Path(path) / METADATA, {"format": FORMAT_VERSION, **meta})


def write_measurements(path: str | os.PathLike, device: str, weights_load_ns: int,
                       exec_ns: dict[int, int], exec_p99_ns: dict[int, int] | None = None) -> None:
    data = {"device": device, "weights_load_ns": int(weights_load_ns),
            "exec_ns": {str(b): int(v) for b, v in sorted(exec_ns.items())}}
    if exec_p99_ns:
        data["exec_p99_ns"] = {str(b): int(v) for b, v in sorted(exec_p99_ns.items())}
    _write_json(Path(path) / MEASUREMENTS, data)


def _write_json(target: Path, data: dict) -> None:
    """Write atomically so a crash never leaves half a file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, target)


def resolve_model_path(model_dir: Path, requested: str) -> Path:
    """Confine a client-given model path to the model directory (no traversal, no symlink escape)."""
    base = model_dir.resolve()
    candidate = (base / requested).resolve()
    if candidate != base and base not in candidate.parents:
        raise ModelFormatError(f"model path {requested!r} is outside the model directory")
    return candidate
