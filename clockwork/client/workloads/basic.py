"""The original's small workloads: example, spam, single-spam, fill_memory, simple,
simple-slo-factor, simple-parametric, poisson-open-loop, comparison_experiment(2).

Seeds: every arrival stream gets its own, seed_of(engine, <what the stream is>) (the original
used the stream's index), so --seed changes every stream, a given --seed repeats the run's
arrival times exactly, and no two streams share one.
"""
from __future__ import annotations

import math

from .. import arrivals
from ..arrivals import ClosedLoop
from .engine import Engine, WorkloadError
from .registry import Param, workload

MODEL = Param("model", str, "resnet50", "model directory name (relative to the workers' model dir)")


def seed_of(engine: Engine, *stream) -> str:
    """The seed of the arrival stream named by `stream` (e.g. its index): a string, which
    random.Random takes as it is, so different names never collide."""
    return "/".join(map(str, (engine.seed, *stream)))


@workload("example", "every zoo model once, each driven by fixed-rate 5 r/s, Poisson 10 r/s, "
          "bursty Poisson 10 r/s (10 s bursts, 20 s idle), closed loop 1 and bursty closed loop 1")
def example(engine: Engine):
    for user, name in enumerate(engine.zoo):
        m = engine.load(name, 1)[0]
        engine.open_loop(m, arrivals.fixed_rate(5), user)
        engine.open_loop(m, arrivals.poisson(10, seed_of(engine, "example", user, "poisson")), user)
        engine.open_loop(m, arrivals.bursty_poisson(10, 10, 20, seed_of(engine, "example", user, "bursty")),
                         user)
        engine.closed_loop([m], ClosedLoop(1), user)
        engine.bursty_closed_loop(m, 1, arrivals.burst_windows(10, 20, seed_of(engine, "example", user, "windows")),
                                  user)


@workload("spam", "copies of one model, each with a closed loop of `concurrency`",
          MODEL, Param("copies", int, 100, "model instances", positive=True),
          Param("concurrency", int, 100, "requests in flight per instance", positive=True))
def spam(engine: Engine, model: str, copies: int, concurrency: int):
    for m in engine.load(model, copies):
        engine.closed_loop([m], ClosedLoop(concurrency), 0)


# Quirk: the original's single-spam loaded 100 copies although its help said "x 1, with 1000
# closed loop"; we do what the help and the name say.
@workload("single-spam", "one model instance with a closed loop of 1000",
          MODEL, Param("concurrency", int, 1000, "requests in flight", positive=True))
def single_spam(engine: Engine, model: str, concurrency: int):
    m = engine.load(model, 1)[0]
    engine.closed_loop([m], ClosedLoop(concurrency), 0)


@workload("fill_memory", "411 copies: 1 at 1000 r/s, 10 at 10 r/s, 400 at 1 r/s (Poisson); more "
          "weights than fit on one GPU, so the controller must page", MODEL)
def fill_memory(engine: Engine, model: str):
    models = engine.load(model, 411)
    for i, m in enumerate(models):
        rate = 1000 if i < 1 else 10 if i < 11 else 1
        engine.open_loop(m, arrivals.poisson(rate, seed_of(engine, i)), i)


@workload("simple", "2 copies, each with a closed loop of concurrency 1", MODEL)
def simple(engine: Engine, model: str):
    for m in engine.load(model, 2):
        engine.closed_loop([m], ClosedLoop(1), 0)


@workload("simple-slo-factor", "3 copies with closed loops of 1; every `period` s the SLO factor of "
          "copy 0 is multiplied by 1.25 (from 4), copy 1 gets +1 (from 4), copy 2 toggles 10 <-> 1",
          MODEL, Param("period", float, 10.0, "seconds between SLO changes", positive=True))
def simple_slo_factor(engine: Engine, model: str, period: float):
    models = engine.load(model, 3)
    for m in models:
        engine.closed_loop([m], ClosedLoop(1), 0)
    models[0].slo_factor, models[1].slo_factor, models[2].slo_factor = 4.0, 4.0, 10.0

    # Quirk: the original's toggle was `current = 10 ? 1 : 10`, which always gives 1.
    def update(e):
        models[0].slo_factor *= 1.25
        models[1].slo_factor += 1.0
        models[2].slo_factor = 1.0 if models[2].slo_factor == 10.0 else 10.0
        e.log("Updating slo_factor to " + " ".join(f"{m.slo_factor:g}" for m in models))
    engine.every(period, update)


@workload("simple-parametric", "`models` copies partitioned among `clients` closed loops of "
          "`concurrency`, each stopping after `requests` requests",
          Param("models", int, None, "number of model copies", positive=True),
          Param("clients", int, None, "closed-loop clients the copies are partitioned among", positive=True),
          Param("concurrency", int, None, "requests in flight per client", positive=True),
          Param("requests", int, None, "requests per client (then it stops)", positive=True), MODEL)
def simple_parametric(engine: Engine, models: int, clients: int, concurrency: int, requests: int, model: str):
    if models < 1 or clients < 1:
        raise WorkloadError("models and clients must be >= 1")
    loaded = engine.load(model, models)
    per = math.ceil(models / clients)
    for c in range(clients):
        subset = loaded[c * per:(c + 1) * per]
        if not subset:
            break
        engine.log(f"Adding ClosedLoop client {c} with models: {' '.join(str(m.id) for m in subset)}")
        engine.closed_loop(subset, ClosedLoop(concurrency, max_requests=requests), c)


@workload("poisson-open-loop", "`num_models` copies sharing a total Poisson rate",
          Param("num_models", int, None, "model copies", positive=True),
          Param("rate", float, None, "total requests/s, split evenly across the copies", positive=True), MODEL)
def poisson_open_loop(engine: Engine, num_models: int, rate: float, model: str):
    if num_models < 1:
        raise WorkloadError("num_models must be >= 1")
    engine.log(f"Cumulative request rate across models: {rate:g} requests/second")
    for i, m in enumerate(engine.load(model, num_models)):
        engine.open_loop(m, arrivals.poisson(rate / num_models, seed_of(engine, i)), i)


@workload("comparison_experiment", "copies of resnet50, Poisson open loop sharing a total rate",
          Param("num_models", int, 15, "model copies", positive=True),
          Param("total_requests", float, 1000.0, "total requests/s across all copies", positive=True), MODEL)
def comparison_experiment(engine: Engine, num_models: int, total_requests: float, model: str):
    if num_models < 1:
        raise WorkloadError("num_models must be >= 1")
    for i, m in enumerate(engine.load(model, num_models)):
        engine.open_loop(m, arrivals.poisson(total_requests / num_models, seed_of(engine, i)), i)


@workload("comparison_experiment2", "closed-loop version: copies of resnet50, each with a closed loop",
          Param("num_models", int, 15, "model copies", positive=True),
          Param("concurrency", int, 16, "requests in flight per copy", positive=True), MODEL)
def comparison_experiment2(engine: Engine, num_models: int, concurrency: int, model: str):
    for i, m in enumerate(engine.load(model, num_models)):
        engine.closed_loop([m], ClosedLoop(concurrency), i)
