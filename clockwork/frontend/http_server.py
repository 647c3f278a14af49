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

An asyncio Protocol on uvloop with httptools (the HTTP/1.1 parser uvicorn uses), chosen by
measurement over aiohttp (BENCHMARKS.md, "KServe v2 front end: per-request cost"): a request is parsed by
httptools, its JSON header decoded by msgspec, and handed to the controller link with a
callback; the callback writes the answer. No task, no future, no request or response object
per request. HTTP/1.1 keep-alive, Content-Length and chunked bodies, `Expect: 100-continue`
(curl), pipelined requests (answered in order, one at a time); TLS is the loop's own (ssl=).

Bodies arrive without blocking the loop (a slow client only holds its own connection; one
that leaves mid-body costs nothing more); a body over the limit is answered 413 at once from
its Content-Length. JSON above JSON_OFFLOAD bytes is decoded and turned into a tensor on a
thread, so one huge body does not stall the others. Binary input data goes to the controller
as a slice of the received body (no copy).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools
import msgspec
import numpy as np

from .. import __version__
from .errors import FrontendError, bad_request, not_found
from .inference import MAX_SLO_MS, Inference, number_param
from .registry import NUMPY_DTYPES, Registry

JSON_OFFLOAD = 256 << 10
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
MAX_HEAD = 1 << 20     # bytes of request line + headers; beyond: 431 and closed (httptools sets none)
LINGER_S = 5.0          # after a 413, read (and drop) the rest of the body this long, so the
                        # client sees the answer rather than a reset

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
           504: "Gateway Timeout"}
JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
TEXT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


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


class Parsed:
    """An inference request body, decoded and checked against its model."""
    __slots__ = ("batch", "data", "slo_ms", "timeout_s", "binary", "id")


def parse_infer(inference: Inference, m, body: bytes, header_length: str | None) -> Parsed:
    """Decode and check one infer body (JSON, or JSON header + binary tensor data). Pure: runs
    on a thread for large JSON. Raises FrontendError (400)."""
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
    req = _decode_header(view[:json_end] if json_end != len(body) else body)
    if len(req.inputs) != 1:
        raise bad_request(f"model {m.name!r} takes exactly one input ({m.input.name!r}), "
                          f"got {len(req.inputs)}")
    t = req.inputs[0]
    p = Parsed()
    p.batch = batch = inference.check_input(m, t.name, t.datatype, t.shape)
    size = t.parameters.get("binary_data_size") if t.parameters else None
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or json_end + size != len(body):
            raise bad_request(f"input {t.name!r}: binary_data_size {size!r} does not match the "
                              f"{len(body) - json_end} bytes after the JSON header")
        p.data = view[json_end:]
    elif json_end != len(body):
        raise bad_request(f"{len(body) - json_end} bytes after the JSON header but no input "
                          f"has binary_data_size")
    else:
        p.data = _json_tensor(t, t.datatype, batch * m.input.item_elements)
    params = req.parameters
    p.slo_ms = number_param(params, "slo_ms", 0, MAX_SLO_MS)
    timeout_us = number_param(params, "timeout", 0, 3.6e9)
    p.timeout_s = timeout_us / 1e6 if timeout_us else None
    binary = params.get("binary_data_output", False) is True if params else False
    if req.outputs:
        if len(req.outputs) != 1 or req.outputs[0].name != m.output.name:
            raise bad_request(f"model {m.name!r} has one output, {m.output.name!r}; asked for "
                              f"{[o.name for o in req.outputs]}")
        binary = req.outputs[0].parameters.get("binary_data", binary) is True
    p.binary = binary
    p.id = req.id
    return p


def response_head(status: int, content_type: bytes, length: int, keep_alive: bool = True,
                  extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status, REASONS.get(status, "Error").encode(), content_type, length, extra,
        b"" if keep_alive else b"Connection: close\r\n")


