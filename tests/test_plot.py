"""`cw plot`: the streamed aggregation against generated logs with known content, the PNGs it
writes (opened as images), bad input, and a log recorded from a real emulated run."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clockwork.controller.logs import ACTION_COLUMNS, REQUEST_COLUMNS
from clockwork.telemetry import plot as cwplot

pytest.importorskip("matplotlib", reason="cw plot needs the 'plot' extra (matplotlib)")
from PIL import Image  # noqa: E402  (a matplotlib dependency)

pytestmark = pytest.mark.timeout(120)
MS = 1_000_000
T0 = 5_000_000_000_000
FIGURES = ("throughput.png", "latency_cdf.png", "latency_percentiles.png", "slo_attainment.png",
           "batch_sizes.png", "coldstarts.png", "prediction_error.png")


def _action(**values) -> tuple:
    """An action log row: the named columns set, every other 0."""
    row = dict.fromkeys(ACTION_COLUMNS, 0)
    assert set(values) <= set(row)
    row.update(values)
    return tuple(row.values())


class Generated:
    """Writes request and action logs with the controller's columns and remembers the truth."""

    def __init__(self, directory: Path, seconds: int = 30, seed: int = 7):
        rng = random.Random(seed)
        self.per_second, self.met_per_second = [], []
        self.latencies, self.batches, self.errors = [], [], []
        self.coldstarts = 0
        req_rows, act_rows = [], []
        rid = aid = 0
        for sec in range(seconds):
            n = 20 + 10 * (sec % 5)                      # throughput varies over time
            met = 0
            for k in range(n):
                t = T0 + sec * 10**9 + k * (10**9 // n)
                status = 0 if rng.random() < 0.9 else 8
                latency = rng.randint(2 * MS, 150 * MS)
                deadline_met = int(status == 0 and latency <= 100 * MS)
                cold = int(rng.random() < 0.05)
                rid += 1
                req_rows.append((t, rid, status, 0, rid % 4, 0.0, latency, 100 * MS,
                                 deadline_met, rid, rid, cold, 1, 0))
                met += deadline_met
                self.coldstarts += cold
                if status == 0:
                    self.latencies.append(latency)
            self.per_second.append(n)
            self.met_per_second.append(met)
            for k in range(10):
                aid += 1
                t = T0 + sec * 10**9 + k * 10**8 + 1
                batch = rng.choice([1, 2, 4, 8])
                expected = rng.randint(2 * MS, 8 * MS)
                actual = expected - rng.randint(-300_000, 300_000)
                act_rows.append(_action(t=t, action_id=aid, action_type="Infer", model_id=aid % 4,
                                        batch_size=batch, expected_exec_duration=expected,
                                        worker_exec_duration=actual, worker_gpu_clock=1980))
                self.batches.append(batch)
                self.errors.append(expected - actual)
            aid += 1
            act_rows.append(_action(t=T0 + sec * 10**9 + 2, action_id=aid, action_type="LoadWeights",
                                    gpu_id=1, model_id=sec % 4, expected_exec_duration=2 * MS,
                                    worker_exec_duration=2 * MS))
            aid += 1   # a failed Infer: counted nowhere
            act_rows.append(_action(t=T0 + sec * 10**9 + 3, action_id=aid, action_type="Infer", status=21,
                                    gpu_id=1, batch_size=16, expected_exec_duration=MS))
        self.request_log = directory / "clockwork_request_log.tsv"
        self.action_log = directory / "clockwork_action_log.tsv"
        for path, cols, rows in ((self.request_log, REQUEST_COLUMNS, req_rows),
                                 (self.action_log, ACTION_COLUMNS, act_rows)):
            with open(path, "w") as f:
                f.write("\t".join(cols) + "\n")
                f.write("".join("\t".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture
def logs(tmp_path):
    return Generated(tmp_path)


def test_scan_counts_what_the_logs_hold(logs):
    s = cwplot.scan(logs.request_log, logs.action_log, chunk_rows=97)   # many chunks, odd size
    assert s.requests == sum(logs.per_second)
    assert list(s.series(s.answered)) == logs.per_second
    assert list(s.series(s.met)) == logs.met_per_second
    assert s.series(s.coldstarts).sum() == logs.coldstarts
    assert list(s.series(s.loads)) == [1] * len(logs.per_second)
    sizes = np.bincount(logs.batches)
    assert list(s.batch_sizes[:len(sizes)]) == list(sizes) and s.batch_sizes[len(sizes):].sum() == 0
    assert s.errors.sum() == len(logs.errors)
    # the error histogram's median bucket holds the true median
    cdf = np.cumsum(s.errors) / s.errors.sum()
    i = int(np.searchsorted(cdf, 0.5))
    true_median = float(np.median(logs.errors))
    assert cwplot.ERR_EDGES[i - 1] - cwplot.ERR_STEP_NS <= true_median <= cwplot.ERR_EDGES[i] + cwplot.ERR_STEP_NS
    # latency percentiles from the histogram: within one 1.2% bucket above the true value
    for q in (50, 99):
        true = float(np.percentile(logs.latencies, q, method="inverted_cdf"))
        got = cwplot._percentile_from_hist(s.latency, q)
        assert true <= got <= true * 1.025, q


def test_chunk_size_does_not_change_the_result(logs):
    a = cwplot.scan(logs.request_log, logs.action_log, chunk_rows=13)
    b = cwplot.scan(logs.request_log, logs.action_log)
    assert np.array_equal(a.latency, b.latency)
    assert np.array_equal(a.latency_by_bin[:a.duration_bins], b.latency_by_bin[:b.duration_bins])
    assert np.array_equal(a.answered.values, b.answered.values)
    assert np.array_equal(a.errors, b.errors)


def _check_image(path: Path) -> None:
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert img.shape[0] >= 300 and img.shape[1] >= 500, path
    assert img.std() > 10, f"{path.name} looks blank"
    assert (img < 200).mean() > 0.01, f"{path.name} has almost nothing drawn"


def test_cw_plot_writes_every_figure(logs, tmp_path):
    out = tmp_path / "figs"
    r = CliRunner().invoke(cwplot.plot_command, [str(logs.request_log.parent), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"{sum(logs.per_second)} requests" in r.output
    for name in FIGURES:
        assert f"wrote {out / name}" in r.output
        _check_image(out / name)


def test_only_an_action_log(logs, tmp_path):
    logs.request_log.unlink()
    r = CliRunner().invoke(cwplot.plot_command, [str(logs.action_log.parent), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == ["batch_sizes.png", "coldstarts.png", "prediction_error.png"]


def test_truncated_rows_are_skipped(logs, tmp_path):
    with open(logs.request_log, "a") as f:
        f.write(f"{T0 + 10**9}\t999999\t0\t0\t1")      # a row cut short by a killed controller
    r = CliRunner().invoke(cwplot.plot_command, [str(logs.request_log.parent), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "1 malformed rows skipped" in r.output
    assert f"{sum(logs.per_second)} requests" in r.output


def test_bad_input_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(cwplot.plot_command, [str(tmp_path)])
    assert r.exit_code == 1 and "no request or action log" in r.output and r.exception is not None
    assert not isinstance(r.exception, (ValueError, OSError))       # a ClickException, no traceback
    (tmp_path / "clockwork_request_log.tsv").write_text("t\tresult\n1\t0\n")
    r = CliRunner().invoke(cwplot.plot_command, [str(tmp_path)])
    assert r.exit_code == 1 and "no column latency, deadline_met" in r.output
    r = CliRunner().invoke(cwplot.plot_command, [str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output


@pytest.mark.timeout(180)
def test_plots_of_a_recorded_run(tmp_path):
    from clockwork.local import LocalCluster
    logdir = tmp_path / "logs"
    with LocalCluster(gpus=2, log_dir=logdir) as cluster:
        result = cluster.run_client("simple", ["--duration", "3"], timeout=120)
    assert result.returncode == 0, result.stdout
    answered = int(re.search(r"answered=(\d+)", result.stdout).group(1))
    r = CliRunner().invoke(cwplot.plot_command, [str(logdir)])
    assert r.exit_code == 0, r.output
    assert f"{answered} requests" in r.output
    for name in FIGURES:
        _check_image(logdir / "plots" / name)
