"""Drive a WorkerRuntime synchronously from a script (no sockets): submit one action, spin the
runtime (poll the backend, run timers) until its result arrives. For benchmarks and device
checks; tests have their own copy."""
from __future__ import annotations

import time

from clockwork.transport import schema as s
from clockwork.worker.runtime import WorkerRuntime


class Driver:
    def __init__(self, backend, model_dir, page_size, total_pages, io=64 << 20, ws=64 << 20):
        self.backend = backend
        self.results = {}
        self.rt = WorkerRuntime(backend, model_dir, self._send, page_size, total_pages, io, ws)
        self.next_id = 0

    def _send(self, reply_to, msg, frames):
        self.results[msg.action_id] = (msg, [bytes(f) for f in frames])

    def do(self, cls, timeout_s=120, **kw):
        self.next_id += 1
        aid = self.next_id
        data = kw.pop("data", [])
        now = time.monotonic_ns()
        self.rt.handle(cls(action_id=aid, earliest=0, latest=now + int(timeout_s * 1e9), **kw), data, None, now)
        deadline = time.monotonic() + timeout_s
        while aid not in self.results:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cls.__name__} did not complete in {timeout_s} s")
            now = time.monotonic_ns()
            if self.rt.waiting_on_backend():
                self.rt.poll_backend(now)
            self.rt.advance(now)
        return self.results.pop(aid)

    def infer(self, model_id, x, gpu=0):
        return self.do(s.Infer, model_id=model_id, gpu_id=gpu, batch_size=len(x),
                       data=[x.tobytes()] if x is not None else [])
