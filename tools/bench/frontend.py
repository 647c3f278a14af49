#!/usr/bin/env python3
"""The KServe v2 front end under closed-loop load, beside clockwork's native client.

Starts an emulated worker, the INFER4 controller and `cw frontend` as processes on loopback,
loads one small model (default mlp: 784 floats in, 10 out), and for each concurrency drives
closed loops (each of `c` callers sends its next request when the last one is answered) for
--duration seconds through: the native ZeroMQ client (clockwork.client.api, one thread),
tritonclient.http.aio (binary tensor data) and tritonclient.grpc.aio (raw contents), all with
real input tensors. Prints throughput, p50 / p99 latency seen by the caller, and the front
end's CPU time per request (from /proc/PID/stat; the load generator runs in this process).

    python tools/bench/frontend.py [--concurrency 1,4,16,64] [--duration 3] [--model mlp] [--batch 1]

--batch N sends N inputs per request (one clockwork request of batch size N, as the front end
serves a protocol batch): compare `--concurrency 4` with `--concurrency 1 --batch 4` for the
same inputs in flight, split into requests by the caller or batched in one.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))   # the Frontend process helper

from benchutil import pct  # noqa: E402
from frontend_procs import Frontend  # noqa: E402

from clockwork.client.api import Client  # noqa: E402
from clockwork.local import LocalCluster  # noqa: E402
from clockwork.model.zoo import load_profile  # noqa: E402


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def native(address: str, model_id: int, x: np.ndarray, concurrency: int, duration: float) -> list[float]:
    client = Client(address, log=lambda *_: None)
    lat: list[float] = []
    buf = x.tobytes()
    end = time.perf_counter() + duration
    errors = [0]

    batch = x.shape[0]

    def done(resp, data, latency_s):
        if resp.status == 0:
            lat.append(latency_s)
        else:
            errors[0] += 1
        if time.perf_counter() < end:
            client.infer_async(model_id, done, buf, batch)
    try:
        for _ in range(concurrency):
            client.infer_async(model_id, done, buf, batch)
        while client.outstanding:
            client.poll(0.05)
    finally:
        client.close()
    if errors[0]:
        print(f"  native: {errors[0]} errors", file=sys.stderr)
    return lat


async def triton(kind: str, url: str, model: str, x: np.ndarray, concurrency: int, duration: float) -> list[float]:
    if kind == "http":
        import tritonclient.http.aio as tc
        client = tc.InferenceServerClient(url, conn_limit=concurrency)
    else:
        import tritonclient.grpc.aio as tc
        client = tc.InferenceServerClient(url)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    lat: list[float] = []
    end = time.perf_counter() + duration

    async def caller():
        while time.perf_counter() < end:
            t = time.perf_counter()
            await client.infer(model, [inp])
            lat.append(time.perf_counter() - t)
    try:
        await client.infer(model, [inp])       # connections up before the clock starts
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        await client.close()
    return lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--model", default="mlp")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="inputs per request")
    a = p.parse_args()
    shape = load_profile("h200")["models"][a.model]["input"]["shape"]
    x = np.random.default_rng(0).random((a.batch, *shape), dtype=np.float32)
    with LocalCluster(gpus=a.gpus) as c, Frontend(c.address, c.env(), "--model", a.model) as fe:
        fe.wait_ready()
        loader = Client(c.address, log=lambda *_: None)
        model_id = min(m.model_id for m in loader.ls() if m.source.rstrip("/").endswith("/" + a.model))
        loader.close()
        print(f"# {a.model}, batch {a.batch} per request, closed loop {a.duration:g} s per point, "
              f"emulated worker ({a.gpus} GPUs), {os.cpu_count()} CPUs")
        print(f"{'path':8s} {'conc':>5s} {'req/s':>8s} {'inputs/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
              f"{'frontend CPU us/req':>20s}")
        for conc in [int(v) for v in a.concurrency.split(",")]:
            for path in ("native", "http", "grpc"):
                c0 = cpu_s(fe.proc.pid)
                t0 = time.perf_counter()
                if path == "native":
                    lat = native(c.address, model_id, x, conc, a.duration)
                else:
                    lat = asyncio.run(triton(path, fe.http if path == "http" else fe.grpc, a.model, x,
                                             conc, a.duration))
                secs = time.perf_counter() - t0
                cpu = (cpu_s(fe.proc.pid) - c0) / max(1, len(lat)) * 1e6 if path != "native" else float("nan")
                print(f"{path:8s} {conc:5d} {len(lat) / secs:8.0f} {len(lat) * a.batch / secs:9.0f} "
                      f"{pct(lat, 50) * 1e3:8.3f} "
                      f"{pct(lat, 99) * 1e3:8.3f} {cpu:20.1f}", flush=True)


if __name__ == "__main__":
    main()
