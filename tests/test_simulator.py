"""The discrete-event simulator behaves like the worker: windows, executor order, pages, weights
versions, durations, network delay, worker loss; and it catches double answers. A scripted
scheduler sends the actions; simulated time only."""
import pytest

from clockwork.controller.scheduler import Scheduler
from clockwork.controller.simulator import MS, SECOND, Simulator, model_info, models_from_profile
from clockwork.model.zoo import load_profile
from clockwork.status import Status
from clockwork.transport.schema import (ErrorResult, EvictWeights, EvictWeightsResult, Infer,
                                        InferResult, LoadWeights, LoadWeightsResult)

pytestmark = pytest.mark.timeout(60)

EXEC = {1: 1 * MS, 2: 1_500_000, 4: 2 * MS}


class Script(Scheduler):
    """Sends scripted actions at given times and records what comes back."""
    name = "script"

    def __init__(self, config, clock, out, plan=()):
        super().__init__(config, clock, out)
        self.plan = sorted(plan, key=lambda p: p[0])     # (time, worker, make_action(id))
        self.results = []                                # (time, action, result, data)
        self.lost = []

    def on_request(self, req):
        self.out.respond(req, Status.SUCCESS)

    def tick(self):
        now = self.clock()
        while self.plan and self.plan[0][0] <= now:
            _, wid, make = self.plan.pop(0)
            self.out.send_action(wid, make(next(self.out.action_ids), now))
        return self.plan[0][0] if self.plan else None

    def on_result(self, worker_id, action, result, data):
        self.results.append((self.clock(), action, result, data))

    def on_worker_lost(self, worker_id):
        self.lost.append((self.clock(), worker_id, len(self.results)))


def run(plan, models=None, **kw):
    models = models or [model_info(0, EXEC, num_pages=2, weights_load_ns=3 * MS, output_size=4)]
    sched = None

    def factory(config, clock, out):
        nonlocal sched
        sched = Script(config, clock, out, plan)
        return sched
    sim = Simulator(factory, models, **kw)
    sim.run()
    return sim, sched


def infer(model=0, batch=1, earliest=None, latest=None, gpu=0):
    return lambda aid, now: Infer(aid, now if earliest is None else earliest,
                                  now + SECOND if latest is None else latest, model, gpu, batch)


def load(model=0, gpu=0):
    return lambda aid, now: LoadWeights(aid, now, now + SECOND, model, gpu)


def evict(model=0, gpu=0):
    return lambda aid, now: EvictWeights(aid, 0, now + SECOND, model, gpu)


def by_id(sched):
    return {a.action_id: (t, r) for t, a, r, _ in sched.results}


def test_infer_runs_profiled_time_padded_batch_and_network_delay():
    sim, sched = run([(0, 0, infer(batch=3))], preload=True, latency=100_000)
    (t, action, result, data), = sched.results
    assert type(result) is InferResult
    assert result.exec_begin == 100_000                     # arrived after one network delay
    assert result.exec_duration == EXEC[4]                  # batch 3 runs the batch-4 kernel
    assert t == result.exec_end + 100_000
    assert len(data) == 1 and len(data[0]) == 3 * 4        # 3 outputs of 4 bytes


def test_nothing_starts_before_earliest_and_late_tasks_fail():
    plan = [(0, 0, infer(earliest=10 * MS)),                # waits until 10 ms
            (0, 0, infer(earliest=2 * MS)),                 # sent later, runs first
            (0, 0, infer(earliest=2 * MS, latest=2_500_000))]   # behind the previous: too late
    sim, sched = run(plan, preload=True, latency=0)
    results = by_id(sched)
    _, a = results[1]
    _, b = results[2]
    _, c = results[3]
    assert b.exec_begin == 2 * MS and a.exec_begin == 10 * MS
    assert type(c) is ErrorResult and c.status == Status.ACTION_TOO_LATE
    assert results[3][0] == 2 * MS + EXEC[1]                # failed when it could have started


def test_pages_weights_and_versions():
    models = [model_info(0, EXEC, num_pages=2, weights_load_ns=3 * MS),
              model_info(1, {1: 10 * MS}, num_pages=3, weights_load_ns=3 * MS)]
    plan = [(0, 0, infer(model=0)),                         # not loaded yet
            (0, 0, load(model=0)),
            (1 * MS, 0, load(model=1)),                     # 2 + 3 pages > 4
            (5 * MS, 0, load(model=0)),                     # already present
            (6 * MS, 0, infer(model=0)),
            (6_500_000, 0, evict(model=0)),                 # while the Infer runs
            (8 * MS, 0, evict(model=0)),                    # not present any more
            (9 * MS, 0, load(model=1))]                     # fits now
    sim, sched = run(plan, models=models, total_pages=4, latency=0)
    statuses = [getattr(r, "status", type(r).__name__) for _, r in
                sorted(by_id(sched).values(), key=lambda x: x[0])]
    results = by_id(sched)
    assert results[1][1].status == Status.WEIGHTS_NOT_PRESENT
    assert type(results[2][1]) is LoadWeightsResult and results[2][1].duration == 3 * MS
    assert results[3][1].status == Status.NOT_ENOUGH_PAGES
    assert results[4][1].status == Status.WEIGHTS_ALREADY_PRESENT
    assert results[5][1].status == Status.WEIGHTS_CHANGED
    assert type(results[6][1]) is EvictWeightsResult
    assert results[7][1].status == Status.WEIGHTS_NOT_PRESENT
    assert type(results[8][1]) is LoadWeightsResult
    assert len(statuses) == 8


