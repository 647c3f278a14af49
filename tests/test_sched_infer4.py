"""INFER4 (the Clockwork scheduler): unit tests with a fake clock and a recording Outbox, and
scenario tests in the discrete-event simulator. Simulated time only; every request is answered
exactly once (the recording outbox and the simulator both assert it)."""
import itertools

import numpy as np
import pytest

from clockwork.controller.scheduler import Request
from clockwork.controller.schedulers import make_scheduler
from clockwork.percentiles import percentile
from clockwork.controller.simulator import MS, SECOND, Simulator, model_info
from clockwork.status import Status
from clockwork.transport.schema import (ErrorResult, EvictWeights, GpuState, Infer, InferResult,
                                        LoadWeights, WorkerState)
from spy import Spy

pytestmark = pytest.mark.timeout(120)

EXEC = {1: 1 * MS, 2: 1_200_000, 4: 1_500_000, 8: 2 * MS, 16: 3 * MS}


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


class Recorder:
    """A recording Outbox: actions and responses, each request answered at most once."""

    def __init__(self):
        self.action_ids = itertools.count(1)
        self.actions = []        # (worker_id, action, data)
        self.responses = {}      # request id -> (status, output, exec_ns)

    def send_action(self, worker_id, action, data=(), expected_end=0):
        self.actions.append((worker_id, action, data))

    def respond(self, req, status, message="", output=None, exec_ns=0):
        assert req.id not in self.responses, f"request {req.id} answered twice"
        self.responses[req.id] = (status, output, exec_ns)

    def infers(self):
        return [a for _, a, _ in self.actions if type(a) is Infer]


def worker(gpus=1, pages=100, loaded=(), models=()):
    return WorkerState(page_size=16 << 20, models=list(models), gpus=[
        GpuState(i, pages, pages, 1 << 29, 1 << 29, list(loaded)) for i in range(gpus)])


def setup(config=None, models=None, gpus=1, loaded=(0,), pages=100):
    clock, out = Clock(), Recorder()
    models = models or {0: model_info(0, EXEC, output_size=8)}
    sched = make_scheduler("infer4", config or {}, clock, out)
    sched.start(models, {0: worker(gpus, pages, loaded, models.values())})
    return sched, clock, out


_ids = itertools.count(1)


def request(clock, model_id=0, slo=100 * MS, slo_factor=0.0, batch_size=1, inputs=()):
    rid = next(_ids)
    return Request(rid, None, rid, model_id, batch_size, clock.now, slo, list(inputs),
                   slo_factor=slo_factor)


def infer_result(action, start, duration, clock_mhz=1980):
    return InferResult(action.action_id, start, start + duration, start, start, start,
                       start + duration, duration, start + duration, start + duration,
                       clock_mhz, clock_mhz)


# ---------------------------------------------------------------- estimates

def test_percentile_matches_linear_interpolation():
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 10):
        samples = [int(x) for x in rng.integers(1_000, 10_000_000, n)]
        for p in (50.0, 90.0, 99.0, 100.0):
            assert percentile(samples, p) == pytest.approx(np.percentile(samples, p))


def test_estimate_seeded_from_profile_then_p99_of_window():
    sched, clock, out = setup({"estimate_window": 10})
    for b, ns in EXEC.items():
        assert sched.estimate(0, b) == ns
    samples = [900_000 + 37_000 * i for i in range(14)]      # 14 results, window keeps last 10
    for value in samples:
        sched.on_request(request(clock))
        sched.tick()
        (_, action, _), = out.actions[-1:]
        assert type(action) is Infer and action.batch_size == 1
        sched.on_result(0, action, infer_result(action, clock.now, value), [bytes(8)])
        clock.now += 10 * MS
    expected = int(np.percentile(samples[-10:], 99))
    assert sched.estimate(0, 1) == pytest.approx(expected, abs=1)
    assert sched.estimate(0, 2) == EXEC[2]                    # other batch sizes untouched
    # the estimate is what the next Infer is planned with
    sched.on_request(request(clock))
    sched.tick()
    assert out.actions[-1][1].expected_ns == sched.estimate(0, 1, 0)


