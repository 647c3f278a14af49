"""One inference through the controller, whichever protocol asked: checks, limits, outcome.

Both servers (HTTP, gRPC) decode their request into (model, version, input name, datatype,
shape, bytes, parameters) and call `model()`, `check_input()` and `run()`; every refusal is a
FrontendError carrying its HTTP status (errors.py maps it to gRPC). A batch of n in one
protocol request is sent as ONE clockwork request of batch_size n: one deadline for the whole
batch, one answer, one output frame (n clockwork requests would cost n times the per-request
work at every hop, and could answer part of a batch; measured in BENCHMARKS.md).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..client.api import NO_ANSWER
from ..status import Status
from .errors import FrontendError, bad_request, not_found, unavailable
from .link import ControllerLink
from .registry import ModelVersion

MAX_SLO_MS = 3_600_000.0      # the controller's limit (1 hour)


@dataclass
class Limits:
    max_batch: int = 0            # largest batch per request; 0: the model's largest batch size
    max_inflight: int = 10_000    # requests waiting for the controller; beyond: 503 at once
    max_body: int = 64 << 20      # bytes of one request body / gRPC message
    max_connections: int = 1000   # HTTP connections at once; beyond: 503 and closed


def number_param(params, key: str, lo: float, hi: float):
    """A numeric request parameter within [lo, hi] (exclusive lo), or None when absent."""
    v = params.get(key) if params else None
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
        raise bad_request(f"parameter {key!r} must be a number in ({lo:g}, {hi:g}], got {v!r}")
    return v


class Inference:
    def __init__(self, link: ControllerLink, limits: Limits, metrics=None):
        self.link = link
        self.limits = limits
        self.metrics = metrics
        self.inflight = 0

    async def model(self, name: str, version: str = "") -> ModelVersion:
        link = self.link
        if not link.ready:
            raise unavailable(f"controller not ready: {link.why_not_ready}")
        m = await link.lookup(name, version)
        if m is not None:
            return m
        known = link.registry.versions(name)
        if known:
            raise not_found(f"model {name!r} has no version {version!r} (versions {', '.join(known)})")
        names = sorted(link.registry.models)
        listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise not_found(f"unknown model {name!r} (loaded: {listed or 'none'})")

    def check_input(self, m: ModelVersion, name: str, datatype: str, shape) -> int:
        """The batch size of a well-formed input for model m; 400 otherwise."""
        t = m.input
        if name != t.name:
            raise bad_request(f"model {m.name!r} has one input, {t.name!r}; got {name!r}")
        if datatype != t.datatype:
            raise bad_request(f"input {name!r} of model {m.name!r} is {t.datatype}, got {datatype}")
        if len(shape) != len(t.shape) + 1 or tuple(shape[1:]) != t.shape:
            raise bad_request(f"input {name!r} of model {m.name!r} has shape {[-1, *t.shape]}, "
                              f"got {list(shape)}")
        batch = shape[0]
        limit = min(m.max_batch, self.limits.max_batch or m.max_batch)
        if not 1 <= batch <= limit:
            raise bad_request(f"batch size {batch} not supported by model {m.name!r} (1..{limit})")
        return batch

    def submit(self, m: ModelVersion, batch: int, data, slo_ms, timeout_s, done) -> None:
        """Send the request; `done(error, response, output)` runs once on the loop's thread with
        either a FrontendError or (InferResponse, output buffer of batch x output bytes). A
        request refused before it is sent raises FrontendError here instead. timeout_s: answer
        504 if the controller has not answered by then (None: the link's timeout)."""
        nbytes = len(data) if not isinstance(data, memoryview) else data.nbytes
        if nbytes != batch * m.input_size:
            raise bad_request(f"input of model {m.name!r} is {nbytes} bytes; "
                              f"batch {batch} takes {batch * m.input_size}")
        if self.inflight >= self.limits.max_inflight:
            raise unavailable(f"front end at its limit of {self.limits.max_inflight} requests in flight")
        slo_ns = int(slo_ms * 1e6) if slo_ms else 0
        self.inflight += 1
        timer = None
        finished = False

        def answered(response, frames, latency_s):
            nonlocal finished
            if finished:                      # our own timeout answered first
                return
            finished = True
            self.inflight -= 1
            if timer is not None:
                timer.cancel()
            if response.status != Status.SUCCESS:
                if response.status == Status.STALE_EPOCH:
                    self.link.stale(m.model_id)
                done(FrontendError.from_status(response.status, response.message), None, None)
                return
            out = frames[0].buffer if frames else b""
            if len(out) != batch * m.output_size:
                done(FrontendError(500, f"controller answered {len(out)} output bytes, "
                                        f"expected {batch * m.output_size}", Status.ERROR), None, None)
                return
            done(None, response, out)

        def expired():
            nonlocal finished
            if not finished:
                finished = True
                self.inflight -= 1
                done(FrontendError(504, f"no answer within {timeout_s:g} s", NO_ANSWER), None, None)

        if timeout_s is not None and timeout_s < self.link.timeout_s:
            timer = asyncio.get_running_loop().call_later(timeout_s, expired)
        self.link.infer(m.model_id, data, batch, slo_ns, answered)

    async def run(self, m: ModelVersion, batch: int, data, slo_ms=None, timeout_s=None):
        """submit() for a coroutine: returns (InferResponse, output buffer); raises FrontendError."""
        fut = asyncio.get_running_loop().create_future()

        def done(error, response, out):
            if not fut.done():
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result((response, out))
        self.submit(m, batch, data, slo_ms, timeout_s, done)
        return await fut
