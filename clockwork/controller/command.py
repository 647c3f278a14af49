"""`cw controller --scheduler infer4 HOST:PORT...`"""
from __future__ import annotations

import sys

import click

from ..config import ConfigError, flag_type, load_config, log_dir
from ..console import timestamped
from ..limits import MAX_SHARDS
from ..orphans import exit_with_parent


@click.command("controller")
@click.argument("workers", nargs=-1, required=True)
@click.option("--scheduler", "-s", default=None,
              help="infer4 (Clockwork's), fifo (reactive baseline), direct, echo. Default from config.")
@click.option("--bind", "--host", "host", default=None, metavar="ADDR",
              help="Interface for the client, telemetry and metrics ports [default: controller.bind in "
                   "the config, 127.0.0.1: this host only]. 0.0.0.0 for clients on other hosts.")
@click.option("--port", type=flag_type("controller", "client_port", "PORT"), default=None,
              help="Client port (default from config: 12346); with --shards K, the first of K.")
@click.option("--shards", type=flag_type("controller", "shards", "K"), default=None,
              help="Run K scheduler processes, each with its own share of the WORKERS and its own "
                   "ports (client ports PORT..PORT+K-1); clients name all K addresses. Default from "
                   "config: 1 (docs/design.md, \"Sharded controller\").")
@click.option("--shard-index", type=click.IntRange(0, MAX_SHARDS - 1), default=None, hidden=True,
              help="(set by --shards for each shard process) this shard's index: its model id block")
@click.option("--telemetry-port", type=flag_type("controller", "telemetry_port", "PORT"), default=None, help="Telemetry PUB port (0: off).")
@click.option("--metrics-port", type=flag_type("controller", "metrics_port", "PORT"), default=None,
              help="Prometheus /metrics HTTP port (0: off; default from config); with --shards K, "
                   "the first of K (one per shard).")
@click.option("--log-dir", default=None, help="TSV log directory (default $CLOCKWORK_LOG_DIR or ./logs).")
@click.option("--no-logs", is_flag=True, help="Write no request/action logs.")
@click.option("--config", "config_file", default=None, help="TOML config (default $CLOCKWORK_CONFIG_FILE).")
@click.option("--slo-ms", type=flag_type("controller", "default_slo_ms", "MS"), default=None, help="Default SLO for requests that set none.")
@click.option("--max-batch", type=flag_type("controller", "max_batch_size", "N"), default=None, help="Largest batch to schedule.")
@click.option("--generate-inputs", is_flag=True, default=None,
              help="Inputs are generated, not sent by clients (as CLOCKWORK_DISABLE_INPUTS=1).")
@click.option("--http", "http_port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Also serve KServe v2 HTTP on PORT: a `cw frontend` child (docs/frontend.md).")
@click.option("--grpc", "grpc_port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Also serve KServe v2 gRPC on PORT (a `cw frontend` child).")
@click.option("--frontend-in-process", "in_process", is_flag=True,
              help="Serve --http/--grpc on a thread of this process (linked over inproc://: one hop "
                   "less per request) instead of a `cw frontend` child.")
@click.option("--frontend-arg", "frontend_args", multiple=True, metavar="ARG",
              help="An argument for the front end (`cw frontend -h`), e.g. --frontend-arg=--model=mlp. "
                   "Repeatable.")
