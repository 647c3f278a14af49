"""The Azure Functions 2019 trace: reading it, mapping it onto models, and a synthetic twin.

File format (AzurePublicDataset, AzureFunctionsDataset2019): one CSV per day,
invocations_per_function_md.anon.dNN.csv (NN = 01..14), header
    HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440
then one row per function with its invocation count in each minute of the day.

Mapping, as the original: rows are sorted by total invocations (busiest first), row i drives
model instance (n_models x i) // n_rows, each row's minute counts become Poisson rates
count x scale / 60 per second, and scale = load_factor x 0.125 x num_workers (0.125 was the
original's estimate of one worker's share of the trace). The number of instances depends on a
memory level 1..4 (see COPIES_BY_MEMORY_LEVEL).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..values import POSITIVE, POSITIVE_INT, Spec

MINUTES = 1440
KEY_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
FILE_PATTERNS = ("invocations_per_function_md.anon.d{:02d}.csv",
                 "invocations_per_function_md.svls.anon.d{:02d}.csv")   # the original's local name
TRIGGERS = ("http", "timer", "queue", "event", "storage", "orchestration", "others")

# Memory level -> instances. The original loaded `copies` of each of its 61-model zoo
# (3, 13, 29, 66 copies: 183, 793, 1769 and 4026 instances) or that many resnet50 copies
# (200, 800, 1800, 3600). Our zoo has fewer models, so the *total* is kept and split evenly
# across the zoo's models, which keeps the memory pressure the experiment was designed for.
COPIES_BY_MEMORY_LEVEL = {1: (183, 200), 2: (793, 800), 3: (1769, 1800), 4: (4026, 3600)}
LOAD_PER_WORKER = 0.125


class TraceError(ValueError):
    """The trace is missing or malformed; the message names the file and line."""


@dataclass
class Trace:
    path: Path
    keys: list[tuple[str, str, str, str]]     # (owner, app, function, trigger) per row
    counts: np.ndarray                         # rows x minutes, uint32

    def __len__(self):
        return len(self.keys)

    def sorted_by_total(self) -> "Trace":
        """Busiest function first (stable for ties), as the original orders rows."""
        order = np.argsort(-self.counts.sum(axis=1, dtype=np.int64), kind="stable")
        return Trace(self.path, [self.keys[i] for i in order], self.counts[order])


def trace_path(day: int = 1, where: str | os.PathLike | None = None) -> Path:
    """The trace file for `day` (1..14) in `where` (a file or a directory), else in
    $AZURE_TRACE_DIR."""
    if where is not None and Path(where).is_file():
        return Path(where)
    if not 1 <= day <= 14:
        raise TraceError(f"Azure trace day must be 1..14, got {day}")
    directory = where or os.environ.get("AZURE_TRACE_DIR")
    if not directory:
        raise TraceError("no Azure trace: set AZURE_TRACE_DIR to the directory holding "
                         "invocations_per_function_md.anon.dNN.csv (or pass a path); "
                         "`cw trace synth DIR` writes a synthetic one")
    d = Path(directory)
    if not d.is_dir():
        from ..config import why_not_a_directory
        raise TraceError(f"Azure trace {'' if where else 'directory '}{d} {why_not_a_directory(d)}")
    for pattern in FILE_PATTERNS:
        p = d / pattern.format(day)
        if p.exists():
            return p
    raise TraceError(f"no trace for day {day} in {d} (looked for {', '.join(p.format(day) for p in FILE_PATTERNS)})")


def _parse_counts(line: str, rest: str, path, lineno: int) -> np.ndarray:
    try:
        row = np.fromstring(rest, sep=",", dtype=np.int64)
        if len(row) == MINUTES and (row >= 0).all():
            return row
    except ValueError:
        pass
    # Slow path only to say exactly what is wrong.
    fields = line.rstrip("\r\n").split(",")
    if len(fields) != len(KEY_COLUMNS) + MINUTES:
        raise TraceError(f"{path}:{lineno}: expected {len(KEY_COLUMNS) + MINUTES} comma-separated fields "
                         f"(4 keys + {MINUTES} minutes), got {len(fields)}")
    for col, text in enumerate(fields[len(KEY_COLUMNS):], start=1):
        try:
            v = int(text)
        except ValueError:
            raise TraceError(f"{path}:{lineno}: minute {col}: {text!r} is not a whole number") from None
        if v < 0:
            raise TraceError(f"{path}:{lineno}: minute {col}: negative count {v}")
    raise TraceError(f"{path}:{lineno}: unreadable counts")


def read_trace(path: str | os.PathLike) -> Trace:
    """Parse one day's file. Any malformed line raises TraceError naming it."""
    path = Path(path)
    try:
        f = open(path, "r", encoding="utf-8", newline="")
    except OSError as e:
        raise TraceError(f"cannot read Azure trace {path}: {e.strerror}") from None
    with f:
        try:
            return _read_lines(f, path)
        except UnicodeDecodeError:
            raise TraceError(f"{path} is not a text CSV file (binary or not UTF-8): "
                             "not an Azure Functions trace") from None


