"""Request and action logs: TSV files with the original Clockwork's columns, so its analysis
scripts read them.

Request log: `deadline` is the SLO relative to arrival; `deadline_met` is 1 only for a success
answered within it; `arrival_count` / `departure_count` count that request's model's arrivals
and answers so far. `batch_size` and `gpu` (global index, -1: none) are ours.
Action log: one row per completed LoadWeights, Infer and EvictWeights, and per failed action.
`t` is when the controller received the result; every *_complete, *_received and *_sent column
is relative to when the controller sent the action (0: none), all in the controller's clock
(worker timestamps are converted at the clock boundary, transport/clocksync.py), as the
original logged them. `goodput` = worker_exec_duration x batch_size / the compiled batch run
(the exec time spent on real items; padding is not goodput). `requests_queued` and
`copies_loaded` (GPUs holding the model) are the scheduler's when the action was sent.

Rows are kept as tuples on the hot path and formatted in bulk when flushed (from the event loop's
housekeeping, every 50 ms, so `tail -F` and `cw plot` see a running controller's rows at once),
so logging costs one tuple per event while serving. A new run never truncates a previous run's
logs: they are renamed aside first (see clockwork.runfiles).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..runfiles import open_new
from ..transport import schema as s

REQUEST_COLUMNS = ("t", "request_id", "result", "user_id", "model_id", "slo_factor", "latency",
                   "deadline", "deadline_met", "arrival_count", "departure_count", "is_coldstart",
                   "batch_size", "gpu")

ACTION_COLUMNS = ("t", "action_id", "action_type", "status", "worker_id", "gpu_id", "model_id",
                  "batch_size", "expected_exec_duration", "worker_exec_duration",
                  "expected_exec_complete", "worker_exec_complete", "expected_gpu_clock",
                  "worker_gpu_clock_before", "worker_gpu_clock", "worker_copy_output_complete",
                  "worker_action_received", "worker_result_sent", "controller_action_duration",
                  "goodput", "requests_queued", "copies_loaded")


def action_row(p, msg, now: int, padded: int = 0) -> tuple:
    """The action log's row (logs.ACTION_COLUMNS) for the result `msg` (controller time) of `p`;
    `padded`: the compiled batch size an Infer ran."""
    a, sent = p.action, p.sent

    def rel(t):                 # relative to when the action was sent; 0: none
        return t - sent if t else 0
    clock, queued, copies = p.context or (0, 0, 0)
    head = (now, a.action_id, type(a).__name__)
    where = (p.worker.id, getattr(a, "gpu_id", -1), getattr(a, "model_id", -1))
    expected = getattr(a, "expected_ns", 0)
    t = type(msg)
    if t is s.InferResult:
        goodput = msg.exec_duration * a.batch_size // padded if padded else msg.exec_duration
        return (*head, 0, *where, a.batch_size, expected, msg.exec_duration, rel(p.expected_end),
                rel(msg.exec_end), clock, msg.gpu_clock_before, msg.gpu_clock, rel(msg.copy_output_end),
                rel(msg.received), rel(msg.sent), now - sent, goodput, queued, copies)
    if t is s.LoadWeightsResult:
        return (*head, 0, *where, 1, expected, msg.duration, rel(p.expected_end), rel(msg.end), 0, 0, 0,
                0, rel(msg.received), rel(msg.sent), now - sent, msg.duration, queued, copies)
    if t is s.EvictWeightsResult:
        return (*head, 0, *where, 1, 0, msg.end - msg.begin, 0, rel(msg.end), 0, 0, 0, 0,
                rel(msg.received), rel(msg.sent), now - sent, 0, queued, copies)
    status = getattr(msg, "status", 0)      # an ErrorResult (or a result the log has no row for)
    return (*head, status, *where, getattr(a, "batch_size", 0), expected, 0, rel(p.expected_end), 0,
            clock, 0, 0, 0, rel(msg.received), rel(msg.sent), now - sent, 0, queued, copies)


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
        # whether rows are written: build a row only then (hot path; an attribute, not a
        # property, since it is read per request)
        self.on = self._file is not None

    def add(self, row: tuple) -> None:
        if self.on:
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
            self.on = False


def open_logs(directory: Path | None, request_name: str, action_name: str):
    """(request log, action log); pass directory=None to disable both."""
    if directory is None:
        return TsvLog(None, REQUEST_COLUMNS), TsvLog(None, ACTION_COLUMNS)
    os.makedirs(directory, exist_ok=True)
    return (TsvLog(Path(directory) / request_name, REQUEST_COLUMNS),
            TsvLog(Path(directory) / action_name, ACTION_COLUMNS))
