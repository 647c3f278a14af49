"""One simulation, assembled from config.SimConfig: network, workers, controller, workload."""
from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from ..client.stats import Stats
from ..client import workloads
from ..client.workloads.registry import ParamError
from ..client.workloads.engine import Engine, WorkloadError, zoo_models
from ..config import ConfigError
from ..model.zoo import load_profile, write_emulated_zoo
from .client import ClientFailed, EngineDriver, SimClient
from .config import SimConfig, check
from .controller import SimController
from .events import EventLoop
from .network import Delay, Network
from .worker import SimWorker

SECOND = 1_000_000_000


class SimError(Exception):
    """The simulation cannot run as configured (one line for the user)."""


class Outcome:
    """What a run produced, for the summary line, tests and benchmarks."""

    def __init__(self):
        self.sent = self.answered = self.duplicates = self.unanswered = 0
        self.successes = self.slo_met = 0
        self.by_status: dict[int, int] = {}
        self.duration_s = 0.0
        self.sim_s = 0.0
        self.wall_s = 0.0
        self.run_wall_s = 0.0             # wall time from the workload's start (setup excluded)
        self.run_sim_s = 0.0
        self.run_cpu_s = 0.0              # this process's CPU time over the same span
        self.controller_cpu_s = 0.0       # of which in the controller's handlers (whole run; measure_cpu)
        self.events = 0

    @property
    def slo_attainment(self) -> float:
        """Successes answered within their SLO, percent of the requests sent."""
        return 100.0 * self.slo_met / self.sent if self.sent else 100.0

    @property
    def goodput(self) -> float:
        """Successes within their SLO per simulated second of sending."""
        return self.slo_met / self.duration_s if self.duration_s else 0.0

    def line(self) -> str:
        st = " ".join(f"{k}:{v}" for k, v in sorted(self.by_status.items()))
        return (f"Simulated {self.sim_s:.1f} s in {self.wall_s:.1f} s wall "
                f"({self.run_sim_s / max(self.run_wall_s, 1e-9):.1f}x real time after setup): "
                f"sent={self.sent} answered={self.answered} unanswered={self.unanswered} "
                f"duplicates={self.duplicates} slo_met={self.slo_attainment:.3f}% goodput={self.goodput:.1f} r/s "
                f"by status {st}")


class _CountingController(SimController):
    """Counts answers as they leave (the real respond() does the rest)."""

    def respond(self, req, status, message="", output=None, exec_ns=0):
        super().respond(req, status, message, output, exec_ns)
        oc = self.outcome
        oc.by_status[status] = oc.by_status.get(status, 0) + 1
        if status == 0:
            oc.successes += 1
            if self.clock() <= req.deadline:
                oc.slo_met += 1


