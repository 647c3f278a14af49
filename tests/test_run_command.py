"""`cw run` stops everything and fails with the error of a server process that could not start,
instead of leaving its client waiting (issue 9, item 5)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from clockwork.local import LocalCluster, ProcessFailed

pytestmark = pytest.mark.timeout(120)


def test_cw_run_with_unknown_scheduler_fails_with_the_controllers_error():
    r = subprocess.run([sys.executable, "-m", "clockwork.cli", "run", "-s", "bogus", "-d", "30"],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode != 0
    assert "controller exited with status 1" in r.stderr
    assert "unknown scheduler 'bogus'" in r.stderr


def test_cw_run_refuses_zero_gpus_at_once():
    r = subprocess.run([sys.executable, "-m", "clockwork.cli", "run", "-n", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--gpus" in r.stderr and "Traceback" not in r.stderr


def test_fail_fast_cluster_reports_a_worker_that_could_not_start():
    with LocalCluster(gpus=1, worker_args=("--weights-cache", "1"), fail_fast=True) as c:
        with pytest.raises(ProcessFailed, match=r"worker exited with status 1: .*holds no"):
            c.run_client("simple", ["--duration", "30"], timeout=100)
