"""The registry and the baseline policies (echo, direct, fifo), in the simulator (simulated
time only). Every request answered exactly once: the simulator asserts it."""
import pytest

from clockwork.controller.schedulers import SCHEDULERS, UnknownScheduler, make_scheduler
from clockwork.controller.schedulers.common import SchedulerConfigError
from clockwork.controller.simulator import MS, SECOND, Simulator, model_info
from clockwork.status import Status
from clockwork.transport.schema import EvictWeights, Infer, LoadWeights

pytestmark = pytest.mark.timeout(120)

EXEC = {1: 1 * MS, 2: 1_200_000, 4: 1_500_000, 8: 2 * MS, 16: 3 * MS}


class _Out:
    import itertools
    action_ids = itertools.count()


def test_registry_names_and_unknown_name_error():
    assert set(SCHEDULERS) == {"infer4", "echo", "direct", "fifo", "clipper"}
    for name in SCHEDULERS:
        assert make_scheduler(name.upper(), {}, lambda: 0, _Out()).name == name
    with pytest.raises(UnknownScheduler, match=r"unknown scheduler 'infer9' \(known: clipper, direct, echo, fifo, infer4\)"):
        make_scheduler("infer9", {}, lambda: 0, _Out())


def test_bad_config_value_is_a_clear_error():
    with pytest.raises(SchedulerConfigError, match="default_slo_ms must be a number"):
        make_scheduler("infer4", {"controller": {"default_slo_ms": "fast"}}, lambda: 0, _Out())
    with pytest.raises(SchedulerConfigError, match="max_batch_size must be >= 1"):
        make_scheduler("fifo", {"max_batch_size": 0}, lambda: 0, _Out())


def test_echo_answers_at_once_with_zero_output():
    models = [model_info(0, EXEC, output_size=12)]
    sim = Simulator("echo", models, workers=0)
    sim.request(5 * MS, 0)
    sim.request(7 * MS, 0, batch_size=4)
    sim.run()
    answers = sorted(sim.responses.values(), key=lambda x: x.req.arrival)
    assert [x.status for x in answers] == [Status.SUCCESS] * 2
    assert [x.time for x in answers] == [5 * MS, 7 * MS]
    assert [bytes(x.output) for x in answers] == [bytes(12), bytes(48)]
    assert not sim.actions


def test_direct_one_infer_per_request_loading_on_first_use():
    models = [model_info(0, EXEC), model_info(1, EXEC)]
    sim = Simulator("direct", models, latency=0)
    for t in range(0, 20, 2):
        sim.request(t * MS, 0)
    sim.request(1 * MS, 0, batch_size=3)
    sim.run()
    assert not sim.unanswered()
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    loads = [a for _, _, a in sim.actions if type(a) is LoadWeights]
    infers = [a for _, _, a in sim.actions if type(a) is Infer]
    assert [a.model_id for a in loads] == [0]          # model 1 never asked for: never loaded
    assert len(infers) == len(sim.requests)
    assert sorted(a.batch_size for a in infers) == sorted(r.batch_size for r in sim.requests)
    assert all(a.earliest == 0 and a.latest >= t + 3600 * SECOND for t, _, a in sim.actions
               if type(a) is Infer)


def test_direct_evicts_idle_model_when_pages_run_short():
    models = [model_info(i, EXEC, num_pages=1) for i in range(3)]
    sim = Simulator("direct", models, total_pages=2)
    for i, t in enumerate((0, 20, 40)):
        sim.request(t * MS, i)
    sim.run()
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    assert [a.model_id for _, _, a in sim.actions if type(a) is EvictWeights] == [0]


def test_fifo_batches_whatever_is_queued_up_to_max_batch():
    models = [model_info(0, EXEC)]
    sim = Simulator("fifo", models, preload=True, latency=0, config={"max_batch_size": 8})
    for _ in range(30):
        sim.request(0, 0)
    sim.run()
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    sizes = [a.batch_size for _, _, a in sim.actions if type(a) is Infer]
    # reactive: the first request goes alone, then whatever queued meanwhile, 8 at most
    assert sizes[0] == 1 and max(sizes) == 8 and sum(sizes) == 30


def test_fifo_loads_on_least_loaded_gpu_and_evicts_lru():
    models = [model_info(i, {1: 5 * MS}, num_pages=1) for i in range(3)]
    sim = Simulator("fifo", models, gpus=1, total_pages=2, latency=0)
    sim.request(0, 0)
    sim.request(10 * MS, 1)
    sim.request(20 * MS, 0)
    sim.request(30 * MS, 2)
    sim.run()
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    assert [a.model_id for _, _, a in sim.actions if type(a) is EvictWeights] == [1]
    sim2 = Simulator("fifo", models, gpus=2, latency=0)
    sim2.request(0, 0)
    sim2.request(0, 1)
    sim2.run()
    loads = {(w, a.gpu_id, a.model_id) for _, w, a in sim2.actions if type(a) is LoadWeights}
    assert {g for _, g, _ in loads} == {0, 1}          # second model to the other (idle) GPU


def test_fifo_marks_cold_starts_like_infer4():
    """A request whose model is on no GPU when it arrives is a cold start (the request log's
    is_coldstart column, counted by the azure benchmark for both policies)."""
    models = [model_info(i, {1: 5 * MS}, num_pages=1) for i in range(3)]
    sim = Simulator("fifo", models, gpus=1, total_pages=2, latency=0)
    sim.request(0, 0)            # cold
    sim.request(1 * MS, 0)       # still loading: cold too (weights not there yet)
    sim.request(30 * MS, 0)      # loaded
    sim.request(40 * MS, 1)      # cold
    sim.request(80 * MS, 2)      # cold, evicts model 0
    sim.request(120 * MS, 0)     # cold again
    sim.run()
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    assert [r.is_coldstart for r in sim.requests] == [True, True, False, True, True, True]


def test_fifo_load_attempts_grow_linearly_with_blocked_models():
    """Models waiting for pages are not re-tried on every request and result (found by
    tools/bench/azure.py: with thousands of models waiting, fifo's controller spent its whole
    CPU retrying loads that could not fit and served 14% of the GPUs' capacity)."""
    models = [model_info(i, {1: 5 * MS}, num_pages=1) for i in range(60)]
    sim = Simulator("fifo", models, gpus=1, total_pages=2, latency=0)
    attempts = []
    make_room = sim.sched._make_room
    sim.sched._make_room = lambda g, mid: attempts.append(mid) or make_room(g, mid)
    for k in range(3):
        for i in range(60):
            sim.request(k * MS, i)
    sim.run()
    assert len(sim.responses) == 180
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    loads = [a.model_id for _, _, a in sim.actions if type(a) is LoadWeights]
    assert sorted(set(loads)) == list(range(60))
    assert len(attempts) <= 180 + len(loads)       # one per request or load at most, not per blocked model


@pytest.mark.parametrize("name", ["infer4", "fifo", "direct", "echo"])
def test_models_added_while_running_are_served(name):
    models = [model_info(0, EXEC), model_info(1, EXEC, output_size=20)]
    sim = Simulator(name, models[:1], latency=0)
    sim.add_models(10 * MS, models[1:])            # a LoadModel while running
    sim.request(20 * MS, 1)
    sim.request(21 * MS, 0)
    sim.run()
    assert [x.status for x in sorted(sim.responses.values(), key=lambda x: x.req.model_id)] == [Status.SUCCESS] * 2
    out = next(x for x in sim.responses.values() if x.req.model_id == 1).output
    assert out is None or len(out) == 20