def test_estimate_scaled_by_gpu_clock():
    sched, clock, out = setup()
    sched.on_request(request(clock))
    sched.tick()
    action = out.actions[-1][1]
    # ran at half the nominal clock: 2 ms there is 1 ms at the nominal 1980 MHz
    sched.on_result(0, action, infer_result(action, 0, 2 * MS, clock_mhz=990), [bytes(8)])
    assert sched.estimate(0, 1) == 1 * MS
    assert sched.estimate(0, 1, gpu_index=0) == 2 * MS      # this GPU now reports 990 MHz


# ---------------------------------------------------------------- batching and windows

@pytest.mark.parametrize("max_batch", [16, 8, 3])
def test_batches_up_to_max_batch_size(max_batch):
    sched, clock, out = setup({"max_batch_size": max_batch})
    n = 40
    reqs = [request(clock) for _ in range(n)]
    for r in reqs:
        sched.on_request(r)
    done = set()
    while len(out.responses) < n:
        wake = sched.tick()
        sent = [a for a in out.infers() if a.action_id not in done]
        if not sent:        # the next batch is formed dispatch_ahead before the GPU is free
            assert wake is not None and wake > clock.now, "nothing scheduled while requests wait"
            clock.now = wake
            continue
        for a in sent:      # complete each batch as planned
            done.add(a.action_id)
            clock.now = max(clock.now, a.earliest)
            sched.on_result(0, a, infer_result(a, clock.now, sched.estimate(0, a.batch_size)),
                            [bytes(8 * a.batch_size)])
    sizes = [a.batch_size for a in out.infers()]
    allowed = max(b for b in EXEC if b <= max_batch)
    assert max(sizes) == allowed
    assert sum(sizes) == n
    assert all(s[0] == Status.SUCCESS for s in out.responses.values())


def test_batch_inputs_are_the_requests_frames_and_output_is_sliced_without_copy():
    sched, clock, out = setup()
    frames = [bytes([i]) * 16 for i in range(4)]
    reqs = [request(clock, inputs=[f]) for f in frames]
    for r in reqs:
        sched.on_request(r)
    sched.tick()
    (wid, action, data), = out.actions
    assert action.batch_size == 4 and data == frames      # one frame per request, no concat
    output = bytearray(range(32))
    sched.on_result(0, action, infer_result(action, 0, 1 * MS), [output])
    for i, r in enumerate(reqs):
        status, view, exec_ns = out.responses[r.id]
        assert status == Status.SUCCESS and exec_ns == 1 * MS
        assert isinstance(view, memoryview) and view.obj is output
        assert bytes(view) == bytes(output[8 * i:8 * i + 8])


def test_infer_window():
    # batch-1 exec 5 ms, longer than EARLIEST_LEAD (1 ms), so an earliest of `now` differs
    # from "the expected start minus the lead"
    exec_ns = {1: 5 * MS, 2: 6 * MS}
    sched, clock, out = setup({"schedule_ahead_ms": 20.0, "dispatch_ahead_ms": 20.0, "max_batch_size": 1},
                              models={0: model_info(0, exec_ns, output_size=8)})
    clock.now = 5 * MS
    for _ in range(3):      # three batches of 1 (each after the previous was sent)
        sched.on_request(request(clock))
        sched.tick()
    a1, a2, a3 = out.infers()
    est = exec_ns[1]
    # latest: the last start that still answers within the 100 ms SLO, 1 ms kept for the answer
    assert (a1.earliest, a1.latest) == (clock.now, clock.now + 100 * MS - est - 1 * MS)
    # the next ones start when the previous is expected to end, at most 1 ms early
    assert a2.earliest == clock.now + est - 1 * MS
    assert a3.earliest == clock.now + 2 * est - 1 * MS
    assert a3.latest == clock.now + 100 * MS - est - 1 * MS


def test_only_schedules_within_dispatch_ahead():
    sched, clock, out = setup({"dispatch_ahead_ms": 10.0, "max_batch_size": 1})
    for _ in range(30):
        sched.on_request(request(clock))
    sched.tick()
    # 1 ms batches, planned while the GPU is expected free before now + 10 ms
    assert len(out.infers()) == 10
    wake = sched.tick()
    assert wake is not None and wake > clock.now


