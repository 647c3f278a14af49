"""WorkerRuntime: the worker's actions on top of one device backend, as pure timed logic
(docs/design.md, "Actions and windows").

Per GPU four executors (serial streams): exec, weights-in, inputs-in, outputs-out; plus one
worker-wide executor for LoadModelFromDisk and ClearCache. The runtime validates each action,
splits it into stage tasks with the action's [earliest, latest] window, tracks memory and weight
versions, and emits exactly one result (or ErrorResult) per action through `send`. Reset drops
everything -- queued and in-flight actions get no result -- and is acknowledged with a
ClearCacheResult carrying its action id (the schema has no Reset result; the controller only
needs the ack and its timestamps).

Time is injected: every entry point takes `now` (worker-clock ns) and the edge calls
advance(now) no later than next_time(). Completion times come from the backend's ops: known in
advance (emulated) -> a timer; discovered later (CUDA) -> backend.poll() via poll_backend().

Weight versions: every LoadWeights/EvictWeights/ClearCache of a (model, gpu) takes a fresh
number from one counter, so an Infer that saw version v at its input copy and finds anything
else at exec start or end knows the weights changed under it (WEIGHTS_CHANGED).
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import msgspec

from ..id_ranges import IdRanges
from ..limits import MAX_COPIES
from ..model.backend import PENDING, Backend, HostModel, LoadError, Op
from ..model.format import ModelFormatError, load_spec, pad_table, resolve_model_path
from ..status import Status
from ..transport import schema as s
from .executor import NO_LIMIT, Executor, Task
from .memory import GpuMemory

# An action may wait at most this long for its earliest; beyond it the controller's clock
# conversion is broken (or the action is bogus): ACTION_TOO_EARLY rather than queue forever.
MAX_AHEAD_NS = 60_000_000_000
TAGS: dict[type, int] = {cls: cls.__struct_config__.tag for cls in s.ACTIONS}   # type: ignore[misc]


class ModelKind:
    """What all copies of one LoadModelFromDisk share: the host model, the batch table and the
    ModelInfo (that of the first copy; the others differ only in model_id)."""
    __slots__ = ("host", "batch_sizes", "padded", "max_batch", "input_size", "output_size", "num_pages",
                 "info")

    def __init__(self, host: HostModel, batch_sizes: list[int], info: s.ModelInfo):
        self.host = host
        self.batch_sizes = batch_sizes
        self.max_batch = batch_sizes[-1]
        self.padded = pad_table(batch_sizes)          # padded[b]: smallest compiled batch >= b
        self.input_size = host.input_size
        self.output_size = host.output_size
        self.num_pages = host.num_pages
        self.info = info


class ModelInstance:
    __slots__ = ("id", "kind")

    def __init__(self, id: int, kind: ModelKind):
        self.id = id
        self.kind = kind


def copy_infos(info: s.ModelInfo, first: int, count: int) -> list[s.ModelInfo]:
    """The ModelInfos of ids first .. first + count - 1, copies described by `info` (first's)."""
    return [info] + [msgspec.structs.replace(info, model_id=mid) for mid in range(first + 1, first + count)]


class Instances:
    """Model id -> ModelInstance. The copies of one LoadModelFromDisk are one range of ids
    sharing a ModelKind; an instance's object is made on its first action, so loading a
    million copies costs what loading one does and memory grows with the copies used."""
    __slots__ = ("ranges", "_made")

    def __init__(self):
        self.ranges: IdRanges[ModelKind] = IdRanges()
        self._made: dict[int, ModelInstance] = {}

    def get(self, model_id: int) -> ModelInstance | None:
        m = self._made.get(model_id)
        if m is None:
            found = self.ranges.find(model_id)
            if found is None:
                return None
            m = self._made[model_id] = ModelInstance(model_id, found[1])
        return m

    def __getitem__(self, model_id: int) -> ModelInstance:
        m = self.get(model_id)
        if m is None:
            raise KeyError(model_id)
        return m

    def __contains__(self, model_id: int) -> bool:
        return model_id in self.ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def kinds(self) -> list[ModelKind]:
        return self.ranges.values()

    def infos(self) -> list[s.ModelInfo]:
        """One ModelInfo per instance, ascending ids (GetWorkerState)."""
        return [info for first, count, kind in self.ranges.ranges()
                for info in copy_infos(kind.info, first, count)]

    def clear(self) -> None:
        self.ranges.clear()
        self._made.clear()


class Resident:
    """A model's weights on one GPU: its pages, version, and whether the load completed."""
    __slots__ = ("pages", "version", "loaded")

    def __init__(self, pages: list[int], version: int):
        self.pages = pages
        self.version = version
        self.loaded = False


class Gpu:
    __slots__ = ("id", "mem", "resident", "exec", "weights", "inputs", "outputs")

    def __init__(self, id: int, mem: GpuMemory):
        self.id = id
        self.mem = mem
        self.resident: dict[int, Resident] = {}
        self.exec = Executor(f"gpu{id}.exec")
        self.weights = Executor(f"gpu{id}.weights")
        self.inputs = Executor(f"gpu{id}.inputs")
        self.outputs = Executor(f"gpu{id}.outputs")


class Stats:
    """Counters for the periodic line; the edge reads and resets the interval ones."""
    __slots__ = ("loads", "infers", "evicts", "errors", "pending", "max_lag", "by_status")

    def __init__(self):
        self.loads = self.infers = self.evicts = self.errors = self.pending = 0
        self.by_status: dict[int, int] = {}   # errors per status code this interval
        self.max_lag = 0      # worst lateness of a timer (event loop behind schedule), ns


class WorkerRuntime:
    def __init__(self, backend: Backend, model_dir: Path, send, page_size: int, total_pages: int,
                 io_pool_size: int, workspace_pool_size: int, clock=time.monotonic_ns):
        """`send(reply_to, msg, data_frames)` delivers a result; `clock` only times the
        (synchronous) LoadModelFromDisk."""
        self.backend = backend
        self.model_dir = Path(model_dir)
        self.send = send
        self.clock = clock
        self.page_size = page_size
        self.gpus = [Gpu(i, GpuMemory(total_pages, io_pool_size, workspace_pool_size))
                     for i in range(len(backend.gpu_names()))]
        self.worker_ex = Executor("worker")
        self.models = Instances()
        self.stats = Stats()
        self._timers: list = []          # (time, seq, Executor | Op)
        self._seq = 0
        self._inflight: dict[Op, Executor] = {}   # ops of unknown end -> their executor
        self._version = 0

    # ------------------------------------------------------------------ event plumbing
    def next_time(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def waiting_on_backend(self) -> bool:
        """True while some op's completion must come from backend.poll()."""
        return bool(self._inflight)

    def advance(self, now: int) -> None:
        """Run every timer due at `now` (op completions, executor wake-ups), in time order.

        Each runs at its own time t, not at `now`: an op whose end was known in advance (the
        emulated GPU) ended at t, so the next stage starts at t, as the device would have. A
        late wake-up of this loop therefore delays only the reply, instead of adding its lag
        to every stage of an Infer."""
        timers = self._timers
        stats = self.stats
        while timers and timers[0][0] <= now:
            t, _, obj = heapq.heappop(timers)
            if now - t > stats.max_lag:
                stats.max_lag = now - t
            if obj.__class__ is Executor:
                if obj.wake_at != t:
                    continue              # superseded by an earlier wake-up
                obj.wake_at = NO_LIMIT
                obj.advance(t)
                self._arm(obj)
            else:
                then, obj.then = obj.then, None     # no job <-> op cycle: freed by refcount
                try:
                    then(obj, t)
                except Exception as e:
                    _failed_in(then, e, t)

    def poll_backend(self, now: int) -> None:
        for op in self.backend.poll(now):
            ex = self._inflight.pop(op, None)
            if ex is None:
                continue                  # dropped by Reset
            ex.completed(op.end)
            self._arm(ex)
            then, op.then = op.then, None
            try:
                then(op, now)     # type: ignore[misc]
            except Exception as e:
                _failed_in(then, e, now)
        self.advance(now)

    def _arm(self, ex: Executor) -> None:
        t = ex.next_time()
        if t is not None and t < ex.wake_at:
            ex.wake_at = t
            self._seq += 1
            heapq.heappush(self._timers, (t, self._seq, ex))

    def _submit(self, ex: Executor, task: Task, now: int) -> None:
        """Queue a task; it starts now if due, or fails now if its window is already lost."""
        ex.submit(task)
        ex.advance(now)
        self._arm(ex)

    def _started(self, ex: Executor, op: Op, then) -> int:
        """Track a started op; returns its end for the executor (PENDING if unknown)."""
        op.then = then
        if op.end == PENDING:
            self._inflight[op] = ex
        else:
            self._seq += 1
            heapq.heappush(self._timers, (op.end, self._seq, op))
        return op.end

    # ------------------------------------------------------------------ results
    def _error(self, reply_to, action, status: int, message: str, received: int) -> None:
        st = self.stats
        st.errors += 1
        st.by_status[status] = st.by_status.get(status, 0) + 1
        self.send(reply_to, s.ErrorResult(action.action_id, TAGS[action.__class__], int(status),
                                          message, received), ())

    def _done(self) -> None:
        self.stats.pending -= 1

    # ------------------------------------------------------------------ entry point
    def handle(self, action, data: Sequence, reply_to, received: int) -> None:
        """One decoded action from the controller, received at `received` (worker clock)."""
        cls = action.__class__
        if cls is not s.GetWorkerState and cls is not s.Reset and action.earliest - received > MAX_AHEAD_NS:
            return self._error(reply_to, action, Status.ACTION_TOO_EARLY,
                               f"earliest is {(action.earliest - received) / 1e9:.1f} s ahead of the "
                               f"worker clock (limit {MAX_AHEAD_NS // 10 ** 9} s): clocks out of sync?",
                               received)
        if cls is s.Infer:
            self._infer(action, data, reply_to, received)
        elif cls is s.LoadWeights:
            self._load_weights(action, reply_to, received)
        elif cls is s.EvictWeights:
            self._evict(action, reply_to, received)
        elif cls is s.LoadModelFromDisk:
            self._accept(self.worker_ex, action, "load_model", reply_to, received, self._load_model)
        elif cls is s.ClearCache:
            self._accept(self.worker_ex, action, "clear_cache", reply_to, received, self._clear_cache)
        elif cls is s.GetWorkerState:
            self.send(reply_to, s.WorkerStateResult(action.action_id, received, 0, self.state()), ())
        elif cls is s.Reset:
            self.reset()
            self.send(reply_to, s.ClearCacheResult(action.action_id, received, 0), ())
        else:  # pragma: no cover - the decoder only yields ACTIONS
            self._error(reply_to, action, Status.BAD_MESSAGE, f"unexpected {cls.__name__}", received)

    def _accept(self, ex, action, stage, reply_to, received, fn) -> None:
        """Queue a one-step action whose work is fn(action, reply_to, received, now)."""
        self.stats.pending += 1

        def run(now):
            fn(action, reply_to, received, now)   # raises: the executor calls fail(), which settles
            self._done()

        def fail(status, message, now):
            self._done()
            self._error(reply_to, action, status, message, received)

        self._submit(ex, Task(action.earliest, action.latest or NO_LIMIT, stage, run, fail), received)

    def _check(self, action, reply_to, received):
        """(model, gpu) of an action, or None after answering UNKNOWN_MODEL / INVALID_GPU."""
        m = self.models.get(action.model_id)
        if m is None:
            self._error(reply_to, action, Status.UNKNOWN_MODEL, f"no model {action.model_id}", received)
            return None
        g = action.gpu_id
        if not 0 <= g < len(self.gpus):
            self._error(reply_to, action, Status.INVALID_GPU,
                        f"no gpu {g} (this worker has {len(self.gpus)})", received)
            return None
        return m, self.gpus[g]

    # ------------------------------------------------------------------ LoadModelFromDisk
    def _load_model(self, a: s.LoadModelFromDisk, reply_to, received: int, now: int) -> None:
        begin = now
        first, copies = a.model_id, a.copies
        if first < 0 or not 1 <= copies <= MAX_COPIES:
            return self._error(reply_to, a, Status.LOAD_FAILED,
                               f"bad model_id {first} / copies {copies} (1..{MAX_COPIES})", received)
        clash = self.models.ranges.overlap(first, copies)
        if clash is not None:
            return self._error(reply_to, a, Status.MODEL_EXISTS, f"model {clash} already exists", received)
        try:
            path = resolve_model_path(self.model_dir, a.path)
            host = self.backend.load_host_model(load_spec(path))
        except (ModelFormatError, LoadError) as e:
            return self._error(reply_to, a, Status.LOAD_FAILED, str(e), received)
        except OSError as e:
            return self._error(reply_to, a, Status.LOAD_FAILED, f"{a.path}: {e}", received)
        cache_pages = self.gpus[0].mem.pages.total if self.gpus else 0
        if host.num_pages > cache_pages:
            host.close()
            return self._error(reply_to, a, Status.LOAD_FAILED,
                               f"{a.path}: weights of {host.weights_size} bytes need {host.num_pages} pages; "
                               f"a GPU's weights cache holds {cache_pages}", received)
        # an Infer of batch b holds b x (input + output) bytes of the device io pool
        io_room = self.gpus[0].mem.io.size if self.gpus else 0
        per_item = host.input_size + host.output_size
        batch_sizes = [b for b in sorted(host.exec_ns)
                       if b <= a.max_batch_size and host.exec_ns[b] <= a.max_exec_ns and b * per_item <= io_room]
        if not batch_sizes:
            host.close()
            return self._error(reply_to, a, Status.LOAD_FAILED,
                               f"{a.path}: no batch size <= {a.max_batch_size} runs within "
                               f"{a.max_exec_ns} ns with its inputs and outputs ({per_item} bytes per item) "
                               f"in the {io_room}-byte io pool (compiled: {sorted(host.exec_ns)})", received)
        exec_ns = [host.exec_ns[b] for b in batch_sizes]
        info = s.ModelInfo(first, host.source, host.input_size, host.output_size, host.weights_size,
                           host.num_pages, batch_sizes, exec_ns, host.weights_load_ns,
                           list(host.spec.input_shape), host.spec.input_dtype,
                           list(host.spec.output_shape), host.spec.output_dtype)
        kind = ModelKind(host, batch_sizes, info)
        self.models.ranges.add(first, copies, kind)
        if type(self.backend).prepare_instance is not Backend.prepare_instance:
            for mid in range(first, first + copies):
                self.backend.prepare_instance(host, mid)      # (CUDA graphs: captured now)
        if a.compact:
            infos, n = [info], copies
        else:       # an older controller: one ModelInfo per copy
            infos, n = copy_infos(info, first, copies), 0
        self.send(reply_to, s.LoadModelFromDiskResult(a.action_id, received, 0, begin, self.clock(), infos, n),
                  ())

    # ------------------------------------------------------------------ ClearCache / Reset / state
    def _clear_cache(self, a, reply_to, received: int, now: int) -> None:
        for g in self.gpus:
            g.resident.clear()
            g.mem.pages.reset()
        self.send(reply_to, s.ClearCacheResult(a.action_id, received, 0), ())

    def reset(self) -> None:
        """Drop every model, queued action and in-flight op; no result is sent for them."""
        for g in self.gpus:
            for ex in (g.exec, g.weights, g.inputs, g.outputs):
                ex.clear()
            g.resident.clear()
            g.mem.reset()
        self.worker_ex.clear()
        self._timers.clear()
        self._inflight.clear()
        self.backend.reset()
        for kind in self.models.kinds():
            kind.host.close()
        self.models.clear()
        self.stats.pending = 0

    def state(self) -> s.WorkerState:
        names = self.backend.gpu_names()
        gpus = [s.GpuState(g.id, g.mem.pages.total, g.mem.pages.free, g.mem.io.size,
                           g.mem.workspace.size, sorted(g.resident), names[g.id]) for g in self.gpus]
        return s.WorkerState(self.page_size, gpus, self.models.infos())

    def readings(self, now: int) -> list[s.GpuReading]:
        out = self.backend.readings(now)
        for r in out:
            if r.memory_used == 0 and 0 <= r.gpu_id < len(self.gpus):
                mem = self.gpus[r.gpu_id].mem
                r.memory_used = ((mem.pages.total - mem.pages.free) * self.page_size
                                 + mem.io.used + mem.workspace.used)
        return out

    # ------------------------------------------------------------------ LoadWeights / Evict
    def _load_weights(self, a: s.LoadWeights, reply_to, received: int) -> None:
        mg = self._check(a, reply_to, received)
        if mg is None:
            return
        m, gpu = mg
        self.stats.pending += 1
        job = _LoadWeightsJob(self, a, m, gpu, reply_to, received)
        self._submit(gpu.weights, Task(a.earliest, a.latest or NO_LIMIT, "load_weights", job.run, job.fail),
                     received)

    def _evict(self, a: s.EvictWeights, reply_to, received: int) -> None:
        mg = self._check(a, reply_to, received)
        if mg is None:
            return
        m, gpu = mg
        self.stats.pending += 1

        def run(now):
            r = gpu.resident.pop(m.id, None)
            if r is None:
                self._done()
                self._error(reply_to, a, Status.WEIGHTS_NOT_PRESENT,
                            f"evict: model {m.id} has no weights on gpu {gpu.id}", received)
                return None
            gpu.mem.pages.release(r.pages)
            self._done()
            self.stats.evicts += 1
            self.send(reply_to, s.EvictWeightsResult(a.action_id, received, 0, now, now), ())
            return None

        def fail(status, message, now):
            self._done()
            self._error(reply_to, a, status, message, received)

        self._submit(gpu.weights, Task(a.earliest, a.latest or NO_LIMIT, "evict", run, fail), received)

    # ------------------------------------------------------------------ Infer
    def _infer(self, a: s.Infer, data: Sequence, reply_to, received: int) -> None:
        mg = self._check(a, reply_to, received)
        if mg is None:
            return
        m, gpu = mg
        kind = m.kind
        b = a.batch_size
        if not 1 <= b <= kind.max_batch:
            return self._error(reply_to, a, Status.INVALID_BATCH_SIZE,
                               f"batch size {b}: model {m.id} supports 1..{kind.max_batch} "
                               f"(compiled {kind.batch_sizes})", received)
        if data:
            n = 0
            for f in data:
                n += len(f)
            if n != b * kind.input_size:
                return self._error(reply_to, a, Status.INVALID_INPUT_SIZE,
                                   f"inputs are {n} bytes, expected {b} x {kind.input_size} = "
                                   f"{b * kind.input_size} (or none, to generate)", received)
        self.stats.pending += 1
        job = _InferJob(self, a, m, gpu, data, reply_to, received)
        self._submit(gpu.inputs, Task(a.earliest, a.latest or NO_LIMIT, "copy_input",
                                      job.copy_input, job.fail), received)


def _failed_in(then, e: Exception, now: int) -> None:
    """An op's completion callback (a job's bound method) raised: the job fails with
    RUNTIME_ERROR (once: jobs settle only once), instead of the action never being answered."""
    job = getattr(then, "__self__", None)
    if job is None or not hasattr(job, "fail"):
        raise e
    job.fail(Status.RUNTIME_ERROR, f"{then.__name__}: {type(e).__name__}: {e}", now)


class _LoadWeightsJob:
    __slots__ = ("rt", "a", "m", "gpu", "reply_to", "received", "version", "settled")

    def __init__(self, rt: WorkerRuntime, a: s.LoadWeights, m: ModelInstance, gpu: Gpu, reply_to, received: int):
        self.rt, self.a, self.m, self.gpu = rt, a, m, gpu
        self.reply_to, self.received = reply_to, received
        self.version = 0
        self.settled = False          # answered and counted finished: never twice

    def fail(self, status, message, now) -> None:
        if self.settled:
            return
        self.settled = True
        self.rt._done()
        self.rt._error(self.reply_to, self.a, status, message, self.received)

    def run(self, now: int):
        rt, m, gpu = self.rt, self.m, self.gpu
        if m.id in gpu.resident:
            self.fail(Status.WEIGHTS_ALREADY_PRESENT,
                      f"load_weights: model {m.id} already on gpu {gpu.id}", now)
            return None
        n = m.kind.num_pages
        pages = gpu.mem.pages.alloc(n)
        if pages is None:
            self.fail(Status.NOT_ENOUGH_PAGES, f"load_weights: model {m.id} needs {n} pages, gpu "
                      f"{gpu.id} has {gpu.mem.pages.free} free of {gpu.mem.pages.total}", now)
            return None
        rt._version += 1
        self.version = rt._version
        gpu.resident[m.id] = Resident(pages, self.version)
        try:
            op = rt.backend.load_weights(gpu.id, m.kind.host, pages, now, instance=m.id)
        except Exception:
            del gpu.resident[m.id]          # the executor reports RUNTIME_ERROR
            gpu.mem.pages.release(pages)
            raise
        return rt._started(gpu.weights, op, self.done)

    def done(self, op: Op, now: int) -> None:
        rt, gpu = self.rt, self.gpu
        r = gpu.resident.get(self.m.id)
        if r is None or r.version != self.version:
            return self.fail(Status.WEIGHTS_CHANGED,
                             f"load_weights: model {self.m.id} evicted from gpu {gpu.id} while loading", now)
        if op.error:
            del gpu.resident[self.m.id]
            gpu.mem.pages.release(r.pages)
            return self.fail(Status.RUNTIME_ERROR, f"load_weights: {op.error}", now)
        r.loaded = True
        self.settled = True
        rt._done()
        rt.stats.loads += 1
        rt.send(self.reply_to, s.LoadWeightsResult(self.a.action_id, self.received, 0, op.begin, op.end,
                                                   op.duration), ())


class _InferJob:
    """One Infer through its three stages: copy_input -> exec -> copy_output."""
    __slots__ = ("rt", "a", "m", "gpu", "inputs", "reply_to", "received", "version", "io",
                 "ws", "padded", "t_in", "op_exec", "clock_before", "settled")

    def __init__(self, rt: WorkerRuntime, a: s.Infer, m: ModelInstance, gpu: Gpu, inputs, reply_to, received: int):
        self.rt, self.a, self.m, self.gpu, self.inputs = rt, a, m, gpu, inputs
        self.reply_to, self.received = reply_to, received
        self.version = 0
        self.io: Any = None           # Regions, and Ops once the stages ran
        self.ws: Any = None
        self.padded = m.kind.padded[a.batch_size]
        self.t_in: Any = None
        self.op_exec: Any = None
        self.clock_before = 0
        self.settled = False          # answered and counted finished: never twice

    def fail(self, status, message, now) -> None:
        if self.settled:
            return
        self.settled = True
        gpu = self.gpu
        if self.io is not None:
            gpu.mem.io.release(self.io)
            self.io = None
        if self.ws is not None:
            gpu.mem.workspace.release(self.ws)
            self.ws = None
        self.inputs = None
        self.rt._done()
        self.rt._error(self.reply_to, self.a, status, message, self.received)

    def _weights_changed(self, stage: str, now: int) -> bool:
        r = self.gpu.resident.get(self.m.id)
        if r is not None and r.version == self.version:
            return False
        self.fail(Status.WEIGHTS_CHANGED, f"{stage}: weights of model {self.m.id} on gpu "
                  f"{self.gpu.id} changed during the infer", now)
        return True

    def copy_input(self, now: int):
        rt, gpu, kind = self.rt, self.gpu, self.m.kind
        r = gpu.resident.get(self.m.id)
        if r is None:
            self.fail(Status.WEIGHTS_NOT_PRESENT,
                      f"copy_input: model {self.m.id} has no weights on gpu {gpu.id}", now)
            return None
        self.version = r.version
        per_item = kind.input_size + kind.output_size
        self.io = gpu.mem.io.alloc(self.padded * per_item)
        if self.io is None:
            self.fail(Status.IO_POOL_EXHAUSTED, f"copy_input: gpu {gpu.id} io pool exhausted "
                      f"({gpu.mem.io.used} of {gpu.mem.io.size} bytes in use)", now)
            return None
        op = rt.backend.copy_input(gpu.id, kind.host, self.a.batch_size, self.inputs, self.io, now)
        return rt._started(gpu.inputs, op, self.input_done)

    def input_done(self, op: Op, now: int) -> None:
        self.inputs = None
        if op.error:
            return self.fail(Status.RUNTIME_ERROR, f"copy_input: {op.error}", now)
        self.t_in = op
        a = self.a
        self.rt._submit(self.gpu.exec, Task(max(a.earliest, op.end), a.latest or NO_LIMIT, "exec",
                                            self.execute, self.fail), now)

    def execute(self, now: int):
        rt, gpu, kind = self.rt, self.gpu, self.m.kind
        if self._weights_changed("exec", now):
            return None
        r = gpu.resident[self.m.id]
        if not r.loaded:
            self.fail(Status.WEIGHTS_NOT_PRESENT,
                      f"exec: weights of model {self.m.id} on gpu {gpu.id} are still loading", now)
            return None
        self.ws = gpu.mem.workspace.alloc(kind.host.workspace_size(self.padded))
        if self.ws is None:
            self.fail(Status.WORKSPACE_EXHAUSTED, f"exec: gpu {gpu.id} workspace pool exhausted "
                      f"({gpu.mem.workspace.used} of {gpu.mem.workspace.size} bytes in use)", now)
            return None
        self.clock_before = rt.backend.gpu_clock_mhz(gpu.id)
        op = rt.backend.execute(gpu.id, kind.host, self.padded, r.pages, self.io, self.ws, now,
                                instance=self.m.id)
        return rt._started(gpu.exec, op, self.exec_done)

    def exec_done(self, op: Op, now: int) -> None:
        self.gpu.mem.workspace.release(self.ws)
        self.ws = None
        if op.error:
            return self.fail(Status.RUNTIME_ERROR, f"exec: {op.error}", now)
        if self._weights_changed("exec", now):
            return
        self.op_exec = op
        self.rt._submit(self.gpu.outputs, Task(op.end, NO_LIMIT, "copy_output", self.copy_output, self.fail),
                        now)

    def copy_output(self, now: int):
        rt, gpu = self.rt, self.gpu
        op = rt.backend.copy_output(gpu.id, self.m.kind.host, self.a.batch_size, self.io, now)
        return rt._started(gpu.outputs, op, self.output_done)

    def output_done(self, op: Op, now: int) -> None:
        rt, gpu = self.rt, self.gpu
        if op.error:
            return self.fail(Status.RUNTIME_ERROR, f"copy_output: {op.error}", now)
        t_in, ex = self.t_in, self.op_exec
        result = s.InferResult(self.a.action_id, self.received, 0, t_in.begin, t_in.end, ex.begin, ex.end,
                               ex.duration, op.begin, op.end, self.clock_before, rt.backend.gpu_clock_mhz(gpu.id))
        gpu.mem.io.release(self.io)
        self.io = None
        self.settled = True
        rt._done()
        rt.stats.infers += 1
        rt.send(self.reply_to, result, (op.output,))
