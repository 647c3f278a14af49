"""Files a run writes never destroy a previous run's.

A log keeps its plain name for the run that writes it now (so `cw plot LOGDIR` and
`tail -F` find the current run without being told anything), and a previous run's file of
that name is first renamed after the time it was last written:
`clockwork_request_log.tsv` -> `clockwork_request_log.20261201-141334.tsv`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def keep_previous(path: Path) -> Path | None:
    """If `path` holds a previous run's data, rename it aside (never over another file) and
    return its new name; None when there was nothing to keep."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_size == 0:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(st.st_mtime))
    for n in range(1000):
        kept = path.with_name(f"{path.stem}.{stamp}{f'-{n}' if n else ''}{path.suffix}")
        try:
            os.link(path, kept)         # fails if taken: never replaces another kept run
        except FileExistsError:
            continue
        except OSError:                 # no hard links here (some filesystems): rename
            if kept.exists():
                continue
            os.replace(path, kept)
            return kept
        os.unlink(path)
        return kept
    raise OSError(f"cannot keep the previous {path}: 1000 runs kept at {stamp}")


def open_new(path: Path, buffering: int = -1):
    """Open `path` for a new run's text, keeping a previous run's file aside first.
    Returns (file, kept name or None)."""
    kept = keep_previous(path)
    return open(path, "x", buffering=buffering), kept
