"""A `cw run` killed outright (SIGKILL: it cannot stop its children) leaves no server process
behind: each one sees its parent gone and stops itself (clockwork/orphans.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from clockwork.transport.sockets import free_port
from proc_tree import children, still_running

pytestmark = pytest.mark.timeout(180)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_servers_end_when_cw_run_is_killed():
    # no stats lines for an hour: a child writing to its dead parent's pipe would die of that
    # (BrokenPipeError), which would hide a missing watch; the front end is started too
    run = subprocess.Popen([sys.executable, "-m", "clockwork.cli", "run", "--gpus", "1", "--duration", "600",
                            "--print-interval", "3600", "--http", str(free_port()), "--workload", "simple",
                            "--", "--model", "mlp"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = []
        for line in run.stdout:                      # bounded by the test's timeout
            seen.append(line)
            if "Starting workload" in line:
                break
        assert run.poll() is None, "".join(seen)
        servers = children(run.pid)
        names = {open(f"/proc/{p}/cmdline").read().replace("\0", " ") for p in servers}
        for server in ("clockwork.worker.command", "clockwork.controller.command", "clockwork.frontend.command"):
            assert any(server in n for n in names), (server, names)
        run.kill()
        run.wait()
        left = [open(f"/proc/{p}/cmdline").read().replace("\0", " ") for p in still_running(servers, 60)]
        assert not left, f"still running after their parent was killed: {left}"
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)       # whatever is left of the session
        except ProcessLookupError:
            pass
        run.wait()