U32_MAX = int(np.iinfo(np.uint32).max)


def _read_lines(f, path: Path) -> Trace:
    """The lines of an open trace file (read_trace's body)."""
    keys: list[tuple[str, str, str, str]] = []
    rows: list[np.ndarray] = []
    header = f.readline().rstrip("\r\n").split(",")
    expected = list(KEY_COLUMNS) + [str(i) for i in range(1, MINUTES + 1)]
    if header != expected:
        if header[:4] != list(KEY_COLUMNS):
            raise TraceError(f"{path}:1: header must start with {','.join(KEY_COLUMNS)}, "
                             f"got {','.join(header[:4])!r}")
        raise TraceError(f"{path}:1: header must continue with minutes 1..{MINUTES} "
                         f"({len(header) - 4} minute columns found)")
    for lineno, line in enumerate(f, start=2):
        if not line.strip():
            continue
        parts = line.split(",", 4)
        if len(parts) < 5:
            raise TraceError(f"{path}:{lineno}: expected {len(KEY_COLUMNS) + MINUTES} comma-separated "
                             f"fields (4 keys + {MINUTES} minutes), got {len(parts)}")
        row = _parse_counts(line, parts[4], path, lineno)
        if row.max() > U32_MAX:
            raise TraceError(f"{path}:{lineno}: a count exceeds {U32_MAX}")
        rows.append(row.astype(np.uint32))      # (a day of 46,000 rows: 265 MB, not 530 twice)
        keys.append((parts[0], parts[1], parts[2], parts[3]))
    if not rows:
        raise TraceError(f"{path}: no functions in trace (only a header)")
    return Trace(path, keys, np.vstack(rows))


# ---------------------------------------------------------------- mapping onto models

def total_instances(memory_level: int, use_all_models: bool) -> int:
    if memory_level not in COPIES_BY_MEMORY_LEVEL:
        raise ValueError(f"memory_load_factor must be 1, 2, 3 or 4, got {memory_level}")
    return COPIES_BY_MEMORY_LEVEL[memory_level][0 if use_all_models else 1]


def copies_per_model(total: int, names: list[str]) -> list[tuple[str, int]]:
    """Split `total` instances across models as the original: each gets what is left
    divided by the models left (so they differ by at most one)."""
    out, left = [], total
    for i, name in enumerate(names):
        n = left // (len(names) - i)
        out.append((name, n))
        left -= n
    return out


def scale_factor(load_factor: float, num_workers: int) -> float:
    return load_factor * LOAD_PER_WORKER * num_workers


def row_to_model(n_rows: int, n_models: int) -> np.ndarray:
    """Model index for each (sorted) row: consecutive blocks, busiest rows first."""
    return (np.arange(n_rows, dtype=np.int64) * n_models) // n_rows


