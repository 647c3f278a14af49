"""A peer of the wrong kind, or one that never answers, is named at once or after a bounded,
configurable wait, never an endless one (issue 9, item 6)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from clockwork.transport.sockets import free_port

pytestmark = pytest.mark.timeout(120)
CW = [sys.executable, "-m", "clockwork.cli"]


def test_client_pointed_at_a_worker_port_fails_at_once(tmp_path):
    port = free_port()
    worker = subprocess.Popen([*CW, "worker", "--emulate", "1", "--host", "127.0.0.1", "--port", str(port),
                               "--model-dir", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in worker.stdout:                      # wait until it listens
            if "listening" in line:
                break
        r = subprocess.run([*CW, "client", f"127.0.0.1:{port}", "-w", "simple", "--load-timeout", "600",
                            "--connect-timeout", "60"], capture_output=True, text=True, timeout=100)
    finally:
        worker.terminate()
        worker.wait(10)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"127.0.0.1:{port} is not a clockwork controller: it answers like a clockwork worker" in r.stderr


def test_controller_names_the_silent_worker_and_gives_up(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[controller]\nworker_connect_timeout_s = 6\n")
    silent = f"127.0.0.1:{free_port()}"                  # nothing listens there
    r = subprocess.run([*CW, "controller", "--host", "127.0.0.1", "--port", str(free_port()),
                        "--telemetry-port", "0", "--no-logs", "--config", str(conf), silent],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 1
    assert f"(Startup-2) waiting for worker 0 ({silent}): no answer for 5 s; giving up after 6 s" in r.stdout
    assert f"no answer from worker 0 ({silent}) within 6 s" in r.stderr and "Traceback" not in r.stderr
