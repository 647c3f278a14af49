"""The settings of one simulation: a [simulate] table (in a TOML file beside any [controller] /
[worker] overrides of clockwork/conf/default.toml) and/or `cw simulate` flags, which win.

    [simulate]
    scheduler = "infer4"          # infer4 | fifo | clipper | direct | echo
    workers = 1                   # worker processes ...
    gpus = 2                      # ... of this many GPUs each
    profile = "h200"              # device profile (clockwork/conf/profiles) for the emulated zoo
    model_dir = ""                # a model directory instead of the profile's zoo
    workload = "simple"           # any `cw client` workload
    workload_args = []            # its arguments, as on the cw client command line
    models = ""                   # zoo models for workloads that use every model (A,B)
    duration_s = 10.0             # simulated seconds of sending
    drain_s = 5.0                 # then wait this long (simulated) for answers
    seed = 0                      # everything random: arrivals, delays, noise, clocks
    slo_ms = 0.0                  # as cw client --slo-ms
    log_dir = ""                  # request/action TSV logs ("": none)
    controller_us = 0.0           # controller CPU per message handled (0: free; see sim/controller.py)
    worker_us = 0.0               # worker CPU per action read (0: free; see sim/worker.py)

    [simulate.network]            # one-way delay = latency + a random part of mean jitter
    latency_us = 100.0
    jitter_us = 50.0
    distribution = "exp"          # exp | uniform | const
    drop_rate = 0.0               # per controller<->worker message: lost with its connection

    [simulate.clocks]             # per worker, drawn uniformly from +-these
    skew_ms = 0.0
    drift_ppm = 0.0

    [simulate.noise]
    exec_sigma = 0.0              # log-normal sigma of exec and load times (0.02: +-2%)

    [[simulate.faults]]           # any number
    kind = "crash"                # crash (restarts after for_s; 0: never) | stall | slow
    worker = 0
    at_s = 5.0
    for_s = 2.0
    factor = 3.0                  # slow: exec and load times x factor
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import config as config_mod
from ..config import ConfigError, tomllib

SCHEDULERS = ("infer4", "fifo", "clipper", "direct", "echo")
FAULT_KINDS = ("crash", "stall", "slow")


@dataclass
class Fault:
    kind: str
    worker: int
    at_s: float
    for_s: float = 0.0
    factor: float = 1.0


@dataclass
class SimConfig:
    scheduler: str = "infer4"
    workers: int = 1
    gpus: int = 2
    profile: str = "h200"
    model_dir: str = ""
    workload: str = "simple"
    workload_args: list = field(default_factory=list)
    models: str = ""
    duration_s: float = 10.0
    drain_s: float = 5.0
    seed: int = 0
    slo_ms: float = 0.0
    log_dir: str = ""
    controller_us: float = 0.0
    worker_us: float = 0.0
    latency_us: float = 100.0
    jitter_us: float = 50.0
    distribution: str = "exp"
    drop_rate: float = 0.0
    skew_ms: float = 0.0
    drift_ppm: float = 0.0
    exec_sigma: float = 0.0
    faults: list = field(default_factory=list)
    measure_cpu: bool = False      # report the controller's CPU time (Outcome.controller_cpu_s); costs time
    base: dict = field(default_factory=dict)     # the full clockwork config ([controller], [worker] ...)


# key -> type, per [simulate] sub-table ("" = the table itself); keys are SimConfig attributes
_KEYS = {
    "": {"scheduler": str, "workers": int, "gpus": int, "profile": str, "model_dir": str, "workload": str,
         "workload_args": list, "models": str, "duration_s": float, "drain_s": float, "seed": int,
         "slo_ms": float, "log_dir": str, "controller_us": float,
         "worker_us": float},
    "network": {"latency_us": float, "jitter_us": float, "distribution": str, "drop_rate": float},
    "clocks": {"skew_ms": float, "drift_ppm": float},
    "noise": {"exec_sigma": float},
}


def _typed(where: str, key: str, value, kind):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ConfigError(f"{where}.{key} must be a list of strings, got {value!r}")
        return [str(v) for v in value]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def from_table(table: dict, cfg: SimConfig, where: str = "[simulate]") -> None:
    """Apply a [simulate] table to cfg; unknown keys and wrong types are errors."""
    for key, value in table.items():
        if key == "faults":
            if not isinstance(value, list):
                raise ConfigError(f"{where}.faults must be an array of tables ([[simulate.faults]])")
            cfg.faults = [_fault(f, f"{where}.faults[{i}]") for i, f in enumerate(value)]
        elif key in _KEYS and key != "" and isinstance(value, dict):
            for k, v in value.items():
                if k not in _KEYS[key]:
                    raise ConfigError(f"{where}.{key}: unknown key {k!r} (known: {', '.join(_KEYS[key])})")
                setattr(cfg, k, _typed(f"{where}.{key}", k, v, _KEYS[key][k]))
        elif key in _KEYS[""]:
            setattr(cfg, key, _typed(where, key, value, _KEYS[""][key]))
        else:
            known = list(_KEYS[""]) + ["network", "clocks", "noise", "faults"]
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")


def _fault(t, where: str) -> Fault:
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(t) - {"kind", "worker", "at_s", "for_s", "factor"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: kind, worker, at_s, for_s, factor)")
    if t.get("kind") not in FAULT_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(FAULT_KINDS)}, got {t.get('kind')!r}")
    f = Fault(t["kind"], _typed(where, "worker", t.get("worker", 0), int),
              _typed(where, "at_s", t.get("at_s", 0.0), float), _typed(where, "for_s", t.get("for_s", 0.0), float),
              _typed(where, "factor", t.get("factor", 1.0), float))
    return f


def parse_fault(text: str) -> Fault:
    """A --fault flag: KIND:WORKER@AT_S[+FOR_S][xFACTOR], e.g. crash:0@5+2, stall:1@3+1.5, slow:0@0x3."""
    try:
        kind, rest = text.split(":", 1)
        worker, rest = rest.split("@", 1)
        factor = 1.0
        if "x" in rest:
            rest, fac = rest.split("x", 1)
            factor = float(fac)
        at, _, dur = rest.partition("+")
        f = Fault(kind.strip(), int(worker), float(at), float(dur) if dur else 0.0, factor)
    except ValueError:
        raise ConfigError(f"--fault {text!r}: expected KIND:WORKER@AT_S[+FOR_S][xFACTOR], "
                          f"e.g. crash:0@5+2 or slow:0@0x3") from None
    if f.kind not in FAULT_KINDS:
        raise ConfigError(f"--fault {text!r}: kind must be one of {', '.join(FAULT_KINDS)}")
    return f


def load(path: str | None) -> SimConfig:
    """Defaults, then $CLOCKWORK_CONFIG_FILE, then `path`: its [simulate] table configures the
    simulation, its other tables override clockwork/conf/default.toml as for every command."""
    cfg = SimConfig()
    cfg.base = config_mod.load_config(None)
    if path:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        sim = table.pop("simulate", {})
        if not isinstance(sim, dict):
            raise ConfigError(f"{path}: [simulate] must be a table")
        config_mod._merge(cfg.base, table, str(path))
        from_table(sim, cfg, f"{path} [simulate]")
    return cfg


def check(cfg: SimConfig) -> None:
    """Ranges and cross-checks; raises ConfigError with one line saying what is wrong."""
    if cfg.scheduler.strip().lower() not in SCHEDULERS:
        raise ConfigError(f"scheduler {cfg.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
    for name, lo in (("workers", 1), ("gpus", 1)):
        if getattr(cfg, name) < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {getattr(cfg, name)}")
    if cfg.gpus > 4096:
        raise ConfigError(f"gpus must be <= 4096 per worker, got {cfg.gpus}")
    if not cfg.duration_s > 0:
        raise ConfigError(f"duration_s must be > 0, got {cfg.duration_s}")
    for name in ("drain_s", "latency_us", "jitter_us", "skew_ms", "drift_ppm", "exec_sigma", "slo_ms",
                 "controller_us", "worker_us"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.drift_ppm >= 1e5:
        raise ConfigError(f"drift_ppm must be < 100000, got {cfg.drift_ppm}")
    if not 0 <= cfg.drop_rate < 1:
        raise ConfigError(f"drop_rate must be in [0, 1), got {cfg.drop_rate}")
    if cfg.distribution not in ("exp", "uniform", "const"):
        raise ConfigError(f"distribution {cfg.distribution!r}: use exp, uniform or const")
    for f in cfg.faults:
        if not 0 <= f.worker < cfg.workers:
            raise ConfigError(f"fault {f.kind} on worker {f.worker}: there are workers 0..{cfg.workers - 1}")
        if f.at_s < 0 or f.for_s < 0:
            raise ConfigError(f"fault {f.kind}: at_s and for_s must be >= 0")
        if f.kind == "stall" and f.for_s <= 0:
            raise ConfigError("fault stall needs for_s > 0")
        if f.kind == "slow" and not f.factor > 0:
            raise ConfigError(f"fault slow needs factor > 0, got {f.factor}")
    if cfg.model_dir and not Path(cfg.model_dir).is_dir():
        raise ConfigError(f"model_dir {cfg.model_dir}: not a directory")
