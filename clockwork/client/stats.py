"""Client-side accounting: what was sent, what came back, and how fast.

Every print interval a line in the original's style (latencies in ms, over successful
requests; throughput counts every answer), with goodput and SLO attainment beside throughput
and percentiles and the success rate appended:

    throughput=401.83 goodput=400.10 slo=99.57% min=3.82 max=7.74 mean=4.96 p50=4.90 p99=7.10 success=100.00%

Goodput has one meaning everywhere (client, controller lines, `cw top`, metrics, `cw plot`):
successes answered within their SLO, as the controller judged it (InferResponse.within_slo);
slo is goodput over throughput. The last interval ends when sending stops (`stop()`): answers
that arrive while draining are counted in the summary, not crammed into a line over the few
milliseconds since the last one. At the end a summary with counts sent / answered / succeeded,
the run's rates, and one line per status.
Per-request cost is a few integer increments and one list append; the optional per-request
TSV is formatted only when it is enabled.
"""
from __future__ import annotations

import time
from typing import TextIO

import numpy as np

from ..status import Status
from .api import CONNECTION_LOST, NO_ANSWER, SEND_FAILED, status_name

TSV_HEADER = "t_sent\trequest_id\tmodel_id\tuser_id\tbatch_size\tslo_factor\tstatus\tlatency_ms\tcontroller_latency_ms\n"


class Stats:
    def __init__(self, print_interval_s: float = 10.0, log=print, tsv: TextIO | None = None,
                 clock=time.perf_counter):
        self.print_interval_s = print_interval_s
        self.log = log
        self.tsv = tsv
        self.clock = clock
        self.t0 = clock()
        self.sent = 0
        self.answered = 0                  # the controller answered (any status)
        self.by_status: dict[int, int] = {}
        self._lat: list[float] = []        # successful latencies (s) this interval
        self._answers_interval = 0
        self._ok_interval = 0
        self._met_interval = 0
        self.met = 0                       # successes within their SLO, whole run
        self.stopped_at: float | None = None
        self._interval_start = self.t0
        self.all_latencies: list[float] = []   # successful latencies of the whole run
        self.lines: list[str] = []

    # ------------------------------------------------------------------ per request

    def on_sent(self) -> None:
        self.sent += 1

    def on_answer(self, status: int, latency_s: float, within_slo: bool = False) -> None:
        """One request finished (answered, timed out or not sent); within_slo: the controller
        answered it by its deadline."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status == SEND_FAILED:
            self.sent -= 1                 # on_sent() was called, but it never left
        elif status >= 0:
            self.answered += 1
            self._answers_interval += 1
        if status == 0:
            self._ok_interval += 1
            self._lat.append(latency_s)
            if within_slo:
                self._met_interval += 1
                self.met += 1

    def record(self, t_sent: float, request_id: int, model_id: int, user_id: int, batch_size: int,
               slo_factor: float, status: int, latency_s: float, controller_latency_ns: int) -> None:
        """Per-request TSV row (only call when self.tsv is set)."""
        self.tsv.write(f"{t_sent - self.t0:.6f}\t{request_id}\t{model_id}\t{user_id}\t{batch_size}\t"
                       f"{slo_factor:g}\t{status}\t{latency_s * 1e3:.3f}\t{controller_latency_ns / 1e6:.3f}\n")

    # ------------------------------------------------------------------ periodic

    def maybe_print(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if now - self._interval_start >= self.print_interval_s:
            self.print_line(now)

    def print_line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self._interval_start, 1e-9)
        line = f"throughput={self._answers_interval / elapsed:.2f} goodput={self._met_interval / elapsed:.2f}"
        if self._answers_interval:
            line += f" slo={100.0 * self._met_interval / self._answers_interval:.2f}%"
        if self._lat:
            a = np.asarray(self._lat) * 1e3
            p50, p99 = np.percentile(a, [50, 99])
            line += f" min={a.min():.2f} max={a.max():.2f} mean={a.mean():.2f} p50={p50:.2f} p99={p99:.2f}"
            self.all_latencies.extend(self._lat)
        if self._answers_interval:
            line += f" success={100.0 * self._ok_interval / self._answers_interval:.2f}%"
        self._lat = []
        self._answers_interval = self._ok_interval = self._met_interval = 0
        self._interval_start = now
        self.lines.append(line)
        self.log(line)
        return line

    # ------------------------------------------------------------------ end

    def stop(self, now: float | None = None) -> None:
        """Sending stopped: close the last interval with a line over the time up to now (if it
        has any answers) and end the run's clock for the summary's rates."""
        now = self.clock() if now is None else now
        if self.stopped_at is None:
            self.stopped_at = now
            if self._answers_interval:
                self.print_line(now)

    @property
    def succeeded(self) -> int:
        return self.by_status.get(0, 0)

    def finished(self) -> int:
        return sum(self.by_status.values())

    def summary(self, outstanding: int = 0) -> str:
        """Final counts. `outstanding`: requests still unanswered when the run stopped."""
        lat = self.all_latencies + self._lat
        end = self.clock() if self.stopped_at is None else self.stopped_at
        elapsed = max(end - self.t0, 1e-9)
        lost = self.by_status.get(CONNECTION_LOST, 0)     # answered by the client: controller gone
        out = [f"Summary: {elapsed:.1f} s, sent={self.sent} answered={self.answered} "
               f"succeeded={self.succeeded}" + (f" connection lost={lost}" if lost else "") +
               f" unanswered={self.sent - self.answered - lost}"
               f" (client timeouts={self.by_status.get(NO_ANSWER, 0)}, still outstanding={outstanding},"
               f" not sent={self.by_status.get(SEND_FAILED, 0)})"]
        for code in sorted(self.by_status):
            if code >= 0 or code == CONNECTION_LOST:
                pct = 100.0 * self.by_status[code] / max(self.answered + lost, 1)
                out.append(f"  status {code} {status_name(code)}: {self.by_status[code]} ({pct:.2f}%)")
        if lat:
            a = np.asarray(lat) * 1e3
            p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
            out.append(f"  latency ms (successful): min={a.min():.2f} mean={a.mean():.2f} p50={p50:.2f} "
                       f"p99={p99:.2f} p99.9={p999:.2f} max={a.max():.2f}")
        if self.answered:
            out.append(f"  throughput={self.answered / elapsed:.2f} r/s goodput={self.met / elapsed:.2f} r/s "
                       f"(successes within their SLO) slo={100.0 * self.met / self.answered:.2f}% of answers")
        return "\n".join(out)


__all__ = ["Stats", "TSV_HEADER", "Status"]
