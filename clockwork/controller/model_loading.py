"""Model loading: a client's LoadModel is broadcast to every live worker as LoadModelFromDisk
and answered once all of them have answered; models are loaded again on a worker that rejoins
(WorkerLinks._worker_state). The models get consecutive ids that never name another
controller lifetime's model (the epoch).

ModelLoading is one part of Controller (controller/server.py), a mixin.
"""
from __future__ import annotations

import gc

from ..limits import MAX_COPIES
from ..model.format import pad_table
from ..status import Status
from ..transport import schema as s
from .model_registry import ModelRegistry
from .actions import WorkerLink

FAR_FUTURE = 1 << 62        # LoadModelFromDisk windows: [0, never]


class LoadJob:
    """A client's LoadModel, broadcast to every live worker."""
    __slots__ = ("client", "request_id", "path", "model_id", "copies", "waiting", "models", "error")

    def __init__(self, client, request_id, path, model_id, copies):
        self.client = client
        self.request_id = request_id
        self.path = path
        self.model_id = model_id
        self.copies = copies
        self.waiting: set[int] = set()
        self.models: ModelRegistry | None = None     # what the first worker to answer said
        self.error: tuple[int, str] | None = None


class ModelLoading:
    def _on_load_model(self, ident: bytes, msg: s.LoadModelRequest) -> None:
        error = None
        if self.phase == "connecting":
            error = (Status.INITIALIZING, "Controller initializing (waiting for workers)")
        elif not 1 <= msg.copies <= MAX_COPIES:
            error = (Status.INVALID_REQUEST, f"copies must be 1..{MAX_COPIES}")
        elif len(self.models) + sum(j.copies for j in self.load_jobs.values()) + msg.copies > self.max_models:
            error = (Status.INVALID_REQUEST, f"{msg.copies} more copies would exceed the limit of "
                     f"{self.max_models} model instances ({len(self.models)} registered)")
        elif self.client_copies.get(ident, 0) + msg.copies > self.max_models_per_client:
            error = (Status.INVALID_REQUEST, f"{msg.copies} more copies would exceed the limit of "
                     f"{self.max_models_per_client} model instances per client "
                     f"({self.client_copies.get(ident, 0)} registered or loading by this one)")
        elif self.next_model_id + msg.copies > self.model_id_end:
            error = (Status.INVALID_REQUEST, "this controller has issued every model id of its block; "
                     "restart it to count again")
        elif not msg.path or msg.path.startswith("/") or ".." in msg.path.split("/") or "\x00" in msg.path:
            error = (Status.INVALID_REQUEST,
                     f"model path {msg.path!r} must be relative to the workers' model directory")
        if error is not None:
            self._reply(s.LoadModelResponse(msg.request_id, error[0], error[1]), ident=ident)
            return
        self.out(f"Client --> Req{msg.request_id}:LoadModel path={msg.path} copies={msg.copies}")
        job = LoadJob(ident, msg.request_id, msg.path, self.next_model_id, msg.copies)
        self.client_copies[ident] = self.client_copies.get(ident, 0) + msg.copies
        self.next_model_id += msg.copies
        self.load_jobs[job.model_id] = job
        for w in self.workers:
            if w.alive:
                job.waiting.add(w.id)
                self._send_load(w, job.path, job.model_id, job.copies,
                                lambda w, res, job=job: self._load_done(job, w, res))
        if not job.waiting:
            self._finish_load(job)

    def _send_load(self, w: WorkerLink, path: str, model_id: int, copies: int, on_done) -> None:
        action = s.LoadModelFromDisk(next(self.action_ids), 0, FAR_FUTURE, model_id, path, copies,
                                     self.settings.max_batch_size, self.settings.max_exec, compact=True)
        self.out(f"Worker <-- A{action.action_id}:LoadModelFromDisk model={model_id} copies={copies} {path}")
        self.send_action(w.id, action, on_done=on_done)

    def _load_done(self, job: LoadJob, w: WorkerLink, res) -> None:
        job.waiting.discard(w.id)
        if type(res) is s.ErrorResult and res.status == Status.WORKER_LOST:
            pass     # not the model's fault: the others answer, and it gets the model if it rejoins
        elif type(res) is s.ErrorResult:
            job.error = (res.status, f"worker {w.address}: {res.message}")
        elif job.models is None:
            job.models = answered_models(res, job.model_id, job.copies)
            if job.models is None:
                job.error = (Status.ERROR, f"worker {w.address}: answered LoadModelFromDisk of "
                             f"models {job.model_id} x{job.copies} with {res.copies or len(res.models)} "
                             f"models from {res.models[0].model_id if res.models else '-'}")
                return self._load_done_check(job)
            m = res.models[0]
            self.out(f"Worker --> R{res.action_id}:LoadModelFromDisk input={m.input_size} "
                     f"output={m.output_size} weights={m.weights_size / 2**20:.1f} MB ({m.num_pages} pages) "
                     f"xfer={m.weights_load_ns / 1e6:.1f} " +
                     " ".join(f"b{b}={t / 1e6:.1f}" for b, t in zip(m.batch_sizes, m.exec_ns)))
        self._load_done_check(job)

    def _load_done_check(self, job: LoadJob) -> None:
        if not job.waiting:
            self._finish_load(job)

    def _finish_load(self, job: LoadJob) -> None:
        del self.load_jobs[job.model_id]
        if job.error is None and job.models is None:
            job.error = (Status.ERROR, "no worker is connected")
        if job.error is not None:
            left = self.client_copies[job.client] - job.copies
            if left:
                self.client_copies[job.client] = left
            else:
                del self.client_copies[job.client]     # (entries stay bounded by max_models)
            self._reply(s.LoadModelResponse(job.request_id, job.error[0], job.error[1]),
                 ident=job.client)
            return
        new = job.models
        self.models.update(new)
        for first, copies, info in new.ranges():
            self._pad.add(first, copies, pad_table(info.batch_sizes))
        gc.freeze()     # long-lived model state: keep it out of gen-2 passes (~0.3 us/object each)
        if self.telemetry is not None:   # telemetry: event
            self.telemetry.event("model_registered", f"models {job.model_id}..{job.model_id + job.copies - 1} "
                                 f"registered from {job.path}", model_id=job.model_id)
        self.loaded_paths.append((job.path, job.model_id, job.copies))
        if self.phase == "running":
            self.scheduler.add_models(new)
        m = new[job.model_id]
        self.out(f"Client <-- Rsp{job.request_id}:LoadModel model_id=[{job.model_id}->"
                 f"{job.model_id + job.copies - 1}] input={m.input_size} output={m.output_size}")
        self._reply(s.LoadModelResponse(job.request_id, Status.SUCCESS, "", job.model_id,
                                                   job.copies, m.input_size, m.output_size),
             ident=job.client)


def answered_models(res: s.LoadModelFromDiskResult, first: int, copies: int) -> ModelRegistry | None:
    """The models a worker's LoadModelFromDiskResult describes, if they are exactly ids
    first .. first + copies - 1: one ModelInfo for all (res.copies, compact) or one per copy
    (a worker older than the compact answer); None if not."""
    models = res.models
    if not models or models[0].model_id != first:
        return None
    reg = ModelRegistry()
    if res.copies:
        if res.copies != copies or len(models) != 1:
            return None
        reg.add_copies(models[0], copies)
        return reg
    if len(models) != copies or any(m.model_id != first + i for i, m in enumerate(models)):
        return None
    reg.add_list(models)
    return reg
