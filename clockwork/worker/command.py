"""`cw worker`: start a worker process (also `python -m clockwork.worker.command`)."""
from __future__ import annotations

import gc
import sys
import time

import click

from .. import config
from ..console import timestamped
from ..orphans import exit_with_parent
from ..model.backend import BackendUnavailable, backend_class


def _parse_bytes(text: str) -> int:
    """'23085449216', '21.5GiB', '512MiB', '1GB' -> bytes."""
    units = {"kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "b": 1}
    t = text.strip().lower()
    for suffix, mult in units.items():
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


class _Bytes(click.ParamType):
    name = "BYTES"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            n = _parse_bytes(value)
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 23085449216, 21.5GiB, 512MiB)", param, ctx)
        if n <= 0:
            self.fail("must be positive", param, ctx)
        return n


@click.command("worker", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--emulate", "-n", type=click.IntRange(1, 4096), default=None, metavar="N",
              help="Emulate N GPUs (the original's worker_dummy): actions take their profiled "
                   "time from each model's measurements.json.")
@click.option("--backend", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="Device backend when not emulating.")
@click.option("--bind", "--host", "host", default=None, metavar="ADDR",
              help="Interface to listen on [default: worker.bind in the config, 127.0.0.1: this host "
                   "only]. 0.0.0.0 for a controller on another host (see docs/reliability.md).")
@click.option("--port", "-p", type=config.flag_type("worker", "port", "PORT"), default=None,
              help="Port the controller connects to [default: worker.port in the config, 12345].")
@click.option("--model-dir", default=None, metavar="DIR",
              help="Model directory [default: $CLOCKWORK_MODEL_DIR, else ./zoo]. LoadModelFromDisk "
                   "paths are confined to it.")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="Config file overlaid on clockwork/conf/default.toml [default: $CLOCKWORK_CONFIG_FILE].")
@click.option("--weights-cache", type=_Bytes(), default=None,
              help="Weights cache bytes per GPU, e.g. 21.5GiB [default: worker.weights_cache_size].")
def worker_command(emulate, backend, host, port, model_dir, config_file, weights_cache):
    """Run a Clockwork worker: it starts empty and executes the actions a controller sends."""
    exit_with_parent()
    log = timestamped()
    from ..transport import security as security_mod
    try:
        full = config.load_config(config_file)
        cfg = full["worker"]
        security = security_mod.load(full)
    except (config.ConfigError, security_mod.SecurityError) as e:
        raise click.ClickException(str(e)) from None
    page_size = int(cfg["page_size"])
    cache = weights_cache or int(cfg["weights_cache_size"])
    total_pages = cache // page_size
    if total_pages < 1:
        raise click.ClickException(f"weights cache of {cache} bytes holds no {page_size}-byte page")
    port = port or int(cfg["port"])
    host = host or str(cfg["bind"])
    mdir = config.model_dir(model_dir)
    pools = dict(page_size=page_size, total_pages=total_pages, io_pool_size=int(cfg["io_pool_size"]),
                 workspace_pool_size=int(cfg["workspace_pool_size"]))
    log("Starting Clockwork Worker")
    log(f"Loading Clockwork worker config from {config.config_source(config_file)}")
    try:
        if emulate:
            dev = backend_class("emulated")(emulate, **pools)
        elif backend == "cuda":          # config keys, overridden by $CLOCKWORK_CUDA_GRAPHS/_GATE
            from ..model.cuda import env_flag
            dev = backend_class(backend)(**pools,
                                         graphs=env_flag("CLOCKWORK_CUDA_GRAPHS", cfg["cuda_graphs"]),
                                         gate=env_flag("CLOCKWORK_CUDA_GATE", cfg["cuda_gate"]))
        else:
            dev = backend_class(backend)(**pools)
    except (BackendUnavailable, RuntimeError, OSError) as e:   # no GPU, no TVM, no driver ...
        raise click.ClickException(str(e)) from None

    # imported here so `cw worker --help` stays fast
    import zmq

    from .runtime import WorkerRuntime
    from ..transport.sockets import set_timer_slack, stop_on_signals
    from .server import WorkerServer, describe_state

    if not mdir.is_dir():
        log(f"Warning: model directory {mdir} {config.why_not_a_directory(mdir)} (LoadModelFromDisk will fail)")
    offset = int(cfg["emulated_clock_offset_ns"])
    if offset and not emulate:
        raise click.ClickException("[worker] emulated_clock_offset_ns applies to emulated workers only")
    clock = (lambda: time.monotonic_ns() + offset) if offset else time.monotonic_ns
    runtime = WorkerRuntime(dev, mdir, None, clock=clock, **pools)
    try:
        server = WorkerServer(runtime, host, port, cfg["heartbeat_interval_ms"], cfg["print_interval_s"], log,
                              security=security, clock=clock, batch_results=cfg.get("batch_results", True),
                              timer_spin_us=cfg.get("timer_spin_us", 0),
                              spin_us=cfg.get("spin_us", 0))
    except security_mod.SecurityError as e:
        raise click.ClickException(str(e)) from None
    except zmq.ZMQError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e}") from None
    names = dev.gpu_names()
    log(f"{dev.name} backend: {len(names)} GPUs ({names[0]}{', ...' if len(names) > 1 else ''}), "
        f"model dir {mdir}")
    log(describe_state(runtime.state()).split("\nmodels=")[0])
    set_timer_slack(1)
    # a flag the loop checks (it wakes at least every second), not a KeyboardInterrupt raised
    # wherever the main thread happens to be: one raised inside a __del__ or a library's
    # catch-all is swallowed, and the worker lived on (seen: an orphaned worker that got its
    # SIGTERM and kept serving). Also when started in the background, where SIGINT is ignored.
    stop_on_signals(server.stop)
    gc.collect()
    gc.freeze()
    log(f"IO service listening on {host}:{port}" + (" (CURVE: controllers' keys only)" if security else ""))
    try:
        server.serve()
        log("Worker stopped")
    finally:
        server.close()
        dev.close()


if __name__ == "__main__":
    sys.exit(worker_command(prog_name="cw worker"))
