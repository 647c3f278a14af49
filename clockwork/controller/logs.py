"""Request and action logs: TSV files with the original's columns.

Rows are kept as tuples on the hot path and formatted in bulk when flushed (from the event loop's
housekeeping, every 50 ms, so `tail -F` and `cw plot` see a running controller's rows at once),
so logging costs one tuple per event while serving. A new run never truncates a previous run's
logs: they are renamed aside first (see clockwork.runfiles).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..runfiles import open_new

REQUEST_COLUMNS = ("t", "request_id", "result", "user_id", "model_id", "slo_factor", "latency",
                   "deadline", "deadline_met", "arrival_count", "departure_count", "is_coldstart",
                   "batch_size", "gpu")

ACTION_COLUMNS = ("t", "action_id", "action_type", "status", "worker_id", "gpu_id", "model_id",
                  "batch_size", "expected_exec_duration", "worker_exec_duration",
                  "expected_exec_complete", "worker_exec_complete", "expected_gpu_clock",
                  "worker_gpu_clock", "copy_output_complete", "worker_action_received",
                  "worker_result_sent", "controller_action_sent", "action_duration",
                  "requests_queued", "copies_loaded")


class TsvLog:
    """Append-only TSV with a header line; rows are tuples of plain values."""

    def __init__(self, path: Path | None, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self.rows: list[tuple] = []
        self._file = None
        self.kept: Path | None = None       # where the previous run's file of this name went
        if path is not None:
            self._file, self.kept = open_new(path, buffering=1 << 20)
            self._file.write("\t".join(columns) + "\n")
            self._file.flush()

    def add(self, row: tuple) -> None:
        if self._file is not None:
            self.rows.append(row)

    def flush(self) -> None:
        if self._file is None or not self.rows:
            return
        rows, self.rows = self.rows, []
        self._file.write("".join("\t".join(map(str, r)) + "\n" for r in rows))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


def open_logs(directory: Path | None, request_name: str, action_name: str):
    """(request log, action log); pass directory=None to disable both."""
    if directory is None:
        return TsvLog(None, REQUEST_COLUMNS), TsvLog(None, ACTION_COLUMNS)
    os.makedirs(directory, exist_ok=True)
    return (TsvLog(Path(directory) / request_name, REQUEST_COLUMNS),
            TsvLog(Path(directory) / action_name, ACTION_COLUMNS))
