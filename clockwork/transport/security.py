"""CURVE encryption and authentication of the TCP links (CurveZMQ, with zmq.auth for ZAP).

Off by default; `[security] enabled = true` switches it on for every process reading that
config. Key files (made by `cw keys`), all in `key_dir`:

    controller.key  controller.key_secret   the controller: CURVE server to clients,
                                             CURVE client of the workers
    worker.key      worker.key_secret       workers: CURVE servers
    client.key      client.key_secret       clients ([security] client_key names another pair)
    clients/*.key                           public keys the controller accepts on its client port
    controllers/*.key                       public keys workers accept

A peer whose public key is not in the accepting side's directory fails the handshake (ZAP
denies it), and a peer without CURVE fails it too: neither gets a single message through.
Servers read their accepted keys when they start. Secret files are written mode 0600; copy
only the pairs a host needs (a worker host needs worker.key_secret and controllers/).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

# ZAP domains: which accepted-keys directory a listening socket checks peers against
ACCEPTS = {"controller": "clients", "worker": "controllers"}


class SecurityError(ValueError):
    """Security is on but its key files are missing or unreadable."""


def _key_dir(cfg: dict) -> Path:
    return Path(os.path.expanduser(str(cfg.get("key_dir", "keys")))).resolve()


class Security:
    """The key material of one process and the ZAP authenticator of its listening sockets."""

    def __init__(self, key_dir: Path, client_key: str = "client"):
        self.key_dir = key_dir
        self.client_key = client_key
        self._auth: dict[zmq.Context, ThreadAuthenticator] = {}
        if not key_dir.is_dir():
            from ..config import why_not_a_directory
            raise SecurityError(f"[security] is enabled but key directory {key_dir} "
                                f"{why_not_a_directory(key_dir)} (create it with `cw keys --dir {key_dir}`)")

    def _pair(self, name: str) -> tuple[bytes, bytes]:
        path = self.key_dir / f"{name}.key_secret"
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise SecurityError(f"cannot read key pair {path}: {e} (made by `cw keys`)") from None
        if secret is None:
            raise SecurityError(f"{path} holds no secret key")
        return public, secret

    def _public(self, name: str) -> bytes:
        path = self.key_dir / f"{name}.key"
        try:
            return zmq.auth.load_certificate(path)[0]
        except (OSError, ValueError) as e:
            raise SecurityError(f"cannot read public key {path}: {e} (made by `cw keys`)") from None

    def server(self, sock: zmq.Socket, role: str) -> None:
        """Make a listening socket a CURVE server with `role`'s keys, accepting only the peers
        whose public keys are in key_dir/ACCEPTS[role]. Call before bind()."""
        accepted = self.key_dir / ACCEPTS[role]
        if not accepted.is_dir():
            raise SecurityError(f"no accepted-keys directory {accepted} (made by `cw keys`)")
        public, secret = self._pair(role)
        ctx = sock.context
        auth = self._auth.get(ctx)
        if auth is None:
            auth = self._auth[ctx] = ThreadAuthenticator(ctx)
            auth.start()
        auth.configure_curve(domain=role, location=str(accepted))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        sock.zap_domain = role.encode()

    def client(self, sock: zmq.Socket, me: str, server: str) -> None:
        """Make a connecting socket a CURVE client with `me`'s key pair that only talks to a
        server holding `server`'s key. Call before connect()."""
        public, secret = self._pair(me)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = self._public(server)

    def close(self) -> None:
        for auth in self._auth.values():
            auth.stop()
        self._auth.clear()


def load(config: dict) -> Security | None:
    """The Security of a full config dict, or None when [security] is off or absent."""
    cfg = config.get("security") or {}
    if not cfg.get("enabled", False):
        return None
    return Security(_key_dir(cfg), str(cfg.get("client_key", "client")))


def _write_pair(key_dir: Path, name: str, force: bool) -> Path:
    secret = key_dir / f"{name}.key_secret"
    if secret.exists() and not force:
        raise click.ClickException(f"{secret} exists (use --force to replace it)")
    public_file, secret_file = zmq.auth.create_certificates(str(key_dir), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file)


def _accept(public: Path, key_dir: Path, role: str) -> None:
    d = key_dir / ACCEPTS[role]
    d.mkdir(exist_ok=True)
    shutil.copyfile(public, d / public.name)


@click.command("keys", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dir", "key_dir", default=None, metavar="DIR",
              help="Key directory [default: [security] key_dir of the config, ./keys].")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="Only make (another) client key pair NAME and let the controller accept it.")
@click.option("--force", is_flag=True, help="Replace existing key pairs.")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="Config file overlaid on clockwork/conf/default.toml [default: $CLOCKWORK_CONFIG_FILE].")
def keys_command(key_dir, clients, force, config_file):
    """Generate CURVE key pairs for [security] (encrypted, authenticated links).

    With no --client: key pairs for the controller, workers and one client ("client"), and
    the accepted-keys directories (clients/ for the controller, controllers/ for workers).
    Then set `[security] enabled = true` (and key_dir) in the config every process reads.
    """
    from ..config import ConfigError, load_config
    if key_dir is None:
        try:
            key_dir = _key_dir(load_config(config_file).get("security", {}))
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
    d = Path(key_dir).resolve()
    try:
        d.mkdir(parents=True, exist_ok=True)
        if clients:
            for name in clients:
                _accept(_write_pair(d, name, force), d, "controller")
                click.echo(f"client key pair {d / name}.key[_secret], accepted by the controller")
            return
        _accept(_write_pair(d, "controller", force), d, "worker")
        _write_pair(d, "worker", force)
        _accept(_write_pair(d, "client", force), d, "controller")
    except OSError as e:
        raise click.ClickException(f"cannot write keys in {d}: {e}") from None
    click.echo(f"CURVE keys in {d}: controller, worker, client (+ clients/, controllers/)\n"
               f"Enable with a config file holding:\n[security]\nenabled = true\nkey_dir = \"{d}\"")