def row_blocks(n_rows: int, n_models: int) -> np.ndarray:
    """For more models than rows: row r's models are bounds[r] .. bounds[r + 1] - 1, consecutive
    blocks of n_models / n_rows (rounded), busiest rows first, as row_to_model the other way."""
    return -(-np.arange(n_rows + 1, dtype=np.int64) * n_models // n_rows)


def per_model_counts(trace: Trace, n_models: int) -> np.ndarray:
    """Counts of all rows mapped to each model, summed (n_models x minutes).

    Summing is exact for replay from a common start: the superposition of independent
    Poisson processes with the same interval boundaries is the Poisson process of the
    summed rates. It turns ~46,000 row streams into one stream per model.
    """
    t = trace.sorted_by_total()
    out = np.zeros((n_models, t.counts.shape[1]), dtype=np.int64)
    np.add.at(out, row_to_model(len(t), n_models), t.counts)
    return out


# ---------------------------------------------------------------- synthetic trace

def write_synthetic_trace(path: str | os.PathLike, functions: int = 8000, seed: int = 0,
                          mean_rate_per_min: float = 60.0, tail: float = 1.2,
                          diurnal_amplitude: float = 0.5, minutes: int = MINUTES) -> Path:
    """Write a trace in exactly the Azure 2019 format: per-function rates heavy-tailed
    (Pareto with index `tail`, scaled so the mean is mean_rate_per_min), a diurnal shape
    (1 + amplitude x sin, peak at 14:00, per-function phase jitter), Poisson minute counts;
    a tenth of the functions are timer-triggered with periodic counts, as in the real trace.
    The defaults give about 8,000 requests/s in all, so that the original's scale of 0.125
    per worker asks about 1,000 r/s of each worker."""
    if functions < 1:
        raise ValueError("functions must be >= 1")
    if not 0 <= diurnal_amplitude < 1:
        raise ValueError("diurnal amplitude must be in [0, 1)")
    if tail <= 1:
        raise ValueError("the Pareto tail index must be > 1 (finite mean)")
    if not 0 < mean_rate_per_min < float("inf"):
        raise ValueError(f"mean rate must be a number > 0, got {mean_rate_per_min!r}")
    rng = np.random.default_rng(seed)
    hexrng = random.Random(seed)
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        path = path / FILE_PATTERNS[0].format(1)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    pareto = rng.pareto(tail, functions) + 1.0          # mean tail/(tail-1)
    rates = pareto * mean_rate_per_min * (tail - 1) / tail
    minute = np.arange(minutes)
    owners = [f"{hexrng.getrandbits(256):064x}" for _ in range(max(1, functions // 4))]
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(list(KEY_COLUMNS) + [str(i) for i in range(1, minutes + 1)]) + "\n")
        for i in range(functions):
            owner = owners[hexrng.randrange(len(owners))]
            app = f"{hexrng.getrandbits(256):064x}"
            func = f"{hexrng.getrandbits(256):064x}"
            if rng.random() < 0.1:
                trigger = "timer"
                period = int(rng.choice([1, 5, 15, 60]))
                counts = np.where((minute + int(rng.integers(period))) % period == 0,
                                  max(1, int(round(rates[i] * period / 10))), 0)
            else:
                trigger = TRIGGERS[int(rng.choice([0, 2, 3, 4, 5, 6], p=[.55, .15, .12, .08, .05, .05]))]
                phase = rng.normal(0, 60)
                shape = 1 + diurnal_amplitude * np.sin(2 * np.pi * (minute - 8 * 60 - phase) / MINUTES)
                counts = rng.poisson(rates[i] * shape)
            f.write(f"{owner},{app},{func},{trigger},")
            f.write(",".join(map(str, counts.tolist())))
            f.write("\n")
    return path


# ---------------------------------------------------------------- `cw trace`

@click.group("trace")
def trace_command():
    """Azure Functions 2019 trace tools."""


@trace_command.command("synth")
@click.argument("out", type=click.Path())
@click.option("--functions", type=POSITIVE_INT.click(), default=8000, show_default=True, help="rows (functions) per day")
@click.option("--days", type=Spec(int, 1, 14).click(), default=1, show_default=True, help="write days d01..dNN")
@click.option("--seed", type=Spec(int, 0).click(), default=0, show_default=True)
@click.option("--mean-rate", type=POSITIVE.click(), default=60.0, show_default=True,
              help="mean invocations per minute per function (heavy-tailed across functions)")
@click.option("--diurnal", type=Spec(float, 0, 1, hi_open=True).click(), default=0.5, show_default=True, help="diurnal amplitude in [0, 1)")
def synth_command(out, functions, days, seed, mean_rate, diurnal):
    """Write a synthetic trace in the exact Azure 2019 format into directory OUT."""
    for d in range(1, days + 1):
        try:
            p = write_synthetic_trace(Path(out) / FILE_PATTERNS[0].format(d), functions, seed * 100 + d,
                                      mean_rate, diurnal_amplitude=diurnal)
        except (ValueError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"wrote {p}")
    click.echo(f"use it with: AZURE_TRACE_DIR={out} cw client HOST:PORT --workload azure")


@trace_command.command("info")
@click.argument("path", type=click.Path())
@click.option("--day", type=Spec(int, 1, 14).click(), default=1, show_default=True, help="day, when PATH is a directory")
def info_command(path, day):
    """Check a trace file (or directory) and summarise it."""
    try:
        t = read_trace(trace_path(day, path))
    except TraceError as e:
        raise click.ClickException(str(e)) from None
    per_min = t.counts.sum(axis=0)
    totals = t.counts.sum(axis=1)
    click.echo(f"{t.path}: {len(t)} functions, {int(totals.sum())} invocations, "
               f"{per_min.mean() / 60:.1f} r/s mean, peak minute {int(per_min.max())}, "
               f"busiest function {int(totals.max())} ({100 * totals.max() / max(totals.sum(), 1):.1f}%)")
