"""`cw top` in a real terminal: tmux runs it, capture-pane reads the screen, send-keys types.

Needs tmux (Debian package `tmux`; .ci/run installs it). Each test uses its own tmux server
socket (-L) and kills only that server."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest
import zmq

from clockwork.status import Status
from clockwork.telemetry.publisher import TelemetryPublisher
from clockwork.transport.sockets import free_port
from telemetry_fakes import MS, FakeController

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("tmux") is None,
                                 reason="tmux is not installed (apt-get install tmux)")]

TOP = [sys.executable, "-m", "clockwork.telemetry.top"]


class Tmux:
    """One detached tmux session on a private server, running `command` in a 160x50 pane."""

    def __init__(self, command: list[str]):
        self.server = f"cwtest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        shell = " ".join(command) + "; echo TOP-EXITED=$?; sleep 600"
        self._tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "50", shell)

    def _tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], check=True, capture_output=True,
                              text=True, timeout=10, env=dict(os.environ, TERM="xterm-256color")).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "top", *keys)

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "") -> str:
        """Poll the screen until predicate(screen) holds; fail with the last screen if not."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"screen never showed {what}:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=10)


class FakeSystem:
    """A publisher over a fake controller, fed with traffic in a thread of this process."""

    def __init__(self, models: int = 12):
        self.ctl = FakeController(workers=1, gpus=2, models=models)
        self.ctx = zmq.Context()
        self.port = free_port()
        self.pub = TelemetryPublisher(self.ctl, self.ctx, "127.0.0.1", self.port, interval_ns=200 * MS)
        self.ctl.telemetry = self.pub
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        ctl, pub = self.ctl, self.pub
        ctl.load(0, 0, 0)
        while not self.stop.is_set():
            for mid in ctl.models:      # model i gets i+1 requests per step: distinct rates
                for _ in range(mid + 1):
                    ctl.answer(mid, Status.SUCCESS, (mid + 1) * MS)
            ctl.infer(0, 1, 1, 4, 3 * MS)
            ctl.advance(50 * MS)
            pub.maybe_publish(ctl.now)
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        self.pub.close()
        self.ctx.destroy(linger=0)


def _model_ids(screen: str) -> list[int]:
    """Model ids in table order: rows of the model table start with an id then a name."""
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*ID▼?\s+NAME", line))
    ids = []
    for line in lines[start + 1:]:
        m = re.match(r"\s*(\d+)\s+resnet\d+\s", line)
        if not m:
            break
        ids.append(int(m.group(1)))
    return ids


def test_top_keys_sort_filter_quit():
    with FakeSystem(models=12) as system:
        tmux = Tmux([*TOP, f"127.0.0.1:{system.port}"])
        try:
            screen = tmux.wait_for(lambda s: "W0-GPU1" in s and "resnet11" in s, what="GPUs and models")
            assert "W0-GPU0" in screen and "Fake GPU 0" in screen
            assert "models sorted by rate" in screen
            ids = _model_ids(screen)
            assert ids == sorted(ids, reverse=True) and len(ids) == len(system.ctl.models)  # busiest first
            tmux.keys("<")                      # rate -> name
            tmux.keys("<")                      # name -> id
            screen = tmux.wait_for(lambda s: "models sorted by id" in s, what="sort by id")
            assert _model_ids(screen) == sorted(system.ctl.models)
            tmux.keys("r")
            screen = tmux.wait_for(lambda s: "(reversed)" in s, what="reversed sort")
            assert _model_ids(screen) == sorted(system.ctl.models, reverse=True)
            tmux.keys("/", "1", "1", "Enter")
            screen = tmux.wait_for(lambda s: "filter: 11" in s and _model_ids(s) == [11], what="filter 11")
            tmux.keys("Escape")
            tmux.wait_for(lambda s: "filter:" not in s and len(_model_ids(s)) == 12, what="filter cleared")
            tmux.keys("q")
            tmux.wait_for(lambda s: "TOP-EXITED=0" in s, what="a clean exit after q")
        finally:
            tmux.close()


def test_top_says_when_no_controller_publishes():
    port = free_port()
    tmux = Tmux([*TOP, f"127.0.0.1:{port}"])
    try:
        screen = tmux.wait_for(lambda s: "No controller is publishing" in s, what="the no-controller message")
        assert f"127.0.0.1:{port}" in screen and "--telemetry-port" in screen
        tmux.keys("q")
        tmux.wait_for(lambda s: "TOP-EXITED=0" in s, what="a clean exit after q")
    finally:
        tmux.close()


def test_top_once_without_controller_is_a_clear_error():
    port = free_port()
    r = subprocess.run([*TOP, f"127.0.0.1:{port}", "--once", "--timeout", "0.5"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "no controller is publishing telemetry" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*TOP, "127.0.0.1:notaport", "--once"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not a number" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(180)
def test_top_shows_a_running_emulated_system():
    from clockwork.local import LocalCluster
    gpus = 2
    with LocalCluster(gpus=gpus) as cluster:
        client = threading.Thread(target=cluster.run_client, args=("simple", ["--duration", "60"]),
                                  kwargs={"timeout": 150}, daemon=True)
        client.start()
        tmux = Tmux([*TOP, f"127.0.0.1:{cluster.telemetry_port}"])
        try:
            def ready(s):
                return all(f"W0-GPU{i}" in s for i in range(gpus)) and len(_model_ids(s)) >= 2
            screen = tmux.wait_for(ready, timeout=90, what="the cluster's GPUs and models")
            # the client's `simple` workload loads 2 copies of resnet50: ids 0 and 1
            assert sorted(_model_ids(screen)) == [0, 1]
            assert "resnet50" in screen and "Emulated GPU" in screen and "infer4" in screen
            assert re.search(r"requests [1-9]\d*\.\d/s", screen), screen
            tmux.keys("q")
            tmux.wait_for(lambda s: "TOP-EXITED=0" in s, what="a clean exit after q")
        finally:
            tmux.close()
            cluster.stop()
        client.join(30)
