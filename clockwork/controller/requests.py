"""The Infer requests a controller holds, from admission to answer: the per-request half of
admission.py, in one plain class so that the opt-in build compiles it (docs/compiled.md).

`admit` takes one Infer (alone or out of an InferRequestBatch): it is validated (known model,
batch size, input size, dtype and shape, SLO within clockwork.limits), bounded by the inputs
held in memory, stamped with its arrival, and handed to the scheduler. `respond` is the
Outbox's answer to a request, given exactly once: counted, logged, and queued in Replies until
the loop pass ends. The controller (admission.py) reads the client messages and decides
whether it is running; this class does the rest.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from ..limits import MAX_SLO_NS
from ..status import Status
from ..transport import schema as s
from .logs import TsvLog
from .model_registry import ModelRegistry
from .queuewait import QueueWait
from .replies import Replies
from .scheduler import Request
from .schedulers.common import Settings
from .stats import ControllerStats


class Requests:
    """Admission and answers of Infer requests. `controller` is asked for what may change
    under this object (its scheduler and telemetry: tests and `cw top` replace them)."""

    def __init__(self, controller: Any, clock: Callable[[], int], epoch: int, models: ModelRegistry,
                 settings: Settings, replies: Replies, stats: ControllerStats, request_log: TsvLog,
                 max_input_bytes: int):
        self.controller = controller
        self.clock = clock
        self.epoch = epoch
        self.models = models
        self.settings = settings
        self.replies = replies
        self.stats = stats
        self.request_log = request_log
        self.queue_wait = QueueWait()
        self.next_id = 1
        self.arrivals = 0
        self.departures = 0
        # memory bound on inputs: bytes held by requests not yet answered, beyond which OVERLOADED
        self.max_input_bytes = max_input_bytes
        self.input_bytes = 0
        self.held: dict[int, int] = {}          # request id -> its input bytes, until answered
        self.model_counts: dict[int, list[int]] = {}   # model id -> [arrivals, answers], for the request log

    def reply(self, ident: bytes, msg: Any, data: Sequence = ()) -> None:
        """Answer a client (stamped with this controller's epoch), at the end of this loop pass."""
        msg.epoch = self.epoch
        self.replies.add(ident, msg, data)

    def arrive(self, ident: bytes, msg: s.InferRequest) -> bool:
        """Count an Infer in; False if it was answered already (a model id of another
        controller lifetime)."""
        self.arrivals += 1
        if self.request_log.on:
            counts = self.model_counts.get(msg.model_id)
            if counts is None:
                self.model_counts[msg.model_id] = [1, 0]
            else:
                counts[0] += 1
        if msg.epoch != self.epoch and msg.epoch:
            self.reply(ident, s.InferResponse(
                msg.request_id, Status.STALE_EPOCH, f"model id {msg.model_id} belongs to another controller "
                f"lifetime (epoch {msg.epoch:x}; this controller's is {self.epoch:x}): load the model again",
                msg.model_id, msg.batch_size))
            return False
        return True

    def admit(self, ident: bytes, msg: s.InferRequest, data: Sequence) -> None:
        """An Infer that arrived while the controller runs: refused with one clear error, or
        made a Request and handed to the scheduler."""
        model = self.models.get(msg.model_id)
        error = None
        nbytes = 0
        if model is None:
            error = f"unknown model id {msg.model_id}"
        elif not 1 <= msg.batch_size <= model.batch_sizes[-1]:
            error = (f"batch size {msg.batch_size} not supported by model {msg.model_id} "
                     f"(1..{model.batch_sizes[-1]})")
        elif msg.dtype and model.input_dtype and msg.dtype != model.input_dtype:
            error = f"input dtype {msg.dtype}; model {msg.model_id} takes {model.input_dtype}"
        elif msg.item_shape is not None and model.input_shape and msg.item_shape != model.input_shape:
            error = (f"input item shape {msg.item_shape}; model {msg.model_id} takes "
                     f"{model.input_shape} per item")
        elif data:
            for f in data:
                nbytes += len(f.buffer)
            if nbytes != msg.batch_size * model.input_size:
                error = (f"input is {nbytes} bytes; model {msg.model_id} takes "
                         f"{msg.batch_size} x {model.input_size} bytes")
        if model is not None and error is None and not (
                0 <= msg.slo_ns <= MAX_SLO_NS and 0 <= msg.slo_factor * model.exec_ns[0] <= MAX_SLO_NS):
            error = "SLO must be between 0 and 1 hour (slo_ns, or slo_factor x batch-1 exec time)"
        if error is not None:
            self.reply(ident, s.InferResponse(msg.request_id, Status.INVALID_REQUEST, error,
                                              msg.model_id, msg.batch_size))
            return
        if nbytes and self.input_bytes + nbytes > self.max_input_bytes:
            self.reply(ident, s.InferResponse(
                msg.request_id, Status.OVERLOADED, f"queued requests hold {self.input_bytes} bytes of inputs "
                f"(limit {self.max_input_bytes})", msg.model_id, msg.batch_size))
            return
        now = self.clock()
        st = self.settings
        slo = msg.slo_ns or st.default_slo
        # arrival: when the client sent it, as far as we can tell (this loop may have been stalled)
        waited = self.queue_wait.waited(ident, msg.sent_ns, now)
        rid = self.next_id
        self.next_id = rid + 1
        req = Request(rid, ident, msg.request_id, msg.model_id, msg.batch_size, now - waited, slo, data,
                      msg.user_id, msg.slo_factor, st.buffer, st.schedule_ahead)
        if req.deadline <= now:
            self.controller.respond(req, Status.TIMEOUT, f"its SLO ({slo / 1e6:g} ms) had passed when the "
                                    f"controller read it ({waited / 1e6:.0f} ms after it was sent)")
            return
        if nbytes:
            self.input_bytes += nbytes
            self.held[rid] = nbytes
        self.controller.scheduler.on_request(req)

    def respond(self, req: Request, status: int, message: str = "", output: Any = None,
                exec_ns: int = 0) -> None:
        """The answer to `req` (its output a buffer of batch_size x output_size on success)."""
        now = self.clock()
        latency = now - req.arrival
        self.departures += 1
        if self.held:
            self.input_bytes -= self.held.pop(req.id, 0)
        met = now <= req.deadline
        msg = s.InferResponse(req.client_request_id, status, message, req.model_id, req.batch_size,
                              latency, exec_ns, req.is_coldstart, self.epoch, met)
        client = req.client
        if client is not None:
            self.replies.add(client, msg, (output,) if output is not None and status == 0 else ())
        self.stats.request_done(status, latency, met)
        if self.request_log.on:
            counts = self.model_counts.get(req.model_id)
            if counts is None:
                counts = self.model_counts[req.model_id] = [0, 0]
            counts[1] += 1
            self.request_log.add((now, req.id, status, req.user_id, req.model_id, req.slo_factor,
                                  latency, req.slo, int(met and status == Status.SUCCESS),
                                  counts[0], counts[1], int(req.is_coldstart), req.batch_size, req.gpu))
        telemetry = self.controller.telemetry
        if telemetry is not None:
            telemetry.request_done(req, status, latency, now, exec_ns)
