"""`cw plot LOGDIR`: PNG figures from the controller's request and action TSV logs, in the
spirit of the Clockwork paper's evaluation figures.

The logs are streamed in chunks of rows (numpy's C parser on each chunk) into fixed-size
accumulators: per-second counters, log-bucket latency histograms (overall and per second) and
a linear histogram of exec-time prediction errors. Memory grows with the run's duration, not
its number of requests, so a log of millions of requests plots in bounded memory.
matplotlib is imported only to draw (extra "plot": pip install 'clockwork[plot]').
"""
from __future__ import annotations

import io
import math
from itertools import islice
from pathlib import Path

import click
import numpy as np

from ..percentiles import histogram_percentile
from ..values import POSITIVE

CHUNK_ROWS = 200_000
ACTION_CODES = {"Infer": 1, "LoadWeights": 2, "EvictWeights": 3, "LoadModelFromDisk": 4,
                "ClearCache": 5, "GetWorkerState": 6, "Reset": 7}
INFER, LOAD = ACTION_CODES["Infer"], ACTION_CODES["LoadWeights"]
# latency buckets (ns) from 1 us to 1000 s; value v goes to bucket searchsorted(EDGES, v):
# 200 per decade (1.2% wide) for the overall CDF, 20 per decade for percentiles per time bin
LAT_EDGES = np.logspace(3, 12, 9 * 200 + 1)
BIN_LAT_EDGES = np.logspace(3, 12, 9 * 20 + 1)
# prediction error buckets (ns): 10 us wide over +-100 ms, plus an underflow and an overflow bucket
ERR_RANGE_NS = 100_000_000
ERR_STEP_NS = 10_000
ERR_EDGES = np.arange(-ERR_RANGE_NS, ERR_RANGE_NS + ERR_STEP_NS, ERR_STEP_NS)

REQUEST_NEEDS = ("t", "result", "latency", "deadline_met")
ACTION_NEEDS = ("t", "action_type", "status", "batch_size", "expected_exec_duration", "worker_exec_duration")


class LogError(ValueError):
    """A log file is missing, unreadable or lacks a column a figure needs."""


class Series:
    """Per-time-bin sums that grow as later bins appear."""

    def __init__(self, dtype=np.int64):
        self.values = np.zeros(0, dtype=dtype)

    def add(self, bins: np.ndarray, weights: np.ndarray | None = None) -> None:
        if len(bins) == 0:
            return
        counts = np.bincount(bins, weights=weights)
        if len(counts) > len(self.values):
            self.values = np.pad(self.values, (0, len(counts) - len(self.values)))
        self.values[:len(counts)] += counts.astype(self.values.dtype)