def test_next_batch_is_formed_only_dispatch_ahead_before_the_gpu_is_free():
    # The GPU is busy for 5 ms. Requests arriving meanwhile wait until it is expected free
    # within dispatch_ahead (3 ms), then go as one batch: handing it the next batch 10 ms ahead
    # (schedule_ahead, the original) sent each as a batch of 1, which at the GPUs' batch-1
    # capacity leaves no room (docs/experiments.md, SLO sweep at 25-50 ms).
    exec_ns = {1: 5 * MS, 2: 5_500_000, 4: 6 * MS}
    sched, clock, out = setup({"dispatch_ahead_ms": 3.0}, models={0: model_info(0, exec_ns, output_size=8)})
    sched.on_request(request(clock))
    sched.tick()
    for t in (100_000, 1 * MS, 1_500_000):
        clock.now = t
        sched.on_request(request(clock))
        wake = sched.tick()
    assert len(out.infers()) == 1 and wake == 5 * MS - 3 * MS
    while len(out.infers()) == 1 and clock.now < 5 * MS:
        clock.now = wake
        wake = sched.tick()
    first, second = out.infers()
    assert second.batch_size == 3 and second.earliest == 5 * MS - 1 * MS
    assert clock.now <= 5 * MS - 3 * MS + 1


# ---------------------------------------------------------------- drops and timeouts

def test_requests_that_cannot_make_it_are_dropped_early():
    models = [model_info(0, {1: 9 * MS}, output_size=8)]
    sim = Simulator("infer4", models, preload=True, latency=0)
    for _ in range(20):
        sim.request(0, 0, slo_ns=50 * MS)        # exec deadline 45 ms: about 5 fit
    sim.run()
    assert not sim.unanswered()
    ok = sim.with_status(Status.SUCCESS)
    dropped = sim.with_status(Status.COULD_NOT_START_IN_TIME)
    assert 1 <= len(ok) <= 5
    assert all(x.time <= x.req.deadline for x in ok)
    assert dropped, "late requests should be dropped before they run"
    # dropped early: answered before their exec deadline, and not executed
    assert all(x.time < x.req.exec_deadline for x in dropped)
    assert sum(a.batch_size for _, _, a in sim.actions if type(a) is Infer) == len(ok)
    others = [x for x in sim.responses.values() if x.status in (Status.TIMEOUT, Status.CONTROLLER_SKIPPED)]
    assert len(ok) + len(dropped) + len(others) == 20


def test_unscheduled_requests_time_out_at_their_exec_deadline():
    # the model needs more pages than the GPU has: it can never run
    models = [model_info(0, EXEC, num_pages=10)]
    sim = Simulator("infer4", models, total_pages=5)
    for t in (0, 3 * MS, 7 * MS):
        sim.request(t, 0, slo_ns=40 * MS)
    sim.request(1 * MS, 0, slo_ns=20 * MS)
    sim.run()
    answers = list(sim.responses.values())
    assert len(answers) == 4
    for x in answers:
        assert x.status == Status.TIMEOUT
        assert x.time == x.req.exec_deadline
    assert not [a for _, _, a in sim.actions if type(a) is LoadWeights]


def test_slo_factor_sets_deadline_from_batch1_estimate():
    sched, clock, out = setup()
    r = request(clock, slo_factor=30.0)
    sched.on_request(r)
    assert r.slo == 30 * EXEC[1]
    assert r.deadline == r.arrival + r.slo
    assert r.exec_deadline == r.arrival + max(r.slo - 5 * MS, 10 * MS + 5 * MS)


def test_admission_bound_answers_overloaded_at_once():
    models = [model_info(0, EXEC)]
    sim = Simulator("infer4", models, workers=0, config={"max_queue_per_model": 5})
    for _ in range(8):
        sim.request(2 * MS, 0)
    sim.run()
    over = sim.with_status(Status.OVERLOADED)
    assert len(over) == 3 and all(x.time == x.req.arrival for x in over)
    assert len(sim.with_status(Status.TIMEOUT)) == 5
    assert not sim.unanswered()


# ---------------------------------------------------------------- loads and evictions

def test_loads_on_demand_only_and_evicts_lru_when_pages_run_short():
    models = [model_info(i, EXEC, num_pages=1) for i in range(4)]
    sim = Simulator("infer4", models, total_pages=2)
    sim.request(0, 0)
    sim.request(50 * MS, 1)
    sim.request(100 * MS, 0)          # model 0 used again: model 1 is now least recently used
    sim.request(150 * MS, 2)          # needs a page: evicts model 1
    sim.run()
    assert not sim.unanswered()
    assert all(x.status == Status.SUCCESS for x in sim.responses.values())
    loads = [a.model_id for _, _, a in sim.actions if type(a) is LoadWeights]
    evicts = [a.model_id for _, _, a in sim.actions if type(a) is EvictWeights]
    assert loads == [0, 1, 2]         # model 3 has no demand: never loaded
    assert evicts == [1]
    assert not sim.errors