def test_noise_is_bounded_and_seeded():
    plan = [(i * 5 * MS, 0, infer()) for i in range(50)]
    _, s1 = run(plan, preload=True, noise=0.2, seed=4)
    _, s2 = run(plan, preload=True, noise=0.2, seed=4)
    _, s3 = run(plan, preload=True, noise=0.2, seed=5)
    d1 = [r.exec_duration for _, _, r, _ in s1.results]
    assert d1 == [r.exec_duration for _, _, r, _ in s2.results]
    assert d1 != [r.exec_duration for _, _, r, _ in s3.results]
    assert all(EXEC[1] <= d <= EXEC[1] * 1.2 for d in d1) and len(set(d1)) > 1


def test_killed_worker_fails_in_flight_actions_first_and_drops_late_results():
    plan = [(0, 0, infer()), (0, 0, infer()), (0, 1, infer()), (5 * MS, 0, infer())]
    models = [model_info(0, {1: 10 * MS})]

    def go(sim):
        sim.kill_worker(3 * MS, 0)
    sched = None

    def factory(config, clock, out):
        nonlocal sched
        sched = Script(config, clock, out, plan)
        return sched
    sim = Simulator(factory, models, workers=2, preload=True, latency=0)
    go(sim)
    sim.run()
    lost = [(t, r) for t, a, r, _ in sched.results if getattr(r, "status", None) == Status.WORKER_LOST]
    assert [t for t, _ in lost] == [3 * MS, 3 * MS, 5 * MS]   # 2 in flight, 1 sent after
    (t_lost, wid, seen), = sched.lost
    assert (t_lost, wid) == (3 * MS, 0) and seen == 2           # errors delivered before on_worker_lost
    ok = [r for _, _, r, _ in sched.results if type(r) is InferResult]
    assert len(ok) == 1                                         # worker 1's; worker 0's never arrive


def test_double_answer_is_caught():
    class Twice(Script):
        def on_request(self, req):
            self.out.respond(req, Status.SUCCESS)
            self.out.respond(req, Status.SUCCESS)
    sim = Simulator(lambda c, k, o: Twice(c, k, o), [model_info(0, EXEC)], workers=0)
    sim.request(0, 0)
    with pytest.raises(AssertionError, match="answered twice"):
        sim.run()


def test_unanswered_requests_are_reported():
    class Silent(Script):
        def on_request(self, req):
            pass
    sim = Simulator(lambda c, k, o: Silent(c, k, o), [model_info(0, EXEC)], workers=0)
    sim.request(0, 0)
    sim.request(1 * MS, 0)
    sim.run()
    assert len(sim.unanswered()) == 2


def test_profile_models_and_summary():
    models = models_from_profile("h200", ["resnet50", "resnet18"], copies=2)
    assert [m.model_id for m in models] == [0, 1, 2, 3]
    assert {m.source for m in models} == {"resnet50", "resnet18"}
    r50 = next(m for m in models if m.source == "resnet50")
    assert r50.input_size == 3 * 224 * 224 * 4 and r50.output_size == 4000
    size = load_profile("h200")["models"]["resnet50"]["weights_size"]
    assert r50.num_pages == -(-size // (16 << 20))
    sim = Simulator("infer4", models, noise=0.05, seed=1)
    n = sim.poisson(rate=200, duration=500 * MS)
    sim.run()
    s = sim.summary()
    assert s["requests"] == n == s["answered"] == sum(s["statuses"].values())


def test_closed_loop_keeps_concurrency_and_ends():
    models = [model_info(0, {1: 5 * MS, 4: 6 * MS})]
    sim = Simulator("infer4", models, preload=True, latency=0)
    sim.closed_loop(4, 0, until=200 * MS, slo_ns=10 * MS, think=50_000)   # many instant drops
    sim.run()
    assert not sim.unanswered()
    assert len(sim.requests) > 4
    assert max(r.arrival for r in sim.requests) < 200 * MS
    # never more than 4 requests outstanding at once
    events = sorted([(r.arrival, 1) for r in sim.requests] +
                    [(x.time, -1) for x in sim.responses.values()], key=lambda e: (e[0], e[1]))
    level, peak = 0, 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 4
