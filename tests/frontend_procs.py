"""A `cw frontend` process for tests: started on free ports (it picks them: --http 0 --grpc 0,
and says which), stopped whatever happens."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import tritonclient.grpc as tg
import tritonclient.http as th

PORTS = re.compile(r"frontend: (HTTP|gRPC) on [\d.]+:(\d+)")


class Frontend:
    def __init__(self, address: str, env: dict, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clockwork.frontend.command", address, "--host", "127.0.0.1",
             "--http", "0", "--grpc", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        with self._seen:
            if not self._seen.wait_for(lambda: len(self.ports) == 2 or self.proc.poll() is not None, 60):
                self.stop()
                raise RuntimeError("frontend did not say its ports: " + "".join(self.lines))
        if len(self.ports) != 2:
            raise RuntimeError("frontend exited: " + "".join(self.lines))
        self.http = f"127.0.0.1:{self.ports['HTTP']}"
        self.grpc = f"127.0.0.1:{self.ports['gRPC']}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                m = PORTS.search(line)
                if m:
                    self.ports[m.group(1)] = int(m.group(2))
                self._seen.notify_all()

    mode = "process"

    def wait_ready(self, ready: bool = True, timeout: float = 60.0, grpc: bool = False) -> None:
        """Poll /v2/health/ready (or gRPC ServerReady) until it says `ready` (bounded)."""
        client = tg.InferenceServerClient(self.grpc) if grpc else th.InferenceServerClient(self.http)
        try:
            deadline = time.monotonic() + timeout
            while client.is_server_ready() != ready:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"frontend ready != {ready} after {timeout} s: " + "".join(self.lines))
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class InControllerFrontend(Frontend):
    """The front end on a thread of `cluster`'s controller (`cw controller --frontend-in-process`,
    started with the cluster): its ports from the controller's output."""
    mode = "in-process"

    def __init__(self, cluster, timeout: float = 60.0):
        self.proc = cluster.controller
        self._cluster = cluster
        self.ports: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while len(self.ports) < 2:
            for line in self.lines:
                m = PORTS.search(line)
                if m:
                    self.ports[m.group(1)] = int(m.group(2))
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the in-process front end did not say its ports: " + "".join(self.lines))
            time.sleep(0.05)
        self.http = f"127.0.0.1:{self.ports['HTTP']}"
        self.grpc = f"127.0.0.1:{self.ports['gRPC']}"

    @property
    def lines(self) -> list[str]:
        return self._cluster.output.get("controller", [])

    def stop(self) -> None:
        pass                                  # stopped with the controller
