"""The CUDA backend's per-GPU setup for G = 4 GPUs, on a fake CUDA runtime, TVM and NVML.

No GPU here, so clockwork.model.cuda runs over fakes that keep CUDA's multi-device rules:
every stream, event and allocation belongs to the device current when it was made; device
memory is real bytes at per-device addresses; work is queued per stream and runs only when the
backend polls (so copies to several GPUs are in flight at once); an event can only be recorded
on a stream of its own device; a kernel (the fake TVM function) launches on the current device,
on the stream TVM was given for that device, and may read only that device's memory. The
worker runtime drives it: one model with copies on every GPU, LoadWeights to all four GPUs at
once, Infer on all four. Outputs must equal a digest of the model's true weights and input.
"""
from __future__ import annotations

import ctypes
import hashlib
import types

import numpy as np
import pytest

from clockwork.model import cuda as cuda_mod
from clockwork.model import nets
from clockwork.model import tvm_runtime as real_tr
from clockwork.model.build import write_weights
from clockwork.model.fixed_weights import VmmDriver
from clockwork.model.format import write_measurements, write_metadata
from clockwork.transport import schema as s
from clockwork.worker.runtime import WorkerRuntime

pytestmark = pytest.mark.timeout(120)

G = 4
PAGE = 2 << 20
PAGES = 6
POOL = 1 << 20
DEVICE_BASE = 0xD << 44          # above user space: a device address is never a host one
OK, NOT_READY, BAD_HANDLE, BAD_VALUE = 0, 600, 400, 1
# CUDA device i is physical GPU PHYSICAL[i] (as with CUDA_VISIBLE_DEVICES=2,0,3,1); NVML counts
# physical GPUs in PCI order (bus ids BUS) and ignores CUDA_VISIBLE_DEVICES
PHYSICAL = [2, 0, 3, 1]
BUS = [0x19, 0x3B, 0x4C, 0x5D]


class Misuse(AssertionError):
    pass


