"""azure and azure_scalability_exp: replay the Azure Functions 2019 trace onto model instances
(mapping and scale as the original; see clockwork.client.azure)."""
from __future__ import annotations

import random

import numpy as np

from .. import arrivals
from .. import azure as az
from .basic import seed_of
from .engine import Engine, Model, WorkloadError
from .registry import Param, workload

COMMON = (Param("num_workers", int, 1, "workers serving the load (scale = load x 0.125 x workers)", positive=True),)
MEMORY = Param("memory_load_factor", int, 4, "instances: 1 ~200, 2 ~800, 3 ~1800, 4 ~4000", (1, 2, 3, 4))
TRACE_DIR = Param("trace_dir", str, "", "trace directory or file (default: $AZURE_TRACE_DIR)")


def _read(engine: Engine, day: int, trace_dir: str) -> az.Trace:
    try:
        return az.read_trace(az.trace_path(day, trace_dir or None))
    except az.TraceError as e:
        raise WorkloadError(str(e)) from None


def _load_instances(engine: Engine, memory_level: int, use_all_models: bool, model: str,
                    instances: int = 0) -> list[Model]:
    total = instances or az.total_instances(memory_level, use_all_models)
    if not use_all_models:
        return engine.load(model, total)
    models: list[Model] = []
    for name, n in az.copies_per_model(total, list(engine.zoo)):
        if n:
            models += engine.load(name, n)
    # The original inserted each instance at a pseudo-random position so that the busiest
    # trace rows do not all land on one model type; a seeded shuffle does the same.
    random.Random(seed_of(engine, "shuffle")).shuffle(models)
    return models


def _replay(engine: Engine, trace: az.Trace, models: list[Model], scale_segments, interval: float,
            randomise: bool, spread: bool = False) -> None:
    """One stream per model (rows summed, exact) or, with randomised starts, one per row; with
    `spread` and more instances than rows, one per row whose requests go to a block of
    instances (so a trace of ~46,000 functions can drive a million instances)."""
    if spread and len(trace) < len(models):
        t = trace.sorted_by_total()
        bounds = az.row_blocks(len(t), len(models))
        rng = random.Random(seed_of(engine, "mapping"))
        for r in np.flatnonzero(t.counts.any(axis=1)):
            segs = (arrivals.random_start_segments(t.counts[r], 1.0, interval, rng) if randomise
                    else arrivals.trace_segments(t.counts[r], 1.0, interval))
            engine.open_loop_spread(models[bounds[r]:bounds[r + 1]],
                                    arrivals.piecewise_poisson(arrivals.multiply(segs, scale_segments()),
                                                               seed_of(engine, int(r))),
                                    seed_of(engine, "spread", int(r)), int(r))
        return
    if len(trace) < len(models):
        engine.log(f"note: {len(trace)} trace rows for {len(models)} instances: "
                   f"{len(models) - len(trace)} instances get no requests")
    if not randomise:
        counts = az.per_model_counts(trace, len(models))
        for i, m in enumerate(models):
            row = counts[i]
            if row.any():
                segs = arrivals.multiply(arrivals.trace_segments(row, 1.0, interval), scale_segments())
                engine.open_loop(m, arrivals.piecewise_poisson(segs, seed_of(engine, i)), i)
        return
    t = trace.sorted_by_total()
    idx = az.row_to_model(len(t), len(models))
    rng = random.Random(seed_of(engine, "mapping"))
    for r in np.flatnonzero(t.counts.any(axis=1)):
        m = models[idx[r]]
        segs = arrivals.random_start_segments(t.counts[r], 1.0, interval, rng)
        engine.open_loop(m, arrivals.piecewise_poisson(arrivals.multiply(segs, scale_segments()),
                                                       seed_of(engine, int(r))), int(r))


def _constant(scale: float):
    return lambda: iter([(float("inf"), scale)])


@workload("azure", "replay an Azure Functions 2019 trace day (Poisson per minute) onto ~200..4000 "
          "instances; defaults approximate the load one worker can take",
          *COMMON,
          Param("use_all_models", bool, True, "load every zoo model (else only `model`)"),
          Param("load_factor", float, 1.0, "approximate load: 0.5 half, 2.0 double", positive=True),
          MEMORY,
          Param("interval", float, 60.0, "seconds per trace minute (smaller replays faster)", positive=True),
          Param("trace", int, 1, "trace day to replay (1..14)", positive=True),
          Param("randomise", bool, False, "start every function at a random point of the day"),
          TRACE_DIR, Param("model", str, "resnet50", "the model when use_all_models is 0"),
          Param("instances", int, 0, "instances instead of memory_load_factor's (0: that); with more "
                "instances than trace rows each row's requests go to a block of instances, at random"))
def azure(engine: Engine, num_workers, use_all_models, load_factor, memory_load_factor, interval, trace,
          randomise, trace_dir, model, instances):
    if interval <= 0 or num_workers < 1 or load_factor < 0:
        raise WorkloadError("interval must be > 0, num_workers >= 1, load_factor >= 0")
    tr = _read(engine, trace, trace_dir)
    scale = az.scale_factor(load_factor, num_workers)
    engine.log(f"Replaying {tr.path.name} ({len(tr)} functions) at scale_factor={scale:g} for load_factor "
               f"{load_factor:g} on {num_workers} workers, {interval:g} s intervals")
    models = _load_instances(engine, memory_load_factor, use_all_models, model, instances)
    _replay(engine, tr, models, _constant(scale), interval, randomise, spread=instances > 0)


@workload("azure_scalability_exp", "the azure workload (day 1, 60 s intervals) with the load factor "
          "multiplied by load_factor_inc every load_factor_period s, from min until it passes max",
          *COMMON,
          Param("load_factor_min", float, 0.1, "first load factor", positive=True),
          Param("load_factor_max", float, 2.0, "last load factor", positive=True),
          Param("load_factor_inc", float, 2.0, "multiplier per period", positive=True),
          Param("load_factor_period", float, 1.0, "seconds per load factor", positive=True),
          MEMORY, TRACE_DIR, Param("trace", int, 1, "trace day to replay (1..14)", positive=True))
def azure_scalability_exp(engine: Engine, num_workers, load_factor_min, load_factor_max, load_factor_inc,
                          load_factor_period, memory_load_factor, trace_dir, trace):
    try:
        factors = arrivals.geometric_steps(load_factor_min, load_factor_max, load_factor_inc, "mul")
    except ValueError as e:
        raise WorkloadError(f"load factor schedule: {e}") from None
    scales = [az.scale_factor(f, num_workers) for f in factors]
    engine.log("Load factors: " + " ".join(f"{f:g}" for f in factors)
               + f" (each for {load_factor_period:g} s)")
    tr = _read(engine, trace, trace_dir)
    models = _load_instances(engine, memory_load_factor, True, "resnet50")
    _replay(engine, tr, models, lambda: arrivals.stepped_rates(scales, load_factor_period), 60.0, False)