def test_eviction_prefers_models_without_demand():
    models = {i: model_info(i, EXEC, num_pages=1) for i in range(4)}
    models[2] = model_info(2, {1: 7 * MS}, num_pages=1)
    sched, clock, out = setup({"max_batch_size": 1}, models=models, loaded=(0, 1, 2), pages=3)
    for _ in range(12):
        sched.on_request(request(clock, model_id=2))   # keeps the GPU busy: model 2 in flight
    sched.tick()
    waiting = request(clock, model_id=0)                # model 0 (least recently used) waits
    sched.on_request(waiting)
    sched.on_request(request(clock, model_id=3))        # needs a page
    clock.now += 200_000                                # past the load-decision interval
    sched.tick()
    evicts = [a.model_id for _, a, _ in out.actions if type(a) is EvictWeights]
    loads = [a.model_id for _, a, _ in out.actions if type(a) is LoadWeights]
    assert evicts == [1]          # idle, though model 0 is less recently used
    assert loads == [3]
    assert waiting.id not in out.responses


def test_never_evicts_a_model_with_an_infer_in_flight():
    # Two pages, models 0 and 1 loaded, neither with queued requests. Model 0 is the least
    # recently used but has an Infer in flight: evicting it would fail that Infer
    # (WEIGHTS_CHANGED), so model 1 makes room for model 2.
    models = {i: model_info(i, EXEC, num_pages=1) for i in range(3)}
    sched, clock, out = setup(models=models, loaded=(0, 1), pages=2)
    sched.on_request(request(clock, model_id=0))
    sched.tick()
    sched.on_request(request(clock, model_id=1))
    sched.tick()
    a0, a1 = out.infers()
    clock.now += 3 * MS
    sched.on_result(0, a1, infer_result(a1, 1 * MS, 1 * MS), [bytes(8)])    # model 1 done
    sched.on_request(request(clock, model_id=2))                           # needs a page
    clock.now += 200_000                                # past the load-decision interval
    sched.tick()
    evicts = [a.model_id for _, a, _ in out.actions if type(a) is EvictWeights]
    loads = [a.model_id for _, a, _ in out.actions if type(a) is LoadWeights]
    assert (evicts, loads) == ([1], [2])


def test_at_most_max_loads_per_gpu_outstanding():
    models = [model_info(i, EXEC, num_pages=1, weights_load_ns=5 * MS) for i in range(6)]
    sim = Simulator("infer4", models, config={"max_loads_per_gpu": 2}, latency=0)
    for i in range(6):
        sim.request(0, i)
    outstanding, peak = 0, 0
    orig = sim.sched.on_result

    def watch(wid, action, result, data):
        nonlocal outstanding
        if type(action) is LoadWeights:
            outstanding -= 1
        orig(wid, action, result, data)
    sim.sched = Spy(sim.sched, on_result=watch)
    orig_send = sim._send

    def send(wid, action, data):
        nonlocal outstanding, peak
        if type(action) is LoadWeights:
            outstanding += 1
            peak = max(peak, outstanding)
        orig_send(wid, action, data)
    sim._send = send
    sim.run()
    assert peak == 2
    assert not sim.unanswered()


# ---------------------------------------------------------------- failures and workers

def test_worker_error_is_forwarded_to_the_requests():
    sched, clock, out = setup()
    reqs = [request(clock) for _ in range(2)]
    for r in reqs:
        sched.on_request(r)
    sched.tick()
    action = out.infers()[0]
    sched.on_result(0, action, ErrorResult(action.action_id, 23, Status.ACTION_TOO_LATE, "late"), [])
    assert [out.responses[r.id][0] for r in reqs] == [Status.ACTION_TOO_LATE] * 2


