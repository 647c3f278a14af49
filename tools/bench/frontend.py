#!/usr/bin/env python3
"""The KServe v2 front end under closed-loop load, beside clockwork's native client.

Starts an emulated worker, the INFER4 controller and ONE `cw frontend` process on loopback,
loads one small model (default mlp: 784 floats in, 10 out), and for each concurrency drives
closed loops (each of `c` callers sends its next request when the last one is answered) for
--duration seconds through each path:

    native   clockwork's ZeroMQ client (clockwork.client.api) straight to the controller
    http     tritonclient.http.aio (binary tensor data, as tritonclient sends by default)
    grpc     tritonclient.grpc.aio (raw_input_contents)
    grpc-stream  the same over ModelStreamInfer: one stream per caller, one request at a time
    raw      the same HTTP request bytes as tritonclient's, sent by a minimal keep-alive
             client (uvloop streams): the front end's own cost without tritonclient's

The callers run in --clients load-generator processes (spawned; the concurrency is split
among them), so that the load generator, which is Python too, is not what limits the
throughput. Per point: requests/s, p50 / p99 latency as the caller sees it, and the front
end's CPU time per request and its CPU use in % of one core (/proc/PID/stat, over the
measured window), plus the controller's CPU per request. --repeat N runs every point N times
(the paths interleaved) and prints the median with the range [min-max].

    python tools/bench/frontend.py [--concurrency 1,4,16,64,256] [--duration 3] [--repeat 3]
        [--paths native,http,grpc,raw] [--clients 4] [--setup 2] [--model mlp] [--batch 1] [--json out.json]

--batch N sends N inputs per request (one clockwork request of batch size N, as the front end
serves a protocol batch): compare `--concurrency 4` with `--concurrency 1 --batch 4` for the
same inputs in flight, split into requests by the caller or batched in one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.percentiles import percentile  # noqa: E402

PORTS = re.compile(r"frontend: (HTTP|gRPC) on [\d.]+:(\d+)")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ load generators (child processes)

def _native(address: str, model_id: int, x: np.ndarray, conc: int, start: float, end: float):
    from clockwork.client.api import Client
    client = Client(address, log=lambda *_: None)
    lat: list[float] = []
    errors = [0]
    buf = x.tobytes()
    batch = x.shape[0]
    now = time.time

    def done(resp, data, latency_s):
        if resp.status != 0:
            errors[0] += 1
        elif now() - latency_s >= start:
            lat.append(latency_s)
        if now() < end:
            client.infer_async(model_id, done, buf, batch)
    try:
        client.infer(model_id, buf, batch)               # connected and warm
        while now() < start:
            time.sleep(min(0.01, max(0.0, start - now())))
        for _ in range(conc):
            client.infer_async(model_id, done, buf, batch)
        while client.outstanding:
            client.poll(0.05)
    finally:
        client.close()
    return lat, errors[0]


def _raw_request(model: str, x: np.ndarray) -> bytes:
    """The bytes tritonclient.http sends for one infer with binary input and output."""
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + x.nbytes}\r\n\r\n").encode() + header + x.tobytes()


async def _triton(path: str, url: str, model: str, x: np.ndarray, conc: int, start: float, end: float):
    now = time.time
    lat: list[float] = []
    errors = [0]
    first: list[str] = []
    if path == "raw":
        host, port = url.split(":")
        request = _raw_request(model, x)

        async def connect():
            return await asyncio.open_connection(host, int(port))

        async def call(conn):
            reader, writer = conn
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(n)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        conns = [await connect() for _ in range(conc)]
        close = None
    else:
        if path == "http":
            import tritonclient.http.aio as tc  # noqa: F811
            client = tc.InferenceServerClient(url, conn_limit=max(conc, 1))
        else:
            import tritonclient.grpc.aio as tc
            client = tc.InferenceServerClient(url)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)

        if path == "grpc-stream":
            async def connect():
                queue: asyncio.Queue = asyncio.Queue()

                async def requests():
                    while True:
                        yield await queue.get()
                return queue, client.stream_infer(requests()).__aiter__()

            async def call(conn):
                queue, answers = conn
                queue.put_nowait({"model_name": model, "inputs": [inp]})
                result, error = await answers.__anext__()
                if error is not None:
                    raise error
            conns = [await connect() for _ in range(conc)]
        else:
            async def call(conn):
                await client.infer(model, [inp])
            conns = [None] * conc
        close = client.close

    async def caller(conn):
        try:
            await call(conn)                             # connection up before the window
        except Exception as e:
            errors[0] += 1
            first[:] = first or [f"{type(e).__name__}: {e}"]
        await asyncio.sleep(max(0.0, start - now()))
        while now() < end:
            t = time.perf_counter()
            try:
                await call(conn)
            except Exception as e:
                errors[0] += 1
                first[:] = first or [f"{type(e).__name__}: {e}"]
                continue
            lat.append(time.perf_counter() - t)
    try:
        await asyncio.gather(*(caller(c) for c in conns))
    finally:
        if close is not None:
            await close()
        if path == "raw":
            for c in conns:
                c[1].close()
    if first:
        print(f"load generator ({path}): {errors[0]} errors, the first: {first[0]}", file=sys.stderr)
    return lat, errors[0]


def drive(job):
    """One load generator's share of a point: (latencies, errors); never raises (an exception
    of a client library may not survive pickling back to the parent)."""
    path, target, model, model_id, x, conc, start, end = job
    try:
        if path == "native":
            return _native(target, model_id, x, conc, start, end)
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        return asyncio.run(_triton(path, target, model, x, conc, start, end))
    except Exception as e:
        print(f"load generator ({path}, {conc} callers): {type(e).__name__}: {e}", file=sys.stderr)
        return [], conc


def _warm_imports(_):
    import tritonclient.grpc.aio  # noqa: F401
    import tritonclient.http.aio  # noqa: F401
    return os.getpid()


# ------------------------------------------------------------------ the measurement

def split(conc: int, clients: int) -> list[int]:
    n = min(conc, clients)
    return [conc // n + (1 if i < conc % n else 0) for i in range(n)]


def point(pool, path: str, target: str, model: str, model_id: int, x, conc: int, clients: int,
          duration: float, setup: float, pids: dict) -> dict:
    start = time.time() + setup
    end = start + duration
    jobs = [(path, target, model, model_id, x, c, start, end) for c in split(conc, clients)]
    pending = pool.map_async(drive, jobs)
    time.sleep(max(0.0, start - time.time()))
    c0 = {k: cpu_s(pid) for k, pid in pids.items()}
    time.sleep(max(0.0, end - time.time()))
    c1 = {k: cpu_s(pid) for k, pid in pids.items()}
    results = pending.get(timeout=duration + 120)
    lat = [v for r, _ in results for v in r]
    errors = sum(e for _, e in results)
    n = max(1, len(lat))
    out = {"path": path, "conc": conc, "rps": len(lat) / duration,
           "inputs_per_s": len(lat) * x.shape[0] / duration,
           "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3, "errors": errors,
           "ctl_cpu_us": (c1["controller"] - c0["controller"]) / n * 1e6}
    if path != "native":
        out["fe_cpu_us"] = (c1["frontend"] - c0["frontend"]) / n * 1e6
        out["fe_cpu_pct"] = (c1["frontend"] - c0["frontend"]) / duration * 100
    return out


def summary(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    if not vals:
        return "-"
    fmt = "{:.0f}" if max(abs(v) for v in vals) >= 100 else "{:.3g}"
    med = fmt.format(statistics.median(vals))
    return med if len(vals) == 1 else f"{med} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"


def main() -> None:
    from clockwork.local import LocalCluster
    from clockwork.model.zoo import load_profile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--setup", type=float, default=2.0,
                   help="seconds for the load generators to connect and warm up before each window")
    p.add_argument("--paths", default="native,http,grpc,raw")
    p.add_argument("--clients", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                   help="load-generator processes (default: half the CPUs, at most 8)")
    p.add_argument("--model", default="mlp")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="inputs per request")
    p.add_argument("--json", default=None, help="also write every run's figures to this file")
    p.add_argument("--frontend-arg", action="append", default=[], help="extra `cw frontend` argument")
    a = p.parse_args()
    paths = a.paths.split(",")
    shape = load_profile("h200")["models"][a.model]["input"]["shape"]
    x = np.random.default_rng(0).random((a.batch, *shape), dtype=np.float32)
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(a.clients)
    try:
        with LocalCluster(gpus=a.gpus) as c:
            measure(a, c, pool, paths, x)
    finally:
        pool.close()
        pool.join()


def measure(a, c, pool, paths: list[str], x: np.ndarray) -> None:
    """Start the front end beside the cluster, then every point; prints a table as it goes."""
    from clockwork.client.api import Client
    pool.map(_warm_imports, range(a.clients))
    fe = c.start_frontend(0, 0, ("--model", a.model, *a.frontend_arg))
    ports = {}
    deadline = time.monotonic() + 120
    while len(ports) < 2 or not _ready(ports.get("HTTP")):
        for line in c.output.get("frontend", []):
            m = PORTS.search(line)
            if m:
                ports[m.group(1)] = int(m.group(2))
        if fe.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("frontend did not start: " + "".join(c.output.get("frontend", [])))
        time.sleep(0.1)
    loader = Client(c.address, log=lambda *_: None)
    model_id = min(m.model_id for m in loader.ls() if m.source.rstrip("/").endswith("/" + a.model))
    loader.close()
    targets = {"native": c.address, "http": f"127.0.0.1:{ports['HTTP']}", "raw": f"127.0.0.1:{ports['HTTP']}",
               "grpc": f"127.0.0.1:{ports['gRPC']}", "grpc-stream": f"127.0.0.1:{ports['gRPC']}"}
    pids = {"frontend": fe.pid, "controller": c.controller.pid}
    print(f"# {a.model}, batch {a.batch} per request, closed loop {a.duration:g} s per point x {a.repeat}, "
          f"{a.clients} load-generator processes, one front-end process, emulated worker "
          f"({a.gpus} GPUs), {os.cpu_count()} CPUs; median [min-max] of the runs")
    cols = ("path", "conc", "req/s", "p50 ms", "p99 ms", "fe CPU us/req", "fe CPU %", "ctl CPU us/req")
    print(" | ".join(cols))
    rows = []
    for conc in [int(v) for v in a.concurrency.split(",")]:
        runs = {path: [] for path in paths}
        for _ in range(a.repeat):
            for path in paths:
                r = point(pool, path, targets[path], a.model, model_id, x, conc, a.clients,
                          a.duration, a.setup, pids)
                runs[path].append(r)
                rows.append(r)
        for path in paths:
            rs = runs[path]
            errs = sum(r["errors"] for r in rs)
            print(" | ".join([path, str(conc), summary(rs, "rps"), summary(rs, "p50_ms"),
                              summary(rs, "p99_ms"), summary(rs, "fe_cpu_us"), summary(rs, "fe_cpu_pct"),
                              summary(rs, "ctl_cpu_us")]) + (f" | {errs} errors" if errs else ""),
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "cpus": os.cpu_count(), "runs": rows}, indent=1))


def _ready(port) -> bool:
    """GET /v2/health/ready answers 200."""
    if port is None:
        return False
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


if __name__ == "__main__":
    main()
