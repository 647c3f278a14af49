"""`cw run`: the whole system on this machine, no GPU needed.

Starts an emulated worker, a controller and a client as three processes on 127.0.0.1 free
ports (exactly what you would run on three hosts), streams their output with a prefix each,
and stops everything when the client's workload ends, on Ctrl-C, or on any failure.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from .orphans import child_env
from .transport.sockets import free_port, free_ports
from .values import POSITIVE

PY = sys.executable


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ProcessFailed(RuntimeError):
    """A server process of the cluster exited while a client was running."""


class LocalCluster:
    """Worker + controller subprocesses on free loopback ports; a context manager that always
    cleans up. Used by `cw run`, the end-to-end tests and the benchmarks.

    fail_fast: run_client() raises ProcessFailed as soon as a worker or the controller exits
    (what `cw run` wants: a server that could not start must not leave the client waiting).
    Fault tests that kill servers on purpose leave it off.

    shards > 1: a sharded controller (`cw controller --shards`) over the workers, on
    consecutive free client ports; `address` then lists them all (clockwork.client.shards)."""

    def __init__(self, gpus: int = 2, scheduler: str = "infer4", model_dir: Path | None = None,
                 log_dir: Path | None = None, config_file: Path | None = None, echo: bool = False,
                 controller_args: tuple = (), worker_args: tuple = (), workers: int = 1,
                 fail_fast: bool = False, shards: int = 1):
        self.gpus = gpus
        self.scheduler = scheduler
        self._tmp = tempfile.TemporaryDirectory(prefix="clockwork-")
        self.model_dir = Path(model_dir) if model_dir else Path(self._tmp.name) / "zoo"
        self.log_dir = log_dir
        self.config_file = config_file
        self.echo = echo
        self.controller_args = tuple(controller_args)
        self.worker_args = tuple(worker_args)
        self.n_workers = workers
        self.fail_fast = fail_fast
        self.worker_ports = [free_port() for _ in range(workers)]
        self.shards = shards
        self.client_port = free_ports(shards)
        self.telemetry_port = free_ports(shards)
        self.procs: list[subprocess.Popen] = []
        self.names: dict[subprocess.Popen, str] = {}
        self.worker_procs: list[subprocess.Popen] = []
        self.controller: subprocess.Popen | None = None
        self.output: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    @property
    def address(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port + k}" for k in range(self.shards))

    def env(self) -> dict:
        env = child_env(dict(os.environ, PYTHONUNBUFFERED="1", CLOCKWORK_MODEL_DIR=str(self.model_dir)))
        if self.config_file:
            env["CLOCKWORK_CONFIG_FILE"] = str(self.config_file)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env(), stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self.names[proc] = name
        keep = self.output.setdefault(name, [])
        t = threading.Thread(target=self._pump, args=(proc, f"[{name}]", keep), daemon=True)
        t.start()
        self._threads[name] = t
        return proc

    def _pump(self, proc, prefix, keep):
        for line in proc.stdout:
            keep.append(line)
            if self.echo:
                with self._lock:
                    sys.stdout.write(f"{prefix} {line}")
                    sys.stdout.flush()

    def start_worker(self, index: int = 0) -> subprocess.Popen:
        proc = self._spawn(f"worker{index}" if self.n_workers > 1 else "worker",
                           [PY, "-m", "clockwork.worker.command", "--emulate", str(self.gpus),
                            "--host", "127.0.0.1", "--port", str(self.worker_ports[index]),
                            "--model-dir", str(self.model_dir), *self.worker_args])
        if index < len(self.worker_procs):
            self.worker_procs[index] = proc
        else:
            self.worker_procs.append(proc)
        return proc

    def start(self) -> "LocalCluster":
        from .model.zoo import write_emulated_zoo
        if not self.model_dir.exists() or not any(self.model_dir.iterdir()):
            write_emulated_zoo(self.model_dir, log=lambda *_: None)
        for i in range(self.n_workers):
            self.start_worker(i)
        self.start_controller()
        return self

    def start_controller(self) -> subprocess.Popen:
        """Start the controller (again, after it died: same ports, output appended)."""
        logs = ["--log-dir", str(self.log_dir)] if self.log_dir else ["--no-logs"]
        self.controller = self._spawn("controller", [
            PY, "-m", "clockwork.controller.command", "--host", "127.0.0.1",
            "--port", str(self.client_port), "--telemetry-port", str(self.telemetry_port),
            "--scheduler", self.scheduler, *logs, *self.controller_args,
            *(["--shards", str(self.shards)] if self.shards > 1 else []),
            *[f"127.0.0.1:{p}" for p in self.worker_ports]])
        return self.controller

    def start_frontend(self, http: int = -1, grpc: int = -1, args: tuple = ()) -> subprocess.Popen:
        """`cw frontend` (KServe v2 HTTP / gRPC) in front of the controller; -1: that protocol off."""
        return self._spawn("frontend", [PY, "-m", "clockwork.frontend.command", self.address,
                                        "--http", str(http), "--grpc", str(grpc), *args])

    @staticmethod
    def in_process_frontend_args(http: int = -1, grpc: int = -1, args: tuple = ()) -> tuple:
        """controller_args that serve KServe v2 inside the controller's process
        (`cw controller --frontend-in-process`); -1: that protocol off."""
        ports = (["--http", str(http)] if http >= 0 else []) + (["--grpc", str(grpc)] if grpc >= 0 else [])
        return (*ports, "--frontend-in-process", *(f"--frontend-arg={a}" for a in args))

    def run_client(self, workload: str, args: list[str] = (), timeout: float | None = None,
                   name: str = "client") -> subprocess.CompletedProcess:
        proc = self._spawn(name, [PY, "-m", "clockwork.client.command", self.address,
                                  "--workload", workload, *args])
        try:
            self._wait_client(proc, timeout)
        except (subprocess.TimeoutExpired, ProcessFailed):
            _stop(proc)
            raise
        self._threads[name].join(timeout=10)   # all its output read
        return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(self.output[name]))

    def _wait_client(self, proc: subprocess.Popen, timeout: float | None) -> None:
        """Wait for the client to exit; with fail_fast, look at the servers every 0.2 s."""
        if not self.fail_fast:
            proc.wait(timeout)
            return
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.2 if end is None else min(0.2, max(0.0, end - time.monotonic()))
            try:
                proc.wait(step)
                return
            except subprocess.TimeoutExpired:
                pass
            failed = self.exited_server()
            if failed is not None:
                raise ProcessFailed(failed)
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(proc.args, timeout)

    def exited_server(self) -> str | None:
        """'NAME exited with status N: its last line' for a worker or controller that exited."""
        for proc in (*self.worker_procs, self.controller):
            if proc is None or proc.poll() is None:
                continue
            name = self.names[proc]
            self._threads[name].join(timeout=5)     # its last words read
            lines = [line.strip() for line in self.output.get(name, []) if line.strip()]
            return f"{name} exited with status {proc.returncode}" + (f": {lines[-1]}" if lines else "")
        return None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        for t in self._threads.values():
            t.join(timeout=5)
        self._tmp.cleanup()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def quick_config(print_interval: float, extra: dict | None = None) -> Path:
    """A temporary config file that sets every process's stats-line interval, plus `extra`
    ({section: {key: TOML value text}}) (caller deletes it)."""
    fd, path = tempfile.mkstemp(prefix="clockwork-run-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        for section in ("worker", "controller", "client"):
            f.write(f"[{section}]\nprint_interval_s = {print_interval}\n")
            for key, value in (extra or {}).get(section, {}).items():
                f.write(f"{key} = {value}\n")
        for section, table in (extra or {}).items():      # other sections (e.g. [logging])
            if section not in ("worker", "controller", "client"):
                f.write(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in table.items()))
    return Path(path)


@click.command("run")
@click.option("--duration", "-d", type=POSITIVE.click("S"), default=30.0, show_default=True, help="Seconds of workload.")
@click.option("--gpus", "-n", type=click.IntRange(1, 4096), default=2, show_default=True, help="Emulated GPUs.")
@click.option("--workload", "-w", default="simple", show_default=True, help="Client workload (see `cw client -h`).")
@click.option("--scheduler", "-s", default="infer4", show_default=True)
@click.option("--log-dir", default=None, help="Write request/action TSV logs here.")
@click.option("--shards", type=click.IntRange(1, 64), default=1, show_default=True,
              help="A sharded controller (`cw controller --shards`): K shards, each with an emulated "
                   "worker of GPUS/K GPUs.")
@click.option("--print-interval", type=POSITIVE.click("S"), default=None, help="Seconds between stats lines.")
@click.option("--http", "http_port", type=click.IntRange(-1, 65535), default=-1, metavar="PORT",
              help="Also serve KServe v2 HTTP on PORT (`cw frontend`, docs/frontend.md).")
@click.option("--grpc", "grpc_port", type=click.IntRange(-1, 65535), default=-1, metavar="PORT",
              help="Also serve KServe v2 gRPC on PORT.")
@click.option("--frontend-in-process", "in_process", is_flag=True,
              help="Serve --http/--grpc on a thread of the controller process (docs/frontend.md).")
@click.argument("workload_args", nargs=-1, type=click.UNPROCESSED)
def run_command(duration, gpus, workload, scheduler, log_dir, shards, print_interval, http_port, grpc_port,
                in_process, workload_args):
    """Run an emulated worker, a controller and a client on this machine and print their stats.

    Extra arguments after `--` go to the client workload.
    """
    if gpus % shards:
        raise click.BadParameter(f"--gpus {gpus} must be a multiple of --shards {shards} (one worker per shard)")
    serving = http_port >= 0 or grpc_port >= 0
    if shards > 1 and in_process:
        raise click.BadParameter("--frontend-in-process: a sharded controller has no controller loop of its own "
                                 "to host it (without it, one `cw frontend` serves all the shards)")
    interval = print_interval or max(1.0, min(10.0, duration / 5))
    config = quick_config(interval)
    click.echo(f"clockwork: emulated worker ({gpus} GPUs) + {scheduler} controller + "
               f"`{workload}` client for {duration:g} s" if shards == 1 else
               f"clockwork: {shards} emulated workers ({gpus // shards} GPUs each) + {scheduler} controller in "
               f"{shards} shards + `{workload}` client for {duration:g} s")
    if in_process and not serving:
        raise click.BadParameter("--frontend-in-process needs --http or --grpc")
    cluster = LocalCluster(gpus=gpus // shards, workers=shards, shards=shards, scheduler=scheduler,
                           config_file=config, echo=True,
                           log_dir=Path(log_dir).resolve() if log_dir else None, fail_fast=True,
                           controller_args=LocalCluster.in_process_frontend_args(http_port, grpc_port)
                           if in_process else ())
    try:
        with cluster:
            if serving and not in_process:
                cluster.start_frontend(http_port, grpc_port, ("--host", "127.0.0.1"))
            result = cluster.run_client(workload, ["--duration", str(duration), *workload_args],
                                        timeout=duration + 120)
    except KeyboardInterrupt:
        raise SystemExit(130)
    except ProcessFailed as e:
        raise click.ClickException(f"{e}; stopped everything") from None
    except subprocess.TimeoutExpired:
        raise click.ClickException(f"the client did not finish within {duration + 120:g} s; "
                                   "stopped everything") from None
    finally:
        config.unlink(missing_ok=True)
    if result.returncode != 0:
        raise SystemExit(result.returncode)