def test_a_send_that_failed_is_retried_while_deadlines_allow():
    # The edge reports a send that failed (its queue to the worker full) as WORKER_LOST after
    # the tick, never from inside send_action (scheduler contract). The requests go back to
    # the queue and the next tick sends them again; each is answered once.
    sched, clock, out = setup()
    reqs = [request(clock) for _ in range(3)]
    for r in reqs:
        sched.on_request(r)
    sched.tick()
    (failed,) = out.infers()
    sched.on_result(0, failed, ErrorResult(failed.action_id, 23, Status.WORKER_LOST, "send queue full"), [])
    assert not out.responses
    sched.tick()
    retry = out.infers()[-1]
    assert retry.action_id != failed.action_id and retry.batch_size == 3
    sched.on_result(0, retry, infer_result(retry, clock.now, 1 * MS), [bytes(24)])
    assert [out.responses[r.id][0] for r in reqs] == [Status.SUCCESS] * 3


def test_worker_lost_requeues_in_flight_requests_elsewhere():
    models = {0: model_info(0, EXEC)}
    clock, out = Clock(), Recorder()
    sched = make_scheduler("infer4", {}, clock, out)
    sched.start(models, {0: worker(1, 100, (0,), models.values()), 1: worker(1, 100, (0,), models.values())})
    reqs = [request(clock) for _ in range(3)]
    for r in reqs:
        sched.on_request(r)
    sched.tick()
    (wid, action, _), = out.actions
    sched.on_result(wid, action, ErrorResult(action.action_id, 23, Status.WORKER_LOST, "lost"), [])
    sched.on_worker_lost(wid)
    assert not out.responses
    sched.tick()
    wid2, action2, _ = out.actions[-1]
    assert wid2 != wid and action2.batch_size == 3
    sched.on_result(wid2, action2, infer_result(action2, 0, 1 * MS), [bytes(24)])
    assert all(out.responses[r.id][0] == Status.SUCCESS for r in reqs)


def test_worker_joined_gets_used():
    models = [model_info(0, {1: 8 * MS}, num_pages=1)]
    sim = Simulator("infer4", models, workers=1, latency=0, config={"max_batch_size": 1})
    sim.add_worker(100 * MS)
    sim.poisson(rate=200, duration=1 * SECOND)    # more than one GPU serves with batch 1
    sim.run()
    assert not sim.unanswered()
    used = {w for t, w, a in sim.actions if type(a) is Infer}
    assert used == {0, 1}


# ---------------------------------------------------------------- overload

def test_admission_at_arrival_never_refuses_what_fits():
    """A burst that one GPU can finish within the SLO, batch after batch, is served whole."""
    models = {0: model_info(0, EXEC, output_size=8)}
    sim = Simulator("infer4", list(models.values()), workers=1, gpus=1)
    sim.request(0, 0)                  # loads the model, so the burst finds it on the GPU
    # exec deadline 95 ms after 50 ms; batches of 16 take 3 ms: 28 batches (448) end by 84 ms
    for _ in range(448):
        sim.request(50 * MS, 0)
    sim.run()
    assert len(sim.with_status(Status.SUCCESS)) == 449


def test_front_request_skipped_for_a_larger_batch_that_meets_more_deadlines():
    models = {0: model_info(0, {1: 1 * MS, 16: 3 * MS}, output_size=8)}
    sched, clock, out = setup(models=models)
    urgent = request(clock)
    urgent.exec_deadline = clock.now + 2 * MS      # fits batch 1 (1 ms), not batch 16 (3 ms)
    sched.on_request(urgent)
    later = [request(clock) for _ in range(16)]
    for r in later:
        sched.on_request(r)
    sched.tick()
    first = out.infers()[0]
    assert first.batch_size == 16
    assert out.responses[urgent.id][0] == Status.CONTROLLER_SKIPPED
    sched.on_result(0, first, infer_result(first, 0, 3 * MS), [bytes(8 * 16)])
    assert all(out.responses[r.id][0] == Status.SUCCESS for r in later)


def test_rejoined_worker_gets_new_gpus_and_models_load_again():
    models = {0: model_info(0, EXEC)}
    clock, out = Clock(), Recorder()
    sched = make_scheduler("infer4", {}, clock, out)
    sched.start(models, {0: worker(1, 100, (0,), models.values())})
    sched.on_worker_lost(0)
    r = request(clock)
    sched.on_request(r)
    sched.tick()
    assert not out.actions                      # no GPU: waits
    sched.on_worker_joined(0, worker(1, 100, (), models.values()))
    assert [g.alive for g in sched._slots] == [True]   # the lost GPU left the turn of load slots
    clock.now += 1 * MS
    sched.tick()
    (wid, load, _), = out.actions
    assert type(load) is LoadWeights and wid == 0
    from clockwork.transport.schema import LoadWeightsResult
    sched.on_result(0, load, LoadWeightsResult(load.action_id, 0, 0, 0, 0, 1 * MS), [])
    sched.tick()
    infer = out.actions[-1][1]
    assert type(infer) is Infer
    sched.on_result(0, infer, infer_result(infer, clock.now, 1 * MS), [bytes(8)])
    assert out.responses[r.id][0] == Status.SUCCESS
    gpus = sched.stats()["gpus"]
    assert [g["index"] for g in gpus] == [1]    # a new global index, the old one is gone


