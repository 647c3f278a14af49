"""`cw frontend CONTROLLER --http 8000 --grpc 8001`: serve the Open Inference Protocol.

One process, one event loop (uvloop when installed): the HTTP server, the gRPC server and the
controller link share it, so a request never changes thread. Stateless: run as many as you
like against one controller. Stops on SIGINT / SIGTERM.
"""
from __future__ import annotations

import asyncio
import signal
import sys

import click

from ..config import ConfigError, load_config
from ..orphans import child_env, exit_with_parent, run_until_one_exits

INSTALL_HINT = "the front end needs its extra: pip install 'clockwork[frontend]'"


def parse_model(text: str) -> tuple[str, int]:
    """`resnet50` or `resnet50:4` -> (path, copies)."""
    path, _, copies = text.partition(":")
    try:
        n = int(copies) if copies else 1
    except ValueError:
        n = 0
    if not path or n < 1:
        raise click.BadParameter(f"{text!r}: expected MODEL or MODEL:COPIES (copies >= 1)")
    return path, n


async def serve(address: str, *, host: str, http_port: int | None, grpc_port: int | None,
                models: list[tuple[str, int]], timeout_s: float, refresh_s: float, limits,
                tls_cert: str | None, tls_key: str | None, reuse_port: bool = False, log=print,
                stop: asyncio.Event | None = None, ctx=None, controller_gone=None, listening=None) -> None:
    """Serve until SIGINT / SIGTERM, or until `stop` is set when one is given (the in-process
    front end: a thread receives no signals). `ctx`, `controller_gone`: the controller's ZeroMQ
    context and liveness check when it runs in this process (link.py); `listening(ports)` is
    called once the servers listen, with {"HTTP": port, "gRPC": port}."""
    from .grpc_server import GrpcFrontend
    from .http_server import HttpFrontend
    from .inference import Inference
    from .link import ControllerLink
    from .metrics import FrontendMetrics

    link = ControllerLink(address, timeout_s=timeout_s, refresh_s=refresh_s, load=models, log=log,
                          ctx=ctx, controller_gone=controller_gone)
    inference = Inference(link, limits)
    metrics = inference.metrics = FrontendMetrics(lambda: inference.inflight)
    link.on_ready_change = metrics.set_ready
    ssl_context = credentials = None
    if tls_cert:
        import ssl

        import grpc
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(tls_cert, tls_key)
        with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
    servers = []
    ports = {}
    await link.start()
    try:
        if http_port is not None:
            http = HttpFrontend(inference, metrics, ssl_context=ssl_context)
            servers.append(http)
            port = ports["HTTP"] = await http.start(host, http_port, reuse_port)
            log(f"frontend: HTTP on {host}:{port}{' (TLS)' if ssl_context else ''}")
        if grpc_port is not None:
            g = GrpcFrontend(inference, metrics, credentials=credentials)
            servers.append(g)
            port = ports["gRPC"] = await g.start(host, grpc_port, reuse_port)
            log(f"frontend: gRPC on {host}:{port}{' (TLS)' if credentials else ''}")
        log(f"frontend: controller {link.address}")
        if listening is not None:
            listening(ports)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for s in servers:
            await s.close()
        await link.close()


def child_argv(controller: str, host: str, http_port: int | None, grpc_port: int | None, args=()) -> list[str]:
    """The command line of a `cw frontend` child of `cw controller --http/--grpc` (None: off).
    controller: its address, or the shards' addresses comma-separated."""
    return [sys.executable, "-m", "clockwork.frontend.command", controller, "--host", host,
            "--http", str(-1 if http_port is None else http_port),
            "--grpc", str(-1 if grpc_port is None else grpc_port), *args]


def spawn(controller: str, host: str, http_port: int | None, grpc_port: int | None,
          config_file: str | None = None, args=()):
    """`cw frontend` as a child process (for `cw controller --http/--grpc`); its output goes
    where ours goes. Returns the Popen; the caller stops it."""
    import os
    import subprocess
    env = child_env(dict(os.environ))
    if config_file:                     # the same config: [security] keys for CURVE among others
        env["CLOCKWORK_CONFIG_FILE"] = config_file
    return subprocess.Popen(child_argv(controller, host, http_port, grpc_port, args),
                            env=env, stdin=subprocess.DEVNULL)


