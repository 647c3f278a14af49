"""`cw simulate`: run a workload against the real scheduler and worker runtime in simulated time."""
from __future__ import annotations

import sys

import click

from ..config import ConfigError


def _epilog() -> str:
    return ("A config file may hold a [simulate] table (see clockwork/sim/config.py for every key) "
            "and [controller]/[worker] overrides; flags win over it. Logs go to --log-dir in the "
            "controller's TSV format, so `cw plot` reads them. Options go before the workload; "
            "everything after its name is the workload's arguments, as for `cw client` "
            "(`cw client -h` lists them).")


@click.command("simulate", epilog=_epilog(), context_settings={
    "help_option_names": ["-h", "--help"], "allow_interspersed_args": False, "ignore_unknown_options": True})
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="TOML with [simulate] (and optional [controller], [worker]) tables.")
@click.option("--scheduler", "-s", default=None, help="infer4, fifo, clipper, direct or echo [infer4].")
@click.option("--workers", type=int, default=None, help="Worker processes [1].")
@click.option("--gpus", type=int, default=None, help="GPUs per worker [2].")
@click.option("--profile", default=None, help="Device profile of the emulated zoo [h200].")
@click.option("--model-dir", default=None, help="Model directory instead of the profile's zoo.")
@click.option("--models", default=None, metavar="A,B", help="Zoo models for workloads using every model.")
@click.option("--duration", "-d", type=float, default=None, help="Simulated seconds of sending [10].")
@click.option("--drain", type=float, default=None, help="Simulated seconds to wait for answers after [5].")
@click.option("--seed", type=int, default=None, help="Seed of everything random [0].")
@click.option("--slo-ms", type=float, default=None, help="SLO for every request (as cw client) [0: default].")
@click.option("--log-dir", default=None, help="Write request/action TSV logs here [none].")
@click.option("--latency-us", type=float, default=None, help="Minimum one-way network delay [100].")
@click.option("--jitter-us", type=float, default=None, help="Mean random part of the delay [50].")
@click.option("--distribution", default=None, help="Delay distribution: exp, uniform, const [exp].")
@click.option("--drop-rate", type=float, default=None, help="Chance a worker message is lost with its connection [0].")
@click.option("--skew-ms", type=float, default=None, help="Worker clock offsets drawn from +-this [0].")
@click.option("--drift-ppm", type=float, default=None, help="Worker clock drift drawn from +-this [0].")
@click.option("--exec-noise", type=float, default=None, help="Log-normal sigma of exec/load times [0].")
@click.option("--controller-us", type=float, default=None,
              help="Controller CPU per message handled, in us (0: free) [0].")
@click.option("--worker-us", type=float, default=None, help="Worker CPU per action read, in us (0: free) [0].")
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="KIND:WORKER@AT_S[+FOR_S][xFACTOR]: crash:0@5+2 (restarts after 2 s), stall:0@5+1, slow:0@0x3.")
@click.option("--progress/--no-progress", default=None, help="Progress line on stderr [on a terminal].")
@click.argument("workload", required=False)
@click.argument("workload_args", nargs=-1, type=click.UNPROCESSED)
def simulate_command(config_file, scheduler, workers, gpus, profile, model_dir, models, duration, drain,
                     seed, slo_ms, log_dir, latency_us, jitter_us, distribution, drop_rate, skew_ms,
                     drift_ppm, exec_noise, controller_us, worker_us, faults, progress, workload, workload_args):
    """Run WORKLOAD (any `cw client` workload; default simple) in simulated time on the real
    scheduler, controller edge and worker runtime (emulated GPUs), N workers x G GPUs."""
    from . import config as sim_config
    from .run import SimError, progress_to_stderr, simulate
    try:
        cfg = sim_config.load(config_file)
        flags = dict(scheduler=scheduler, workers=workers, gpus=gpus, profile=profile, model_dir=model_dir,
                     models=models, duration_s=duration, drain_s=drain, seed=seed, slo_ms=slo_ms,
                     log_dir=log_dir, latency_us=latency_us, jitter_us=jitter_us, distribution=distribution,
                     drop_rate=drop_rate, skew_ms=skew_ms, drift_ppm=drift_ppm, exec_sigma=exec_noise,
                     controller_us=controller_us, worker_us=worker_us)
        for k, v in flags.items():
            if v is not None:
                setattr(cfg, k, v)
        if workload is not None:
            cfg.workload = workload
            cfg.workload_args = list(workload_args)
        if faults:
            cfg.faults = [sim_config.parse_fault(f) for f in faults]
        sim_config.check(cfg)
        show = progress if progress is not None else sys.stderr.isatty()
        oc = simulate(cfg, out=lambda line: click.echo(line), progress=progress_to_stderr() if show else None)
    except (ConfigError, SimError) as e:
        raise click.ClickException(str(e)) from None
    if oc.unanswered or oc.duplicates:
        click.echo(f"error: {oc.unanswered} requests unanswered, {oc.duplicates} answered twice", err=True)
        sys.exit(1)


if __name__ == "__main__":
    simulate_command(prog_name="cw simulate")
