"""The CUDA device backend: TVM-compiled CUDA modules driven through cuda-python.

Memory, per GPU, allocated once at start (nothing is allocated per request):
  * one device allocation for the weights cache, carved into `total_pages` pages;
  * one device io pool and one workspace pool (byte arenas the runtime hands out);
  * a pinned host mirror of the io pool (inputs are staged and outputs land at the same offset);
and per model, one pinned host copy of weights.bin shared by all its copies and GPUs.
Intermediate tensors of an exec come from TVM's own pooled allocator, warmed at load time so no
cudaMalloc happens on the request path (the workspace pool is accounted by the runtime but TVM
does not allocate from it: a known difference from the original).

One CUDA stream per executor and GPU (exec, weights-in, inputs-in, outputs-out); TVM launches
on the exec stream (set as its current stream). Every op is bracketed by two CUDA events; its
duration is the events' elapsed time, its completion found by poll() (cudaEventQuery).
Weights are passed to the compiled function as zero-copy views of their cache pages, cached
per placement. SM clocks come from NVML (pynvml) before and after each Infer; this backend only
reads GPU settings, never changes them. With CLOCKWORK_CUDA_GATE=1 an exec is enqueued behind a
wait on a host-written counter (cuStreamWaitValue64) and released once fully enqueued, so its
measured duration is GPU time without host submission gaps (see _gate_close).

CUDA graphs (`graphs=True`, or CLOCKWORK_CUDA_GRAPHS=1): the weights cache is made of physical
pages (cuMemCreate) and every model instance gets a fixed virtual range onto which LoadWeights
maps the pages it received (clockwork.model.fixed_weights). At an instance's first LoadWeights
one graph per batch size is captured over that range (on a side stream, nothing runs); Infer
then copies the inputs into the graph's fixed input buffer, replays the graph and copies the
output out, all on the exec stream. Evict/reload into other pages only remaps the range, so
the graphs stay valid. TVM's intermediate buffers (its pooled allocator, warmed at load) are
shared by all graphs: safe because one GPU runs one exec at a time.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from . import tvm_runtime as tr
from .backend import PENDING, Backend, BackendUnavailable, HostModel, LoadError, Op, Region
from .fixed_weights import CudaVmmDriver, FixedAddressWeights
from .format import ModelSpec

MAX_VIEW_CACHE = 4096
EVENTS_PER_GPU = 64


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart   # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailable("the cuda backend needs cuda-python (pip install cuda-python)") from None
    return cudart


class CudaError(RuntimeError):
    pass


def env_flag(name: str, default: bool) -> bool:
    """$name "1" or "0" if set (the environment overrides the worker's config), else default."""
    v = os.environ.get(name, "").strip()
    return default if v not in ("0", "1") else v == "1"


class _Cuda:
    """Thin checked wrappers over the CUDA runtime calls we use."""

    def __init__(self):
        self.rt = _cudart()
        self.ok = self.rt.cudaError_t.cudaSuccess
        self.not_ready = self.rt.cudaError_t.cudaErrorNotReady
        k = self.rt.cudaMemcpyKind
        self.H2D, self.D2H, self.D2D = (k.cudaMemcpyHostToDevice, k.cudaMemcpyDeviceToHost,
                                        k.cudaMemcpyDeviceToDevice)

    def check(self, res, what=""):
        err = res[0] if isinstance(res, tuple) else res
        if err != self.ok:
            _, name = self.rt.cudaGetErrorName(err)
            raise CudaError(f"{what}: {name.decode() if isinstance(name, bytes) else name}")
        if isinstance(res, tuple):
            return res[1] if len(res) == 2 else res[1:]
        return None


class CudaHostModel(HostModel):
    def __init__(self, spec, page_size, host_ptr, host_size, compiled, cuda):
        super().__init__(spec, page_size, {}, 0)
        self.host_ptr = host_ptr          # pinned copy of weights.bin (shared by copies)
        self.host_size = host_size
        self.compiled = compiled          # per GPU: tr.CompiledModel
        self.page_slices = list(spec.pages)
        self._cuda = cuda

    def close(self) -> None:
        if self.host_ptr:
            self._cuda.rt.cudaFreeHost(self.host_ptr)
            self.host_ptr = 0
        self.compiled = None


class _Gpu:
    __slots__ = ("index", "dev", "name", "arch", "cache", "io", "ws", "host_io", "host_io_view",
                 "s_exec", "s_weights", "s_in", "s_out", "s_capture", "events", "nvml", "out_at",
                 "fixed", "graphs", "captured", "gate_host", "gate_dev", "gate_n", "gate_value")


class _Graph:
    """One captured call of a compiled function: its fixed input and output addresses."""
    __slots__ = ("exec", "graph", "x", "x_ptr", "out", "out_ptr")


class CudaBackend(Backend):
    name = "cuda"
    poll_interval_ns = 20_000

    def __init__(self, page_size: int, total_pages: int, io_pool_size: int,
                 workspace_pool_size: int, gpus: list[int] | None = None,
                 graphs: bool | None = None, gate: bool | None = None):
        super().__init__(page_size, total_pages, io_pool_size, workspace_pool_size)
        self.graphs = env_flag("CLOCKWORK_CUDA_GRAPHS", False) if graphs is None else graphs
        self.gate = env_flag("CLOCKWORK_CUDA_GATE", False) if gate is None else gate
        self.gate_error: str | None = None
        self.graph_errors: list[str] = []     # captures that failed (those batches run direct)
        self.cu = cu = _Cuda()
        err, count = cu.rt.cudaGetDeviceCount()
        if err != cu.ok or count < 1:
            raise BackendUnavailable("no CUDA GPU found (driver missing or no device visible)")
        try:
            tr.import_tvm(cuda=True)
        except tr.TvmUnavailable as e:
            raise BackendUnavailable(str(e)) from None
        self._nvml = _nvml_init()
        self._gpus: list[_Gpu] = []
        self._pending: list = []          # [op, gpu, start event, end event, keepalive]
        self._views: dict = {}
        self._inputs: dict = {}
        for i in (gpus if gpus is not None else range(count)):
            self._gpus.append(self._open_gpu(i))

    def _open_gpu(self, i: int) -> _Gpu:
        cu, rt = self.cu, self.cu.rt
        g = _Gpu()
        g.index = i
        cu.check(rt.cudaSetDevice(i), f"cudaSetDevice({i})")
        props = cu.check(rt.cudaGetDeviceProperties(i), "cudaGetDeviceProperties")
        g.name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) \
            else str(props.name)
        g.arch = f"sm_{props.major}{props.minor}"
        g.dev = tr.device("cuda", i)
        g.fixed, g.graphs, g.captured, g.cache = None, {}, set(), 0
        try:
            g.io = cu.check(rt.cudaMalloc(max(self.io_pool_size, 256)), "io pool")
            g.ws = cu.check(rt.cudaMalloc(max(self.workspace_pool_size, 256)), "workspace pool")
            g.host_io = cu.check(rt.cudaHostAlloc(max(self.io_pool_size, 256), rt.cudaHostAllocPortable),
                                 "pinned host io pool")
            if self.graphs:          # (the primary context is current now: driver API calls work)
                g.fixed = FixedAddressWeights(CudaVmmDriver(i), self.page_size, self.total_pages)
            else:
                g.cache = cu.check(rt.cudaMalloc(self.total_pages * self.page_size), "weights cache")
        except (CudaError, RuntimeError, ValueError) as e:
            raise BackendUnavailable(f"GPU {i}: cannot allocate the worker's memory ({e}); lower "
                                     "weights_cache_size / pool sizes in the config") from None
        g.host_io_view = (ctypes.c_uint8 * max(self.io_pool_size, 256)).from_address(g.host_io)
        flags = rt.cudaStreamNonBlocking
        g.s_exec, g.s_weights, g.s_in, g.s_out, g.s_capture = (
            cu.check(rt.cudaStreamCreateWithFlags(flags), "stream") for _ in range(5))
        g.events = [cu.check(rt.cudaEventCreateWithFlags(rt.cudaEventDefault), "event")
                    for _ in range(EVENTS_PER_GPU)]
        tr.set_stream(g.dev, int(g.s_exec))
        g.gate_n, g.gate_host = 0, 0
        if self.gate:
            try:
                self._open_gate(g)
            except Exception as e:          # no stream memory ops here: run without the gate
                self.gate_error = f"GPU {i}: exec gate unavailable ({type(e).__name__}: {e})"
                if g.gate_host:
                    rt.cudaFreeHost(g.gate_host)
                g.gate_host = 0
        g.nvml = _nvml_handle(self._nvml, props)
        g.out_at = {}
        return g

    # ------------------------------------------------------------------ devices
    def gpu_names(self) -> list[str]:
        return [g.name for g in self._gpus]

    def gpu_clock_mhz(self, gpu: int) -> int:
        g = self._gpus[gpu]
        if g.nvml is None:
            return 0
        try:
            return self._nvml.nvmlDeviceGetClockInfo(g.nvml, self._nvml.NVML_CLOCK_SM)
        except Exception:
            return 0

    def readings(self, now: int):
        from ..transport.schema import GpuReading
        out = []
        nv = self._nvml
        for i, g in enumerate(self._gpus):
            sm = mem = temp = 0
            util = 0.0
            total = 0
            if g.nvml is not None:
                try:
                    sm = nv.nvmlDeviceGetClockInfo(g.nvml, nv.NVML_CLOCK_SM)
                    mem = nv.nvmlDeviceGetClockInfo(g.nvml, nv.NVML_CLOCK_MEM)
                    temp = nv.nvmlDeviceGetTemperature(g.nvml, nv.NVML_TEMPERATURE_GPU)
                    util = nv.nvmlDeviceGetUtilizationRates(g.nvml).gpu / 100.0
                    total = nv.nvmlDeviceGetMemoryInfo(g.nvml).total
                except Exception:
                    pass
            out.append(GpuReading(i, sm, mem, temp, 0, total, util))
        return out

    # ------------------------------------------------------------------ models
    def code_key(self, gpu: int = 0) -> str:
        return f"cuda-{self._gpus[gpu].arch}"

    def load_host_model(self, spec: ModelSpec) -> HostModel:
        cu, rt = self.cu, self.cu.rt
        key = self.code_key()
        try:
            tr.check_runnable(spec, key)
            if spec.page_size != self.page_size:
                raise ValueError(f"{spec.path}: built for {spec.page_size}-byte pages, this worker "
                                 f"uses {self.page_size}; rebuild with --page-size")
            size = tr.weights_image_size(spec)
            ptr = cu.check(rt.cudaHostAlloc(size, rt.cudaHostAllocPortable), "pinned weights")
        except (ValueError, CudaError) as e:
            raise LoadError(str(e)) from None
        hm = CudaHostModel(spec, self.page_size, ptr, size, [], cu)
        try:
            tr.read_weights(spec, (ctypes.c_uint8 * size).from_address(ptr))
            for g in self._gpus:
                cu.check(rt.cudaSetDevice(g.index), "cudaSetDevice")
                hm.compiled.append(tr.CompiledModel(spec.path / spec.code[key], g.dev))
                hm.compiled[-1].check_dtype(spec)
            self._warm_up(hm)
        except (OSError, RuntimeError, ValueError) as e:
            hm.close()
            raise LoadError(f"{spec.path}: {e}") from None
        return hm

    def _warm_up(self, hm: CudaHostModel, runs: int = 5) -> None:
        """Run every batch size once per GPU (TVM's pools allocate now, not on the request
        path); without measurements.json, time them here to fill exec_ns/weights_load_ns."""
        spec = hm.spec
        for gi, g in enumerate(self._gpus):
            measure = gi == 0 and not spec.has_measurements
            prof = self.profile(hm, gi, runs if measure else 1, spec.batch_sizes)
            if measure:
                hm.weights_load_ns = sorted(prof["load"])[len(prof["load"]) // 2]
                for b in spec.batch_sizes:
                    xs = sorted(prof[b])
                    hm.exec_ns[b] = xs[len(xs) // 2]
        if spec.has_measurements:
            hm.weights_load_ns = spec.weights_load_ns
            hm.exec_ns = {b: spec.exec_ns[b] for b in spec.batch_sizes}

    def profile(self, hm: CudaHostModel, gpu: int, runs: int, batch_sizes=None) -> dict:
        """Timings (ns, from CUDA events) of `runs` weight loads and execs per batch size, on
        scratch memory (not the weights cache). Synchronous: for load time and tools only."""
        cu, rt = self.cu, self.cu.rt
        g = self._gpus[gpu]
        n_pages = len(hm.page_slices)
        cu.check(rt.cudaSetDevice(g.index), "cudaSetDevice")
        scratch = cu.check(rt.cudaMalloc(n_pages * self.page_size), "scratch weights")
        xin = cu.check(rt.cudaMalloc(max(hm.spec.batch_sizes) * hm.input_size), "scratch input")
        xg = cu.check(rt.cudaMalloc(max(hm.spec.batch_sizes) * hm.input_size), "graph input")
        e0, e1 = g.events.pop(), g.events.pop()
        out = {"load": []}
        try:
            pages = list(range(n_pages))
            for _ in range(runs):
                cu.check(rt.cudaEventRecord(e0, g.s_weights), "event")
                self._copy_pages(g, hm, pages, scratch)
                cu.check(rt.cudaEventRecord(e1, g.s_weights), "event")
                cu.check(rt.cudaEventSynchronize(e1), "sync")
                out["load"].append(int(cu.check(rt.cudaEventElapsedTime(e0, e1), "elapsed") * 1e6))
            views = tr.weight_views(scratch, self.page_size, pages, hm.spec.tensors, g.dev)
            for b in batch_sizes or hm.spec.batch_sizes:
                x = tr.raw_view(xin, (b, *hm.spec.input_shape), hm.spec.input_dtype, g.dev)
                f = hm.compiled[gpu].function(b)
                f(x, *views)                       # first call: TVM allocations happen here
                cu.check(rt.cudaStreamSynchronize(g.s_exec), "sync")
                gr = None
                if self.graphs:                    # time what execute() does: copy in, replay
                    xgv = tr.raw_view(xg, (b, *hm.spec.input_shape), hm.spec.input_dtype, g.dev)
                    gr = self._capture(g, f, xgv, views)
                out[b] = []
                for _ in range(runs):
                    n = self._gate_close(g)
                    try:
                        cu.check(rt.cudaEventRecord(e0, g.s_exec), "event")
                        if gr is None:
                            f(x, *views)
                        else:
                            self._replay(g, gr, xin, 0, b * hm.input_size)
                        cu.check(rt.cudaEventRecord(e1, g.s_exec), "event")
                    finally:
                        if n:
                            self._gate_open(g, n)
                    cu.check(rt.cudaEventSynchronize(e1), "sync")
                    out[b].append(int(cu.check(rt.cudaEventElapsedTime(e0, e1), "elapsed") * 1e6))
                if gr is not None:
                    self._destroy(gr)
            del views
        finally:
            cu.check(rt.cudaStreamSynchronize(g.s_exec), "sync")
            rt.cudaFree(scratch)
            rt.cudaFree(xin)
            rt.cudaFree(xg)
            g.events += [e0, e1]
        return out

    def _copy_pages(self, g, hm, pages, base) -> None:
        cu, rt, ps = self.cu, self.cu.rt, self.page_size
        for k, (off, n) in enumerate(hm.page_slices):
            cu.check(rt.cudaMemcpyAsync(base + pages[k] * ps, hm.host_ptr + off, n, cu.H2D,
                                        g.s_weights), "weights copy")

    # ------------------------------------------------------------------ device operations
    def _begin(self, g: _Gpu, stream):
        if len(g.events) < 2:
            raise CudaError("out of CUDA events (too many ops in flight)")
        e0, e1 = g.events.pop(), g.events.pop()
        self.cu.check(self.cu.rt.cudaEventRecord(e0, stream), "event")
        return e0, e1

    def _end(self, g: _Gpu, stream, e0, e1, now: int, keep=None) -> Op:
        self.cu.check(self.cu.rt.cudaEventRecord(e1, stream), "event")
        op = Op(now, PENDING)
        self._pending.append([op, g, e0, e1, keep])
        return op

    def _failed(self, g, events, now, e) -> Op:
        if events:
            g.events.extend(events)
        op = Op(now, now, 0)
        op.error = f"{type(e).__name__}: {e}"
        return op

    def _set(self, g):
        if len(self._gpus) > 1:
            self.cu.rt.cudaSetDevice(g.index)

    def load_weights(self, gpu: int, hm: HostModel, pages: list[int], now: int,
                     instance: int = -1) -> Op:
        g = self._gpus[gpu]
        ev = None
        try:
            self._set(g)
            if g.fixed is not None:          # map the pages onto the instance's fixed range
                if instance < 0:
                    raise ValueError("fixed weight addresses need the model instance (model id)")
                base = g.fixed.place(instance, pages)
                if instance not in g.captured:      # (not prepared at LoadModelFromDisk)
                    self._capture_instance(g, gpu, hm, instance, base)
                dst, where = base, list(range(len(pages)))
            else:
                dst, where = g.cache, pages
            ev = self._begin(g, g.s_weights)
            self._copy_pages(g, hm, where, dst)
            return self._end(g, g.s_weights, *ev, now)
        except Exception as e:
            return self._failed(g, ev, now, e)

    def copy_input(self, gpu: int, hm: HostModel, batch_size: int, inputs: list, io: Region,
                   now: int) -> Op:
        g = self._gpus[gpu]
        ev = None
        n = batch_size * hm.input_size
        try:
            pos = g.host_io + io.offset
            for frame in inputs:                 # stage into pinned memory (no copy of the frame)
                src = np.frombuffer(frame, np.uint8)
                ctypes.memmove(pos, src.ctypes.data, src.nbytes)
                pos += src.nbytes
            self._set(g)
            ev = self._begin(g, g.s_in)
            self.cu.check(self.cu.rt.cudaMemcpyAsync(g.io + io.offset, g.host_io + io.offset, n,
                                                     self.cu.H2D, g.s_in), "input copy")
            return self._end(g, g.s_in, *ev, now)
        except Exception as e:
            return self._failed(g, ev, now, e)

    def execute(self, gpu: int, hm: HostModel, padded_batch: int, pages: list[int], io: Region,
                workspace: Region, now: int, instance: int = -1) -> Op:
        g = self._gpus[gpu]
        n = 0
        try:
            n = self._gate_close(g)
            return self._enqueue_exec(g, gpu, hm, padded_batch, pages, io, now, instance)
        except Exception as e:
            return self._failed(g, None, now, e)
        finally:
            if n:
                self._gate_open(g, n)

    def _enqueue_exec(self, g, gpu, hm, padded_batch, pages, io, now, instance) -> Op:
        ev = None
        try:
            gr = g.graphs.get((instance, padded_batch))
            if gr is not None:
                out_off = io.offset + padded_batch * hm.input_size
                self._set(g)
                ev = self._begin(g, g.s_exec)
                self._replay(g, gr, g.io + io.offset, g.io + out_off,
                             padded_batch * hm.input_size, padded_batch * hm.output_size)
                g.out_at[io.offset] = out_off
                return self._end(g, g.s_exec, *ev, now)
            if g.fixed is not None:
                weights = self._fixed_views(g, hm, instance, pages)
            else:
                weights = self._weight_views(g, hm, pages)
            x = self._input_view(g, hm, padded_batch, io)
            f = hm.compiled[gpu].function(padded_batch)
            self._set(g)
            ev = self._begin(g, g.s_exec)
            out = f(x, *weights)
            out_off = io.offset + padded_batch * hm.input_size
            self.cu.check(self.cu.rt.cudaMemcpyAsync(g.io + out_off, out.data_ptr(),
                                                     padded_batch * hm.output_size, self.cu.D2D,
                                                     g.s_exec), "output copy")
            g.out_at[io.offset] = out_off
            return self._end(g, g.s_exec, *ev, now, keep=out)
        except Exception as e:
            return self._failed(g, ev, now, e)

    def copy_output(self, gpu: int, hm: HostModel, batch_size: int, io: Region, now: int) -> Op:
        g = self._gpus[gpu]
        ev = None
        try:
            off = g.out_at.pop(io.offset)
            n = batch_size * hm.output_size
            self._set(g)
            ev = self._begin(g, g.s_out)
            self.cu.check(self.cu.rt.cudaMemcpyAsync(g.host_io + off, g.io + off, n, self.cu.D2H,
                                                     g.s_out), "output copy")
            op = self._end(g, g.s_out, *ev, now)
            op.output = memoryview(g.host_io_view)[off:off + n]
            return op
        except Exception as e:
            return self._failed(g, ev, now, e)

    # ------------------------------------------------------------------ completion
    def poll(self, now: int):
        if not self._pending:
            return ()
        rt, cu = self.cu.rt, self.cu
        done, still = [], []
        for entry in self._pending:
            op, g, e0, e1, _ = entry
            err = rt.cudaEventQuery(e1)[0]
            if err == cu.not_ready:
                still.append(entry)
                continue
            if err != cu.ok:
                op.error = f"CUDA error {err}"
                op.duration = 0
            else:
                err, ms = rt.cudaEventElapsedTime(e0, e1)
                op.duration = int(ms * 1e6) if err == cu.ok else 0
            op.end = now
            op.begin = now - op.duration
            g.events.append(e0)
            g.events.append(e1)
            done.append(op)
        self._pending = still
        return done

    def reset(self) -> None:
        rt = self.cu.rt
        for g in self._gpus:
            for s in (g.s_exec, g.s_weights, g.s_in, g.s_out):
                rt.cudaStreamSynchronize(s)
            g.out_at.clear()
        for op, g, e0, e1, _ in self._pending:
            g.events += [e0, e1]
        self._pending = []
        self._views.clear()
        self._inputs.clear()

    def close(self) -> None:
        self.reset()
        rt = self.cu.rt
        for g in self._gpus:
            for gr in g.graphs.values():
                self._destroy(gr)
            g.graphs.clear()
            if g.fixed is not None:
                g.fixed.close()
            else:
                rt.cudaFree(g.cache)
            rt.cudaFree(g.io)
            rt.cudaFree(g.ws)
            rt.cudaFreeHost(g.host_io)
            if g.gate_host:
                rt.cudaFreeHost(g.gate_host)
        self._gpus = []

    # ------------------------------------------------------------------ exec gate
    # An exec's work is enqueued behind a wait on a host-written counter and released only
    # once all of it is enqueued, so the GPU runs it back to back: host submission time and
    # its jitter (Python, cuda-python, TVM's launches) stay out of the measured exec.
    def _open_gate(self, g) -> None:
        cu, rt = self.cu, self.cu.rt
        try:
            from cuda.bindings import driver as drv
        except ImportError:
            from cuda import cuda as drv
        self._drv = drv
        g.gate_host = cu.check(rt.cudaHostAlloc(64, rt.cudaHostAllocMapped | rt.cudaHostAllocPortable),
                               "gate flag")
        g.gate_value = ctypes.c_uint64.from_address(g.gate_host)
        g.gate_value.value = 0
        g.gate_dev = int(cu.check(rt.cudaHostGetDevicePointer(g.gate_host, 0), "gate flag pointer"))
        self._gate_close(g)                    # checks the driver takes it: opened at once
        self._gate_open(g, g.gate_n)
        cu.check(rt.cudaStreamSynchronize(g.s_exec), "gate check")

    def _gate_close(self, g) -> int:
        """Enqueue 'wait until the counter reaches n' on the exec stream; returns n (0: no gate)."""
        if not g.gate_host:
            return 0
        self._set(g)
        drv = self._drv
        g.gate_n += 1
        res = drv.cuStreamWaitValue64(drv.CUstream(int(g.s_exec)), drv.CUdeviceptr(g.gate_dev),
                                      g.gate_n,
                                      int(drv.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ))
        err = res[0] if isinstance(res, tuple) else res
        if err != drv.CUresult.CUDA_SUCCESS:
            g.gate_n -= 1
            raise CudaError(f"cuStreamWaitValue64: {err}")
        return g.gate_n

    def _gate_open(self, g, n: int) -> None:
        g.gate_value.value = n

    # ------------------------------------------------------------------ CUDA graphs
    def _capture(self, g, f, x, views) -> _Graph:
        """Capture one call f(x, *views) on the side stream (nothing runs); the graph keeps
        x's and the output's addresses."""
        cu, rt = self.cu, self.cu.rt
        tr.set_stream(g.dev, int(g.s_capture))
        try:
            cu.check(rt.cudaStreamBeginCapture(
                g.s_capture, rt.cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed), "begin capture")
            try:
                out = f(x, *views)
            finally:
                graph = cu.check(rt.cudaStreamEndCapture(g.s_capture), "end capture")
        finally:
            tr.set_stream(g.dev, int(g.s_exec))
        gr = _Graph()
        gr.graph, gr.x, gr.out = graph, x, out
        gr.exec = cu.check(rt.cudaGraphInstantiate(graph, 0), "graph instantiate")
        gr.x_ptr, gr.out_ptr = int(x.data_ptr()), int(out.data_ptr())
        return gr

    def _replay(self, g, gr, x_src, out_dst, x_bytes, out_bytes=0) -> None:
        """On the exec stream: inputs into the graph's input, replay, output out of it."""
        cu, rt = self.cu, self.cu.rt
        if x_bytes:
            cu.check(rt.cudaMemcpyAsync(gr.x_ptr, x_src, x_bytes, cu.D2D, g.s_exec), "input copy")
        cu.check(rt.cudaGraphLaunch(gr.exec, g.s_exec), "graph launch")
        if out_bytes:
            cu.check(rt.cudaMemcpyAsync(out_dst, gr.out_ptr, out_bytes, cu.D2D, g.s_exec),
                     "output copy")

    def _destroy(self, gr: _Graph) -> None:
        rt = self.cu.rt
        rt.cudaGraphExecDestroy(gr.exec)
        rt.cudaGraphDestroy(gr.graph)
        gr.x = gr.out = None

    def prepare_instance(self, hm, instance: int) -> None:
        """Graph mode: reserve the instance's fixed range on every GPU and capture its graphs
        there now (LoadModelFromDisk): capturing runs the whole host side of each batch size's
        call (~0.5 ms for a ResNet-50; ~10 ms with cuDNN's legacy API), which the first
        LoadWeights would otherwise do on the worker's event loop. Nothing runs; until its first LoadWeights the
        range maps cache page 0 at every slot, so every captured address is mapped memory."""
        if not self.graphs:
            return
        for gi, g in enumerate(self._gpus):
            if instance not in g.captured:
                self._set(g)
                base = g.fixed.place(instance, [0] * len(hm.page_slices))
                self._capture_instance(g, gi, hm, instance, base)

    def _capture_instance(self, g, gpu, hm, instance, base) -> None:
        """One graph per batch size over the instance's fixed weight range (at LoadModelFromDisk,
        or else its first LoadWeights on this GPU; never on the Infer path)."""
        g.captured.add(instance)
        cu, rt = self.cu, self.cu.rt
        views = tr.weight_views(base, self.page_size, list(range(len(hm.page_slices))),
                                hm.spec.tensors, g.dev)
        for b in hm.spec.batch_sizes:
            try:
                xbuf = cu.check(rt.cudaMalloc(max(256, b * hm.input_size)), "graph input")
                x = tr.raw_view(xbuf, (b, *hm.spec.input_shape), hm.spec.input_dtype, g.dev,
                                owner=_DeviceBuffer(rt, xbuf))
                g.graphs[(instance, b)] = self._capture(g, hm.compiled[gpu].function(b), x, views)
            except Exception as e:      # this batch size runs without a graph (direct call)
                self.graph_errors.append(f"{hm.spec.name} b{b}: {type(e).__name__}: {e}")

    def _fixed_views(self, g, hm, instance, pages):
        key = (g.index, hm, "fixed", instance)
        v = self._views.get(key)
        if v is None:
            if len(self._views) >= MAX_VIEW_CACHE:
                self._views.clear()
            base = g.fixed.base(instance, len(pages))
            v = self._views[key] = tr.weight_views(base, self.page_size, list(range(len(pages))),
                                                   hm.spec.tensors, g.dev)
        return v

    # ------------------------------------------------------------------ views (cached)
    def _weight_views(self, g, hm, pages):
        key = (g.index, hm, tuple(pages))
        v = self._views.get(key)
        if v is None:
            if len(self._views) >= MAX_VIEW_CACHE:
                self._views.clear()
            v = self._views[key] = tr.weight_views(g.cache, self.page_size, pages, hm.spec.tensors, g.dev)
        return v

    def _input_view(self, g, hm, padded, io):
        key = (g.index, io.offset, hm, padded)
        v = self._inputs.get(key)
        if v is None:
            if len(self._inputs) >= MAX_VIEW_CACHE:
                self._inputs.clear()
            v = self._inputs[key] = tr.raw_view(g.io + io.offset, (padded, *hm.spec.input_shape),
                                                hm.spec.input_dtype, g.dev)
        return v


class _DeviceBuffer:
    """Frees a cudaMalloc'd buffer when the tensor viewing it is gone."""

    def __init__(self, rt, ptr):
        self.rt, self.ptr = rt, ptr

    def __del__(self):
        try:
            self.rt.cudaFree(self.ptr)
        except Exception:
            pass


def _nvml_handle(nvml, props):
    """The NVML handle of the GPU with these CUDA properties, found by PCI bus id: NVML counts
    every GPU of the host in PCI order, CUDA only the visible ones (CUDA_VISIBLE_DEVICES) and
    by default fastest first, so the same index can name two different GPUs. None if not found
    (its clocks then read as 0)."""
    if nvml is None:
        return None
    bus_id = f"{props.pciDomainID:08X}:{props.pciBusID:02X}:{props.pciDeviceID:02X}.0".encode()
    try:                        # (bytes: older pynvml passes the argument to ctypes as is)
        return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except Exception:
        return None


def _nvml_init():
    """pynvml, initialised, or None (clocks then read as 0)."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None

