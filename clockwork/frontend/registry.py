"""Model names and tensor descriptions of the Open Inference Protocol, from the controller's LS.

A clockwork model instance (one copy, one model id) becomes a protocol model version:
    name     the model directory's last path component (`zoo/resnet50` -> `resnet50`)
    version  "1".."n": the copies of that name in ascending model id order
A request for a name without a version goes to version 1 (the lowest model id: a model that
keeps being asked for stays warm on a GPU, where spreading the same load over copies would
make each of them cold more often). Every model has one input and one output; their shapes
carry -1 for the batch dimension. A model whose worker did not describe its tensors (an older
worker) is served as bytes: UINT8, shape [-1, input bytes].

Pure logic: no sockets, no clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..transport.schema import ModelInfo

INPUT_NAME = "input"
OUTPUT_NAME = "output"

# numpy dtype name -> protocol datatype (KServe v2 "Tensor Data Types")
DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
NUMPY_DTYPES = {v: np.dtype(k) for k, v in DATATYPES.items()}
ITEM_SIZES = {v: d.itemsize for v, d in NUMPY_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str                 # protocol name, e.g. "FP32"
    shape: tuple[int, ...]        # one item, batch dim excluded

    @property
    def item_elements(self) -> int:
        return math.prod(self.shape)

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}


@dataclass(frozen=True)
class ModelVersion:
    """One copy of a model as the protocol sees it."""
    name: str
    version: str
    model_id: int
    input: TensorInfo
    output: TensorInfo
    input_size: int               # bytes of one item
    output_size: int
    max_batch: int                # the largest compiled batch size the controller accepts


def model_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1] or source


def _tensor(name: str, dtype: str, shape, size: int) -> TensorInfo:
    datatype = DATATYPES.get(dtype)
    if datatype is None or not shape or math.prod(shape) * ITEM_SIZES[datatype] != size:
        return TensorInfo(name, "UINT8", (size,))       # undescribed (or inconsistent): bytes
    return TensorInfo(name, datatype, tuple(int(d) for d in shape))


def _version(name: str, number: int, m: ModelInfo) -> ModelVersion:
    return ModelVersion(name, str(number), m.model_id,
                        _tensor(INPUT_NAME, m.input_dtype, m.input_shape, m.input_size),
                        _tensor(OUTPUT_NAME, m.output_dtype, m.output_shape, m.output_size),
                        m.input_size, m.output_size, max(m.batch_sizes) if m.batch_sizes else 1)


class Registry:
    """name -> versions, rebuilt from each LS answer (never mutated afterwards)."""

    def __init__(self, models: list[ModelInfo] = (), epoch: int = 0):
        self.epoch = epoch                  # the controller lifetime the model ids belong to
        self.infos = sorted(models, key=lambda m: m.model_id)
        self.next_id = self.infos[-1].model_id + 1 if self.infos else 0   # LS from here for new ones
        by_name: dict[str, list[ModelInfo]] = {}
        for m in self.infos:
            by_name.setdefault(model_name(m.source), []).append(m)
        self.models: dict[str, dict[str, ModelVersion]] = {
            name: {str(i): _version(name, i, m) for i, m in enumerate(copies, 1)}
            for name, copies in by_name.items()}

    def __len__(self) -> int:
        return len(self.models)

    def get(self, name: str, version: str = "") -> ModelVersion | None:
        """The copy named; version "" means version 1. None if there is no such model."""
        versions = self.models.get(name)
        if versions is None:
            return None
        return versions.get(version or "1")

    def versions(self, name: str) -> list[str]:
        return list(self.models.get(name, ()))

    def metadata(self, m: ModelVersion) -> dict:
        """The protocol's model metadata response."""
        return {"name": m.name, "versions": self.versions(m.name), "platform": "clockwork",
                "inputs": [m.input.metadata()], "outputs": [m.output.metadata()]}

    @staticmethod
    def config(m: ModelVersion) -> dict:
        """Triton's model configuration (what perf_analyzer and tritonclient's get_model_config
        read): the batch limit and the tensors without the batch dimension."""
        def tensor(t: TensorInfo) -> dict:
            return {"name": t.name, "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                    "dims": list(t.shape)}
        return {"name": m.name, "platform": "clockwork", "backend": "clockwork",
                "max_batch_size": m.max_batch, "input": [tensor(m.input)], "output": [tensor(m.output)]}
