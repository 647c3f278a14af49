"""Configuration: clockwork/conf/default.toml (inside the package, so an installed copy finds
it), overlaid by CLOCKWORK_CONFIG_FILE, overlaid by CLI flags.

Also resolves the environment variables the original honoured (CLOCKWORK_MODEL_DIR,
CLOCKWORK_LOG_DIR) so every command finds models and logs the same way.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from .limits import MAX_SHARDS
from .values import NON_NEGATIVE, NON_NEGATIVE_INT, PORT, PORT_OR_OFF, POSITIVE, POSITIVE_INT, Spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "default.toml"
PROFILES_DIR = CONF_DIR / "profiles"


class ConfigError(ValueError):
    """A configuration file is missing, unreadable, has a key we do not know, or a value of the
    wrong type or range."""


# What each key may be. A key of clockwork/conf/default.toml missing here is still checked for its
# default's type; tests/test_config.py asks every key to be listed.
SCHEMA: dict[str, dict[str, Spec]] = {
    "worker": {
        "port": PORT,
        "bind": Spec(str),
        "page_size": POSITIVE_INT,
        "weights_cache_size": POSITIVE_INT,
        "io_pool_size": POSITIVE_INT,
        "workspace_pool_size": POSITIVE_INT,
        "heartbeat_interval_ms": POSITIVE,
        "print_interval_s": POSITIVE,
        "emulated_clock_offset_ns": Spec(int, -(1 << 60), 1 << 60),
        "batch_results": Spec(bool),
        "timer_spin_us": Spec(float, lo=0, hi=1_000_000),
        "spin_us": Spec(float, lo=0, hi=1_000_000),
        "cuda_graphs": Spec(bool),
        "cuda_gate": Spec(bool),
    },
    "controller": {
        "client_port": PORT,
        "bind": Spec(str),
        "shards": Spec(int, 1, MAX_SHARDS),
        "telemetry_port": PORT_OR_OFF,
        "metrics_port": PORT_OR_OFF,
        "scheduler": Spec(str),
        "default_slo_ms": POSITIVE,
        "schedule_ahead_ms": NON_NEGATIVE,
        "dispatch_ahead_ms": NON_NEGATIVE,
        "max_exec_ms": POSITIVE,
        "max_batch_size": POSITIVE_INT,
        "buffer_ms": NON_NEGATIVE,
        "estimate_window": POSITIVE_INT,
        "estimate_percentile": Spec(float, 0, 100, lo_open=True),
        "max_loads_per_gpu": POSITIVE_INT,
        "max_load_slo_ms": NON_NEGATIVE,
        "max_queue_per_model": POSITIVE_INT,
        "worker_timeout_ms": POSITIVE,
        "worker_connect_timeout_s": NON_NEGATIVE,
        "max_models": POSITIVE_INT,
        "max_models_per_client": POSITIVE_INT,
        "ls_page_size": POSITIVE_INT,
        "max_queued_input_bytes": NON_NEGATIVE_INT,
        "print_interval_s": POSITIVE,
        "generate_inputs": Spec(bool),
        "batch_replies": Spec(bool),
        "batch_actions": Spec(bool),
        "spin_us": Spec(float, lo=0, hi=1_000_000),
    },
    "security": {
        "enabled": Spec(bool),
        "key_dir": Spec(str),
        "client_key": Spec(str),
    },
    "client": {
        "connect_timeout_s": POSITIVE,
        "print_interval_s": POSITIVE,
        "batch_requests": Spec(bool),
        "spin_us": Spec(float, lo=0, hi=1_000_000),
    },
    "logging": {
        "request_log": Spec(str),
        "action_log": Spec(str),
        "writer_process": Spec(bool),
    },
}


def spec_of(section: str, key: str, default: Any = None) -> Spec:
    """The Spec of [section] key: from SCHEMA, else the type of its default value."""
    spec = SCHEMA.get(section, {}).get(key)
    if spec is None:
        kind = type(default) if isinstance(default, (bool, int, float, str)) else str
        spec = Spec(kind)
    return spec


def flag_type(section: str, key: str, metavar: str | None = None):
    """The click type of a flag that overrides [section] key: the same check as the config's."""
    return SCHEMA[section][key].click(metavar)


def _validate(cfg: dict, defaults: dict, where: str) -> None:
    for section, table in cfg.items():
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            if isinstance(value, dict):
                continue
            try:
                table[key] = spec_of(section, key, defaults[section][key]).check(value)
            except ValueError as e:
                raise ConfigError(f"{where}: [{section}] {key} {e}") from None


def _merge(base: dict, override: dict, where: str) -> None:
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _merge(base[key], value, f"{where}[{key}]")
        else:
            base[key] = value


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


_defaults: dict | None = None


def defaults() -> dict[str, Any]:
    """clockwork/conf/default.toml, read once. Shared: do not modify (load_config gives a copy)."""
    global _defaults
    if _defaults is None:
        _defaults = _read(DEFAULT_CONFIG)
    return _defaults


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Defaults, then `path` or $CLOCKWORK_CONFIG_FILE on top. Returns a fresh dict."""
    path = path or os.environ.get("CLOCKWORK_CONFIG_FILE") or None
    cfg = _read(DEFAULT_CONFIG)
    defaults = copy.deepcopy(cfg)
    if path:
        _merge(cfg, _read(Path(path)), str(path))
    _validate(cfg, defaults, str(path or DEFAULT_CONFIG))
    return cfg


def config_source(path: str | os.PathLike | None = None) -> str:
    """Which file load_config(path) reads on top of the defaults, for messages."""
    path = path or os.environ.get("CLOCKWORK_CONFIG_FILE") or None
    return f"{DEFAULT_CONFIG} + {Path(path).resolve()}" if path else str(DEFAULT_CONFIG)


def model_dir(explicit: str | None = None) -> Path:
    """Where models live: flag, then $CLOCKWORK_MODEL_DIR, then ./zoo."""
    return Path(explicit or os.environ.get("CLOCKWORK_MODEL_DIR") or "zoo").resolve()


def log_dir(explicit: str | None = None) -> Path:
    """Where the controller writes its TSV logs: flag, then $CLOCKWORK_LOG_DIR, then ./logs.

    Unlike the original (which silently wrote nothing if /local was missing) the directory is
    created; if that fails the caller reports it.
    """
    path = Path(explicit or os.environ.get("CLOCKWORK_LOG_DIR") or "logs").resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"log directory {path} {why_not_a_directory(path)}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def why_not_a_directory(path: Path) -> str:
    """'does not exist' or 'is a file, not a directory': what is wrong with a path that should
    be a directory, truthfully (for error messages)."""
    if not path.exists():
        return "does not exist"
    return "is a file, not a directory" if path.is_file() else "is not a directory"


def inputs_disabled() -> bool:
    """CLOCKWORK_DISABLE_INPUTS=1: clients send no inputs; the controller generates them."""
    return os.environ.get("CLOCKWORK_DISABLE_INPUTS", "0") not in ("", "0", "false", "no")
