"""The model directory format, one design for every backend.

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


class ModelFormatError(ValueError):
    """A model directory is missing files or has inconsistent metadata."""


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
        for b in self.batch_sizes:
            if b >= batch_size:
                return b
        return None


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
    meta = _read_json(path / METADATA)
    try:
        if meta.get("format") != FORMAT_VERSION:
            raise ModelFormatError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        w = meta["weights"]
        spec = ModelSpec(
            path=path,
            name=meta.get("name", path.name),
            input_shape=tuple(meta["input"]["shape"]),
            input_dtype=meta["input"]["dtype"],
            output_shape=tuple(meta["output"]["shape"]),
            output_dtype=meta["output"]["dtype"],
            batch_sizes=sorted(int(b) for b in meta["batch_sizes"]),
            weights_size=int(w["size"]),
            page_size=int(w.get("page_size", DEFAULT_PAGE_SIZE)),
            pages=[(int(p["offset"]), int(p["nbytes"])) for p in w.get("pages", [])],
            tensors=[TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], int(t["page"]),
                                int(t["offset"]), int(t["nbytes"])) for t in w.get("tensors", [])],
            weights_file=w.get("file"),
            code=dict(meta.get("code", {})),
            dtype=str(meta.get("dtype", "float32")),
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ModelFormatError):
            raise
        raise ModelFormatError(f"{path / METADATA}: missing or bad field ({e!r})") from None
    if not spec.batch_sizes or spec.batch_sizes[0] < 1:
        raise ModelFormatError(f"{path}: batch_sizes must be positive")
    if spec.weights_file and not (path / spec.weights_file).exists():
        raise ModelFormatError(f"{path}: weights file {spec.weights_file} missing")
    if (path / MEASUREMENTS).exists():
        m = _read_json(path / MEASUREMENTS)
        try:
            spec.device = m.get("device")
            spec.weights_load_ns = int(m["weights_load_ns"])
            spec.exec_ns = {int(b): int(v) for b, v in m["exec_ns"].items()}
            spec.exec_p99_ns = {int(b): int(v) for b, v in m.get("exec_p99_ns", {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFormatError(f"{path / MEASUREMENTS}: missing or bad field ({e!r})") from None
    return spec


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
