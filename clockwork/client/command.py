"""`cw client HOST:PORT --workload NAME [workload args]`: run a named workload.

Workload arguments go positionally in the original's order (`cw client h:12346 --workload
slo-exp-1 resnet50 4 poisson 100 2 32 2 mul 7`) or by name (`--copies 4`); the original's
`client ADDR WORKLOAD args` form also works. Exit status: 0 when the run finished, 1 when the
controller could not be reached or refused the workload's models, 2 for bad arguments.
"""
from __future__ import annotations

import signal
import sys

import click

from ..config import ConfigError, flag_type, inputs_disabled, load_config
from ..values import NON_NEGATIVE, POSITIVE, Spec
from ..runfiles import open_new
from .api import ClientError
from .shards import make_client
from .stats import TSV_HEADER, Stats
from .workloads.engine import Engine, WorkloadError, zoo_models
from .workloads import all_workloads, get
from .workloads.registry import ParamError


def _epilog() -> str:
    blocks = ["\b\nWorkloads and their arguments (positional in this order, or --name value):"]
    for spec in all_workloads().values():
        blocks.append("\b\n" + spec.usage())
    blocks.append("\b\nEnvironment: CLOCKWORK_DISABLE_INPUTS=1 (as --no-inputs), AZURE_TRACE_DIR "
                  "(azure workloads),\nCLOCKWORK_MODEL_DIR (zoo model names for example/azure), "
                  "CLOCKWORK_CONFIG_FILE.")
    return "\n\n".join(blocks)


def _sigterm_interrupts():
    """SIGTERM (e.g. from `cw run` stopping everything) ends the run like Ctrl-C: the
    summary is still printed. Returns the previous handler (None if not the main thread)."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)      # a second one ends us at once
        raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:          # not the main thread
        return None


@click.command("client", epilog=_epilog(),
               context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"],
                                 "max_content_width": 110})
@click.argument("address")
@click.option("--workload", "-w", "workload_name", metavar="NAME", help="workload to run (listed below)")
@click.option("--duration", type=POSITIVE.click("S"), default=None, metavar="S",
              help="stop sending after S seconds (default: when the workload ends)")
@click.option("--no-inputs", is_flag=True, help="send no inputs; the controller generates them")
@click.option("--seed", type=Spec(int, 0).click(), default=0, show_default=True, help="seed of every arrival process")
@click.option("--print-interval", type=flag_type("client", "print_interval_s", "S"), default=None, metavar="S",
              help="seconds between stats lines (default: [client] print_interval_s)")
@click.option("--timeout", "timeout_s", type=POSITIVE.click("S"), default=30.0, show_default=True, metavar="S",
              help="per-request timeout: a request unanswered this long counts as no answer")
@click.option("--connect-timeout", type=flag_type("client", "connect_timeout_s", "S"), default=None, metavar="S",
              help="how long to wait for the controller (default: [client] connect_timeout_s)")
@click.option("--load-timeout", type=POSITIVE.click("S"), default=600.0, show_default=True, metavar="S",
              help="how long one LoadModel may take once the controller answered")
@click.option("--slo-ms", type=Spec(float, 0, 3_600_000).click("MS"), default=0.0, help="explicit SLO for every request (0: controller default "
              "or the workload's SLO factor)")
@click.option("--models", "zoo", default=None, metavar="A,B", help="zoo model names for workloads that use "
              "every model (default: $CLOCKWORK_MODEL_DIR here, else the emulated zoo)")
@click.option("--request-log", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write one TSV line per request to this file")
@click.option("--drain", type=NON_NEGATIVE.click("S"), default=5.0, show_default=True, metavar="S",
              help="after stopping, wait this long for outstanding answers")
@click.argument("workload_args", nargs=-1, type=click.UNPROCESSED)
def client_command(address, workload_name, duration, no_inputs, seed, print_interval, timeout_s,
                   connect_timeout, load_timeout, slo_ms, zoo, request_log, drain, workload_args):
    """Run a workload against the controller at ADDRESS (host:port, default port 12346; for a
    sharded controller, its shards' addresses comma-separated in shard order, as `cw controller
    --shards K` prints them)."""
    args = list(workload_args)
    if workload_name is None:
        if not args or args[0].startswith("-"):
            raise click.UsageError("no workload: give --workload NAME (see --help for the list)")
        workload_name = args.pop(0)          # the original's `client ADDR WORKLOAD args`
    try:
        spec = get(workload_name)
        params = spec.parse(args)
    except ParamError as e:
        raise click.UsageError(str(e)) from None
    try:
        cfg = load_config()
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    send_inputs = not (no_inputs or inputs_disabled())
    tsv = None
    try:
        client = make_client(address, timeout_s=timeout_s, connect_timeout_s=connect_timeout,
                        load_timeout_s=load_timeout, log=lambda m: click.echo(m))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"Running workload `{workload_name}` on {address}")
    if send_inputs:
        click.echo("Client is sending inputs with requests. Set CLOCKWORK_DISABLE_INPUTS=1 or --no-inputs to disable inputs.")
    else:
        click.echo("Client inputs are DISABLED: the controller generates them.")
    status = 0
    prev_sigterm = None
    try:
        if request_log:
            try:
                tsv, kept = open_new(request_log, buffering=1 << 20)
            except OSError as e:
                raise click.UsageError(f"cannot write request log {request_log}: {e.strerror or e}") from None
            if kept:
                click.echo(f"previous request log kept as {kept}")
            tsv.write(TSV_HEADER)
        stats = Stats(print_interval_s=print_interval or cfg["client"]["print_interval_s"],
                      log=lambda m: click.echo(m), tsv=tsv)
        engine = Engine(client, stats, send_inputs=send_inputs, seed=seed, duration_s=duration,
                        slo_ns=int(slo_ms * 1e6), log=lambda m: click.echo(m), tsv=tsv is not None,
                        zoo=zoo_models(zoo))
        click.echo(f"Connecting to clockwork @ {client.address}")
        prev_sigterm = _sigterm_interrupts()
        try:
            spec.fn(engine, **params)
            engine.run(drain_s=drain)
        except KeyboardInterrupt:
            engine.stop("interrupted")
            stats.stop()
            click.echo("Interrupted; waiting briefly for outstanding answers")
            left = client.drain(min(drain, 2.0))
            client.abandon()
            engine.outstanding_at_end = left
            status = 130
        click.echo(stats.summary(getattr(engine, "outstanding_at_end", 0)))
        if stats.sent and not stats.answered:
            click.echo(f"error: the controller at {client.address} answered none of {stats.sent} requests", err=True)
            status = status or 1
    except (ClientError, WorkloadError) as e:
        click.echo(f"error: {e}", err=True)
        status = 1
    finally:
        if prev_sigterm is not None:
            signal.signal(signal.SIGTERM, prev_sigterm)
        client.close()
        if tsv is not None:
            tsv.close()
    sys.exit(status)


if __name__ == "__main__":
    client_command(prog_name="cw client")
