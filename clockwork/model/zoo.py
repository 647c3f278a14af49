"""Emulation model zoo: profile-only model directories made from clockwork/conf/profiles/*.toml.

The real zoo (TVM-compiled models with weights) is built by clockwork.model.build; both write
the same format (clockwork.model.format), so the emulated worker can serve either.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import PROFILES_DIR, tomllib
from .format import DEFAULT_PAGE_SIZE, MEASUREMENTS, METADATA, write_measurements, write_metadata


def load_profile(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(PROFILES_DIR.glob("*.toml")))
        raise FileNotFoundError(f"profile {name_or_path!r} not found (known: {known})")
    with open(path, "rb") as f:
        return tomllib.load(f)


def write_emulated_zoo(out: str | Path, profile: str = "h200", models: list[str] | None = None,
                       page_size: int = DEFAULT_PAGE_SIZE, force: bool = False, log=print) -> list[Path]:
    """Write one profile-only model directory per profile entry. Existing ones are kept
    unless `force`. Returns the directories."""
    prof = load_profile(profile)
    out = Path(out)
    written = []
    entries = prof.get("models", {})
    unknown = set(models or ()) - set(entries)
    if unknown:
        raise KeyError(f"no such model in profile {profile}: {', '.join(sorted(unknown))}")
    for name, m in entries.items():
        if models and name not in models:
            continue
        d = out / name
        if not force and (d / METADATA).exists() and (d / MEASUREMENTS).exists():
            log(f"  {name}: exists, kept")
            written.append(d)
            continue
        exec_ns = {int(b): int(v) for b, v in m["exec_ns"].items()}
        write_metadata(d, {
            "name": name,
            "input": dict(m["input"]),
            "output": dict(m["output"]),
            "batch_sizes": sorted(exec_ns),
            "weights": {"size": int(m["weights_size"]), "page_size": page_size},
            "code": {},
            "source": f"profile-only, from profile {profile}",
        })
        write_measurements(d, prof.get("device", profile), int(m["weights_load_ns"]), exec_ns,
                           {int(b): int(v) for b, v in m.get("exec_p99_ns", {}).items()})
        log(f"  {name}: written to {d}")
        written.append(d)
    return written


if __name__ == "__main__":  # pragma: no cover
    write_emulated_zoo(sys.argv[1] if len(sys.argv) > 1 else "zoo")


# ---------------------------------------------------------------- `cw zoo ...`

import click  # noqa: E402  (kept below the library code: the CLI is an edge)


@click.group("zoo")
def zoo_group():
    """Make model directories: `emulated` (profile-only) or `build` (TVM-compiled)."""


@zoo_group.command("emulated")
@click.option("--out", "-o", default=None, help="Target directory (default $CLOCKWORK_MODEL_DIR or ./zoo).")
@click.option("--profile", "-p", default="h200", show_default=True, help="Profile name in clockwork/conf/profiles or a TOML path.")
@click.option("--model", "-m", "models", multiple=True, help="Only these models (repeatable).")
@click.option("--force", is_flag=True, help="Rewrite existing model directories.")
def zoo_emulated_command(out, profile, models, force):
    """Write profile-only model directories for the emulated worker."""
    from ..config import model_dir
    target = model_dir(out)
    click.echo(f"Writing emulated zoo ({profile}) to {target}")
    try:
        write_emulated_zoo(target, profile, list(models) or None, force=force, log=click.echo)
    except (FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e).strip("'\""))


def _attach_build_commands() -> None:
    """`cw zoo build` lives with the TVM code; attach it when that module is present."""
    try:
        from . import commands
    except ImportError:
        return
    group = getattr(commands, "zoo_group", None)
    for name, cmd in (group.commands.items() if group is not None else ()):
        zoo_group.add_command(cmd, name)


_attach_build_commands()
