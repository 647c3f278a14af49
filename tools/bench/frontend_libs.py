#!/usr/bin/env python3
"""Which server libraries the KServe v2 front end (clockwork/frontend) is built on: a measurement.

HTTP: the same minimal v2-style handler (POST, read the body, answer a small JSON with an
Inference-Header-Content-Length header) on aiohttp and on Starlette+uvicorn (httptools), both on
uvloop, each in its own process; a keep-alive raw-socket load generator (asyncio, pipelined by
connection, not by request) drives it at a fixed concurrency. What matters on a loaded machine
is the server's CPU time per request (from /proc/PID/stat), printed beside the throughput.
gRPC: grpc.aio serving ModelInfer (tritonclient's generated code) on the default asyncio loop
and on uvloop, and grpcio's synchronous server (a thread pool), driven by a grpc.aio client. JSON: decoding a 784-float v2 request body with
json, orjson and msgspec.

    python tools/bench/frontend_libs.py [--requests 20000] [--concurrency 16] [--only httptools,grpc-sync]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                               "data": [0.5] * 784}]}).encode()
ANSWER = b'{"model_name":"m","outputs":[{"name":"output","datatype":"FP32","shape":[1,10],"data":[0,0,0,0,0,0,0,0,0,0]}]}'


# ------------------------------------------------------------------ servers (run in a child process)

def serve_aiohttp(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def infer(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json",
                            headers={"Inference-Header-Content-Length": str(len(ANSWER))})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{name}/infer", infer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request):
        await request.body()
        return Response(ANSWER, media_type="application/json",
                        headers={"Inference-Header-Content-Length": str(len(ANSWER))})

    app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


def serve_httptools(port: int) -> None:
    """An asyncio Protocol with httptools on uvloop: what clockwork/frontend/http_server.py is."""
    import httptools
    import uvloop

    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(ANSWER), len(ANSWER)))

    class Conn(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.body = []

        def data_received(self, data):
            self.parser.feed_data(data)

        def on_body(self, body):
            self.body.append(body)

        def on_message_complete(self):
            self.body = []
            self.transport.write(head + ANSWER)

    async def main():
        server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", port)
        await server.serve_forever()
    uvloop.install()
    asyncio.run(main())


def serve_grpc_sync(port: int) -> None:
    """grpcio's synchronous server: handlers on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    out = b"\0" * 40

    class Servicer(pbg.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):
            r = pb.ModelInferResponse(model_name=request.model_name)
            o = r.outputs.add()
            o.name, o.datatype = "output", "FP32"
            o.shape.extend([1, 10])
            r.raw_output_contents.append(out)
            return r

    server = grpc.server(ThreadPoolExecutor(8))
    pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_grpc(port: int, loop: str) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    out = b"\0" * 40

    class Servicer(pbg.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            r = pb.ModelInferResponse(model_name=request.model_name)
            o = r.outputs.add()
            o.name, o.datatype = "output", "FP32"
            o.shape.extend([1, 10])
            r.raw_output_contents.append(out)
            return r

    async def main():
        server = grpc.aio.server()
        pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if loop == "uvloop":
        import uvloop
        uvloop.install()
    asyncio.run(main())


# ------------------------------------------------------------------ load generators

async def http_load(port: int, requests: int, concurrency: int) -> float:
    """Keep-alive HTTP/1.1 POSTs, one outstanding request per connection; returns seconds."""
    head = (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    left = [requests]

    async def conn():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(head)
            headers = await reader.readuntil(b"\r\n\r\n")
            n = int(headers.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(n)
        writer.close()

    t = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    return time.perf_counter() - t


async def grpc_load(port: int, requests: int, concurrency: int) -> float:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.GRPCInferenceServiceStub(ch)
        req = pb.ModelInferRequest(model_name="m")
        i = req.inputs.add()
        i.name, i.datatype = "input", "FP32"
        i.shape.extend([1, 784])
        req.raw_input_contents.append(b"\0" * 3136)
        left = [requests]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                await stub.ModelInfer(req)

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, requests: int, concurrency: int) -> None:
    from clockwork.transport.sockets import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
    try:
        deadline = time.time() + 30
        while True:                      # wait until it accepts connections
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{kind}: server did not start")
                time.sleep(0.1)
        load = grpc_load if kind.startswith("grpc") else http_load
        asyncio.run(load(port, 500, concurrency))            # warm-up
        c0 = cpu_s(proc.pid)
        secs = asyncio.run(load(port, requests, concurrency))
        cpu = cpu_s(proc.pid) - c0
        print(f"{kind:18s} c={concurrency:3d}  {requests / secs:8.0f} req/s  "
              f"server CPU {cpu / requests * 1e6:6.1f} us/request")
    finally:
        proc.terminate()
        proc.wait(10)


def json_decoders(n: int = 2000) -> None:
    import msgspec
    import numpy as np
    import orjson
    for name, loads in (("json", json.loads), ("orjson", orjson.loads), ("msgspec", msgspec.json.decode)):
        t = time.perf_counter()
        for _ in range(n):
            d = loads(BODY)
            np.asarray(d["inputs"][0]["data"], dtype=np.float32)
        print(f"JSON decode+np.asarray {name:8s} {(time.perf_counter() - t) / n * 1e6:6.1f} us per 784-float request")


KINDS = ("aiohttp", "starlette", "httptools", "grpc-asyncio", "grpc-uvloop", "grpc-sync")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve == "aiohttp":
        return serve_aiohttp(a.port)
    if a.serve == "starlette":
        return serve_starlette(a.port)
    if a.serve == "httptools":
        return serve_httptools(a.port)
    if a.serve == "grpc-sync":
        return serve_grpc_sync(a.port)
    if a.serve in ("grpc-asyncio", "grpc-uvloop"):
        return serve_grpc(a.port, a.serve.split("-")[1])
    kinds = a.only.split(",") if a.only else KINDS
    if not a.only:
        json_decoders()
    for kind in kinds:
        measure(kind, a.requests, a.concurrency)


if __name__ == "__main__":
    main()