class Simulation:
    def __init__(self, cfg: SimConfig, out=print, progress=None):
        check(cfg)
        self.cfg = cfg
        self.out = out
        self.progress = progress          # fn(line) for the progress line, or None
        self.outcome = Outcome()
        config = cfg.base
        seeds = random.Random(cfg.seed)
        self.loop = loop = EventLoop()
        delay = Delay(int(cfg.latency_us * 1000), int(cfg.jitter_us * 1000), cfg.distribution,
                      random.Random(seeds.getrandbits(64)))
        self.network = net = Network(loop, delay, random.Random(seeds.getrandbits(64)), cfg.drop_rate)
        self._tmp = None
        if cfg.model_dir:
            model_dir = Path(cfg.model_dir)
            zoo = zoo_models(cfg.models) if cfg.models else sorted(
                p.name for p in model_dir.iterdir() if (p / "model.json").exists())
        else:
            try:
                prof = load_profile(cfg.profile)
            except FileNotFoundError as e:
                raise SimError(str(e)) from None
            self._tmp = tempfile.TemporaryDirectory(prefix="clockwork-sim-")
            model_dir = Path(self._tmp.name)
            write_emulated_zoo(model_dir, cfg.profile, page_size=int(config["worker"]["page_size"]),
                               log=lambda *_: None)
            zoo = zoo_models(cfg.models) if cfg.models else sorted(prof.get("models", {}))
        device = f"Emulated {cfg.profile}"
        self.workers: list[SimWorker] = []
        links = []
        for i in range(cfg.workers):
            lk = net.link(f"worker{i}", net.router_socket(f"worker{i}"), droppable=True)
            offset = int(seeds.uniform(-cfg.skew_ms, cfg.skew_ms) * 1e6)
            drift = seeds.uniform(-cfg.drift_ppm, cfg.drift_ppm)
            self.workers.append(SimWorker(loop, i, cfg.gpus, model_dir, config["worker"], lk, offset, drift,
                                          cfg.exec_sigma, seeds.getrandbits(64), device,
                                          int(cfg.worker_us * 1000)))
            links.append(lk)
        log_dir = Path(cfg.log_dir) if cfg.log_dir else None
        try:
            self.controller = ctl = _CountingController(config, loop, net, links, cfg.scheduler, log_dir, out,
                                                        epoch=seeds.getrandbits(63) or 1,
                                                        message_cost_ns=int(cfg.controller_us * 1000),
                                                        measure_cpu=cfg.measure_cpu)
        except (ValueError, KeyError) as e:
            raise SimError(str(e)) from None
        ctl.outcome = self.outcome
        self.client = SimClient(loop, net.link("client", ctl.client_sock))
        self.stats = Stats(print_interval_s=float(config["client"]["print_interval_s"]),
                           log=lambda line: out(f"[client] {line}"), clock=lambda: loop.now / SECOND)
        self.engine = Engine(self.client, self.stats, send_inputs=False, seed=cfg.seed,
                             duration_s=cfg.duration_s, slo_ns=int(cfg.slo_ms * 1e6),
                             log=lambda line: out(f"[client] {line}"), zoo=zoo)
        try:
            self.spec = workloads.get(cfg.workload)
            self.params = self.spec.parse(list(cfg.workload_args))
        except ParamError as e:
            raise SimError(str(e).splitlines()[0]) from None
        self.driver = EngineDriver(loop, self.engine, self.client, int(cfg.duration_s * SECOND))

    # ------------------------------------------------------------------ run
    def run(self) -> Outcome:
        wall0 = time.perf_counter()
        loop, ctl, oc = self.loop, self.controller, self.outcome
        try:
            ctl.begin()
            try:
                self.spec.fn(self.engine, **self.params)
                self.client.ls()
            except (WorkloadError, ClientFailed) as e:
                raise SimError(str(e)) from None
            self.out(f"[client] Starting workload with {len(self.engine.models)} model instances")
            self.driver.start()
            t0 = self.driver.t0
            wall_run0 = time.perf_counter()
            cpu_run0 = time.process_time()
            for f in self.cfg.faults:
                loop.at(t0 + int(f.at_s * SECOND), self._fault, f)
            self._wall0 = wall0
            if self.progress is not None:
                loop.at(t0, self._progress)
            loop.at(t0 + int(self.stats.print_interval_s * SECOND), self._client_line)
            loop.run(self.driver.end)
            self.engine.stop(f"duration {self.cfg.duration_s:g} s reached")
            self.out(f"[client] Stopping: {self.engine.stop_reason}")
            loop.run(self.driver.end + int(self.cfg.drain_s * SECOND), done=lambda: self.client.outstanding == 0)
        finally:
            ctl.finish()
            if self._tmp is not None:
                self._tmp.cleanup()
        oc.sent = self.stats.sent
        oc.answered = self.stats.answered
        oc.duplicates = self.client.answered_unknown
        oc.unanswered = self.client.outstanding
        oc.duration_s = self.cfg.duration_s
        oc.sim_s = loop.now / SECOND
        oc.wall_s = time.perf_counter() - wall0
        oc.run_wall_s = time.perf_counter() - wall_run0
        oc.run_cpu_s = time.process_time() - cpu_run0
        oc.controller_cpu_s = ctl.cpu_ns / 1e9
        oc.run_sim_s = (loop.now - t0) / SECOND
        oc.events = loop.events
        if self.progress is not None:
            self.progress(None)
        return oc

    def _client_line(self, _=None) -> None:
        if self.engine.running:
            self.stats.print_line()
            self.loop.after(int(self.stats.print_interval_s * SECOND), self._client_line)

    def _progress(self, _=None) -> None:
        d = self.driver
        sim = (self.loop.now - d.t0) / SECOND
        wall = time.perf_counter() - self._wall0
        self.progress(f"simulated {sim:6.1f} / {self.cfg.duration_s:g} s   wall {wall:6.1f} s   "
                      f"({sim / max(wall, 1e-9):.1f}x real time)   requests {self.stats.sent}")
        if self.loop.now < d.end:
            self.loop.after(SECOND // 10 if self.cfg.duration_s <= 10 else SECOND, self._progress)

    # ------------------------------------------------------------------ faults
    def _fault(self, f) -> None:
        w = self.workers[f.worker]
        end = self.loop.now + int(f.for_s * SECOND)
        self.out(f"[sim] fault: {f.kind} worker {f.worker}" + (f" for {f.for_s:g} s" if f.for_s else "")
                 + (f" x{f.factor:g}" if f.kind == "slow" else ""))
        if f.kind == "crash":
            w.crash()
            if f.for_s:
                self.loop.at(end, lambda _: (self.out(f"[sim] worker {f.worker} restarts"), w.restart()))
        elif f.kind == "stall":
            w.stall(end)
        elif f.kind == "slow":
            w.set_slowdown(f.factor)
            if f.for_s:
                self.loop.at(end, lambda _: w.set_slowdown(1.0))


def simulate(cfg: SimConfig, out=print, progress=None) -> Outcome:
    """Run one simulation; raises SimError / ConfigError with a one-line message."""
    sim = Simulation(cfg, out, progress)
    oc = sim.run()
    out(oc.line())
    return oc


def progress_to_stderr():
    """A progress callback that rewrites one line on stderr (ends it on None)."""
    def show(line):
        if line is None:
            sys.stderr.write("\n")
        else:
            sys.stderr.write("\r" + line)
        sys.stderr.flush()
    return show


__all__ = ["Simulation", "SimError", "Outcome", "simulate", "ConfigError"]
