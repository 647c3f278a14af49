"""The original's parameter sweeps: scalability-exp-1 (stepped rate), slo-exp-1 and slo-exp-2
(SLO factor moving over time, with background closed loops), bursty_experiment (more and more
models sharing a fixed rate).

A sweep ends the run when its schedule passes its end value, as the original meant to (its
AdjustSLO cleared a flag nothing read, so its runs went on until killed).
"""
from __future__ import annotations

from .. import arrivals
from ..arrivals import ClosedLoop
from .basic import MODEL, seed_of
from .engine import Engine, WorkloadError
from .registry import Param, workload

OP = ("add", "mul")
REQUIRED_MODEL = Param("model", str, None, "model directory name, e.g. resnet50 (required, as in the original)")
DIST = ("poisson", "fixed-rate")


def _steps(start, end, factor, op, what):
    try:
        return arrivals.geometric_steps(start, end, factor, op)
    except ValueError as e:
        raise WorkloadError(f"{what}: {e}") from None


@workload("scalability-exp-1", "`num_models` copies, Poisson; the total rate goes from rate_min to "
          "rate_max, changed (add/mul rate_factor) every `period` s; ends after the last step",
          Param("num_models", int, None, "model copies", positive=True),
          Param("rate_min", float, None, "first total rate (r/s)", positive=True),
          Param("rate_max", float, None, "last total rate (r/s)", positive=True),
          Param("rate_factor", float, None, "increment (add) or multiplier (mul)"),
          Param("rate_op", str, None, "how rate_factor applies", OP),
          Param("period", float, None, "seconds per rate", positive=True), MODEL)
def scalability_exp_1(engine: Engine, num_models, rate_min, rate_max, rate_factor, rate_op, period, model):
    rates = _steps(rate_min, rate_max, rate_factor, rate_op, "rate schedule")
    engine.log("Total rates: " + " ".join(f"{r:g}" for r in rates) + f" (each for {period:g} s)")
    for i, m in enumerate(engine.load(model, num_models)):
        segs = arrivals.stepped_rates([r / num_models for r in rates], period)
        engine.open_loop(m, arrivals.piecewise_poisson(segs, seed_of(engine, i)), i)


def _slo_sweep(engine: Engine, models, start, end, factor, op, period):
    """Set the SLO factor of `models` to start, then change it every period; stop the run
    once it would exceed `end`."""
    steps = _steps(start, end, factor, op, "SLO schedule")
    for m in models:
        m.slo_factor = steps[0]
    it = iter(steps[1:])

    def update(e):
        nxt = next(it, None)
        if nxt is None:
            e.stop(f"SLO factor schedule finished (end {end:g})")
            return False
        e.log(f"Updating slo_factor to {nxt:g}")
        for m in models:
            m.slo_factor = nxt
    engine.every(period, update)


def _open(dist, rate, seed):
    return arrivals.poisson(rate, seed) if dist == "poisson" else arrivals.fixed_rate(rate)


@workload("slo-exp-1", "open loop on `copies` copies at a total `rate`; SLO factor from slo_start "
          "to slo_end, changed (add/mul slo_factor) every `period` s",
          REQUIRED_MODEL, Param("copies", int, None, "model copies", positive=True),
          Param("dist", str, None, "arrival distribution", DIST),
          Param("rate", float, None, "total requests/s", positive=True),
          Param("slo_start", float, None, "first SLO factor"),
          Param("slo_end", float, None, "last SLO factor"),
          Param("slo_factor", float, None, "increment (add) or multiplier (mul)"),
          Param("slo_op", str, None, "how slo_factor applies", OP),
          Param("period", float, None, "seconds per SLO factor", positive=True))
def slo_exp_1(engine: Engine, model, copies, dist, rate, slo_start, slo_end, slo_factor, slo_op, period):
    if copies < 1 or rate <= 0:
        raise WorkloadError("copies must be >= 1 and rate > 0")
    models = engine.load(model, copies)
    for i, m in enumerate(models):
        engine.open_loop(m, _open(dist, rate / copies, seed_of(engine, i)), i)
    _slo_sweep(engine, models, slo_start, slo_end, slo_factor, slo_op, period)