class FakeCudart:
    """The cuda-python runtime calls the backend makes, with CUDA's rules for several devices
    (CUDA C Programming Guide, "Stream and Event Behavior")."""

    def __init__(self, n):
        self.n = n
        self.current = 0
        self.dev_mem: list[dict[int, bytearray]] = [{} for _ in range(n)]
        self.next_dev = [DEVICE_BASE + (d << 40) for d in range(n)]
        self.host: dict[int, tuple[int, object]] = {}      # pinned address -> (size, buffer)
        self.streams = []
        self.misuse: list[str] = []
        self.copies = []                # (kind, dst device, src device, stream device, nbytes)
        self.max_in_flight_weights = 0
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=OK, cudaErrorNotReady=NOT_READY)
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D",
                                                    cudaMemcpyDeviceToHost="D2H",
                                                    cudaMemcpyDeviceToDevice="D2D")
        self.cudaHostAllocPortable, self.cudaHostAllocMapped = 1, 2
        self.cudaStreamNonBlocking, self.cudaEventDefault = 1, 0
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeRelaxed=2)
        self.graph_launches = []        # (graph's device, stream's device)

    def _bad(self, what, code=BAD_HANDLE):
        self.misuse.append(what)
        return (code,)

    # devices and memory
    def cudaGetErrorName(self, err):
        return OK, f"fake error {err}".encode()

    def cudaGetDeviceCount(self):
        return OK, self.n

    def cudaSetDevice(self, i):
        if not 0 <= i < self.n:
            return (BAD_VALUE,)
        self.current = i
        return (OK,)

    def cudaGetDeviceProperties(self, i):
        return OK, types.SimpleNamespace(name=f"Fake H200 #{i}".encode(), major=9, minor=0,
                                         pciDomainID=0, pciBusID=BUS[PHYSICAL[i]], pciDeviceID=0)

    def cudaMalloc(self, n):
        d = self.current
        addr = self.next_dev[d]
        self.next_dev[d] += (n + 0xFFFF) & ~0xFFFF
        self.dev_mem[d][addr] = bytearray(n)
        return OK, addr

    def cudaFree(self, addr):
        for mem in self.dev_mem:
            if mem.pop(addr, None) is not None:
                return (OK,)
        return (BAD_VALUE,)

    def cudaHostAlloc(self, n, flags):
        if not flags & self.cudaHostAllocPortable:
            self.misuse.append("pinned host memory not portable: pinned for one GPU's context only")
        buf = (ctypes.c_uint8 * n)()
        addr = ctypes.addressof(buf)
        self.host[addr] = (n, buf)
        return OK, addr

    def cudaFreeHost(self, addr):
        return (OK,) if self.host.pop(addr, None) else (BAD_VALUE,)

    def device_of(self, addr, n):
        """(device, bytearray, offset) holding device bytes [addr, addr + n)."""
        for d, mem in enumerate(self.dev_mem):
            for base, buf in mem.items():
                if base <= addr and addr + n <= base + len(buf):
                    return d, buf, addr - base
        raise Misuse(f"{addr:#x}+{n} is not device memory")

    def _host_range(self, addr, n):
        if not any(a <= addr and addr + n <= a + size for a, (size, _) in self.host.items()):
            raise Misuse(f"host {addr:#x}+{n} is not pinned memory")

    # streams and events: work queued per stream, run when polled
    def cudaStreamCreateWithFlags(self, flags):
        st = FakeStream(len(self.streams) + 1, self.current)
        self.streams.append(st)
        return OK, st

    def cudaEventCreateWithFlags(self, flags):
        return OK, FakeEvent(self.current)

    def cudaEventRecord(self, e, st):
        if e.device != st.device:       # "will fail if event and stream are on different devices"
            return self._bad(f"event of GPU {e.device} recorded on a stream of GPU {st.device}")
        e.done = False
        e.stream = st
        st.enqueue(lambda: setattr(e, "done", True))
        return (OK,)

    def cudaEventQuery(self, e):
        if not e.done and e.stream.queue:
            e.stream.queue.pop(0)()     # the GPU makes one step of progress per query
        return (OK,) if e.done else (NOT_READY,)

    def cudaEventSynchronize(self, e):
        while not e.done:
            e.stream.queue.pop(0)()
        return (OK,)

    def cudaEventElapsedTime(self, e0, e1):
        if e0.device != e1.device:
            return self._bad("elapsed time between events of two GPUs")
        return OK, 0.001

    def cudaStreamSynchronize(self, st):
        while st.queue:
            st.queue.pop(0)()
        return (OK,)

    # CUDA graphs: capture records a stream's ops; a launch enqueues them on another stream
    def cudaStreamBeginCapture(self, st, mode):
        st.capture = []
        return (OK,)

    def cudaStreamEndCapture(self, st):
        ops, st.capture = st.capture, None
        return OK, types.SimpleNamespace(ops=ops, device=st.device)

    def cudaGraphInstantiate(self, graph, flags):
        return OK, graph

    def cudaGraphLaunch(self, graph, st):
        self.graph_launches.append((graph.device, st.device))
        if graph.device != st.device:
            return self._bad(f"graph of GPU {graph.device} launched on a stream of GPU {st.device}")
        for op in graph.ops:
            st.enqueue(op)
        return (OK,)

    def cudaGraphExecDestroy(self, graph):
        return (OK,)

    def cudaGraphDestroy(self, graph):
        return (OK,)

    def cudaMemcpyAsync(self, dst, src, n, kind, st):
        try:
            if kind == "H2D":
                self._host_range(src, n)
                dd, sd = self.device_of(dst, n)[0], None
            elif kind == "D2H":
                self._host_range(dst, n)
                dd, sd = None, self.device_of(src, n)[0]
            else:
                dd, sd = self.device_of(dst, n)[0], self.device_of(src, n)[0]
        except Misuse as e:
            return self._bad(str(e), BAD_VALUE)
        for d in (dd, sd):
            if d is not None and d != st.device:
                self.misuse.append(f"{kind} copy touching GPU {d} on a stream of GPU {st.device}")
        self.copies.append((kind, dd, sd, st.device, n))

        def run():
            if kind == "H2D":
                _, buf, off = self.device_of(dst, n)
                buf[off:off + n] = ctypes.string_at(src, n)
            elif kind == "D2H":
                _, buf, off = self.device_of(src, n)
                ctypes.memmove(dst, bytes(buf[off:off + n]), n)
            else:
                _, bd, od = self.device_of(dst, n)
                _, bs, os_ = self.device_of(src, n)
                bd[od:od + n] = bs[os_:os_ + n]
        st.enqueue(run)
        if kind == "H2D" and n == PAGE_BYTES[0]:
            busy = {x.device for x in self.streams if any(True for _ in x.queue)}
            self.max_in_flight_weights = max(self.max_in_flight_weights, len(busy))
        return (OK,)


