"""INFER4's time estimates (docs/design.md, "INFER4").

Exec: per model and compiled batch size, the `estimate_percentile` (p99) of the last
`estimate_window` measurements, seeded from the profiled exec_ns. Stored as ns x MHz and divided
by a GPU's last reported clock when used, as the original does, so one table serves GPUs running
at different clocks. A batch of n items runs the kernel of pad[n] (the next compiled size), so a
measurement of one compiled size sets the estimate of every n padded to it.
Weights: the same percentile over the last load durations, seeded from the profile.
"""
from __future__ import annotations

from ...percentiles import percentile
from ...transport.schema import ModelInfo
from .common import DEFAULT_CLOCK_MHZ, batch_tables

_tables: dict[tuple, tuple] = {}     # (batch sizes, exec ns) -> the tables instances share


def _shared_tables(info: ModelInfo) -> tuple:
    """(pad, compiled, est, first) for a model's profile, computed once per distinct profile:
    the many instances of one architecture share them (est is copied: it changes per model)."""
    key = (tuple(info.batch_sizes), tuple(info.exec_ns))
    tables = _tables.get(key)
    if tables is None:
        pad, exec_ns = batch_tables(info)
        first = {}
        for n in range(len(pad) - 1, 0, -1):
            first[pad[n]] = n
        tables = _tables[key] = (pad, sorted(set(pad[1:])), [e * DEFAULT_CLOCK_MHZ for e in exec_ns], first)
    return tables


class Estimates:
    """A model's estimates. Base class of INFER4's per-model state (slots: no per-access cost)."""
    __slots__ = ("pad", "top", "compiled", "est", "b1ns", "_first", "_windows", "_wpos",
                 "weights_est", "_weights_window", "_weights_pos")

    def __init__(self, info: ModelInfo):
        pad, compiled, est, first = _shared_tables(info)
        self.pad = pad                     # pad[n]: the compiled batch size n items run as
        self.top = len(pad) - 1            # largest compiled batch size
        self.compiled = compiled
        self.est = est[:]                  # ns x MHz, by items n
        self.b1ns = est[1] // DEFAULT_CLOCK_MHZ    # batch-1 estimate, ns at the nominal clock
        # _first[b]: the smallest n padded to compiled size b (the estimates a measurement sets)
        self._first = first
        self._windows: dict[int, list[int]] = {}    # compiled size -> last measurements (on first use)
        self._wpos: dict[int, int] = {}
        self.weights_est = max(1, info.weights_load_ns)
        self._weights_window: list[int] = []
        self._weights_pos = 0

    def measure(self, items: int, scaled: int, window: int, p: float) -> None:
        """An Infer of `items` items took `scaled` ns x MHz."""
        b = self.pad[items]
        w = self._windows.get(b)
        if w is None:
            w = self._windows[b] = []
        if len(w) < window:
            w.append(scaled)
        else:
            pos = self._wpos.get(b, 0)
            self._wpos[b] = (pos + 1) % window
            if w[pos] == scaled:
                return          # the same values in the window: the same percentile
            w[pos] = scaled
        value = int(percentile(w, p))
        est = self.est
        if est[b] == value:
            return              # (the sizes padded to b always share one estimate)
        for n in range(self._first[b], b + 1):
            est[n] = value
        self.b1ns = est[1] // DEFAULT_CLOCK_MHZ

    def measure_weights(self, duration: int, window: int, p: float) -> None:
        """A LoadWeights took `duration` ns."""
        w = self._weights_window
        if len(w) < window:
            w.append(duration)
        else:
            w[self._weights_pos] = duration
            self._weights_pos = (self._weights_pos + 1) % window
        self.weights_est = max(1, int(percentile(w, p)))