@workload("slo-exp-2", "foreground (FG) open loops with a moving SLO, as slo-exp-1, plus background "
          "(BG) closed loops with a relaxed SLO factor, started with 10 s jitter",
          REQUIRED_MODEL, Param("copies_fg", int, None, "FG model copies (0: none)"),
          Param("dist_fg", str, None, "FG arrival distribution", DIST),
          Param("rate_fg", float, None, "total FG requests/s", positive=True),
          Param("slo_start_fg", float, None, "first FG SLO factor"),
          Param("slo_end_fg", float, None, "last FG SLO factor"),
          Param("slo_factor_fg", float, None, "FG increment (add) or multiplier (mul)"),
          Param("slo_op_fg", str, None, "how slo_factor_fg applies", OP),
          Param("period_fg", float, None, "seconds per FG SLO factor", positive=True),
          Param("copies_bg", int, None, "BG model copies (closed loop; 0: none)"),
          Param("concurrency_bg", int, None, "requests in flight per BG copy", positive=True),
          Param("slo_bg", float, None, "BG SLO factor (relaxed, e.g. 100)"))
def slo_exp_2(engine: Engine, model, copies_fg, dist_fg, rate_fg, slo_start_fg, slo_end_fg, slo_factor_fg,
              slo_op_fg, period_fg, copies_bg, concurrency_bg, slo_bg):
    if copies_fg > 0:
        if rate_fg <= 0:
            raise WorkloadError("rate_fg must be > 0")
        fg = engine.load(model, copies_fg)
        for i, m in enumerate(fg):
            engine.open_loop(m, _open(dist_fg, rate_fg / copies_fg, seed_of(engine, i)), i)
        _slo_sweep(engine, fg, slo_start_fg, slo_end_fg, slo_factor_fg, slo_op_fg, period_fg)
    if copies_bg > 0:
        for i, m in enumerate(engine.load(model, copies_bg)):
            m.slo_factor = slo_bg
            engine.closed_loop([m], ClosedLoop(concurrency_bg, jitter_s=10.0), copies_fg + i,
                               seed=seed_of(engine, copies_fg + i))


def bursty_segments(model: int, num_models: int, lead_in: int, total_rate: float, interval: float):
    """(duration, rate) segments of major model `model`: silent through the lead-in and
    until its turn, then one more model becomes active per interval and the active ones
    share total_rate (60 x total_rate requests per minute dealt round-robin, as the
    original)."""
    per_minute = int(round(60 * total_rate))
    yield (lead_in + model) * interval, 0.0
    for active in range(model + 1, num_models + 1):
        yield interval, (per_minute // active + (1 if model < per_minute % active else 0)) / 60.0


@workload("bursty_experiment", "`num_models` major models: after a lead-in, one more becomes active "
          "each interval and together they get total_rate r/s; plus a minor model at minor_rate r/s",
          Param("num_models", int, 3600, "major models", positive=True),
          Param("lead_in", int, 300, "intervals before the first major model starts"),
          Param("interval", float, 1.0, "interval duration in seconds", positive=True),
          Param("total_rate", float, 1000.0, "total major requests/s", positive=True),
          Param("minor_rate", float, 200.0, "requests/s of the minor model"), MODEL)
def bursty_experiment(engine: Engine, num_models, lead_in, interval, total_rate, minor_rate, model):
    if num_models < 1 or interval <= 0:
        raise WorkloadError("num_models must be >= 1 and interval > 0")
    majors = []
    while len(majors) < num_models:                # in chunks of 100, as the original
        majors += engine.load(model, min(100, num_models - len(majors)))
    minor = engine.load(model, 1)[0]
    for i, m in enumerate(majors):
        segs = bursty_segments(i, num_models, lead_in, total_rate, interval)
        engine.open_loop(m, arrivals.piecewise_poisson(segs, seed_of(engine, i)), i)
    total = (lead_in + num_models) * interval
    engine.open_loop(minor, arrivals.piecewise_poisson([(total, minor_rate)], seed_of(engine, num_models)),
                     num_models)
    engine.log(f"bursty_experiment: {num_models} major models, {total:g} s in all")
