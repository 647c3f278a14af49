"""SLO attainment and goodput from a controller request log, computed the same way for a real
run and a simulated one (the fidelity check of `cw simulate` compares the two)."""
from __future__ import annotations

import csv
from pathlib import Path


class LogOutcome:
    __slots__ = ("requests", "successes", "slo_met", "duration_s")

    def __init__(self, requests: int, successes: int, slo_met: int, duration_s: float):
        self.requests, self.successes, self.slo_met, self.duration_s = requests, successes, slo_met, duration_s

    @property
    def attainment(self) -> float:
        """Successes answered by their deadline, percent of all requests in the log."""
        return 100.0 * self.slo_met / self.requests if self.requests else 100.0

    @property
    def goodput(self) -> float:
        return self.slo_met / self.duration_s

    def __repr__(self):
        return (f"LogOutcome(requests={self.requests}, successes={self.successes}, "
                f"attainment={self.attainment:.3f}%, goodput={self.goodput:.1f} r/s)")


def from_request_log(path: str | Path, duration_s: float, sent: int = 0) -> LogOutcome:
    """Counts from clockwork_request_log.tsv: a request met its SLO if it succeeded (result 0)
    and was answered within it (latency <= deadline: the log's deadline is the SLO, relative to
    arrival).
    `sent`: requests the client sent, if known; those never answered (so in no log) count as
    misses."""
    n = ok = met = 0
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            n += 1
            if row["result"] == "0":
                ok += 1
                if int(row["latency"]) <= int(row["deadline"]):
                    met += 1
    return LogOutcome(max(n, sent), ok, met, duration_s)