class Connection(asyncio.Protocol):
    """One client connection: httptools parses, the front end answers through respond().
    Requests are answered in order, one at a time (reading pauses while a pipelined one waits)."""

    def __init__(self, front: "HttpFrontend"):
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.busy = False               # a request is being answered
        self.keep_alive = True          # of the request being answered
        self.waiting: deque = deque()   # pipelined requests behind it
        self.discard = False            # dropping the rest of a refused body
        self.closing = False            # refused: dropping whatever comes until closed
        self._in_head = False           # between a request's first byte and its headers' end
        self._head_size = 0
        self._url = b""
        self._header_length = None
        self._length = None
        self._expect = False
        self._chunks: list[bytes] = []
        self._size = 0

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        front = self.front
        if len(front.connections) >= front.max_connections:
            body = _encode({"error": f"front end at its limit of {front.max_connections} connections"})
            transport.write(response_head(503, JSON_TYPE, len(body), False) + body)
            transport.close()
            self.transport = None
            return
        front.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.front.connections.discard(self)
        self.transport = None
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            if self.transport is not None and not self.discard:
                self._refuse(400, f"malformed HTTP request: {e}")
        if self._in_head and not self.closing:   # a chunk that ended inside a request's head
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._refuse(431, f"request line and headers longer than {MAX_HEAD} bytes")

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._url = b""
        self._header_length = None
        self._length = None
        self._expect = False
        self._chunks = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 31 and name.lower() == b"inference-header-content-length":
            self._header_length = value.decode("latin-1")
        elif n == 14 and name.lower() == b"content-length":
            self._length = int(value) if value.isdigit() else None   # httptools refuses bad ones
        elif n == 6 and name.lower() == b"expect":
            self._expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        length = self._length
        if length is not None and length > self.front.max_body:
            self._too_large()
        elif self._expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.discard:
            return
        self._size += len(body)
        if self._size > self.front.max_body:
            self._too_large()
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self.discard:
            if self.transport is not None:
                self.transport.close()
            return
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = (self.parser.get_method(), self._url, self._header_length, body,
                   self.parser.should_keep_alive())
        if self.busy:
            self.waiting.append(request)
            self.transport.pause_reading()
        else:
            self._dispatch(request)

    # ------------------------------------------------------------------ answering

    def _dispatch(self, request) -> None:
        self.busy = True
        self.keep_alive = request[4]
        self.front.handle(self, request[0], request[1], request[2], request[3])

    def respond(self, status: int, body: bytes = b"", content_type: bytes = JSON_TYPE,
                extra: bytes = b"") -> None:
        """Answer the current request (nothing if the client has gone), then the next one."""
        transport = self.transport
        self.busy = False
        if transport is None:
            return
        keep = self.keep_alive
        transport.write(response_head(status, content_type, len(body), keep, extra) + body)
        if not keep:
            transport.close()
            self.transport = None
        elif self.waiting:
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        if self.waiting and not self.busy and self.transport is not None:
            self._dispatch(self.waiting.popleft())
            if not self.waiting:
                self.transport.resume_reading()

    def error(self, e: FrontendError) -> None:
        self.respond(e.http, _encode(e.body()))

    def _refuse(self, status: int, message: str) -> None:
        """Answer and close: the connection cannot go on (malformed HTTP, head too long).
        With a request still being answered, only close: an answer now would be taken for its."""
        if self.transport is None:
            return
        self.waiting.clear()
        if self.busy:
            self.transport.close()
            self.transport = None
            return
        body = _encode({"error": message})
        self.transport.write(response_head(status, JSON_TYPE, len(body), False) + body)
        self.closing = True              # what else comes is dropped, then closed (no reset that
        asyncio.get_running_loop().call_later(LINGER_S, self._linger_over)   # loses the answer)

    def _too_large(self) -> None:
        """413 at once; the rest of the body is read and dropped (at most LINGER_S), then the
        connection is closed."""
        front = self.front
        front.metrics.failure("http", 413, None)
        self.discard = True
        self._chunks = []
        if self.transport is not None:
            body = _encode({"error": f"request body larger than the limit of {front.max_body} bytes"})
            self.transport.write(response_head(413, JSON_TYPE, len(body), False) + body)
            asyncio.get_running_loop().call_later(LINGER_S, self._linger_over)

    def _linger_over(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpFrontend:
    """The HTTP server; `start()` listens, `close()` stops."""

    def __init__(self, inference: Inference, metrics, *, ssl_context=None):
        self.inference = inference
        self.log = inference.link.log
        self.link = inference.link
        self.metrics = metrics
        self.ssl_context = ssl_context
        self.max_connections = inference.limits.max_connections
        self.max_body = inference.limits.max_body
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on host:port (0: a free port); returns the port. reuse_port: share the port
        with other front-end processes (SO_REUSEPORT)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: Connection(self), host, port, ssl=self.ssl_context, backlog=1024,
            reuse_address=True, reuse_port=reuse_port or None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ routing

    def handle(self, conn: Connection, method: bytes, url: bytes, header_length, body: bytes) -> None:
        """Route one request; every path answers through conn.respond() (now or later)."""
        path = url.split(b"?", 1)[0].decode("latin-1")
        if "%" in path:
            path = unquote(path)
        try:
            if path.startswith("/v2/models/"):
                self._model_route(conn, method, path, header_length, body)
                return
            handler = self.plain_routes.get(path)
            if handler is None:
                conn.respond(404, _encode({"error": f"no such endpoint: {path}"}))
            elif method != b"GET":
                conn.respond(405, _encode({"error": f"{method.decode()} not allowed on {path}"}))
            else:
                handler(self, conn)
        except Exception as e:           # a bug costs one request, one line, never the server
            self._internal(conn, path, e)

    def _model_route(self, conn, method: bytes, path: str, header_length, body: bytes) -> None:
        parts = path[len("/v2/models/"):].split("/")
        name, rest, version = parts[0], parts[1:], ""
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
            if not version:
                name = ""                # /versions//: no such endpoint
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        want = b"POST" if action == "infer" else b"GET"
        if not name or action not in MODEL_ACTIONS:
            conn.respond(404, _encode({"error": f"no such endpoint: {path}"}))
        elif method != want:
            conn.respond(405, _encode({"error": f"{method.decode()} not allowed on {path}"}))
        elif action == "infer":
            self.infer(conn, name, version, header_length, body)
        else:
            m = self.link.registry.get(name, version) if self.link.ready else None
            if m is not None:
                self._answer_model(conn, action, m)
            else:                        # not known (yet): look it up, refreshing the registry
                asyncio.ensure_future(self._model_slow(conn, action, name, version))

    async def _model_slow(self, conn, action: str, name: str, version: str) -> None:
        try:
            m = await self.inference.model(name, version)
            self._answer_model(conn, action, m)
        except FrontendError as e:
            conn.error(e)
        except Exception as e:           # a bug costs one request, one line, never the server
            self._internal(conn, f"/v2/models/{name}", e)

    def _answer_model(self, conn, action: str, m) -> None:
        if action == "":
            conn.respond(200, _encode(self.link.registry.metadata(m)))
        elif action == "ready":
            conn.respond(200)
        else:
            conn.respond(200, _encode(Registry.config(m)))

    def _internal(self, conn, path: str, e: Exception) -> None:
        self.metrics.failure("http", 500, None)
        self.log(f"frontend: internal error serving {path}: {e!r}")
        conn.respond(500, _encode({"error": f"internal error: {e!r}"}))

    # ------------------------------------------------------------------ health and metadata

    def live(self, conn) -> None:
        conn.respond(200)

    def ready(self, conn) -> None:
        if self.link.ready:
            conn.respond(200)
        else:
            conn.respond(503, _encode({"error": f"not ready: {self.link.why_not_ready}"}))

    def server_metadata(self, conn) -> None:
        conn.respond(200, _encode({"name": "clockwork", "version": __version__, "extensions": EXTENSIONS}))

    def prometheus(self, conn) -> None:
        conn.respond(200, self.metrics.exposition(), TEXT_TYPE)

    plain_routes = {"/v2/health/live": live, "/v2/health/ready": ready, "/v2": server_metadata,
                    "/metrics": prometheus}

    # ------------------------------------------------------------------ inference

    def infer(self, conn: Connection, name: str, version: str, header_length, body: bytes) -> None:
        """The hot path: decode, check, send; the answer is written by the link's callback.
        A model not in the registry, or a large JSON body, takes the slower path (a task)."""
        t0 = time.perf_counter()
        link = self.link
        m = link.registry.get(name, version) if link.ready else None
        if m is None or (header_length is None and len(body) > JSON_OFFLOAD):
            asyncio.ensure_future(self._infer_slow(conn, name, version, header_length, body, t0))
            return
        try:
            p = parse_infer(self.inference, m, body, header_length)
            self._send(conn, m, p, t0)
        except FrontendError as e:
            self.metrics.failure("http", e.http, e.status)
            conn.error(e)

    async def _infer_slow(self, conn, name, version, header_length, body, t0) -> None:
        try:
            m = await self.inference.model(name, version)
            if header_length is None and len(body) > JSON_OFFLOAD:
                p = await asyncio.get_running_loop().run_in_executor(
                    None, parse_infer, self.inference, m, body, header_length)
            else:
                p = parse_infer(self.inference, m, body, header_length)
            self._send(conn, m, p, t0)
        except FrontendError as e:
            self.metrics.failure("http", e.http, e.status)
            conn.error(e)
        except Exception as e:           # a bug costs one request, one line, never the server
            self._internal(conn, f"/v2/models/{name}/infer", e)

    def _send(self, conn: Connection, m, p: Parsed, t0: float) -> None:
        metrics = self.metrics

        def done(error, answer, out):
            if conn.transport is None:   # the client left: nobody to answer
                metrics.failure("http", 499, None)
                conn.busy = False
                return
            if error is not None:
                metrics.failure("http", error.http, error.status)
                conn.error(error)
                return
            try:
                self._answer(conn, m, p, answer, out)
            except Exception as e:       # as in handle()
                self._internal(conn, f"/v2/models/{m.name}/infer", e)
                return
            metrics.success("http", time.perf_counter() - t0)
        self.inference.submit(m, p.batch, p.data, p.slo_ms, p.timeout_s, done)

    def _answer(self, conn: Connection, m, p: Parsed, answer, out) -> None:
        o = m.output
        batch = p.batch
        tensor = {"name": o.name, "datatype": o.datatype, "shape": [batch, *o.shape]}
        head = {"model_name": m.name, "model_version": m.version, "outputs": [tensor],
                "parameters": {"clockwork_model_id": m.model_id, "clockwork_latency_ns": answer.latency_ns,
                               "clockwork_exec_ns": answer.exec_ns, "clockwork_coldstart": answer.is_coldstart,
                               "clockwork_within_slo": answer.within_slo}}
        if p.id:
            head["id"] = p.id
        if not p.binary:
            tensor["data"] = np.frombuffer(out, dtype=NUMPY_DTYPES[o.datatype]).tolist()
            conn.respond(200, _encode(head))
            return
        tensor["parameters"] = {"binary_data_size": len(out)}
        header = _encode(head)
        conn.respond(200, header + bytes(out), BINARY_TYPE, b"%s: %d\r\n" % (HEADER_LENGTH.encode(), len(header)))


MODEL_ACTIONS = ("", "ready", "config", "infer")
