"""Security with real processes: CURVE on the links, unauthenticated peers refused, `cw keys`,
model paths confined to the model directory, limits on what a client may ask for."""
from __future__ import annotations

import os
import shutil
import stat
import time

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner
from zmq.utils.monitor import recv_monitor_message

from clockwork.client.api import Client, RequestFailed
from clockwork.local import LocalCluster
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport import security, sockets
from clockwork.transport.security import keys_command

pytestmark = pytest.mark.timeout(120)
WAIT_S = 10.0
MAX_MODELS = 8
FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
          zmq.EVENT_HANDSHAKE_FAILED_AUTH}


def test_keys_command_writes_pairs_and_accepted_keys(tmp_path):
    d = tmp_path / "keys"
    r = CliRunner().invoke(keys_command, ["--dir", str(d)])
    assert r.exit_code == 0, r.output
    for name in ("controller", "worker", "client"):
        public, secret = zmq.auth.load_certificate(d / f"{name}.key_secret")
        assert len(public) == len(secret) == 40
        assert stat.S_IMODE(os.stat(d / f"{name}.key_secret").st_mode) == 0o600
    assert sorted(p.name for p in (d / "clients").iterdir()) == ["client.key"]
    assert sorted(p.name for p in (d / "controllers").iterdir()) == ["controller.key"]
    r = CliRunner().invoke(keys_command, ["--dir", str(d)])
    assert r.exit_code == 1 and "exists" in r.output and "--force" in r.output
    r = CliRunner().invoke(keys_command, ["--dir", str(d), "--client", "alice"])
    assert r.exit_code == 0 and (d / "clients" / "alice.key").exists()


def test_missing_keys_are_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(security.SecurityError, match="cw keys"):
        security.load({"security": {"enabled": True, "key_dir": str(tmp_path / "none")}})
    assert security.load({"security": {"enabled": False}}) is None
    conf = tmp_path / "c.toml"
    conf.write_text(f'[security]\nenabled = true\nkey_dir = "{tmp_path / "none"}"\n')
    from clockwork.worker.command import worker_command
    r = CliRunner().invoke(worker_command, ["--emulate", "1", "--config", str(conf), "--host", "127.0.0.1",
                                            "--port", str(sockets.free_port())])
    assert r.exit_code == 1 and "cw keys" in r.output and "Traceback" not in r.output
    monkeypatch.setenv("CLOCKWORK_CONFIG_FILE", str(conf))
    with pytest.raises(security.SecurityError, match="cw keys"):
        Client("127.0.0.1:1")


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """A cluster with [security] on; the test process's Client reads the same config."""
    tmp = tmp_path_factory.mktemp("sec")
    keys = tmp / "keys"
    assert CliRunner().invoke(keys_command, ["--dir", str(keys)]).exit_code == 0
    conf = tmp / "secure.toml"
    conf.write_text(f'[security]\nenabled = true\nkey_dir = "{keys}"\n'
                    f"[controller]\nmax_models = {MAX_MODELS}\n")
    old = os.environ.get("CLOCKWORK_CONFIG_FILE")
    os.environ["CLOCKWORK_CONFIG_FILE"] = str(conf)
    try:
        with LocalCluster(gpus=1, config_file=conf) as c:
            client = Client(c.address, log=lambda *_: None, timeout_s=WAIT_S, connect_timeout_s=30)
            try:
                mid, _, _ = client.load_model("mlp", copies=1)
                c.legit = (client, mid)
                c.keys = keys
                yield c
            finally:
                client.close()
    finally:
        if old is None:
            os.environ.pop("CLOCKWORK_CONFIG_FILE", None)
        else:
            os.environ["CLOCKWORK_CONFIG_FILE"] = old


def _served(c) -> None:
    client, mid = c.legit
    assert client.infer(mid).response.status == Status.SUCCESS
    assert c.controller.poll() is None and all(p.poll() is None for p in c.worker_procs)


def test_authorized_client_is_served_over_curve(secure):
    """The client <-> controller and controller <-> worker links both run CURVE here."""
    _served(secure)
    assert any("CURVE" in line for line in secure.output["worker"])