PAGE_BYTES = [0]            # bytes of the model's first page (a weights copy, for in-flight counts)


class FakeDeviceVmm(VmmDriver):
    """CudaVmmDriver(device) over FakeCudart's memory: physical pages of `device`, mapped into
    virtual ranges that then resolve as that device's memory. Needs `device` current, as the
    driver API needs its context."""
    granularity = 2 << 20

    def __init__(self, rt: FakeCudart, device: int):
        self.rt, self.device = rt, device
        self.made: dict[int, tuple[int, bytearray]] = {}
        self.next_va = DEVICE_BASE + (device << 40) + (1 << 39)

    def _current(self, what):
        if self.rt.current != self.device:
            self.rt.misuse.append(f"{what} for GPU {self.device} with GPU {self.rt.current} current")

    def create(self, size):
        self._current("cuMemCreate")
        h = len(self.made) + 1
        self.made[h] = (self.device, bytearray(size))
        return h

    def reserve(self, size):
        va, self.next_va = self.next_va, self.next_va + size + (1 << 30)
        return va

    def map(self, va, size, handle):
        self._current("cuMemMap")
        self.rt.dev_mem[self.device][va] = self.made[handle][1]

    def unmap(self, va, size):
        del self.rt.dev_mem[self.device][va]

    def free_range(self, va, size):
        pass

    def release(self, handle):
        del self.made[handle]


class FakeStream:
    def __init__(self, handle, device):
        self.handle, self.device, self.queue = handle, device, []
        self.capture = None             # ops recorded into a graph instead of run

    def enqueue(self, op):
        (self.queue if self.capture is None else self.capture).append(op)

    def __int__(self):
        return self.handle


class FakeEvent:
    def __init__(self, device):
        self.device, self.done, self.stream = device, True, None


class FakeTvm:
    """What cuda.py uses of tvm_runtime: devices, views, per-device streams, compiled code.
    A compiled function, like TVM's CUDA launcher, runs on the current device and on the
    stream set for it; its output is a digest of the weights and input bytes it reads."""

    def __init__(self, rt: FakeCudart):
        self.rt = rt
        self.stream_of: dict[int, FakeStream] = {}
        self.check_runnable = real_tr.check_runnable
        self.weights_image_size = real_tr.weights_image_size
        self.read_weights = real_tr.read_weights
        self.TvmUnavailable = real_tr.TvmUnavailable
        self.loaded: list[int] = []         # device of each CompiledModel

    def import_tvm(self, cuda=False):
        return None

    def device(self, kind, index=0):
        return types.SimpleNamespace(kind=kind, index=index)

    def set_stream(self, dev, handle):
        st = next(x for x in self.rt.streams if int(x) == handle)
        if st.device != dev.index:
            self.rt.misuse.append(f"TVM given GPU {st.device}'s stream for GPU {dev.index}")
        self.stream_of[dev.index] = st

    def raw_view(self, ptr, shape, dtype, dev, owner=None):
        return FakeTensor(ptr, tuple(shape), dtype, dev, owner)

    def weight_views(self, base, page_size, pages, tensors, dev, owner=None):
        return [self.raw_view(base + pages[t.page] * page_size + t.offset, t.shape, t.dtype, dev)
                for t in tensors]

    def CompiledModel(self, path, dev):
        self.loaded.append(dev.index)
        return FakeCompiled(self, dev)


class FakeTensor:
    def __init__(self, ptr, shape, dtype, dev, owner=None):
        self.ptr, self.shape, self.dtype, self.dev, self.owner = ptr, shape, dtype, dev, owner
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize

    def data_ptr(self):
        return self.ptr


