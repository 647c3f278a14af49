"""Messages tell the truth (issue 9, item 11): commands named in messages and docs exist, the
worker names the config file it read, log lines carry timestamps, the controller says where it
listens, a plain client meeting a CURVE controller is told about keys."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clockwork.cli import SUBCOMMANDS, main
from clockwork.client.api import Client, ControllerUnreachable
from clockwork.transport.security import keys_command
from clockwork.transport.sockets import free_port

ROOT = Path(__file__).resolve().parents[1]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "


def _named_commands():
    """Every `cw WORD [WORD]` in the package's strings and the docs."""
    files = [*ROOT.glob("clockwork/**/*.py"), ROOT / "README.md", *ROOT.glob("docs/*.md")]
    for f in files:
        for m in re.finditer(r"(?<![\w/.-])cw ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", f.read_text()):
            yield f.relative_to(ROOT), m.group(1), m.group(2)


def test_every_command_named_anywhere_exists():
    ctx = click.Context(main)
    wrong = []
    for where, name, sub in _named_commands():
        if name not in SUBCOMMANDS:
            wrong.append(f"{where}: cw {name}")
            continue
        cmd = main.get_command(ctx, name)
        if isinstance(cmd, click.Group) and sub and cmd.get_command(ctx, sub) is None:
            wrong.append(f"{where}: cw {name} {sub}")
    assert not wrong, wrong


@pytest.mark.timeout(60)
def test_worker_names_the_config_file_it_read_and_stamps_its_lines(tmp_path):
    conf = tmp_path / "w.toml"
    conf.write_text("[worker]\nprint_interval_s = 5\n")
    p = subprocess.Popen([sys.executable, "-m", "clockwork.cli", "worker", "--emulate", "1", "--host", "127.0.0.1",
                          "--port", str(free_port()), "--model-dir", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**__import__("os").environ, "CLOCKWORK_CONFIG_FILE": str(conf)})
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "listening" in line:
                break
    finally:
        p.terminate()
        p.wait(10)
    said = [x for x in lines if "Loading Clockwork worker config from" in x]
    assert said and str(conf) in said[0]
    assert lines and all(re.match(STAMP, x) for x in lines), lines


@pytest.mark.timeout(60)
def test_controller_says_where_it_listens_with_timestamps(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[controller]\nworker_connect_timeout_s = 0.5\n")
    port, tel = free_port(), free_port()
    r = subprocess.run([sys.executable, "-m", "clockwork.cli", "controller", "--host", "127.0.0.1", "--port", str(port),
                        "--telemetry-port", str(tel), "--no-logs", "--config", str(conf), f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=50)
    lines = r.stdout.splitlines()
    assert lines and all(re.match(STAMP, x) for x in lines), lines
    assert f"Listening: clients on 127.0.0.1:{port}, telemetry on 127.0.0.1:{tel}, metrics off" in r.stdout


@pytest.mark.timeout(120)
def test_plain_client_against_a_curve_controller_is_told_about_keys(tmp_path, monkeypatch):
    from clockwork.local import LocalCluster
    keys = tmp_path / "keys"
    assert CliRunner().invoke(keys_command, ["--dir", str(keys)]).exit_code == 0
    conf = tmp_path / "secure.toml"
    conf.write_text(f'[security]\nenabled = true\nkey_dir = "{keys}"\n')
    monkeypatch.delenv("CLOCKWORK_CONFIG_FILE", raising=False)
    with LocalCluster(gpus=1, config_file=conf) as c:
        client = Client(c.address, connect_timeout_s=60, log=lambda *_: None)
        try:
            with pytest.raises(ControllerUnreachable, match="requires CURVE security.*cw keys"):
                client.connect()
        finally:
            client.close()


def test_library_warnings_are_one_line_of_ours(tmp_path):
    code = ("import numpy as np, sys\n"
            "from clockwork.cli import main\n"
            f"sys.argv = ['cw', 'trace', 'info', {str(tmp_path / 'none')!r}]\n"
            "try:\n    main(prog_name='cw')\nexcept SystemExit:\n    pass\n"
            "np.mean(np.array([]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and "warning: Mean of empty slice" in lines[1:]
    assert all(x.startswith("warning: ") for x in lines[1:]), lines
