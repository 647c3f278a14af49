"""What long-running processes print: every line starts with the local time (to the
millisecond), so a worker's and a controller's output can be lined up after the fact."""
from __future__ import annotations

import sys
import time


def stamp(now: float | None = None) -> str:
    """'2026-12-01 14:16:18.123'"""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def timestamped(file=None):
    """A print-like function writing 'TIME text' lines (every line of a multi-line text)."""
    def log(*args, sep=" ", **_):
        out = file or sys.stdout
        t = stamp()
        text = sep.join(map(str, args))
        out.write("".join(f"{t} {line}\n" for line in text.split("\n")))
        out.flush()
    return log


def one_line_warnings() -> None:
    """A library's warning (numpy's RuntimeWarning, ...) prints as one line of ours,
    'warning: TEXT', not as a file:line and a line of someone else's source."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        (file or sys.stderr).write(f"warning: {message}\n")

    warnings.showwarning = show
