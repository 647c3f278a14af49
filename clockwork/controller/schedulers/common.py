"""Pieces every scheduling policy shares: settings from the [controller] config section, GPU
references built from worker states, and per-request output slicing (zero-copy)."""
from __future__ import annotations

from collections.abc import Sequence

from ...config import defaults
from ...model.format import pad_table
from ...transport.schema import EvictWeights, GpuState, LoadWeights, ModelInfo, WorkerState
from ..scheduler import GpuRef, Scheduler

OPEN = 3600 * 1_000_000_000       # open windows: [0, now + 1 hour]

DEFAULT_CLOCK_MHZ = 1980      # nominal SM clock of an H200; estimates are scaled by the GPU clock


class SchedulerConfigError(ValueError):
    """A [controller] setting has a value the scheduler cannot use."""


class Settings:
    """The [controller] keys a policy needs, times in integer ns.

    Accepts the whole config (with a "controller" table) or the [controller] table itself;
    missing keys take clockwork/conf/default.toml's values."""

    def __init__(self, config: dict | None):
        config = config or {}
        section = config.get("controller") if isinstance(config.get("controller"), dict) else config
        fallback = defaults()["controller"]

        def num(key, kind=float, minimum=0.0):
            value = section.get(key, fallback[key])
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SchedulerConfigError(f"[controller] {key} must be a number, got {value!r}")
            if value < minimum:
                raise SchedulerConfigError(f"[controller] {key} must be >= {minimum}, got {value!r}")
            return kind(value)

        def ms(key, minimum=0.0):
            return int(num(key, float, minimum) * 1_000_000)

        self.default_slo = ms("default_slo_ms", 0.001)
        self.schedule_ahead = ms("schedule_ahead_ms")
        # how long before a GPU is expected free its next batch is formed and sent (at most
        # schedule_ahead): later means more requests to batch, earlier more room for late messages
        self.dispatch_ahead = min(ms("dispatch_ahead_ms"), self.schedule_ahead)
        self.latest_delta = self.schedule_ahead          # the original: latest_delta = schedule_ahead
        self.max_exec = ms("max_exec_ms", 0.001)
        self.buffer = ms("buffer_ms")
        self.max_load_slo = ms("max_load_slo_ms")
        self.max_batch_size = num("max_batch_size", int, 1)
        self.estimate_window = num("estimate_window", int, 1)
        self.estimate_percentile = num("estimate_percentile", float, 0.0)
        if self.estimate_percentile > 100:
            raise SchedulerConfigError("[controller] estimate_percentile must be <= 100")
        self.max_loads_per_gpu = num("max_loads_per_gpu", int, 1)
        self.max_queue_per_model = num("max_queue_per_model", int, 1)


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up, for positive b (integers only: no float rounding)."""
    return -(-a // b)


def build_gpus(workers: dict[int, WorkerState], first_index: int = 0) -> list[tuple[GpuRef, GpuState]]:
    """(GpuRef, GpuState) for every GPU of `workers`, global indices from `first_index` on."""
    out = []
    index = first_index
    for worker_id in sorted(workers):
        for gpu in workers[worker_id].gpus:
            out.append((GpuRef(index, worker_id, gpu.gpu_id, gpu.total_pages,
                               f"W{worker_id}-GPU{gpu.gpu_id}"), gpu))
            index += 1
    return out


def free_pages(gpu, models: dict) -> int:
    """Pages free on a GPU as the controller counts them: total minus the loaded models' pages
    (a rejoining worker's reported free_pages may predate its reset)."""
    used = 0
    for mid in gpu.loaded_models:
        m = models.get(mid)
        used += getattr(m, "num_pages", None) or getattr(m, "pages", 0)
    return gpu.total_pages - used


def batch_tables(info: ModelInfo) -> tuple[list[int], list[int]]:
    """pad[n] = smallest compiled batch >= n, and exec_ns[n] = profiled time of pad[n], for n in
    1..max compiled batch (index 0 unused). The worker pads a batch b to pad[b]."""
    profiled = dict(zip(info.batch_sizes, info.exec_ns)) or {1: 100_000}
    pad = pad_table(profiled)
    exec_ns = [0] + [max(1, int(profiled[b])) for b in pad[1:]]
    return pad, exec_ns


def output_view(data: Sequence) -> memoryview | None:
    """The output frame of an InferResult as a memoryview (no copy), or None if absent."""
    if not data:
        return None
    frame = data[0]
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame)


_zeros: dict[int, memoryview] = {}


def zeros(nbytes: int) -> memoryview:
    """A read-only zero buffer of `nbytes`, shared (no allocation per request)."""
    view = _zeros.get(nbytes)
    if view is None:
        view = _zeros[nbytes] = memoryview(bytes(nbytes))
    return view


class OpenWindowLoads(Scheduler):
    """LoadWeights / EvictWeights with open windows and LRU victims: what the reactive baseline
    policies (direct, fifo) share. Subclasses keep GPUs with `loaded` (an OrderedDict in LRU
    order), `free_pages`, `loading` and `ref`, and an `_inflight` dict of action id ->
    (kind, gpu, model id, requests)."""

    def queued_requests(self) -> int:
        return 0

    def log_context(self, worker_id: int, gpu_id: int, model_id: int) -> tuple[int, int, int]:
        return 0, self.queued_requests(), sum(1 for g in self._gpus if model_id in g.loaded)

    def _lru_victims(self, g, pages: int, in_use) -> list[int] | None:
        """Models on `g` to evict, least recently used first, so that `pages` pages are free;
        models for which in_use(id) is true stay. None if even that is not enough."""
        victims, freed = [], g.free_pages
        for other in g.loaded:
            if freed >= pages:
                break
            if not in_use(other):
                victims.append(other)
                freed += self.models[other].num_pages
        return victims if freed >= pages else None

    def _evict(self, g, victims: list[int]) -> None:
        for other in victims:
            del g.loaded[other]
            g.free_pages += self.models[other].num_pages
            aid = next(self.out.action_ids)
            self._inflight[aid] = ("evict", g, other, None)
            self.out.send_action(g.ref.worker_id, EvictWeights(aid, 0, self.clock() + OPEN, other, g.ref.gpu_id))

    def _send_load(self, g, mid: int) -> None:
        g.free_pages -= self.models[mid].num_pages
        g.loading.add(mid)
        aid = next(self.out.action_ids)
        self._inflight[aid] = ("load", g, mid, None)
        self.out.send_action(g.ref.worker_id, LoadWeights(aid, 0, self.clock() + OPEN, mid, g.ref.gpu_id,
                                                          self.models[mid].weights_load_ns))
