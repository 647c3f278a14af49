"""Configuration: clockwork/conf/default.toml (inside the package, so an installed copy finds
it), overlaid by CLOCKWORK_CONFIG_FILE, overlaid by CLI flags.

Also resolves the environment variables the original honoured (CLOCKWORK_MODEL_DIR,
CLOCKWORK_LOG_DIR) so every command finds models and logs the same way.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "default.toml"
PROFILES_DIR = CONF_DIR / "profiles"


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or has a key we do not know."""


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
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Defaults, then `path` or $CLOCKWORK_CONFIG_FILE on top. Returns a fresh dict."""
    path = path or os.environ.get("CLOCKWORK_CONFIG_FILE") or None
    cfg = _read(DEFAULT_CONFIG)
    if path:
        _merge(cfg, _read(Path(path)), str(path))
    return cfg


def model_dir(explicit: str | None = None) -> Path:
    """Where models live: flag, then $CLOCKWORK_MODEL_DIR, then ./zoo."""
    return Path(explicit or os.environ.get("CLOCKWORK_MODEL_DIR") or "zoo").resolve()


def log_dir(explicit: str | None = None) -> Path:
    """Where the controller writes its TSV logs: flag, then $CLOCKWORK_LOG_DIR, then ./logs.

    Unlike the original (which silently wrote nothing if /local was missing) the directory is
    created; if that fails the caller reports it.
    """
    path = Path(explicit or os.environ.get("CLOCKWORK_LOG_DIR") or "logs").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def inputs_disabled() -> bool:
    """CLOCKWORK_DISABLE_INPUTS=1: clients send no inputs; the controller generates them."""
    return os.environ.get("CLOCKWORK_DISABLE_INPUTS", "0") not in ("", "0", "false", "no")
