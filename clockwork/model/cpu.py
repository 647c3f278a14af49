"""The CPU device backend: TVM llvm modules, run synchronously on the host.

It exists so the real path (weights in pages of a cache, weights passed to compiled code from
wherever their pages are, padded batches, evict and reload elsewhere) runs in CI on a machine
with no GPU, with the MLP and the tiny CNN. Each "GPU" is a slice of host memory: one
allocation for its weights cache carved into page views, one for its io pool. Ops complete
before the call returns (Op.end known), timed with the host clock.
"""
from __future__ import annotations

import time

import numpy as np

from . import tvm_runtime as tr
from .backend import Backend, HostModel, LoadError, Op, Region
from .format import ModelSpec

CODE_KEY = "llvm"
ALIGN = 256
MAX_VIEW_CACHE = 4096


def aligned_bytes(nbytes: int, align: int = ALIGN) -> np.ndarray:
    """A zeroed uint8 array of `nbytes` whose data starts on an `align` boundary (pages stay
    untouched until written, so a large cache costs only what is used)."""
    raw = np.zeros(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes]


class CpuHostModel(HostModel):
    """Weights image in host memory + the module loaded for the CPU."""

    def __init__(self, spec, page_size, exec_ns, weights_load_ns, image, compiled):
        super().__init__(spec, page_size, exec_ns, weights_load_ns)
        self.image = image
        self.compiled = compiled
        self.page_slices = [(off, n) for off, n in spec.pages]

    def close(self) -> None:
        self.image = None
        self.compiled = None


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, page_size: int, total_pages: int, io_pool_size: int,
                 workspace_pool_size: int, num_gpus: int = 1):
        super().__init__(page_size, total_pages, io_pool_size, workspace_pool_size)
        self.dev = tr.import_tvm().cpu(0)
        self._caches = [aligned_bytes(total_pages * page_size) for _ in range(num_gpus)]
        self._io = [aligned_bytes(io_pool_size) for _ in range(num_gpus)]
        self._views: dict = {}       # (gpu, hm, pages) -> weight views
        self._inputs: dict = {}      # (gpu, io.offset, hm, padded) -> input view
        self._out_at: list[dict[int, int]] = [{} for _ in range(num_gpus)]

    def gpu_names(self) -> list[str]:
        return [f"CPU {i} (TVM llvm)" for i in range(len(self._caches))]

    # ------------------------------------------------------------------ models
    def load_host_model(self, spec: ModelSpec) -> HostModel:
        try:
            tr.check_runnable(spec, CODE_KEY)
            if spec.page_size != self.page_size:
                raise ValueError(f"{spec.path}: built for {spec.page_size}-byte pages, this worker "
                                 f"uses {self.page_size}; rebuild with --page-size")
            image = aligned_bytes(tr.weights_image_size(spec))
            tr.read_weights(spec, image)
            compiled = tr.CompiledModel(spec.path / spec.code[CODE_KEY], self.dev)
            compiled.check_dtype(spec)
        except (ValueError, OSError, RuntimeError) as e:
            raise LoadError(str(e)) from None
        hm = CpuHostModel(spec, self.page_size, {}, 0, image, compiled)
        self._measure(hm)
        return hm

    def _measure(self, hm: CpuHostModel) -> None:
        """Use measurements.json if present, else time each batch size here (also warms up)."""
        spec = hm.spec
        prof = self.profile(hm, 0, 1 if spec.has_measurements else 3)
        hm.weights_load_ns = spec.weights_load_ns or sorted(prof["load"])[len(prof["load"]) // 2]
        for b in spec.batch_sizes:
            hm.exec_ns[b] = spec.exec_ns.get(b) or sorted(prof[b])[len(prof[b]) // 2]

    def profile(self, hm: CpuHostModel, gpu: int, runs: int, batch_sizes=None) -> dict:
        """Host-clock timings (ns) of `runs` weight loads and execs per batch size, on scratch
        memory (not the weights cache)."""
        spec = hm.spec
        scratch = aligned_bytes(len(hm.page_slices) * self.page_size)
        pages = list(range(len(hm.page_slices)))
        out = {"load": []}
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            self._copy_pages(hm, scratch, pages)
            out["load"].append(time.perf_counter_ns() - t0)
        views = tr.weight_views(scratch.ctypes.data, self.page_size, pages, spec.tensors, self.dev,
                                scratch)
        for b in batch_sizes or spec.batch_sizes:
            xb = aligned_bytes(b * hm.input_size)
            x = tr.raw_view(xb.ctypes.data, (b, *spec.input_shape), spec.input_dtype, self.dev, xb)
            f = hm.compiled.function(b)
            out[b] = []
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                f(x, *views)
                out[b].append(time.perf_counter_ns() - t0)
        return out

    def _copy_pages(self, hm, cache: np.ndarray, pages: list[int]) -> None:
        ps = self.page_size
        for k, (off, n) in enumerate(hm.page_slices):
            dst = pages[k] * ps
            cache[dst:dst + n] = hm.image[off:off + n]

    # ------------------------------------------------------------------ device operations
    def load_weights(self, gpu: int, hm: HostModel, pages: list[int], now: int,
                     instance: int = -1) -> Op:
        t0 = time.perf_counter_ns()
        self._copy_pages(hm, self._caches[gpu], pages)
        d = time.perf_counter_ns() - t0
        return Op(now, now + d, d)

    def copy_input(self, gpu: int, hm: HostModel, batch_size: int, inputs: list, io: Region,
                   now: int) -> Op:
        t0 = time.perf_counter_ns()
        buf, pos = self._io[gpu], io.offset
        if inputs:
            for frame in inputs:
                mv = memoryview(frame).cast("B")
                buf[pos:pos + len(mv)] = np.frombuffer(mv, np.uint8)
                pos += len(mv)
        else:
            buf[pos:pos + batch_size * hm.input_size] = 0
        d = time.perf_counter_ns() - t0
        return Op(now, now + d, d)

    def execute(self, gpu: int, hm: HostModel, padded_batch: int, pages: list[int], io: Region,
                workspace: Region, now: int, instance: int = -1) -> Op:
        t0 = time.perf_counter_ns()
        op = Op(now)
        try:
            weights = self._weight_views(gpu, hm, pages)
            x = self._input_view(gpu, hm, padded_batch, io)
            out = hm.compiled.function(padded_batch)(x, *weights)
            out_off = io.offset + padded_batch * hm.input_size
            n = padded_batch * hm.output_size
            self._io[gpu][out_off:out_off + n] = np.from_dlpack(out).reshape(-1).view(np.uint8)
            self._out_at[gpu][io.offset] = out_off
        except Exception as e:   # a TVM error must become RUNTIME_ERROR, not kill the worker
            op.error = f"{type(e).__name__}: {e}"
        d = time.perf_counter_ns() - t0
        op.end, op.duration = now + d, d
        return op

    def copy_output(self, gpu: int, hm: HostModel, batch_size: int, io: Region, now: int) -> Op:
        t0 = time.perf_counter_ns()
        off = self._out_at[gpu].pop(io.offset, None)
        op = Op(now)
        if off is None:
            op.error = "no output: exec did not run for this io region"
        else:
            op.output = memoryview(self._io[gpu])[off:off + batch_size * hm.output_size]
        d = time.perf_counter_ns() - t0
        op.end, op.duration = now + d, d
        return op

    # ------------------------------------------------------------------ views (cached)
    def _weight_views(self, gpu, hm, pages):
        key = (gpu, hm, tuple(pages))
        v = self._views.get(key)
        if v is None:
            if len(self._views) >= MAX_VIEW_CACHE:
                self._views.clear()
            v = self._views[key] = tr.weight_views(self._caches[gpu].ctypes.data, self.page_size,
                                                   pages, hm.spec.tensors, self.dev, self._caches[gpu])
        return v

    def _input_view(self, gpu, hm, padded, io):
        key = (gpu, io.offset, hm, padded)
        v = self._inputs.get(key)
        if v is None:
            if len(self._inputs) >= MAX_VIEW_CACHE:
                self._inputs.clear()
            v = self._inputs[key] = tr.raw_view(self._io[gpu].ctypes.data + io.offset,
                                                (padded, *hm.spec.input_shape), hm.spec.input_dtype,
                                                self.dev, self._io[gpu])
        return v

    def reset(self) -> None:
        for d in self._out_at:
            d.clear()
        self._views.clear()
        self._inputs.clear()