def test_stats_report_queues_and_gpus():
    sched, clock, out = setup(models={0: model_info(0, EXEC), 1: model_info(1, EXEC)}, loaded=(0,))
    for _ in range(3):
        sched.on_request(request(clock, model_id=1))     # model 1 is not loaded: stays queued
    sched.on_request(request(clock, model_id=0))
    sched.tick()
    st = sched.stats()
    assert st["queued"] == 3 and st["queues"] == {1: 3}
    (g,) = st["gpus"]
    assert g["infers_in_flight"] == 1 and g["loads_in_flight"] == 1
    assert g["backlog_ns"] == EXEC[1] and g["free_pages"] == 98


def test_stats_change_nothing():
    # several readers (stats lines, telemetry) may ask at any time: each gets the same answer
    sched, clock, out = setup()
    sched.on_request(request(clock))
    sched.tick()
    (a,) = out.infers()
    clock.now = 2 * SECOND
    sched.on_result(0, a, infer_result(a, 0, 1 * MS), [bytes(8)])
    first = sched.stats()
    assert first["gpus"][0]["exec_ns"] == 1 * MS and first["gpus"][0]["utilization"] > 0
    assert sched.stats() == first


def test_absurd_slo_factor_is_an_invalid_request_not_a_crash():
    sched, clock, out = setup()
    r = request(clock, slo_factor=float("inf"))
    sched.on_request(r)
    assert out.responses[r.id][0] == Status.INVALID_REQUEST
    sched.tick()
    assert not out.actions


# ---------------------------------------------------------------- scale

def test_per_model_state_is_made_on_first_use_and_instances_share_profile_tables():
    """With a million instances most are never requested: their state (queue, estimates) must
    not be built up front, and what it is built from (pad and batch tables) is one per profile."""
    models = {i: model_info(i, EXEC, output_size=8) for i in range(10_000)}
    sched, clock, out = setup(models=models, loaded=(0,))
    assert len(sched._models) == 1                         # the one loaded model
    for mid in (5, 7, 5):
        sched.on_request(request(clock, model_id=mid))
    assert sorted(sched._models) == [0, 5, 7]
    a, b = sched._models[5], sched._models[7]
    assert a.pad is b.pad and a.est is not b.est           # shared tables, own estimates
    sched.on_request(request(clock, model_id=10_000))       # unknown: still refused
    assert list(out.responses.values())[-1][0] == Status.INVALID_REQUEST


def test_cold_model_is_loaded_at_once_when_the_next_load_pass_is_far_off():
    """Load passes space out with the models waiting (their cost grows with them): with 96
    waiting the next is 1.2 ms away. A request for a model with no copy must not wait for it
    (at 1,000 GPUs x 10,000 instances passes were 60-100 ms apart, longer than a cold request
    stays helpable, and 7-15% of requests timed out): its load goes out in the same tick."""
    models = {i: model_info(i, EXEC, num_pages=1, weights_load_ns=100_000) for i in range(100)}
    sched, clock, out = setup({"max_loads_per_gpu": 200}, models=models, gpus=2, loaded=(), pages=200)
    for mid in range(96):
        sched.on_request(request(clock, model_id=mid))
    sched.tick()
    loads = [a.model_id for _, a, _ in out.actions if type(a) is LoadWeights]
    assert sorted(loads) == list(range(96))                 # the pass placed every one
    clock.now = 100_000
    sched.on_request(request(clock, model_id=97))
    sched.tick()
    loads = [a for _, a, _ in out.actions if type(a) is LoadWeights]
    assert loads[-1].model_id == 97 and loads[-1].earliest == clock.now
    sched.on_request(request(clock, model_id=97))           # loading: no second copy
    sched.on_request(request(clock, model_id=0))            # has a copy: left to the passes
    sched.tick()
    assert len([a for _, a, _ in out.actions if type(a) is LoadWeights]) == 97
