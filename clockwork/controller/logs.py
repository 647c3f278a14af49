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

Rows are kept as tuples on the hot path and written in bulk when flushed (from the event loop's
housekeeping, every 50 ms, so `tail -F` and `cw plot` see a running controller's rows at once),
so logging costs one tuple per event while serving. Turning rows into text costs several us per
row on the loop thread when flushed; with [logging] writer_process = true the controller hands
each flush's rows, msgpack encoded, to a writer child process (`python -m
clockwork.controller.logs PATH`) that formats and appends them, and its loop thread pays well
under a microsecond per row. Should the child die, the rows are formatted in-process from then
on. Off by default: on the 2-core development machine the extra processes cost more latency
than the loop thread saved (BENCHMARKS.md, issue 13 part 2). A new run never truncates a previous run's logs:
they are renamed aside first (see clockwork.runfiles).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec

import clockwork

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


def _text(rows) -> str:
    return "".join("\t".join(map(str, r)) + "\n" for r in rows)


_encode_rows = msgspec.msgpack.Encoder().encode


class TsvLog:
    """Append-only TSV with a header line; rows are tuples of plain values (ints, floats,
    strs). `writer_process`: rows are formatted and written by a child process."""

    def __init__(self, path: Path | None, columns: tuple[str, ...], writer_process: bool = False):
        self.path = path
        self.columns = columns
        self.rows: list[tuple] = []
        self._file = None
        self._writer: subprocess.Popen | None = None
        self.kept: Path | None = None       # where the previous run's file of this name went
        if path is not None:
            self._file, self.kept = open_new(path, buffering=1 << 20)
            self._file.write("\t".join(columns) + "\n")
            self._file.flush()
            if writer_process:
                self._start_writer()
        # whether rows are written: build a row only then (hot path; an attribute, not a
        # property, since it is read per request)
        self.on = path is not None

    def _start_writer(self) -> None:
        env = dict(os.environ)      # the child imports this very clockwork
        root = str(Path(clockwork.__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
        try:
            self._writer = subprocess.Popen([sys.executable, "-m", "clockwork.controller.logs", str(self.path)],
                                            stdin=subprocess.PIPE, env=env)
        except OSError:
            return                  # formatted in-process, as without the option
        self._file.close()          # the child appends from here on
        self._file = None

    def add(self, row: tuple) -> None:
        if self.on:
            self.rows.append(row)

    def flush(self) -> None:
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        if self._writer is not None:
            payload = _encode_rows(rows)
            try:
                self._writer.stdin.write(len(payload).to_bytes(4, "little") + payload)
                self._writer.stdin.flush()
                return
            except (BrokenPipeError, OSError, ValueError):      # the child is gone: write here
                self._stop_writer()
        if self._file is None and self.path is not None:
            self._file = open(self.path, "a", buffering=1 << 20)
        if self._file is not None:
            self._file.write(_text(rows))
            self._file.flush()

    def _stop_writer(self) -> None:
        w, self._writer = self._writer, None
        try:
            w.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()

    def close(self) -> None:
        if not self.on:
            return
        self.flush()
        if self._writer is not None:
            self._stop_writer()
        if self._file is not None:
            self._file.close()
            self._file = None
        self.on = False


def open_logs(directory: Path | None, request_name: str, action_name: str, writer_process: bool = False):
    """(request log, action log); pass directory=None to disable both."""
    if directory is None:
        return TsvLog(None, REQUEST_COLUMNS), TsvLog(None, ACTION_COLUMNS)
    os.makedirs(directory, exist_ok=True)
    return (TsvLog(Path(directory) / request_name, REQUEST_COLUMNS, writer_process),
            TsvLog(Path(directory) / action_name, ACTION_COLUMNS, writer_process))


def write_rows(path: str, stream) -> None:
    """The writer child's loop: length-prefixed msgpack batches of rows from `stream`, appended
    to `path` as TSV lines, until the stream ends (the controller closed the log or died)."""
    decode = msgspec.msgpack.Decoder(list[list]).decode
    with open(path, "a", buffering=1 << 20) as f:
        while True:
            head = stream.read(4)
            if len(head) < 4:
                return
            body = stream.read(int.from_bytes(head, "little"))
            f.write(_text(decode(body)))
            f.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C stops the controller, which closes us
    write_rows(sys.argv[1], sys.stdin.buffer)