def log_line(text: str) -> None:
    """One write per line: the processes of --processes share one stdout without mixing lines."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def supervise(argv: list[str], processes: int) -> int:
    """Run `processes` front ends with these arguments, all listening on the same ports
    (SO_REUSEPORT: the kernel spreads connections over them), until SIGINT / SIGTERM or until
    one of them exits (then the others are stopped too). Returns the exit status."""
    one = [sys.executable, "-m", "clockwork.frontend.command", *argv, "--reuse-port"]
    exited = run_until_one_exits([list(one) for _ in range(processes)])
    if exited is None:
        return 0
    print(f"frontend: process {exited.pid} exited with status {exited.returncode}: stopping the others", flush=True)
    return exited.returncode or 1


def check_installed() -> None:
    try:
        import httptools  # noqa: F401
        import grpc  # noqa: F401
        import tritonclient.grpc.service_pb2  # noqa: F401
    except ImportError as e:
        raise click.ClickException(f"{INSTALL_HINT} ({e})")


def serve_settings(http_port, grpc_port, host, models, timeout_s, refresh_s, max_body_mb, max_batch,
                   max_inflight, max_connections, tls_cert, tls_key, processes=1, reuse_port=False) -> dict:
    """The command's options, checked, as serve()'s keyword arguments (click.BadParameter)."""
    from .inference import Limits
    check_installed()
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("--tls-cert and --tls-key go together")
    if http_port < 0 and grpc_port < 0:
        raise click.BadParameter("nothing to serve: both --http and --grpc are off")
    for name, v in (("--max-inflight", max_inflight), ("--max-connections", max_connections)):
        if v < 1:
            raise click.BadParameter(f"{name} must be >= 1")
    if timeout_s <= 0 or refresh_s <= 0 or max_body_mb <= 0 or max_batch < 0:
        raise click.BadParameter("--timeout, --refresh and --max-body-mb must be > 0, --max-batch >= 0")
    if processes < 1:
        raise click.BadParameter("--processes must be >= 1")
    limits = Limits(max_batch=max_batch, max_inflight=max_inflight, max_body=int(max_body_mb * 2**20),
                    max_connections=max_connections)
    return dict(host=host, http_port=None if http_port < 0 else http_port,
                grpc_port=None if grpc_port < 0 else grpc_port, models=[parse_model(m) for m in models],
                timeout_s=timeout_s, refresh_s=refresh_s, limits=limits, tls_cert=tls_cert, tls_key=tls_key,
                reuse_port=reuse_port)


def in_process_settings(args, host: str, http_port: int | None, grpc_port: int | None) -> dict:
    """serve()'s keyword arguments for a front end in the controller's process: `cw frontend`'s
    own options (`args`, as on its command line) with the controller's host and ports."""
    ctx = frontend_command.make_context("cw controller --frontend-arg", ["-", *args])
    p = ctx.params
    if p["processes"] != 1:
        raise click.BadParameter("--processes: an in-process front end is one thread of the controller")
    p.update(host=host, http_port=-1 if http_port is None else http_port,
             grpc_port=-1 if grpc_port is None else grpc_port)
    del p["address"]
    return serve_settings(**p)


@click.command("frontend", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("address", default="127.0.0.1")
@click.option("--http", "http_port", type=click.IntRange(-1, 65535), default=8000, show_default=True,
              help="HTTP/REST port (0: any free port, -1: no HTTP).")
@click.option("--grpc", "grpc_port", type=click.IntRange(-1, 65535), default=8001, show_default=True,
              help="gRPC port (0: any free port, -1: no gRPC).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--model", "-m", "models", multiple=True, metavar="MODEL[:COPIES]",
              help="Load this model at the controller unless it has it (also after a controller "
                   "restart). Repeatable.")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True, metavar="S",
              help="Longest wait for the controller's answer (requests may ask for less).")
@click.option("--refresh", "refresh_s", type=float, default=2.0, show_default=True, metavar="S",
              help="Seconds between model-list refreshes.")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True, help="Largest request body.")
@click.option("--max-batch", type=int, default=0, show_default=True,
              help="Largest batch per request (0: each model's largest batch size).")
@click.option("--max-inflight", type=int, default=10_000, show_default=True,
              help="Requests waiting for the controller at once; beyond: 503 / UNAVAILABLE.")
@click.option("--max-connections", type=int, default=1000, show_default=True,
              help="HTTP connections at once; beyond: answered 503 and closed.")
@click.option("--tls-cert", default=None, metavar="PEM", help="Serve HTTPS and gRPC over TLS with this certificate.")
@click.option("--tls-key", default=None, metavar="PEM", help="The certificate's private key.")
@click.option("--processes", type=int, default=1, show_default=True,
              help="Front-end processes sharing the ports (SO_REUSEPORT): one event loop each, "
                   "for more requests/s than one core serves. Needs fixed ports.")
@click.option("--reuse-port", is_flag=True, hidden=True)
def frontend_command(address, http_port, grpc_port, host, models, timeout_s, refresh_s, max_body_mb,
                     max_batch, max_inflight, max_connections, tls_cert, tls_key, processes, reuse_port):
    """Serve KServe v2 / Open Inference Protocol (HTTP and gRPC) in front of a controller.

    ADDRESS is the controller's HOST[:PORT] (port: [controller] client_port); for a sharded
    controller (`cw controller --shards K`), its shards' addresses comma-separated in shard
    order, as that command prints them. CURVE to the controller follows [security] in the
    config, as for `cw client`.
    """
    exit_with_parent()
    kw = serve_settings(http_port, grpc_port, host, models, timeout_s, refresh_s, max_body_mb, max_batch,
                        max_inflight, max_connections, tls_cert, tls_key, processes, reuse_port)
    if processes > 1:
        if http_port == 0 or grpc_port == 0:
            raise click.BadParameter("--processes > 1 needs fixed --http / --grpc ports (or -1: off)")
        argv = [address, "--http", str(http_port), "--grpc", str(grpc_port), "--host", host,
                "--timeout", str(timeout_s), "--refresh", str(refresh_s), "--max-body-mb", str(max_body_mb),
                "--max-batch", str(max_batch), "--max-inflight", str(max_inflight),
                "--max-connections", str(max_connections)]
        for m in models:
            argv += ["--model", m]
        if tls_cert:
            argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
        sys.exit(supervise(argv, processes))
    try:
        load_config()
    except ConfigError as e:
        raise click.ClickException(str(e))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(address, log=log_line, **kw))
    except (ValueError, OSError) as e:       # bad address, port in use, unreadable key files
        raise click.ClickException(str(e))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    frontend_command()
