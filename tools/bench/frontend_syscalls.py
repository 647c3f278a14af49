#!/usr/bin/env python3
"""System calls the front end makes per HTTP inference at concurrency 1 (`strace -c -f`).

Starts an emulated worker, the controller and `cw frontend --model mlp`, warms up, attaches
`strace -c -f` to the front-end process (all its threads: the event loop, ZeroMQ's I/O
thread, grpc's) while one keep-alive connection sends --requests mlp requests one after
another (tritonclient's bytes, binary tensor data), and prints strace's table with the
calls per request. Needs strace (and ptrace permission). Under strace everything is slower:
count calls with it, time without it (tools/bench/frontend.py).

    python tools/bench/frontend_syscalls.py [--requests 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frontend as bench  # noqa: E402

from clockwork.local import LocalCluster  # noqa: E402


async def sequential(port: int, request: bytes, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)))
    writer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    a = p.parse_args()
    x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
    request = bench._raw_request("mlp", x)
    with LocalCluster(gpus=2) as c, tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        fe = c.start_frontend(0, 0, ("--model", "mlp"))
        ports: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while len(ports) < 2 or not bench._ready(ports.get("HTTP")):
            for line in c.output.get("frontend", []):
                m = bench.PORTS.search(line)
                if m:
                    ports[m.group(1)] = int(m.group(2))
            if fe.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("frontend did not start: " + "".join(c.output.get("frontend", [])))
            time.sleep(0.1)
        asyncio.run(sequential(ports["HTTP"], request, 200))           # warm
        strace = subprocess.Popen(["strace", "-c", "-f", "-o", out.name, "-p", str(fe.pid)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)                                                 # attached to every thread
        asyncio.run(sequential(ports["HTTP"], request, a.requests))
        strace.terminate()
        strace.wait()
        table = out.read()
    print(table)
    total = int(next(line for line in table.splitlines() if line.strip().endswith("total")).split()[3])
    print(f"{total / a.requests:.1f} system calls per request (the front end's threads, "
          f"including the second it was idle before the requests began)")


if __name__ == "__main__":
    main()