def _handshake_outcome(mon):
    """The first handshake event (succeeded or one of FAILED) on a monitor socket, or None
    if none comes within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if mon.poll(int(max(1, (deadline - time.monotonic()) * 1000))):
            ev = recv_monitor_message(mon)["event"]
            if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED or ev in FAILED:
                return ev
    return None


def _attempt(port: int, setup=None):
    """Connect a DEALER (optionally set up as a CURVE client) and send an Ls; returns the
    first handshake outcome and whether any reply came."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if setup is not None:
        setup(sock)
    mon = sock.get_monitor_socket()
    sock.connect(sockets.tcp("127.0.0.1", port))
    try:
        sockets.send(sock, s.LsRequest(1))
        outcome = _handshake_outcome(mon)
        replied = bool(sock.poll(200))
        return outcome, replied
    finally:
        sock.disable_monitor()
        mon.close(0)
        sock.close(0)
        ctx.term()


def _curve_client(keys, pair: str | None, server: str):
    def setup(sock):
        if pair is None:
            public, secret = zmq.curve_keypair()          # a key nobody accepted
        else:
            public, secret = zmq.auth.load_certificate(keys / f"{pair}.key_secret")
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = zmq.auth.load_certificate(keys / f"{server}.key")[0]
    return setup


@pytest.mark.parametrize("port,who", [("client", "plain"), ("client", "unknown key"), ("worker", "plain"),
                                      ("worker", "unknown key"), ("worker", "client key")])
def test_unauthenticated_peers_are_refused(secure, port, who):
    """A worker accepts controllers only: even a key the controller accepts is refused there."""
    p = secure.client_port if port == "client" else secure.worker_ports[0]
    server = "controller" if port == "client" else "worker"
    setup = None if who == "plain" else _curve_client(secure.keys, None if who == "unknown key" else "client", server)
    outcome, replied = _attempt(p, setup)
    assert outcome in FAILED, outcome
    if who != "plain":
        assert outcome == zmq.EVENT_HANDSHAKE_FAILED_AUTH      # ZAP said no to that key
    assert not replied
    _served(secure)


def test_authorized_key_handshake_succeeds(secure):
    """The same probe with the accepted client key gets through: the refusals above are real."""
    outcome, replied = _attempt(secure.client_port, _curve_client(secure.keys, "client", "controller"))
    assert outcome == zmq.EVENT_HANDSHAKE_SUCCEEDED and replied


@pytest.mark.parametrize("path", ["../zoo/mlp", "mlp/../../zoo/mlp", "/etc", "{zoo}/mlp", "escape", "escape/",
                                  "mlp\x00", "", "."])
def test_model_paths_confined_to_the_model_dir(secure, tmp_path, path):
    zoo = secure.model_dir
    outside = tmp_path / "outside"
    shutil.copytree(zoo / "mlp", outside)               # a valid model, outside the model dir
    link = zoo / "escape"
    if not link.is_symlink():
        link.symlink_to(outside)
    else:
        link.unlink()
        link.symlink_to(outside)
    client, _ = secure.legit
    before = len(client.ls())
    with pytest.raises(RequestFailed) as e:
        client.load_model(path.replace("{zoo}", str(zoo)), copies=1)
    assert e.value.status in (Status.INVALID_REQUEST, Status.LOAD_FAILED) and e.value.message
    assert len(client.ls()) == before
    _served(secure)


def test_limit_on_model_instances(secure):
    client, _ = secure.legit
    have = len(client.ls())
    with pytest.raises(RequestFailed) as e:
        client.load_model("mlp", copies=MAX_MODELS - have + 1)
    assert e.value.status == Status.INVALID_REQUEST and "limit" in e.value.message
    first, copies, _ = client.load_model("mlp", copies=MAX_MODELS - have)
    assert len(client.ls()) == MAX_MODELS
    assert client.infer(first + copies - 1).response.status == Status.SUCCESS


def test_telemetry_link_is_curve_too(secure):
    """cw top's sockets (client key) get snapshots; a plain subscriber fails the handshake."""
    from clockwork.telemetry import messages as tm
    from clockwork.telemetry.top import _sockets
    endpoint = sockets.tcp("127.0.0.1", secure.telemetry_port)
    ctx = zmq.Context()
    try:
        [(snaps, events)] = _sockets(ctx, [endpoint])    # reads CLOCKWORK_CONFIG_FILE: security on
        assert snaps.poll(int(WAIT_S * 1000)), "no snapshot over CURVE"
        assert isinstance(tm.decode(snaps.recv()), tm.Snapshot)
        plain = ctx.socket(zmq.SUB)
        plain.linger = 0
        plain.setsockopt(zmq.SUBSCRIBE, b"")
        mon = plain.get_monitor_socket()
        plain.connect(endpoint)
        outcome = _handshake_outcome(mon)
        assert outcome in FAILED
        assert not plain.poll(200)
        plain.disable_monitor()
        mon.close(0)
    finally:
        ctx.destroy(linger=0)
