"""Bad input on the command line is one clear line and a non-zero exit, never a traceback
(issue 9, items 7, 9 and 11). Flags are checked by the same specs as the config keys."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clockwork.client.azure import trace_command
from clockwork.client.command import client_command
from clockwork.controller.command import controller_command
from clockwork.local import run_command
from clockwork.telemetry.plot import plot_command
from clockwork.transport.sockets import free_port
from clockwork.worker.command import worker_command

pytestmark = pytest.mark.timeout(120)


def _invoke(command, args, env=None):
    r = CliRunner().invoke(command, args, env=env)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


@pytest.mark.parametrize("args,words", [
    (["--port", "70000", "127.0.0.1:1"], "must be an integer 1..65535, got 70000"),
    (["--port", "-5", "127.0.0.1:1"], "must be an integer 1..65535"),
    (["--port", "abc", "127.0.0.1:1"], "must be an integer 1..65535, got 'abc'"),
    (["--metrics-port", "99999", "127.0.0.1:1"], "must be an integer 0..65535, got 99999"),
    (["--telemetry-port", "65536", "127.0.0.1:1"], "must be an integer 0..65535"),
    (["--slo-ms", "0", "127.0.0.1:1"], "must be a number > 0"),
    (["--max-batch", "0", "127.0.0.1:1"], "must be an integer >= 1"),
])
def test_controller_flags_out_of_range_are_refused(args, words):
    r = _invoke(controller_command, args)
    assert r.exit_code == 2 and words in r.output


@pytest.mark.parametrize("args,words", [
    (["--timeout", "0"], "'--timeout': must be a number > 0"),
    (["--timeout", "-1"], "'--timeout': must be a number > 0"),
    (["--slo-ms", "-5"], "'--slo-ms': must be a number 0..3600000"),
    (["--duration", "nan"], "'--duration': must be a number > 0 (finite)"),
    (["--connect-timeout", "0"], "'--connect-timeout': must be a number > 0"),
    (["--load-timeout", "-3"], "'--load-timeout': must be a number > 0"),
    (["--drain", "-1"], "'--drain': must be a number >= 0"),
    (["--print-interval", "0"], "'--print-interval': must be a number > 0"),
])
def test_client_flags_out_of_range_are_refused(args, words):
    r = _invoke(client_command, [f"127.0.0.1:{free_port()}", "-w", "simple", *args])
    assert r.exit_code == 2 and words in r.output


@pytest.mark.parametrize("workload,args,words", [
    ("poisson-open-loop", ["2", "-50"], "rate: must be a number > 0, got -50"),
    ("poisson-open-loop", ["2", "nan"], "rate: must be a number > 0 (finite), got nan"),
    ("poisson-open-loop", ["2", "inf"], "rate: must be a number > 0 (finite)"),
    ("spam", ["resnet50", "-1"], "copies: must be an integer > 0, got -1"),
])
def test_workload_arguments_are_checked_before_connecting(workload, args, words):
    # nothing listens on the port: an argument error must come first, at once
    r = _invoke(client_command, [f"127.0.0.1:{free_port()}", "-w", workload, "--connect-timeout", "60", *args])
    assert r.exit_code == 2 and words in r.output


def test_worker_port_zero_is_refused():
    r = _invoke(worker_command, ["--emulate", "1", "--port", "0"])
    assert r.exit_code == 2 and "must be an integer 1..65535, got 0" in r.output


def test_run_duration_must_be_finite():
    r = _invoke(run_command, ["-d", "inf"])
    assert r.exit_code == 2 and "must be a number > 0 (finite)" in r.output


def test_bad_config_value_is_one_line_for_every_command(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text('[worker]\nheartbeat_interval_ms = "fast"\n')
    env = {"CLOCKWORK_CONFIG_FILE": str(conf)}
    for command, args in ((worker_command, ["--emulate", "1"]), (controller_command, ["127.0.0.1:1"]),
                          (client_command, [f"127.0.0.1:{free_port()}", "-w", "simple"])):
        r = _invoke(command, args, env)
        assert r.exit_code != 0 and "heartbeat_interval_ms must be a number > 0, got 'fast'" in r.output


def test_config_file_that_is_a_directory(tmp_path):
    r = _invoke(controller_command, ["127.0.0.1:1"], {"CLOCKWORK_CONFIG_FILE": str(tmp_path)})
    assert r.exit_code == 1 and f"config file {tmp_path} is a directory" in r.output


def test_trace_info_on_a_binary_file(tmp_path):
    blob = tmp_path / "blob.csv"
    blob.write_bytes(bytes(range(256)) * 8)
    r = _invoke(trace_command, ["info", str(blob)])
    assert r.exit_code == 1 and "is not a text CSV file" in r.output




def test_plot_out_to_an_unwritable_place(tmp_path):
    pytest.importorskip("matplotlib")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "clockwork_request_log.tsv").write_text(
        "t\trequest_id\tresult\tuser_id\tmodel_id\tslo_factor\tlatency\tdeadline\tdeadline_met\n"
        "1000000000\t1\t0\t0\t0\t0\t5000000\t2000000000\t1\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _invoke(plot_command, [str(logs), "--out", str(blocker / "plots")])
    assert r.exit_code == 1 and f"cannot write plots to {blocker / 'plots'}" in r.output


def test_controller_client_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "clockwork.cli", "controller", "--host", "127.0.0.1",
                            "--port", str(port), "--telemetry-port", "0", "127.0.0.1:1"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"cannot listen for clients on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_trace_dir_that_is_a_file_is_not_called_missing(tmp_path, monkeypatch):
    from clockwork.client.azure import TraceError, trace_path
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("AZURE_TRACE_DIR", str(f))
    with pytest.raises(TraceError, match="is a file, not a directory"):
        trace_path(3)
    monkeypatch.setenv("AZURE_TRACE_DIR", str(tmp_path / "nothing"))
    with pytest.raises(TraceError, match="does not exist"):
        trace_path(3)
    monkeypatch.delenv("AZURE_TRACE_DIR")
    with pytest.raises(TraceError, match="`cw trace synth DIR`"):
        trace_path(3)


def test_log_dir_that_is_a_file_is_said_so(tmp_path):
    f = tmp_path / "logs"
    f.write_text("x")
    r = _invoke(controller_command, ["--log-dir", str(f), "127.0.0.1:1"])
    assert r.exit_code == 1 and f"log directory {f} is a file, not a directory" in r.output
