"""Scheduling policies by name (the controller's --scheduler flag / [controller] scheduler key).

infer4: the Clockwork scheduler. fifo: reactive baseline (Clipper/INFaaS style). clipper: fifo
with Clipper's adaptive (AIMD) batch sizes. direct: one Infer per request, for testing. echo:
answers at once, no workers."""
from __future__ import annotations

from typing import Callable

from ..scheduler import Outbox, Scheduler
from .clipper import ClipperScheduler
from .direct import DirectScheduler
from .echo import EchoScheduler
from .fifo import FifoScheduler
from .infer4 import Infer4Scheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "infer4": Infer4Scheduler,
    "echo": EchoScheduler,
    "direct": DirectScheduler,
    "fifo": FifoScheduler,
    "clipper": ClipperScheduler,
}


class UnknownScheduler(ValueError):
    """The configured scheduler name is not in SCHEDULERS."""


def make_scheduler(name: str, config: dict, clock: Callable[[], int], out: Outbox) -> Scheduler:
    """Create the policy called `name` (case-insensitive). Raises UnknownScheduler, or
    schedulers.common.SchedulerConfigError for a bad [controller] value."""
    cls = SCHEDULERS.get(str(name).strip().lower())
    if cls is None:
        raise UnknownScheduler(f"unknown scheduler {name!r} (known: {', '.join(sorted(SCHEDULERS))})")
    return cls(config, clock, out)
