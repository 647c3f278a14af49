"""INFER4's Infer window is tied to its requests' SLO deadlines (found by tools/bench/azure.py:
at half load on a busy 2-core machine, Infers that reached the worker ~12 ms late failed
ACTION_TOO_LATE with 90 ms of slack left, and under overload batches started late finished
after their SLO yet were answered SUCCESS)."""
from __future__ import annotations

import itertools

import pytest

from clockwork.controller.scheduler import Request
from clockwork.controller.schedulers import make_scheduler
from clockwork.controller.simulator import MS, Simulator, model_info
from clockwork.status import Status
from clockwork.transport.schema import GpuState, Infer, LoadWeights, WorkerState

EXEC = {1: 5 * MS, 2: 5_500_000, 4: 6 * MS, 8: 7 * MS, 16: 10 * MS}


@pytest.mark.timeout(30)
def test_action_reaching_the_worker_late_still_runs_when_its_deadline_allows():
    # Every action reaches the worker 15 ms after it was sent (a worker held off the CPU): more
    # than the original's latest_delta past the planned start, far less than the 100 ms SLO.
    sim = Simulator("infer4", [model_info(0, EXEC)], preload=True, latency=15 * MS)
    for i in range(20):
        sim.request(i * 50 * MS, 0)
    sim.run()
    assert [sim.responses[r.id].status for r in sim.requests] == [Status.SUCCESS] * 20
    assert all(sim.responses[r.id].latency <= r.slo for r in sim.requests)
    assert not sim.errors


def test_no_infer_window_lets_a_batch_finish_after_its_slo():
    # A request that waited 90 ms (queued behind other work) can still just make its 100 ms SLO
    # if it starts now; starting at its window's latest must still finish (by the estimate the
    # Infer carries) within the SLO deadline, with a millisecond left for the answer.
    clock, out = _Clock(), _Out()
    models = {0: model_info(0, EXEC)}
    sched = make_scheduler("infer4", {}, clock, out)
    sched.start(models, {0: WorkerState(page_size=16 << 20, models=list(models.values()),
                                        gpus=[GpuState(0, 100, 100, 1 << 29, 1 << 29, [0])])})
    r = Request(1, None, 1, 0, 1, 0, 100 * MS, [])
    clock.now = 90 * MS
    sched.on_request(r)
    sched.tick()
    (a,) = [a for a in out.actions if type(a) is Infer]
    assert a.earliest <= clock.now
    assert a.latest + a.expected_ns <= r.deadline - 1 * MS
    assert a.latest >= clock.now


def _sched(loaded=(0,), config=None, exec_ns=EXEC, weights_load_ns=1 * MS):
    clock, out = _Clock(), _Out()
    models = {0: model_info(0, exec_ns, weights_load_ns=weights_load_ns)}
    sched = make_scheduler("infer4", config or {}, clock, out)
    sched.start(models, {0: WorkerState(page_size=16 << 20, models=list(models.values()),
                                        gpus=[GpuState(0, 100, 100, 1 << 29, 1 << 29, list(loaded))])})
    return sched, clock, out


def test_load_window_is_tied_to_the_waiting_requests_deadlines():
    # A cold model's LoadWeights may start as long as the newest waiting request can still be
    # served from it (load + batch-1 exec by its exec deadline), not only until the original's
    # planned start + latest_delta (11 ms): a load reaching a busy worker 15 ms late with 80 ms
    # of slack left must not fail ACTION_TOO_LATE (tests/test_sim_scenarios.py, end to end).
    sched, clock, out = _sched(loaded=(), weights_load_ns=8 * MS)
    first = Request(1, None, 1, 0, 1, 0, 100 * MS, [])
    sched.on_request(first)
    clock.now = 2 * MS
    newest = Request(2, None, 2, 0, 1, clock.now, 100 * MS, [])
    sched.on_request(newest)
    sched.tick()
    (a,) = [a for a in out.actions if type(a) is LoadWeights]
    assert a.earliest <= clock.now
    assert a.latest == newest.exec_deadline - 8 * MS - EXEC[1]
    # never tighter than the original's window, for requests with little slack left
    sched2, clock2, out2 = _sched(loaded=(), weights_load_ns=8 * MS)
    sched2.on_request(Request(1, None, 1, 0, 1, 0, 20 * MS, []))
    sched2.tick()
    (b,) = [a for a in out2.actions if type(a) is LoadWeights]
    assert b.latest == clock2.now + 1 * MS + 10 * MS


def test_no_infer_is_sent_whose_window_has_already_closed():
    # An SLO at or below the exec time (slo_factor 1) can never be met: answered at once, no
    # Infer sent (the original's exec deadline, arrival + 15 ms, let such Infers go out with
    # windows already closed: a wasted round trip each, or a late answer).
    sched, clock, out = _sched(config={"dispatch_ahead_ms": 10.0})     # plans 10 ms ahead
    clock.now = 3 * MS
    short = Request(1, None, 1, 0, 1, clock.now, 0, [], slo_factor=1.0)
    sched.on_request(short)
    assert out.responses == {1: Status.COULD_NOT_START_IN_TIME}
    # A 10 ms SLO behind 5 ms of work on the only GPU: starting when the GPU is free (5 ms from
    # now) it would end 1 ms past its window's latest finish (deadline - 1 ms); it must be
    # answered, not sent with a window closing before the GPU is expected free.
    busy = Request(2, None, 2, 0, 1, clock.now, 100 * MS, [])
    sched.on_request(busy)
    sched.tick()
    tight = Request(3, None, 3, 0, 1, clock.now, 10 * MS, [])
    sched.on_request(tight)
    sched.tick()
    first, *rest = [a for a in out.actions if type(a) is Infer]
    free = first.earliest + first.expected_ns
    assert all(a.latest >= free for a in rest), [(a.earliest, a.latest) for a in rest]
    assert out.responses.get(3) == Status.COULD_NOT_START_IN_TIME
    for a in out.actions:
        assert type(a) is not Infer or a.latest >= a.earliest


class _Clock:
    now = 0

    def __call__(self):
        return self.now


class _Out:
    def __init__(self):
        self.action_ids = itertools.count(1)
        self.actions = []
        self.responses = {}

    def send_action(self, worker_id, action, data=(), expected_end=0):
        self.actions.append(action)

    def respond(self, req, status, message="", output=None, exec_ns=0):
        assert req.id not in self.responses
        self.responses[req.id] = status