class FakeCompiled:
    def __init__(self, tvm: FakeTvm, dev):
        self.tvm, self.dev, self.outs = tvm, dev, {}

    def check_dtype(self, spec):
        pass

    def function(self, b):
        def call(x, *weights):
            rt, d = self.tvm.rt, rt_current(self.tvm)
            if d != self.dev.index:
                rt.misuse.append(f"GPU {self.dev.index}'s code launched with GPU {d} current")
            for t in (x, *weights):
                if rt.device_of(t.ptr, t.nbytes)[0] != d:
                    rt.misuse.append(f"kernel on GPU {d} reads GPU {rt.device_of(t.ptr, 1)[0]}'s memory")
            out = self.outs.get(b)
            if out is None:                 # TVM's pooled allocator: one buffer per batch size
                rt.current = d
                ptr = rt.cudaMalloc(b * OUT_BYTES)[1]
                out = self.outs[b] = FakeTensor(ptr, (b, OUT_BYTES // 4), "float32", self.dev)

            def run():
                w = b"".join(_read(rt, t) for t in weights)
                xs = _read(rt, x)
                item = len(xs) // b
                o = b"".join(digest(w, xs[i * item:(i + 1) * item]) for i in range(b))
                _, buf, off = rt.device_of(out.ptr, len(o))
                buf[off:off + len(o)] = o
            self.tvm.stream_of[d].enqueue(run)
            return out
        return call


def rt_current(tvm):
    return tvm.rt.current


def _read(rt, t) -> bytes:
    _, buf, off = rt.device_of(t.ptr, t.nbytes)
    return bytes(buf[off:off + t.nbytes])


OUT_BYTES = 10 * 4


def digest(weights: bytes, x: bytes) -> bytes:
    h = hashlib.sha256(weights + x).digest()
    return (h + h)[:OUT_BYTES]


class FakeNvml:
    """Physical GPU j (PCI order) has SM clock 1000 + 100 j and (j + 1) GiB."""
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self, n):
        self.n = n

    def nvmlDeviceGetHandleByIndex(self, j):
        assert 0 <= j < self.n
        return types.SimpleNamespace(index=j)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: bytes):
        return self.nvmlDeviceGetHandleByIndex(
            [f"{0:08X}:{b:02X}:{0:02X}.0".encode() for b in BUS].index(bus_id.upper()))

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1000 + 100 * h.index + which

    def nvmlDeviceGetTemperature(self, h, which):
        return 30 + h.index

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=10 * h.index)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=(h.index + 1) << 30)


# ---------------------------------------------------------------- the model and the harness

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo") / "mlp"
    d.mkdir()
    weights = write_weights(nets.get("mlp"), d, PAGE, seed=3)
    write_metadata(d, {"name": "mlp", "input": {"shape": [784], "dtype": "float32"},
                       "output": {"shape": [10], "dtype": "float32"}, "batch_sizes": [1, 2, 4],
                       "weights": weights, "code": {"cuda-sm_90": "cuda-sm_90.so"},
                       "source": "test: fake CUDA module"})
    (d / "cuda-sm_90.so").write_bytes(real_tr.FATBIN_MAGIC + bytes(64))
    write_measurements(d, "fake", 1000, {1: 1000, 2: 1000, 4: 1000})
    return d.parent