def controller_command(workers, scheduler, host, port, shards, shard_index, telemetry_port, metrics_port,
                       log_dir, no_logs, config_file, slo_ms, max_batch, generate_inputs, http_port, grpc_port,
                       in_process, frontend_args):
    """Schedule client requests onto the WORKERS (HOST:PORT each, or comma-separated)."""
    exit_with_parent()
    from .server import WorkersUnreachable, serve
    try:
        config = load_config(config_file)
    except ConfigError as e:
        raise click.ClickException(str(e))
    cc = config["controller"]
    if slo_ms is not None:
        cc["default_slo_ms"] = slo_ms
    if max_batch is not None:
        cc["max_batch_size"] = max_batch
    if generate_inputs:
        cc["generate_inputs"] = True
    if metrics_port is not None:
        cc["metrics_port"] = metrics_port
    addresses = [a for w in workers for a in w.split(",") if a]
    frontend = in_process_frontend = None
    serving = http_port is not None or grpc_port is not None
    if (in_process or frontend_args) and not serving:
        raise click.BadParameter("--frontend-in-process and --frontend-arg need --http or --grpc")
    shards = cc.get("shards", 1) if shards is None else shards
    if shards > 1:
        if in_process:
            raise click.UsageError("--frontend-in-process: a sharded controller has no controller loop of its "
                                   "own to host it; without it the front end is a `cw frontend` child")
        if shards > len(addresses):
            raise click.UsageError(f"--shards {shards} needs at least {shards} workers (got {len(addresses)}): "
                                   "each shard schedules workers of its own")
        sys.exit(run_shards(shards, addresses, scheduler, host, port, telemetry_port, log_dir, no_logs,
                            config_file, cc, generate_inputs, http_port, grpc_port, frontend_args))
    out = timestamped()
    if shard_index is not None:
        base, prefix = out, f"[shard {shard_index}]"
        out = lambda *args, **kw: base(prefix, *args, **kw)      # noqa: E731
    try:
        logs = None if no_logs else log_dir_or_fail(log_dir)
        bind = host or cc.get("bind", "127.0.0.1")
        if serving and in_process:
            from ..frontend.command import in_process_settings
            in_process_frontend = in_process_settings(frontend_args, bind, http_port, grpc_port)
        elif serving:
            from ..frontend.command import spawn
            reach = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
            frontend = spawn(f"{reach}:{port or cc['client_port']}", bind, http_port, grpc_port, config_file,
                             frontend_args)
        serve(config, addresses, scheduler=scheduler, host=host, client_port=port, log_dir=logs,
              telemetry_port=telemetry_port, out=out, frontend=in_process_frontend, shard=shard_index or 0)
    except (ValueError, KeyError, WorkersUnreachable) as e:
        raise click.ClickException(str(e))
    except OSError as e:      # e.g. the log files cannot be written
        raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    finally:
        if frontend is not None:
            frontend.terminate()
            frontend.wait(10)


def run_shards(shards, addresses, scheduler, host, port, telemetry_port, log_dir, no_logs, config_file, cc,
               generate_inputs, http_port=None, grpc_port=None, frontend_args=()) -> int:
    """`cw controller --shards K`: start K shard processes (controller/shards.py) and, with
    --http/--grpc, one `cw frontend` child serving all K; supervise them together."""
    from .shards import port_blocks, shard_argv, split_workers, supervise
    bind = host or cc.get("bind", "127.0.0.1")
    try:
        clients, telemetry, metrics = port_blocks(
            shards, port or cc["client_port"], cc.get("telemetry_port", 0) if telemetry_port is None else telemetry_port,
            cc.get("metrics_port", 0))
    except ValueError as e:
        raise click.UsageError(str(e))
    logs = None if no_logs else str(log_dir_or_fail(log_dir))
    common = ["--bind", bind, "--slo-ms", repr(cc["default_slo_ms"]), "--max-batch", str(cc["max_batch_size"])]
    if scheduler:
        common += ["--scheduler", scheduler]
    if config_file:
        common += ["--config", config_file]
    if generate_inputs:
        common.append("--generate-inputs")
    groups = split_workers(addresses, shards)
    out = timestamped()
    reach = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    out(f"Sharded controller: {shards} shards over {len(addresses)} workers; clients on "
        + ",".join(f"{reach}:{p}" for p in clients) + " (`cw client` takes this list)")
    for k, group in enumerate(groups):
        out(f"shard {k}: workers {','.join(group)}; clients on {bind}:{clients[k]}, telemetry "
            + (f"on {bind}:{telemetry[k]}" if telemetry[k] else "off")
            + (f", metrics on http://{reach}:{metrics[k]}/metrics" if metrics[k] else ""))
    frontend = None
    if http_port is not None or grpc_port is not None:
        from ..frontend.command import child_argv
        frontend = child_argv(",".join(f"{reach}:{p}" for p in clients), bind, http_port, grpc_port,
                              frontend_args)
    return supervise([shard_argv(k, group, clients[k], telemetry[k], metrics[k], logs, common)
                      for k, group in enumerate(groups)], out, config_file, frontend)


def log_dir_or_fail(explicit):
    try:
        return log_dir(explicit)
    except NotADirectoryError as e:
        raise click.ClickException(str(e))
    except OSError as e:
        raise click.ClickException(f"cannot create log directory: {e}")


if __name__ == "__main__":
    controller_command(sys.argv[1:])
