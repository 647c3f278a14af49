"""The device-backend interface: what the worker runtime needs from a kind of device.

One WorkerRuntime (clockwork.worker.runtime) serves every backend: it owns the action windows,
the executors, memory accounting (weights-cache pages, io/workspace pools), weight versions and
all error codes. A backend only moves bytes and runs code on its devices. Backends:

    emulated   clockwork.model.emulated   durations from measurements.json (no device at all)
    cuda       clockwork.model.cuda       TVM cuda modules, CUDA streams and events
    cpu        clockwork.model.cpu        TVM llvm modules, run synchronously on the host

Calls and their contract (all times are integer ns of time.monotonic_ns(), the worker clock):

    load_host_model(spec)        once per LoadModelFromDisk, shared by all copies: read weights
                                 into (pinned) host memory, load code onto every device. Slow is
                                 fine (it is not on the request path), failing raises LoadError.
    load_weights(gpu, hm, pages, now, instance)  host weights -> the given weights-cache pages
    copy_input(gpu, hm, batch, inputs, io, now)  input frames -> device io pool at io.offset
    execute(gpu, hm, padded, pages, io, ws, now, instance)
                                                 run compiled batch `padded` (padded >= batch)
    copy_output(gpu, hm, batch, io, now)         device output -> host; Op.output is the bytes

Each of the four device calls returns at once with an Op. Ops given to one executor (one stream per kind
and GPU: exec, weights-in, inputs-in, outputs-out) never overlap: the runtime starts the next
only after the previous one completed, so a backend needs no cross-op ordering of its own.

Completion. An Op's `end` is either known when the call returns (emulated: begin + duration)
or PENDING. For PENDING ops the backend must later set begin/end/duration (e.g. from CUDA
events) and hand the op back from poll(). So that the single-threaded event loop learns of it
without spinning, a backend with PENDING ops either
  * returns a file descriptor from wait_fd() that becomes readable when poll() has something
    (e.g. an os.pipe / eventfd written by a cuLaunchHostFunc callback or a small thread that
    waits on events); the loop select()s on it with its sockets and then calls poll(), which
    must drain the fd; or
  * returns None from wait_fd(); the loop then calls poll() at least every poll_interval_ns
    while ops are pending (cudaEventQuery is cheap).
A failed device op sets Op.error (text); the runtime turns it into RUNTIME_ERROR (so does an
exception raised by a device call, but setting Op.error is the intended way).

Io regions. An Infer's io Region has room for `padded` inputs followed by `padded` outputs:
inputs at io.offset, outputs at io.offset + padded x input_size. It is freed as soon as the
output copy completes; Op.output is copied into the reply then (see Backend.stable_outputs).

Memory. The runtime decides where things go; the backend allocates the device memory itself
(setup: weights cache of `total_pages` x `page_size`, io pool, workspace pool per GPU) and uses
the page indices / pool offsets it is given. `pages` lists a model's cache pages in order: page
k of the model (format.ModelSpec.pages / tensor `page`) lives in cache page pages[k].
`instance` (keyword) is the model id the weights belong to: a backend may keep state per model
instance across evict and reload (the CUDA backend's fixed weight addresses and CUDA graphs).
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable

from ..transport.schema import GpuReading
from .format import ModelSpec

PENDING = -1  # Op.end of an op whose completion time is not known yet


class LoadError(Exception):
    """load_host_model failed (missing code for this device, unreadable weights ...)."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (no GPU, missing library): the message says why, for users."""


class Op:
    """Handle of one asynchronous device operation.

    begin/end: worker-clock ns the device started/finished (end is PENDING until known).
    duration: device-measured (CUDA events) or emulated; used for the exec time in results.
    output: for copy_output, a buffer of batch x output_size bytes. It need only stay valid
    until the completion is handled: the worker frees the io region right then and copies the
    bytes into the reply, unless the backend sets stable_outputs (then it goes zero-copy).
    then: reserved for the runtime (its continuation, called as then(op, now)); backends never
    touch it.
    """
    __slots__ = ("begin", "end", "duration", "error", "output", "then")

    def __init__(self, begin: int, end: int = PENDING, duration: int = 0, output=None):
        self.begin = begin
        self.end = end
        self.duration = duration
        self.error: str | None = None
        self.output = output
        self.then: Callable[[Op, int], object] | None = None


class Region:
    """A byte range in a per-GPU pool (io or workspace) chosen by the runtime's accounting."""
    __slots__ = ("offset", "nbytes")

    def __init__(self, offset: int, nbytes: int):
        self.offset = offset
        self.nbytes = nbytes