class Summary:
    """Everything the figures need, accumulated chunk by chunk."""

    def __init__(self, t0: int, bin_s: float):
        self.t0 = t0
        self.bin_ns = int(bin_s * 1e9)
        self.bin_s = bin_s
        self.requests = 0
        self.answered, self.successes, self.met, self.coldstarts = Series(), Series(), Series(), Series()
        self.latency = np.zeros(len(LAT_EDGES) + 1, dtype=np.int64)           # successes, all time
        self.latency_by_bin = np.zeros((0, len(BIN_LAT_EDGES) + 1), dtype=np.int32)
        self.actions = 0
        self.infers, self.batch_items, self.loads = Series(), Series(), Series()
        self.batch_sizes = np.zeros(1, dtype=np.int64)                         # index = batch size
        self.errors = np.zeros(len(ERR_EDGES) + 1, dtype=np.int64)
        self.skipped_rows = 0

    def bins(self, t: np.ndarray) -> np.ndarray:
        return np.maximum((t - self.t0) // self.bin_ns, 0).astype(np.int64)

    def add_requests(self, cols: dict[str, np.ndarray]) -> None:
        t = cols["t"]
        self.requests += len(t)
        b = self.bins(t)
        ok = cols["result"] == 0
        met = ok & (cols["deadline_met"] != 0)
        self.answered.add(b)
        self.successes.add(b[ok])
        self.met.add(b[met])
        if "is_coldstart" in cols:
            self.coldstarts.add(b[cols["is_coldstart"] != 0])
        latency = cols["latency"][ok]
        self.latency += np.bincount(np.searchsorted(LAT_EDGES, latency), minlength=len(self.latency))
        lat_bucket = np.searchsorted(BIN_LAT_EDGES, latency)
        bo = b[ok]
        if len(bo):
            need = int(bo.max()) + 1
            if need > len(self.latency_by_bin):
                grow = max(need, 2 * len(self.latency_by_bin))
                self.latency_by_bin = np.concatenate(
                    [self.latency_by_bin,
                     np.zeros((grow - len(self.latency_by_bin), len(BIN_LAT_EDGES) + 1), np.int32)])
            np.add.at(self.latency_by_bin, (bo, lat_bucket), 1)

    def add_actions(self, cols: dict[str, np.ndarray]) -> None:
        t = cols["t"]
        self.actions += len(t)
        b = self.bins(t)
        ok = cols["status"] == 0
        infer = ok & (cols["action_type"] == INFER)
        batch = cols["batch_size"][infer].astype(np.int64)
        self.infers.add(b[infer])
        self.batch_items.add(b[infer], batch)
        self.loads.add(b[ok & (cols["action_type"] == LOAD)])
        counts = np.bincount(batch)
        if len(counts) > len(self.batch_sizes):
            self.batch_sizes = np.pad(self.batch_sizes, (0, len(counts) - len(self.batch_sizes)))
        self.batch_sizes[:len(counts)] += counts
        expected = cols["expected_exec_duration"][infer]
        actual = cols["worker_exec_duration"][infer]
        known = expected > 0
        err = expected[known] - actual[known]
        self.errors += np.bincount(np.searchsorted(ERR_EDGES, err), minlength=len(self.errors))

    # -- derived numbers (also what the tests check)

    @property
    def duration_bins(self) -> int:
        return max(len(self.answered.values), len(self.infers.values), len(self.loads.values))

    def series(self, s: Series) -> np.ndarray:
        v = s.values.astype(np.float64)
        return np.pad(v, (0, self.duration_bins - len(v)))


def _t0(paths: list[Path]) -> int | None:
    """Earliest t among the first data rows of the logs (they share the controller's clock)."""
    firsts = []
    for p in paths:
        with open(p) as f:
            header = f.readline().rstrip("\n").split("\t")
            if "t" not in header:
                raise LogError(f"{p}: no column t (header: {' '.join(header)})")
            i = header.index("t")
            for line in f:
                try:
                    firsts.append(int(float(line.split("\t")[i])))
                    break
                except (ValueError, IndexError):
                    continue
    return min(firsts) if firsts else None


def read_chunks(path: Path, needs: tuple[str, ...], optional: tuple[str, ...] = (),
                chunk_rows: int = CHUNK_ROWS, skipped: list | None = None):
    """Yield {column: float64 array} for chunks of `chunk_rows` rows of a TSV log.

    Action type names are turned into ACTION_CODES. Rows that do not parse (e.g. a line cut
    short by a killed controller) are skipped and counted in skipped[0].
    """
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        missing = [c for c in needs if c not in header]
        if missing:
            raise LogError(f"{path}: no column {', '.join(missing)} (header: {' '.join(header)})")
        names = list(needs) + [c for c in optional if c in header]
        idx = [header.index(c) for c in names]
        while True:
            lines = list(islice(f, chunk_rows))
            if not lines:
                return
            text = "".join(lines)
            if "action_type" in names:
                for name, code in ACTION_CODES.items():
                    text = text.replace(f"\t{name}\t", f"\t{code}\t")
            try:
                data = np.loadtxt(io.StringIO(text), delimiter="\t", usecols=idx, dtype=np.float64,
                                  ndmin=2)
            except ValueError:
                data = _parse_slowly(text.splitlines(), idx, len(header), skipped)
            yield {n: data[:, i] for i, n in enumerate(names)}


def _parse_slowly(lines: list[str], idx: list[int], ncols: int, skipped: list | None) -> np.ndarray:
    rows = []
    for line in lines:
        cells = line.split("\t")
        if len(cells) != ncols:
            if skipped is not None:
                skipped[0] += 1
            continue
        try:
            rows.append([float(cells[i]) for i in idx])
        except ValueError:
            if skipped is not None:
                skipped[0] += 1
    return np.array(rows, dtype=np.float64).reshape(-1, len(idx))


def scan(request_log: Path | None, action_log: Path | None, bin_s: float = 1.0,
         chunk_rows: int = CHUNK_ROWS) -> Summary:
    paths = [p for p in (request_log, action_log) if p is not None]
    t0 = _t0(paths)
    if t0 is None:
        raise LogError("the logs hold no rows (" + ", ".join(str(p) for p in paths) + ")")
    summary = Summary(t0, bin_s)
    skipped = [0]
    if request_log is not None:
        for cols in read_chunks(request_log, REQUEST_NEEDS, ("is_coldstart",), chunk_rows, skipped):
            summary.add_requests(cols)
    if action_log is not None:
        for cols in read_chunks(action_log, ACTION_NEEDS, (), chunk_rows, skipped):
            summary.add_actions(cols)
    summary.skipped_rows = skipped[0]
    return summary


# ---------------------------------------------------------------------- figures

def _percentile_from_hist(counts: np.ndarray, q: float, edges: np.ndarray = LAT_EDGES) -> float:
    """q-th percentile (ns) from bucket counts over `edges`: upper edge of the bucket; NaN if empty."""
    return histogram_percentile(counts.tolist(), q, edges)


def _rebin(values: np.ndarray, factor: int, how: str = "sum") -> np.ndarray:
    if factor <= 1:
        return values
    n = len(values) // factor * factor
    head = values[:n].reshape(-1, factor, *values.shape[1:])
    tail = values[n:]
    out = head.sum(axis=1) if how == "sum" else head.max(axis=1)
    if len(tail):
        extra = tail.sum(axis=0) if how == "sum" else tail.max(axis=0)
        out = np.concatenate([out, extra[None]])
    return out


def plot(summary: Summary, out_dir: Path, max_points: int = 1500) -> list[Path]:
    """Write every figure the logs have data for; returns their paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException("cw plot needs matplotlib: pip install 'clockwork[plot]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    nb = summary.duration_bins
    factor = max(1, math.ceil(nb / max_points))
    step = summary.bin_s * factor
    x = np.arange(math.ceil(nb / factor)) * step

    def per_s(s: Series) -> np.ndarray:
        return _rebin(summary.series(s), factor) / step

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    if summary.requests:
        answered, met = summary.series(summary.answered), summary.series(summary.met)
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(x, per_s(summary.answered), label="throughput (answered)")
        ax.plot(x, per_s(summary.met), label="goodput (succeeded within SLO)")
        ax.set(xlabel="time (s)", ylabel="requests / s", title="Throughput and goodput")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "throughput.png")

        lat = summary.latency
        if lat.sum():
            fig, ax = plt.subplots(figsize=(7, 4))
            edges_ms = LAT_EDGES / 1e6
            cdf = np.cumsum(lat[:-1])[:len(edges_ms)] / lat.sum()
            ax.step(edges_ms, cdf, where="post")
            ax.set_xscale("log")
            pcts = {q: _percentile_from_hist(lat, q) / 1e6 for q in (50, 99, 99.9)}
            ax.set(xlabel="latency (ms)", ylabel="fraction of successful requests",
                   title="Latency CDF  " + "  ".join(f"p{q:g}={v:.2f} ms" for q, v in pcts.items()))
            first, last = np.argmax(cdf > 0), min(len(cdf) - 1, np.argmax(cdf >= 1) + 1)
            ax.set_xlim(max(1e-3, edges_ms[first] / 2), edges_ms[last] * 2)
            ax.grid(alpha=0.3, which="both")
            save(fig, "latency_cdf.png")

            by_bin = _rebin(summary.latency_by_bin[:nb].astype(np.int64), factor)
            fig, ax = plt.subplots(figsize=(9, 4))
            for q in (50, 99, 99.9, 100):
                y = np.array([_percentile_from_hist(row, q, BIN_LAT_EDGES) for row in by_bin]) / 1e6
                ax.plot(x[:len(y)], y, label="max" if q == 100 else f"p{q:g}")
            ax.set_yscale("log")
            ax.set(xlabel="time (s)", ylabel="latency (ms)", title="Latency percentiles over time")
            ax.legend()
            ax.grid(alpha=0.3, which="both")
            save(fig, "latency_percentiles.png")

        a = _rebin(answered, factor)
        with np.errstate(invalid="ignore", divide="ignore"):
            att = np.where(a > 0, _rebin(met, factor) / a, np.nan) * 100
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(x[:len(att)], att, drawstyle="steps-post")
        total = met.sum() / max(1, answered.sum()) * 100
        ax.set(xlabel="time (s)", ylabel="SLO attainment (%)",
               title=f"SLO attainment over time (overall {total:.4f}%)")
        ax.set_ylim(min(90.0, np.nanmin(att) - 1 if np.isfinite(att).any() else 90.0), 100.5)
        ax.grid(alpha=0.3)
        save(fig, "slo_attainment.png")

    if summary.batch_sizes[1:].sum():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        sizes = np.nonzero(summary.batch_sizes)[0]
        ax1.bar([str(s) for s in sizes], summary.batch_sizes[sizes])
        ax1.set(xlabel="batch size", ylabel="Infer actions", title="Batch sizes")
        infers = _rebin(summary.series(summary.infers), factor)
        items = _rebin(summary.series(summary.batch_items), factor)
        with np.errstate(invalid="ignore", divide="ignore"):
            ax2.plot(x[:len(infers)], np.where(infers > 0, items / infers, np.nan))
        ax2.set(xlabel="time (s)", ylabel="mean batch size", title="Mean batch size over time")
        ax2.grid(alpha=0.3)
        save(fig, "batch_sizes.png")

    if summary.requests or summary.actions:
        fig, ax = plt.subplots(figsize=(9, 4))
        if summary.requests:
            ax.plot(x, per_s(summary.coldstarts), label="cold-start requests / s")
        if summary.actions:
            ax.plot(x, per_s(summary.loads), label="LoadWeights / s")
        ax.set(xlabel="time (s)", ylabel="per second", title="Cold starts")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "coldstarts.png")

    if summary.errors.sum():
        err = summary.errors
        fig, ax = plt.subplots(figsize=(7, 4))
        edges_ms = ERR_EDGES / 1e6
        cdf = np.cumsum(err)[:len(edges_ms)] / err.sum()
        ax.step(edges_ms, cdf, where="post")
        lo = edges_ms[max(0, np.argmax(cdf > 0.0005) - 1)]
        hi = edges_ms[min(len(edges_ms) - 1, np.argmax(cdf >= 0.9995) + 1)]
        ax.set_xlim(min(lo, -0.05), max(hi, 0.05))
        outside = err[0] + err[-1]
        ax.set(xlabel="predicted - actual exec time (ms)", ylabel="fraction of Infer actions",
               title="Exec-time prediction error" + (f" ({outside} beyond ±100 ms)" if outside else ""))
        ax.axvline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
        save(fig, "prediction_error.png")
    return written


def find_logs(logdir: Path, request_name: str | None, action_name: str | None) -> tuple[Path | None, Path | None]:
    from ..config import ConfigError, load_config
    try:
        names = load_config()["logging"]
    except ConfigError:
        names = {"request_log": "clockwork_request_log.tsv", "action_log": "clockwork_action_log.tsv"}
    req = logdir / (request_name or names["request_log"])
    act = logdir / (action_name or names["action_log"])
    req = req if req.is_file() else None
    act = act if act.is_file() else None
    if req is None and act is None:
        raise LogError(f"no request or action log in {logdir} (looked for "
                       f"{request_name or names['request_log']} and {action_name or names['action_log']})")
    return req, act


@click.command("plot")
@click.argument("logdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the PNGs (default LOGDIR/plots).")
@click.option("--bin", "bin_s", type=POSITIVE.click("S"), default=1.0, show_default=True, help="Seconds per time bin.")
@click.option("--request-log", default=None, help="Request log file name in LOGDIR (default from config).")
@click.option("--action-log", default=None, help="Action log file name in LOGDIR (default from config).")
def plot_command(logdir, out, bin_s, request_log, action_log):
    """Figures from the controller's request and action logs in LOGDIR: throughput and goodput,
    latency CDF and percentiles over time, SLO attainment, batch sizes, cold starts, and the
    CDF of exec-time prediction error."""
    if not logdir.is_dir():
        from ..config import why_not_a_directory
        raise click.ClickException(f"log directory {logdir} {why_not_a_directory(logdir)}")
    try:
        req, act = find_logs(logdir, request_log, action_log)
        summary = scan(req, act, bin_s)
    except (LogError, OSError, UnicodeDecodeError) as e:
        raise click.ClickException(str(e))
    click.echo(f"{summary.requests} requests, {summary.actions} actions over "
               f"{summary.duration_bins * bin_s:g} s" +
               (f"; {summary.skipped_rows} malformed rows skipped" if summary.skipped_rows else ""))
    out = out or logdir / "plots"
    try:
        written = plot(summary, out)
    except OSError as e:
        raise click.ClickException(f"cannot write plots to {out}: {e.strerror or e}") from None
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    plot_command()
