"""A stand-in controller that speaks the client schema and answers at once.

For tests of the client and its workloads, and for tools/bench/client_rate.py: it is not a
scheduler. LoadModel hands out consecutive model ids with the sizes of the emulated zoo
(clockwork/conf/profiles), Ls lists them, Infer is answered SUCCESS with an output frame (checked
input size first). Knobs make it misbehave on purpose: answer INITIALIZING for a while, or never
answer some models (to exercise client timeouts).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import zmq

from ..model.zoo import load_profile
from ..status import Status
from ..transport import schema
from ..transport.schema import (ErrorResponse, InferRequest, InferRequestBatch, InferResponse,
                                LoadModelRequest, LoadModelResponse, LsRequest, LsResponse, ModelInfo)
from ..transport.sockets import router


def zoo_sizes(profile: str = "h200") -> dict[str, tuple[int, int, int]]:
    """model name -> (input bytes, output bytes, weights bytes) for batch 1 (float32)."""
    out = {}
    for name, m in load_profile(profile).get("models", {}).items():
        inp = 4 * math.prod(m["input"]["shape"])
        outp = 4 * math.prod(m["output"]["shape"])
        out[name] = (inp, outp, int(m["weights_size"]))
    return out


@dataclass
class EchoController:
    host: str = "127.0.0.1"
    port: int = 0
    initializing_requests: int = 0        # answer the first N requests INITIALIZING
    silent_models: set = field(default_factory=set)   # Infer on these is never answered
    send_outputs: bool = True
    profile: str = "h200"
    record: bool = False                  # keep (model_id, slo_factor, slo_ns, input bytes) per Infer
    load_delay_s: float = 0.0             # answer LoadModel this much later (a slow load)
    first_id: int = 0                     # model ids start here (shard k of a sharded controller: k << SHARD_ID_BITS)

    def __post_init__(self):
        self.sizes = zoo_sizes(self.profile)
        self.models: list[ModelInfo] = []
        self.received = {"infer": 0, "load": 0, "ls": 0, "bad": 0}
        self.input_frames_seen = 0
        self.infers: list[tuple[int, float, int, int]] = []
        self._outputs: dict[int, zmq.Frame] = {}
        self._stop = threading.Event()
        self._thread = None
        self._ready = threading.Event()
        self._delayed: list[tuple[float, bytes, bytes]] = []    # (due, ident, header)

    # -------------------------------------------------------------- answers

    def _answer(self, msg, data):
        if self.initializing_requests > 0:
            self.initializing_requests -= 1
            cls = {InferRequest: InferResponse, LoadModelRequest: LoadModelResponse,
                   LsRequest: LsResponse}[type(msg)]
            return cls(msg.request_id, Status.INITIALIZING, "Controller initializing"), ()
        if isinstance(msg, InferRequest):
            self.received["infer"] += 1
            return self._infer(msg, data)
        if isinstance(msg, LoadModelRequest):
            self.received["load"] += 1
            return self._load(msg), ()
        self.received["ls"] += 1
        return LsResponse(msg.request_id, Status.SUCCESS, "", self.models), ()

    def _answers(self, msg, data):
        """Answers to one message: a batch's requests are answered one message each."""
        if type(msg) is not InferRequestBatch:
            return [self._answer(msg, data)]
        out, at = [], 0
        for i, req in enumerate(msg.requests):
            n = msg.frames[i] if msg.frames else 0
            out.append(self._answer(req, data[at:at + n]))
            at += n
        return out

    def _load(self, msg: LoadModelRequest):
        name = msg.path.rstrip("/").rsplit("/", 1)[-1]
        if name not in self.sizes:
            return LoadModelResponse(msg.request_id, Status.INVALID_REQUEST,
                                     f"no model {msg.path!r} (known: {', '.join(sorted(self.sizes))})")
        if msg.copies < 1:
            return LoadModelResponse(msg.request_id, Status.INVALID_REQUEST, "copies must be >= 1")
        inp, outp, weights = self.sizes[name]
        first = self.first_id + len(self.models)
        for i in range(msg.copies):
            self.models.append(ModelInfo(first + i, name, inp, outp, weights, 1, [1, 2, 4, 8, 16],
                                         [1_000_000] * 5, 1_000_000))
        return LoadModelResponse(msg.request_id, Status.SUCCESS, "", first, msg.copies, inp, outp)

    def _infer(self, msg: InferRequest, data):
        rid = msg.request_id
        if not 0 <= msg.model_id - self.first_id < len(self.models):
            return InferResponse(rid, Status.INVALID_REQUEST, f"unknown model {msg.model_id}"), ()
        if msg.model_id in self.silent_models:
            return None, ()
        m = self.models[msg.model_id - self.first_id]
        got = sum(len(f.buffer) for f in data)
        if self.record:
            self.infers.append((msg.model_id, msg.slo_factor, msg.slo_ns, got))
        if data:
            self.input_frames_seen += 1
            if got != msg.batch_size * m.input_size:
                return InferResponse(rid, Status.INVALID_REQUEST,
                                     f"inputs are {got} bytes, expected {msg.batch_size * m.input_size}"), ()
        resp = InferResponse(rid, Status.SUCCESS, "", msg.model_id, msg.batch_size, 1000, 1000, False, within_slo=True)
        if not self.send_outputs:
            return resp, ()
        size = msg.batch_size * m.output_size
        frame = self._outputs.get(size)
        if frame is None:
            frame = self._outputs[size] = zmq.Frame(bytes(size))
        return resp, (frame,)

    # -------------------------------------------------------------- loop

    def serve(self, ctx: zmq.Context | None = None) -> None:
        """Run until stop() (blocking). Binds first; self.port holds the real port."""
        own = ctx is None
        ctx = ctx or zmq.Context()
        sock = router(ctx, self.host, self.port) if self.port else None
        if sock is None:
            sock = ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            self.port = sock.bind_to_random_port(f"tcp://{self.host}")
        self._ready.set()
        try:
            while not self._stop.is_set():
                while self._delayed and self._delayed[0][0] <= time.monotonic():
                    _, ident, header = self._delayed.pop(0)
                    sock.send_multipart([ident, header])
                if not sock.poll(10 if self._delayed else 50):
                    continue
                for _ in range(10_000):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    ident = frames[0].bytes
                    try:
                        msg = schema.decode(frames[1], schema.REQUEST_DECODER)
                    except (schema.ProtocolError, IndexError) as e:
                        self.received["bad"] += 1
                        sock.send_multipart([ident, schema.encode(ErrorResponse(-1, Status.INVALID_REQUEST, str(e)))])
                        continue
                    for resp, data in self._answers(msg, frames[2:]):
                        if resp is None:
                            continue
                        if self.load_delay_s and isinstance(resp, LoadModelResponse):
                            self._delayed.append((time.monotonic() + self.load_delay_s, ident, schema.encode(resp)))
                            continue
                        if data:
                            sock.send_multipart([ident, schema.encode(resp), *data], copy=False)
                        else:
                            sock.send_multipart([ident, schema.encode(resp)])
        finally:
            sock.close(0)
            if own:
                ctx.term()

    def start(self) -> "EchoController":
        """Serve on a background thread; returns once bound (self.port is set)."""
        self._thread = threading.Thread(target=self.serve, name="echo-controller", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("echo controller did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:  # pragma: no cover - used by tools/bench/client_rate.py
    import argparse
    p = argparse.ArgumentParser(description="echo controller: answers every request at once")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--no-outputs", action="store_true")
    p.add_argument("--first-id", type=int, default=0, help="model ids start here (a shard's block)")
    a = p.parse_args(argv)
    EchoController(port=a.port, send_outputs=not a.no_outputs, first_id=a.first_id).serve()


if __name__ == "__main__":  # pragma: no cover
    main()
