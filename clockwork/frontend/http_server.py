"""The Open Inference Protocol over HTTP/REST (KServe v2, as Triton and tritonclient speak it).

    GET  /v2/health/live                         200 while the process runs
    GET  /v2/health/ready                        200 when the controller is ready, else 503
    GET  /v2                                     server metadata
    GET  /v2/models/{name}[/versions/{v}]        model metadata (shapes with -1 for the batch)
    GET  /v2/models/{name}[/versions/{v}]/ready  200 / 404 / 503
    GET  /v2/models/{name}[/versions/{v}]/config Triton's model configuration (perf_analyzer)
    POST /v2/models/{name}[/versions/{v}]/infer  JSON tensors, or the binary tensor data
                                                 extension (Inference-Header-Content-Length)
    GET  /metrics                                Prometheus
Request parameters: "slo_ms" (the clockwork SLO; the controller's default otherwise),
"timeout" (microseconds, Triton's), "binary_data_output"; per output "binary_data".

aiohttp on uvloop, chosen by measurement (BENCHMARKS.md, "KServe v2 front end"). Bodies are
read without blocking the loop (a slow client only holds its own connection; one that leaves
mid-body costs nothing more); JSON above JSON_OFFLOAD bytes is decoded and turned into a
tensor on a thread, so one huge body does not stall the others.
Binary input data goes to the controller as a slice of the received body (no copy).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import numpy as np
from aiohttp import web

from .. import __version__
from .errors import FrontendError, bad_request, not_found
from .inference import MAX_SLO_MS, Inference, number_param
from .registry import NUMPY_DTYPES, Registry

JSON_OFFLOAD = 256 << 10
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]


class TensorIn(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class OutputIn(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class InferRequestIn(msgspec.Struct):
    inputs: list[TensorIn]
    id: str = ""
    parameters: dict[str, Any] = {}
    outputs: list[OutputIn] = []


_decoder = msgspec.json.Decoder(InferRequestIn)
_encode = msgspec.json.encode


def _json(obj, status: int = 200) -> web.Response:
    return web.Response(body=_encode(obj), status=status, content_type="application/json")


def _error(e: FrontendError) -> web.Response:
    return _json(e.body(), e.http)


def _decode_header(buf) -> InferRequestIn:
    try:
        return _decoder.decode(buf)
    except msgspec.ValidationError as e:
        raise bad_request(f"malformed inference request: {e}") from None
    except msgspec.DecodeError as e:
        raise bad_request(f"malformed JSON: {e}") from None


def _json_tensor(t: TensorIn, datatype: str, count: int) -> memoryview:
    """The bytes of a tensor given as JSON "data" (nested or flat), checked element count."""
    if t.data is None:
        raise bad_request(f"input {t.name!r} has neither \"data\" nor binary_data_size")
    try:
        arr = np.asarray(t.data, dtype=NUMPY_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as e:
        raise bad_request(f"input {t.name!r}: data is not a {datatype} tensor ({e})") from None
    if arr.size != count:
        raise bad_request(f"input {t.name!r} has {arr.size} elements; shape {t.shape} takes {count}")
    return arr.data.cast("B")


class HttpFrontend:
    """The aiohttp application; `start()` listens, `close()` stops."""

    def __init__(self, inference: Inference, metrics, *, ssl_context=None):
        self.inference = inference
        self.log = inference.link.log
        self.link = inference.link
        self.metrics = metrics
        self.ssl_context = ssl_context
        limits = inference.limits
        self.max_connections = limits.max_connections
        self.app = web.Application(client_max_size=limits.max_body)
        r = self.app.router
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/metrics", self.prometheus)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(prefix, self.model_metadata)
            r.add_get(prefix + "/ready", self.model_ready)
            r.add_get(prefix + "/config", self.model_config)
            r.add_post(prefix + "/infer", self.infer)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on host:port (0: a free port); returns the port. reuse_port: share the port
        with other front-end processes (SO_REUSEPORT)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        server = self._runner.server
        limit = self.max_connections

        def connection():            # refuse beyond the connection limit, politely and at once
            if len(server.connections) >= limit:
                return _Refuse(limit)
            return server()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(connection, host, port, ssl=self.ssl_context,
                                                backlog=1024, reuse_address=True, reuse_port=reuse_port or None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ health and metadata

    async def live(self, request):
        return web.Response()

    async def ready(self, request):
        if self.link.ready:
            return web.Response()
        return _json({"error": f"not ready: {self.link.why_not_ready}"}, 503)

    async def server_metadata(self, request):
        return _json({"name": "clockwork", "version": __version__, "extensions": EXTENSIONS})

    async def prometheus(self, request):
        return web.Response(body=self.metrics.exposition(), content_type="text/plain")

    async def _model(self, request):
        info = request.match_info
        return await self.inference.model(info["name"], info.get("version", ""))

    async def model_metadata(self, request):
        try:
            m = await self._model(request)
        except FrontendError as e:
            return _error(e)
        return _json(self.link.registry.metadata(m))

    async def model_ready(self, request):
        try:
            await self._model(request)
        except FrontendError as e:
            return _error(e)
        return web.Response()

    async def model_config(self, request):
        try:
            m = await self._model(request)
        except FrontendError as e:
            return _error(e)
        return _json(Registry.config(m))

    # ------------------------------------------------------------------ inference

    async def infer(self, request):
        t0 = time.perf_counter()
        try:
            response = await self._infer(request)
        except FrontendError as e:
            self.metrics.failure("http", e.http, e.status)
            return _error(e)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.failure("http", 413, None)
            return _json({"error": f"request body larger than the limit of "
                                   f"{self.inference.limits.max_body} bytes"}, 413)
        except ConnectionError:          # the client left before its body arrived: nobody to answer
            self.metrics.failure("http", 499, None)
            return web.Response(status=499)
        except Exception as e:           # a bug costs one request, one line, never the server
            self.metrics.failure("http", 500, None)
            self.log(f"frontend: internal error serving {request.path}: {e!r}")
            return _json({"error": f"internal error: {e!r}"}, 500)
        self.metrics.success("http", time.perf_counter() - t0)
        return response

    async def _infer(self, request) -> web.Response:
        inference = self.inference
        m = await self._model(request)
        body = await request.read()
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is None:
            json_end = len(body)
        else:
            try:
                json_end = int(header_length)
            except ValueError:
                json_end = -1
            if not 0 < json_end <= len(body):
                raise bad_request(f"{HEADER_LENGTH} {header_length!r} is not within the "
                                  f"{len(body)}-byte body")
        view = memoryview(body)
        if json_end > JSON_OFFLOAD:
            req = await asyncio.get_running_loop().run_in_executor(None, _decode_header, view[:json_end])
        else:
            req = _decode_header(view[:json_end])
        if len(req.inputs) != 1:
            raise bad_request(f"model {m.name!r} takes exactly one input ({m.input.name!r}), "
                              f"got {len(req.inputs)}")
        t = req.inputs[0]
        batch = inference.check_input(m, t.name, t.datatype, t.shape)
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or json_end + size != len(body):
                raise bad_request(f"input {t.name!r}: binary_data_size {size!r} does not match the "
                                  f"{len(body) - json_end} bytes after the JSON header")
            data = view[json_end:]
        elif json_end != len(body):
            raise bad_request(f"{len(body) - json_end} bytes after the JSON header but no input "
                              f"has binary_data_size")
        elif json_end > JSON_OFFLOAD:
            data = await asyncio.get_running_loop().run_in_executor(
                None, _json_tensor, t, t.datatype, batch * m.input.item_elements)
        else:
            data = _json_tensor(t, t.datatype, batch * m.input.item_elements)
        params = req.parameters
        slo_ms = number_param(params, "slo_ms", 0, MAX_SLO_MS)
        timeout_us = number_param(params, "timeout", 0, 3.6e9)
        binary = params.get("binary_data_output", False) is True
        if req.outputs:
            if len(req.outputs) != 1 or req.outputs[0].name != m.output.name:
                raise bad_request(f"model {m.name!r} has one output, {m.output.name!r}; asked for "
                                  f"{[o.name for o in req.outputs]}")
            binary = req.outputs[0].parameters.get("binary_data", binary) is True
        answer, out = await inference.run(m, batch, data, slo_ms,
                                          timeout_us / 1e6 if timeout_us else None)
        o = m.output
        tensor = {"name": o.name, "datatype": o.datatype, "shape": [batch, *o.shape]}
        head = {"model_name": m.name, "model_version": m.version, "outputs": [tensor],
                "parameters": {"clockwork_model_id": m.model_id, "clockwork_latency_ns": answer.latency_ns,
                               "clockwork_exec_ns": answer.exec_ns, "clockwork_coldstart": answer.is_coldstart,
                               "clockwork_within_slo": answer.within_slo}}
        if req.id:
            head["id"] = req.id
        if not binary:
            tensor["data"] = np.frombuffer(out, dtype=NUMPY_DTYPES[o.datatype]).tolist()
            return _json(head)
        tensor["parameters"] = {"binary_data_size": len(out)}
        header = _encode(head)
        return web.Response(body=b"".join((header, out)), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(header))})


class _Refuse(asyncio.Protocol):
    """Answers one 503 and closes: the connection limit is reached."""

    def __init__(self, limit: int):
        self.body = _encode({"error": f"front end at its limit of {limit} connections"})

    def connection_made(self, transport):
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body))
        transport.close()
