"""The contract between the controller's I/O edge and a scheduling policy (docs/design.md).

A Scheduler is pure logic: it never touches sockets, threads or sleeps. Time comes from an
injected `clock()` (integer ns, controller clock), effects go out through an injected Outbox.
The edge (clockwork.controller.server) feeds it events and calls `tick()` no later than the
time `tick()` last returned. Tests drive it with a fake clock and a recording Outbox; the
simulator runs it in simulated time.

Event order the edge guarantees:
    start(models, workers)          once startup has loaded every model on every worker
    add_models(models)              models loaded later, while running
    on_request(req)                 per client Infer (already validated: known model, sizes ok)
    on_result(worker_id, action, result, data)   per completed action (result may be ErrorResult;
                                                 its times in controller time)
    on_worker_lost(worker_id)       after ErrorResults(WORKER_LOST) for its in-flight actions
    on_worker_joined(worker_id, state)
    tick() -> next wake-up time (ns) or None
"""
from __future__ import annotations

import itertools
from collections.abc import MutableMapping, Sequence
from typing import Callable, ClassVar, Protocol

try:
    from mypy_extensions import mypyc_attr
except ImportError:     # pure Python without mypy installed: the decorator only speaks to mypyc
    def mypyc_attr(*attrs: str, **kwattrs: object):  # type: ignore[misc]
        return lambda cls: cls

from ..transport.schema import Message, ModelInfo, WorkerState


class Request:
    """One client Infer as the controller tracks it. Slots: it is created per request."""
    __slots__ = ("id", "client", "client_request_id", "model_id", "batch_size", "user_id",
                 "slo_factor", "arrival", "slo", "deadline", "exec_deadline", "inputs",
                 "is_coldstart", "gpu")

    def __init__(self, id: int, client: bytes | None, client_request_id: int, model_id: int,
                 batch_size: int, arrival: int, slo: int, inputs: Sequence, user_id: int = 0,
                 slo_factor: float = 0.0, buffer: int = 5_000_000, schedule_ahead: int = 10_000_000):
        self.id = id
        self.client = client
        self.client_request_id = client_request_id
        self.model_id = model_id
        self.batch_size = batch_size
        self.user_id = user_id
        self.slo_factor = slo_factor
        self.arrival = arrival
        self.slo = slo
        self.deadline = arrival + slo
        # the original: exec must finish by arrival + max(slo - buffer, schedule_ahead + buffer)
        self.exec_deadline = arrival + max(slo - buffer, schedule_ahead + buffer)
        self.inputs = inputs          # list of input frames (may be empty: generate)
        self.is_coldstart = False
        self.gpu = -1                 # global GPU index that served it, for logs


class Outbox(Protocol):
    """Effects a scheduler may cause. Implemented by the edge (real) and by tests (recording)."""

    action_ids: itertools.count   # shared source of action ids

    def send_action(self, worker_id: int, action: Message, data: list | tuple = (), expected_end: int = 0) -> None:
        """Send `action` (windows in controller time) to a worker; `action` itself is not
        changed (the edge sends a copy in the worker's clock). Never calls the scheduler back:
        a send that fails arrives as an ErrorResult(WORKER_LOST) after the current tick.
        `expected_end` (controller time) is only logged."""

    def respond(self, req: Request, status: int, message: str = "", output=None, exec_ns: int = 0) -> None:
        """Answer a client request exactly once. `output` is a buffer of batch_size x output_size."""


class GpuRef:
    """A GPU as the controller addresses it: (worker, local gpu id), plus a global index."""
    __slots__ = ("index", "worker_id", "gpu_id", "total_pages", "name")

    def __init__(self, index: int, worker_id: int, gpu_id: int, total_pages: int, name: str = ""):
        self.index = index
        self.worker_id = worker_id
        self.gpu_id = gpu_id
        self.total_pages = total_pages
        self.name = name


@mypyc_attr(allow_interpreted_subclasses=True)     # policies and tests subclass it (docs/compiled.md)
class Scheduler:
    """Base class with the defaults every policy shares. Subclasses override the on_* hooks."""

    name: ClassVar[str] = "base"

    def __init__(self, config: dict, clock: Callable[[], int], out: Outbox):
        self.config = config
        self.clock = clock
        self.out = out
        self.models: MutableMapping[int, ModelInfo] = {}   # a ModelRegistry in the controller
        self.workers: dict[int, WorkerState] = {}

    def start(self, models: MutableMapping[int, ModelInfo], workers: dict[int, WorkerState]) -> None:
        self.models = models
        self.workers = workers

    def add_models(self, models: MutableMapping[int, ModelInfo]) -> None:
        """Models loaded on every worker after start() (a LoadModel while running)."""
        self.models.update(models)

    def on_request(self, req: Request) -> None:
        raise NotImplementedError

    def on_result(self, worker_id: int, action: Message, result: Message, data: Sequence) -> None:
        pass

    def on_worker_lost(self, worker_id: int) -> None:
        self.workers.pop(worker_id, None)

    def on_worker_joined(self, worker_id: int, state: WorkerState) -> None:
        self.workers[worker_id] = state

    def tick(self) -> int | None:
        return None

    def stats(self) -> dict:
        """Numbers for periodic stats lines and telemetry (queue lengths and such). Must not
        change any state: several readers may ask at any time."""
        return {}

    def log_context(self, worker_id: int, gpu_id: int, model_id: int) -> tuple[int, int, int]:
        """For the action log, as an action is sent: (the GPU clock in MHz its estimate was
        planned with, 0 if none; requests queued; GPUs holding model_id). Asked only while
        the action log is on."""
        return 0, 0, 0