class Harness:
    def __init__(self, zoo, monkeypatch, graphs=False):
        self.cuda = FakeCudart(G)
        self.tvm = FakeTvm(self.cuda)
        self.nvml = FakeNvml(G)
        monkeypatch.setattr(cuda_mod, "_cudart", lambda: self.cuda)
        monkeypatch.setattr(cuda_mod, "_nvml_init", lambda: self.nvml)
        monkeypatch.setattr(cuda_mod, "tr", self.tvm)
        monkeypatch.setattr(cuda_mod, "CudaVmmDriver", lambda device: FakeDeviceVmm(self.cuda, device))
        self.backend = cuda_mod.CudaBackend(PAGE, PAGES, POOL, POOL, graphs=graphs, gate=False)
        self.now = 1_000_000_000
        self.sent = {}
        self.rt = WorkerRuntime(self.backend, zoo, self._send, PAGE, PAGES, POOL, POOL,
                                clock=lambda: self.now)
        self.ids = iter(range(1, 1 << 30))

    def _send(self, reply_to, msg, data):
        self.sent[msg.action_id] = (msg, [bytes(d) for d in data])

    def start(self, cls, data=(), **kw) -> int:
        aid = next(self.ids)
        self.rt.handle(cls(action_id=aid, earliest=self.now, latest=self.now + 10**12, **kw),
                       list(data), "ctl", self.now)
        return aid

    def wait(self, ids):
        for _ in range(100_000):
            if all(a in self.sent for a in ids):
                return [self.sent.pop(a) for a in ids]
            self.now += 1000
            self.rt.poll_backend(self.now)
        raise AssertionError(f"actions never completed: {[a for a in ids if a not in self.sent]}")


def test_four_gpus_each_get_their_own_streams_events_memory_and_nvml(zoo, monkeypatch):
    h = Harness(zoo, monkeypatch)
    gpus = h.backend._gpus
    assert [g.index for g in gpus] == list(range(G))
    for g in gpus:
        streams = (g.s_exec, g.s_weights, g.s_in, g.s_out, g.s_capture)
        assert {st.device for st in streams} == {g.index}, f"GPU {g.index}'s streams"
        assert len({int(st) for st in streams}) == 5
        assert {e.device for e in g.events} == {g.index}, f"GPU {g.index}'s events"
        for addr in (g.cache, g.io, g.ws):
            assert h.cuda.device_of(addr, 1)[0] == g.index
        assert h.tvm.stream_of[g.index] is g.s_exec
    assert h.backend.gpu_names() == [f"Fake H200 #{i}" for i in range(G)]
    readings = h.backend.readings(h.now)
    assert [r.gpu_id for r in readings] == list(range(G))
    # each CUDA device reads its own physical GPU's NVML figures
    assert [h.backend.gpu_clock_mhz(i) for i in range(G)] == [1000 + 100 * j for j in PHYSICAL]
    assert [r.memory_total for r in readings] == [(j + 1) << 30 for j in PHYSICAL]
    assert h.cuda.misuse == []


def _placed(h, gpu, m, k, n):
    """The bytes GPU `gpu` holds for page k of model `m` where its kernels read them."""
    g, pages = h.backend._gpus[gpu], h.rt.gpus[gpu].resident[m].pages
    if g.fixed is None:
        addr = g.cache + pages[k] * PAGE
    else:                               # through the instance's fixed range, onto GPU gpu's page
        addr = g.fixed.base(m, len(pages)) + k * PAGE
        assert g.fixed.driver.device == gpu
        assert h.cuda.device_of(addr, n)[1] is g.fixed.driver.made[g.fixed.pages[pages[k]]][1]
    d, buf, o = h.cuda.device_of(addr, n)
    assert d == gpu
    return bytes(buf[o:o + n])