class HostModel:
    """A model's host side, loaded once and shared by every copy (model id) made from it.

    Backends subclass it to hang their own state on it (pinned weights, loaded modules).
    `exec_ns` maps every compiled batch size to its expected exec time (measurements.json, or
    measured by the backend at load); the runtime drops batch sizes above max_batch_size or
    slower than max_exec_ns. `weights_load_ns` is the expected LoadWeights time.
    """

    def __init__(self, spec: ModelSpec, page_size: int, exec_ns: dict[int, int], weights_load_ns: int):
        self.spec = spec
        self.source = str(spec.path)
        self.input_size = spec.input_size
        self.output_size = spec.output_size
        self.weights_size = spec.weights_size
        self.num_pages = spec.num_pages(page_size)
        self.exec_ns = dict(exec_ns)
        self.weights_load_ns = int(weights_load_ns)

    def workspace_size(self, padded_batch: int) -> int:
        """Bytes of workspace (intermediate tensors) one exec of `padded_batch` needs."""
        return padded_batch * max(self.input_size, self.output_size)

    def close(self) -> None:
        """Release host memory (pinned weights). Called once when the worker drops the model."""


class Backend:
    """Base class of device backends. Subclasses implement every method marked 'must'."""

    name = "base"
    emulated = False            # True: readings/timings are emulated, not measured
    poll_interval_ns = 50_000   # see module docstring (only used when wait_fd() is None)
    stable_outputs = False      # True: Op.output buffers are never rewritten (sent zero-copy)

    def __init__(self, page_size: int, total_pages: int, io_pool_size: int,
                 workspace_pool_size: int):
        self.page_size = page_size
        self.total_pages = total_pages
        self.io_pool_size = io_pool_size
        self.workspace_pool_size = workspace_pool_size

    # ------------------------------------------------------------------ devices
    def gpu_names(self) -> list[str]:
        """Must: one name per device; len() is the GPU count, index is the gpu_id."""
        raise NotImplementedError

    def gpu_clock_mhz(self, gpu: int) -> int:
        """Current SM clock (InferResult carries it before and after exec). 0 if unknown."""
        return 0

    def readings(self, now: int) -> list[GpuReading]:
        """Telemetry per device for heartbeats. memory_used/total 0: the runtime fills in its
        own accounting."""
        return [GpuReading(i, self.gpu_clock_mhz(i), 0, 0, 0, 0, 0.0) for i in range(len(self.gpu_names()))]

    # ------------------------------------------------------------------ models
    def load_host_model(self, spec: ModelSpec) -> HostModel:
        """Must: load a model's host side once for all its copies; raise LoadError."""
        raise NotImplementedError

    # ------------------------------------------------------------------ device operations
    def prepare_instance(self, hm: HostModel, instance: int) -> None:
        """May: set up state of model id `instance` ahead of its first LoadWeights, at
        LoadModelFromDisk, off the request path (the CUDA backend captures its graphs here)."""

    def load_weights(self, gpu: int, hm: HostModel, pages: list[int], now: int,
                     instance: int = -1) -> Op:
        """Must: start copying hm's weights (of model id `instance`) into weights-cache
        `pages` of `gpu`."""
        raise NotImplementedError

    def copy_input(self, gpu: int, hm: HostModel, batch_size: int, inputs: list, io: Region,
                   now: int) -> Op:
        """Must: start copying the inputs (buffers adding up to batch_size x input_size bytes,
        or none: generate/zeros) to io.offset; the output goes after them (io has room for
        padded inputs and outputs)."""
        raise NotImplementedError

    def execute(self, gpu: int, hm: HostModel, padded_batch: int, pages: list[int], io: Region,
                workspace: Region, now: int, instance: int = -1) -> Op:
        """Must: start running compiled batch `padded_batch` on the inputs at io.offset."""
        raise NotImplementedError

    def copy_output(self, gpu: int, hm: HostModel, batch_size: int, io: Region, now: int) -> Op:
        """Must: start copying batch_size outputs back to the host; set Op.output."""
        raise NotImplementedError

    # ------------------------------------------------------------------ completion
    def wait_fd(self) -> int | None:
        """A descriptor readable when poll() has completed ops, or None (see docstring)."""
        return None

    def poll(self, now: int) -> Iterable[Op]:
        """Ops that were PENDING and have completed since the last call (end now set)."""
        return ()

    def reset(self) -> None:
        """Forget in-flight ops (a controller sent Reset); their completions must not be
        reported by poll() afterwards."""

    def close(self) -> None:
        """Release devices at shutdown."""


# Backends by name, imported lazily (importing TVM or CUDA costs seconds and may fail).
BACKENDS = {
    "emulated": "clockwork.model.emulated:EmulatedBackend",
    "cuda": "clockwork.model.cuda:CudaBackend",
    "cpu": "clockwork.model.cpu:CpuBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The Backend class called `name`, or BackendUnavailable with a message for users."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise BackendUnavailable(f"the {name} backend is not available in this version "
                                     f"(use --emulate N for emulated GPUs)") from None
        raise BackendUnavailable(f"the {name} backend needs {e.name!r}, which is not installed") from None
    return getattr(mod, cls)
