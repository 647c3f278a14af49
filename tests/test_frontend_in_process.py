"""The front end on a thread of the controller's process (`--frontend-in-process`): what differs
from the separate process. tests/test_frontend.py runs the protocol tests against both.

Here the controller runs in this test process (a real Controller on a thread, an emulated
worker process), so its loop can be wedged and stopped on purpose."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from clockwork.client.api import Client
from clockwork.config import load_config
from clockwork.controller.server import Controller
from clockwork.frontend import in_process
from clockwork.frontend.command import in_process_settings
from clockwork.frontend.in_process import InProcessFrontend
from clockwork.local import LocalCluster
from clockwork.model.zoo import load_profile
from clockwork.transport.sockets import free_port

pytestmark = pytest.mark.timeout(180)

MLP_IN = tuple(load_profile("h200")["models"]["mlp"]["input"]["shape"])


@pytest.fixture
def worker():
    """An emulated worker process (LocalCluster without its controller)."""
    from clockwork.model.zoo import write_emulated_zoo
    c = LocalCluster(gpus=1)
    try:
        c.model_dir.mkdir(parents=True, exist_ok=True)
        write_emulated_zoo(c.model_dir, log=lambda *_: None)
        c.start_worker(0)
        yield c
    finally:
        c.stop()


class Running:
    """A Controller on a thread of this process with an in-process front end (HTTP only)."""

    def __init__(self, worker, monkeypatch, *fe_args: str):
        monkeypatch.setenv("CLOCKWORK_MODEL_DIR", str(worker.model_dir))
        config = load_config()
        config["controller"]["default_slo_ms"] = 10_000.0
        self.lines: list[str] = []
        self.controller = Controller(config, [f"127.0.0.1:{worker.worker_ports[0]}"], host="127.0.0.1",
                                     client_port=free_port(), out=self.lines.append, telemetry_port=0)
        self.address = f"127.0.0.1:{self.controller.client_port}"
        self.fe = InProcessFrontend(self.controller, in_process_settings(
            ["--model", "mlp", *fe_args], "127.0.0.1", 0, None), log=self.lines.append)
        self.http = f"127.0.0.1:{self.fe.start()['HTTP']}"
        self.thread = threading.Thread(target=self.controller.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.controller.stop()
        self.thread.join(30)
        self.fe.stop()


@pytest.fixture
def running(worker, monkeypatch):
    r = Running(worker, monkeypatch)
    try:
        yield r
    finally:
        r.stop()


def ready(address: str) -> tuple[int, bytes]:
    """(status, body) of GET /v2/health/ready."""
    return get(address, "/v2/health/ready")


def get(address: str, path: str) -> tuple[int, bytes]:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def wait_until(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def infer(address: str):
    c = th.InferenceServerClient(address, network_timeout=60)
    try:
        i = th.InferInput("input", [1, *MLP_IN], "FP32")
        i.set_data_from_numpy(np.zeros((1, *MLP_IN), np.float32))
        return c.infer("mlp", [i])
    finally:
        c.close()


def infer_error(address: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        infer(address)
    return e.value


def inflight(address: str) -> float:
    _, body = get(address, "/metrics")
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.decode().splitlines()
               if l.startswith("clockwork_frontend_inflight_requests"))


def test_readiness_follows_the_controller_loop_stalled_then_running_again(running):
    wait_until(lambda: ready(running.http)[0] == 200, "never ready")
    assert infer(running.http).as_numpy("output").shape[0] == 1
    gate = threading.Event()
    housekeeping = running.controller._housekeeping
    running.controller._housekeeping = lambda now: (gate.wait(), housekeeping(now))   # the loop wedges
    try:
        wait_until(lambda: ready(running.http)[0] == 503, "still ready with the controller's loop stalled")
        assert b"has not run for" in ready(running.http)[1]
        e = infer_error(running.http)
        assert e.status() == "503" and "not ready" in e.message()
    finally:
        running.controller._housekeeping = housekeeping
        gate.set()
    wait_until(lambda: ready(running.http)[0] == 200, "not ready again once the loop runs")
    assert infer(running.http).as_numpy("output").shape[0] == 1


def test_controller_loop_ending_fails_requests_in_flight_at_once(running, monkeypatch):
    """Its loop ended: the front end's request waiting for it is answered 503 now (not after
    the 30 s timeout), readiness goes false, and the front end still answers (503)."""
    wait_until(lambda: ready(running.http)[0] == 200, "never ready")
    monkeypatch.setattr(in_process, "LOOP_STALL_NS", 3600 * 10**9)   # the wedge below is no stall
    gate, wedged = threading.Event(), threading.Event()
    housekeeping = running.controller._housekeeping
    running.controller._housekeeping = lambda now: (wedged.set(), gate.wait(), housekeeping(now))
    answer: list = []
    caller = threading.Thread(target=lambda: answer.append(infer_error(running.http)), daemon=True)
    try:
        assert wedged.wait(60)
        caller.start()
        wait_until(lambda: inflight(running.http) == 1, "the request never reached the link")
        running.controller.stop()
    finally:
        gate.set()
    caller.join(60)
    assert not caller.is_alive()
    e = answer[0]
    assert e.status() == "503" and "loop ended" in e.message(), e.message()
    status, body = ready(running.http)
    assert status == 503 and b"loop ended" in body
    assert infer_error(running.http).status() == "503"


def test_frontend_thread_failure_leaves_the_controller_serving(running, monkeypatch):
    """A bug that ends the front end's thread (here: closing its HTTP server raises) is logged;
    the controller goes on serving its own clients."""
    wait_until(lambda: ready(running.http)[0] == 200, "never ready")
    from clockwork.frontend.http_server import HttpFrontend

    async def broken_close(self):
        raise RuntimeError("planted")
    monkeypatch.setattr(HttpFrontend, "close", broken_close)
    running.fe.stop()
    assert not running.fe.running
    assert "planted" in (running.fe.error or "")
    assert any("frontend: stopped by an internal error" in line for line in running.lines), running.lines
    client = Client(running.address, log=lambda *_: None)
    try:
        (m,) = [m for m in client.ls() if m.source.rstrip("/").endswith("/mlp")]
        assert client.infer(m.model_id, inputs=bytes(4 * int(np.prod(MLP_IN)))).response.status == 0
    finally:
        client.close()
    assert running.thread.is_alive()


def test_port_in_use_is_a_one_line_error_before_the_controller_runs(worker, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("CLOCKWORK_MODEL_DIR", str(worker.model_dir))
        c = Controller(load_config(), [f"127.0.0.1:{worker.worker_ports[0]}"], host="127.0.0.1",
                       client_port=free_port(), out=lambda *_: None, telemetry_port=0)
        try:
            fe = InProcessFrontend(c, in_process_settings([], "127.0.0.1", port, None), log=lambda *_: None)
            with pytest.raises(ValueError) as e:
                fe.start()
            assert "\n" not in str(e.value) and str(port) in str(e.value)
            assert not fe.running
        finally:
            c.close()


def test_cw_controller_in_process_serves_names_its_thread_and_stops_cleanly():
    """`cw controller --http 0 --frontend-in-process`: native and HTTP clients served by one
    process, whose front-end thread is named; SIGTERM ends it (status 0) with the port closed."""
    with LocalCluster(gpus=1, controller_args=LocalCluster.in_process_frontend_args(
            0, -1, ("--model", "mlp"))) as c:
        from frontend_procs import PORTS
        wait_until(lambda: any(PORTS.search(l) for l in c.output.get("controller", [])), "no port said")
        port = int(next(PORTS.search(l) for l in c.output["controller"] if PORTS.search(l)).group(2))
        address = f"127.0.0.1:{port}"
        wait_until(lambda: ready(address)[0] == 200, "never ready: " + "".join(c.output["controller"]))
        assert infer(address).as_numpy("output").shape[0] == 1
        client = Client(c.address, log=lambda *_: None)
        try:
            (m,) = [m for m in client.ls() if m.source.rstrip("/").endswith("/mlp")]
            assert client.infer(m.model_id, inputs=bytes(4 * int(np.prod(MLP_IN)))).response.status == 0
        finally:
            client.close()
        pid = c.controller.pid
        names = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                names.append((task / "comm").read_text().strip())
            except OSError:
                pass
        assert "cw-frontend" in names
        c.controller.terminate()
        assert c.controller.wait(30) == 0, "".join(c.output["controller"])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