@pytest.mark.parametrize("graphs", [False, True], ids=["direct", "graphs"])
def test_one_model_on_four_gpus_loads_and_infers_everywhere_at_once(zoo, monkeypatch, graphs):
    h = Harness(zoo, monkeypatch, graphs=graphs)
    pinned_before = len(h.cuda.host)
    (msg, _), = h.wait([h.start(s.LoadModelFromDisk, model_id=0, path="mlp", copies=2)])
    assert isinstance(msg, s.LoadModelFromDiskResult), msg
    hm = h.rt.models[0].kind.host
    assert len(h.cuda.host) == pinned_before + 1, "one pinned host copy per model, not per GPU"
    assert h.cuda.host[hm.host_ptr][0] == hm.host_size
    assert sorted(h.tvm.loaded) == list(range(G)), "the code loaded once on every GPU"
    if graphs:       # captured at LoadModelFromDisk (off the request path), kept for good
        at_load = [dict(g.graphs) for g in h.backend._gpus]
        assert all(sorted(gr) == [(m, b) for m in (0, 1) for b in hm.spec.batch_sizes] for gr in at_load), \
            (sorted(at_load[0]), h.backend.graph_errors)
    PAGE_BYTES[0] = hm.page_slices[0][1]
    h.cuda.graph_launches.clear()       # (those of the load-time profiling)
    image = ctypes.string_at(hm.host_ptr, hm.host_size)
    weights = b"".join(image[hm.spec.pages[t.page][0] + t.offset:][:t.nbytes]
                       for t in hm.spec.tensors)
    rng = np.random.default_rng(0)

    def load_everywhere():
        h.cuda.copies.clear()
        h.cuda.max_in_flight_weights = 0
        loads = [h.start(s.LoadWeights, model_id=m, gpu_id=gpu) for gpu in range(G) for m in (0, 1)]
        for msg, _ in h.wait(loads):
            assert isinstance(msg, s.LoadWeightsResult), msg
        assert h.cuda.max_in_flight_weights == G, "LoadWeights to all GPUs were in flight together"
        assert sorted({c[1] for c in h.cuda.copies if c[0] == "H2D"}) == list(range(G))
        for gpu in range(G):            # each GPU holds the model where the runtime placed it
            for m in (0, 1):
                for k, (off, n) in enumerate(hm.page_slices):
                    assert _placed(h, gpu, m, k, n) == image[off:off + n], f"GPU {gpu} model {m} page {k}"

    def infer_everywhere():
        xs = [rng.standard_normal((2, 784), np.float32).tobytes() for _ in range(2 * G)]
        infers = [h.start(s.Infer, data=[xs[2 * gpu + m]], model_id=m, gpu_id=gpu, batch_size=2)
                  for gpu in range(G) for m in (0, 1)]
        for i, (msg, frames) in enumerate(h.wait(infers)):
            assert isinstance(msg, s.InferResult), msg
            x = xs[i]
            assert b"".join(frames) == digest(weights, x[:784 * 4]) + digest(weights, x[784 * 4:]), \
                f"GPU {i // 2} copy {i % 2}: wrong output"

    # every GPU but 0 gets the model in other pages than the first (a blocker holds those)
    blockers = {g.id: g.mem.pages.alloc(min(g.id, 2)) for g in h.rt.gpus}
    load_everywhere()
    infer_everywhere()
    # evicted everywhere, garbage where the weights were, reloaded into other pages
    first = {gpu: set(h.rt.gpus[gpu].resident[0].pages) for gpu in range(G)}
    evicts = [h.start(s.EvictWeights, model_id=m, gpu_id=gpu) for gpu in range(G) for m in (0, 1)]
    for msg, _ in h.wait(evicts):
        assert isinstance(msg, s.EvictWeightsResult), msg
    for gpu in range(G):
        for p in first[gpu]:
            _placed_page_fill(h, gpu, p)
        pages = h.rt.gpus[gpu].mem.pages
        pages.release(blockers[gpu])
        free = pages.alloc(pages.free)              # hold model 0's old pages, free the rest
        pages.release([p for p in free if p not in first[gpu]])
    load_everywhere()
    for gpu in range(G):
        assert first[gpu].isdisjoint(h.rt.gpus[gpu].resident[0].pages)
    infer_everywhere()
    if graphs:
        assert [dict(g.graphs) for g in h.backend._gpus] == at_load, "LoadWeights captured again"
        assert all(a == b for a, b in h.cuda.graph_launches)
        assert sorted({a for a, _ in h.cuda.graph_launches}) == list(range(G)), "every GPU replays graphs"
        assert not h.backend.graph_errors, h.backend.graph_errors
    assert h.cuda.misuse == []
    h.backend.close()


def _placed_page_fill(h, gpu, page):
    """Overwrite cache page `page` of GPU `gpu` (as stale bytes left there)."""
    g = h.backend._gpus[gpu]
    if g.fixed is None:
        _, buf, o = h.cuda.device_of(g.cache + page * PAGE, PAGE)
        buf[o:o + PAGE] = b"\x7f" * PAGE
    else:
        buf = g.fixed.driver.made[g.fixed.pages[page]][1]
        buf[:] = b"\x7f" * len(buf)
