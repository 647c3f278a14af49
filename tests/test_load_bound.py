"""INFER4's load passes skip ranking when load_planning.ShareBound says nothing would be ranked:
its per-GPU shares, kept as things change, must equal the shares from scratch, a skipped pass
must be one that would have ranked nothing (and forget emptied queues as rank_demand does, from
the scheduler's list of them), and skipping must change no decision. Random sequences of requests,
Infer/load results (slower and faster than estimated, failures), evictions and a lost and
rejoining worker, driven by a fake clock: deterministic."""
import itertools
import random

import pytest

from clockwork.controller.scheduler import Request
from clockwork.controller.schedulers import make_scheduler
from clockwork.controller.schedulers.load_planning import ShareBound, rank_demand
from clockwork.controller.simulator import MS, model_info
from clockwork.status import Status
from clockwork.transport.schema import (ErrorResult, EvictWeightsResult, GpuState, Infer, InferResult,
                                        LoadWeights, LoadWeightsResult, WorkerState)

pytestmark = pytest.mark.timeout(300)

EXEC = {1: 1 * MS, 2: 1_200_000, 4: 1_500_000, 8: 2 * MS}
# capacity (default_slo) of a few ms of batch-1 work, so GPUs go over it and back under it
CONFIG = {"default_slo_ms": 6.0, "max_load_slo_ms": 25.0}
N_MODELS = 12
CALM, BUSY = (0, 0, 0, 1), (0, 1, 2, 4, 8)      # requests per step


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


class Recorder:
    """A recording Outbox; every request answered at most once."""

    def __init__(self):
        self.action_ids = itertools.count(1)
        self.actions = []        # (worker_id, action, expected_end)
        self.responses = {}      # request id -> status

    def send_action(self, worker_id, action, data=(), expected_end=0):
        self.actions.append((worker_id, action, expected_end))

    def respond(self, req, status, message="", output=None, exec_ns=0):
        assert req.id not in self.responses, f"request {req.id} answered twice"
        self.responses[req.id] = status


def worker_state(infos, gpus=2, pages=6, loaded=()):
    return WorkerState(page_size=16 << 20, models=list(infos), gpus=[
        GpuState(i, pages, pages, 1 << 29, 1 << 29, list(loaded)) for i in range(gpus)])


class CheckedBound(ShareBound):
    """The scheduler's bound, checking every pass it lets the scheduler skip against rank_demand
    from scratch (over the waiting models, without forgetting any: no side effect)."""

    def __init__(self, capacity, sched):
        super().__init__(capacity)
        self.sched = sched
        self.skipped = 0

    def may_rank(self, wanting, now, max_load_slo):
        if super().may_rank(wanting, now, max_load_slo):
            return True
        s = self.sched
        waiting = {mid: m for mid, m in s._wanting.items() if m.queue}
        ranked, _ = rank_demand(waiting, len(s._gpus), now, max_load_slo, self.capacity)
        assert not ranked, f"a pass skipped at {now} would have ranked {ranked}"
        self.skipped += 1
        return False


class AlwaysRank(ShareBound):
    """Every pass ranks: the scheduler as it was before the bound."""

    def may_rank(self, wanting, now, max_load_slo):
        return True


def shares_from_scratch(sched) -> tuple[dict[int, int], dict[int, int]]:
    """Per GPU index: the sum over queued models it holds or loads of items x b1 / copies, each
    rounded up; and per model that share (if not 0). From the scheduler's state now."""
    work: dict[int, int] = {}
    contrib: dict[int, int] = {}
    for m in sched._models.values():
        k = len(m.gpus) + len(m.loading_gpus)
        if m.queue and k:
            c = -(-m.items * m.b1ns // k)
            if c:
                contrib[m.id] = c
            for g in m.gpus + m.loading_gpus:
                work[g.index] = work.get(g.index, 0) + c
    return {i: w for i, w in work.items() if w}, contrib


def check_bound(sched, now) -> None:
    for m in sched._wanting.values():       # what the next pass forgets without walking them
        assert m.queue or sched._emptied.get(m.id) is m, f"model {m.id}: queue empty, not in _emptied"
    if not sched._bound.valid:
        return
    b = ShareBound(sched._bound.capacity)   # a copy brought up to date as the next pass will
    b.valid, b.over, b.cold = True, sched._bound.over, dict(sched._bound.cold)
    b.work, b.contrib, b.changed = dict(sched._bound.work), dict(sched._bound.contrib), dict(sched._bound.changed)
    b.catch_up(sched._wanting, now, sched.s.max_load_slo)
    work, contrib = shares_from_scratch(sched)
    kept = {i: w for i, w in b.work.items() if w and i in sched._gpus}
    assert kept == work, f"shares kept {kept} != from scratch {work} at {now}"
    assert b.contrib == contrib
    assert b.over == sum(1 for w in kept.values() if w > b.capacity)
    mls = sched.s.max_load_slo
    for m in sched._models.values():
        if m.queue and not m.gpus and not m.loading_gpus and m.queue[-1].arrival + mls > now:
            assert b.cold.get(m.id) is m, f"model {m.id} asked for without a copy, not in the bound's cold list"


def run(seed: int, bound=CheckedBound, steps: int = 2500, check=True, n_models: int = N_MODELS):
    """One random sequence; returns the scheduler, the recorder and what happened (counts)."""
    rng = random.Random(seed)
    clock, out = Clock(), Recorder()
    infos = {i: model_info(i, EXEC, weights_load_ns=rng.choice((1, 3, 6)) * MS, num_pages=rng.choice((1, 2)))
             for i in range(n_models)}
    sched = make_scheduler("infer4", CONFIG, clock, out)
    sched._bound = bound(sched.s.default_slo, sched) if bound is CheckedBound else bound(sched.s.default_slo)
    sched.start(dict(infos), {0: worker_state(infos.values(), loaded=[0, 1]),
                              1: worker_state(infos.values(), loaded=[2])})
    popularity = [rng.random() ** 3 for _ in range(n_models)]
    ids = itertools.count(1)
    pending = []                    # (due, order, worker id, action)
    order = itertools.count()
    seen = 0
    happened = dict(b1_changed=0, load_failed=0, evicted_queued=0, loads=0)
    for step in range(steps):
        clock.now += rng.choice((0, 50_000, 200_000, 1 * MS, 3 * MS))
        for _ in range(rng.choice(BUSY if (step // 200) % 3 == 2 else CALM)):     # bursts between calm
            rid = next(ids)
            mid = rng.choices(range(n_models), popularity)[0]
            sched.on_request(Request(rid, None, rid, mid, rng.choice((1, 1, 1, 2)), clock.now,
                                     rng.choice((10, 25, 50, 100)) * MS, []))
        if step % 500 == 250:
            sched.on_worker_lost(1)
            pending = [p for p in pending if p[2] != 1]
        if step % 500 == 400:               # back, with some weights still loaded
            sched.on_worker_joined(1, worker_state(infos.values(), loaded=rng.sample(range(n_models), 2)))
        for wid, action, end in out.actions[seen:]:
            pending.append((max(end, clock.now), next(order), wid, action))
        seen = len(out.actions)
        pending.sort()
        while pending and pending[0][0] <= clock.now:
            _, _, wid, a = pending.pop(0)
            t = clock.now
            if type(a) is Infer:
                if rng.random() < 0.04:             # failed, or lost on the way: re-queued
                    status = rng.choice((Status.ERROR, Status.WORKER_LOST))
                    result, data = ErrorResult(a.action_id, 23, status, "failed"), []
                else:
                    d = int(a.expected_ns * rng.uniform(0.7, 1.5))
                    result = InferResult(a.action_id, t, t, t - d, t - d, t - d, t, d, t, t, 1980, 1980)
                    data = [bytes(a.batch_size * 8)]
                    m = sched._models[a.model_id]
                    b1 = m.b1ns
                sched.on_result(wid, a, result, data)
                if type(result) is InferResult and sched._models[a.model_id].b1ns != b1 and m.items:
                    happened["b1_changed"] += 1
            elif type(a) is LoadWeights:
                happened["loads"] += 1
                if rng.random() < 0.1:
                    happened["load_failed"] += 1
                    sched.on_result(wid, a, ErrorResult(a.action_id, 21, Status.ERROR, "failed"), [])
                else:
                    d = int(a.expected_ns * rng.uniform(0.8, 1.3))
                    sched.on_result(wid, a, LoadWeightsResult(a.action_id, t, t, t - d, t, d), [])
            else:
                if sched._models[a.model_id].items:
                    happened["evicted_queued"] += 1
                sched.on_result(wid, a, EvictWeightsResult(a.action_id, t, t, t, t), [])
        sched.tick()
        if check:
            check_bound(sched, clock.now)
    return sched, out, happened


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shares_kept_equal_shares_from_scratch_and_skipped_passes_rank_nothing(seed):
    sched, out, happened = run(seed)
    # the sequence went through what the bound must follow, and passes were skipped
    assert all(happened.values()), happened
    assert sched._bound.skipped > 50
    assert len(out.responses) > 1000


@pytest.mark.parametrize("seed,n_models", [(4, N_MODELS), (5, N_MODELS), (6, 40)])
def test_skipping_passes_changes_no_decision(seed, n_models):
    # (with 40 models, often more than 16 wait: passes are spaced by how many, see next_load_pass)
    sched, out, _ = run(seed, CheckedBound, check=False, n_models=n_models)
    ref_sched, ref, _ = run(seed, AlwaysRank, check=False, n_models=n_models)
    assert sched._bound.skipped > 50
    assert [(w, a) for w, a, _ in out.actions] == [(w, a) for w, a, _ in ref.actions]
    assert out.responses == ref.responses


def model_0_on_gpu_0():
    """Two GPUs, model 0 on GPU 0 only, model 1 nowhere; batches of 1 (so requests stay queued)."""
    clock, out = Clock(), Recorder()
    infos = {0: model_info(0, EXEC), 1: model_info(1, EXEC)}
    sched = make_scheduler("infer4", {**CONFIG, "max_batch_size": 1}, clock, out)
    sched._bound = CheckedBound(sched.s.default_slo, sched)
    state = WorkerState(page_size=16 << 20, models=list(infos.values()), gpus=[
        GpuState(0, 6, 6, 1 << 29, 1 << 29, [0]), GpuState(1, 6, 6, 1 << 29, 1 << 29, [])])
    sched.start(dict(infos), {0: state})
    return sched, clock, out


def loads(out):
    return [(a.model_id, a.gpu_id) for _, a, _ in out.actions if type(a) is LoadWeights]


def test_demand_over_capacity_on_a_copy_still_loads_another():
    sched, clock, out = model_0_on_gpu_0()
    sched.on_request(Request(1, None, 1, 0, 1, clock.now, 100 * MS, []))
    sched.tick()                                # nothing to rank: the shares are set
    assert sched._bound.valid and not loads(out)
    clock.now += 1 * MS
    sched.on_request(Request(2, None, 2, 0, 1, clock.now, 100 * MS, []))
    skipped = sched._bound.skipped
    sched.tick()
    assert sched._bound.skipped == skipped + 1 and not loads(out)
    assert not sched._wanting                   # a skipped pass forgets emptied queues too
    clock.now += 1 * MS
    for rid in range(3, 14):                    # 11 requests: 3 sent now, 8 ms of work left on GPU 0
        sched.on_request(Request(rid, None, rid, 0, 1, clock.now, 100 * MS, []))
    sched.tick()
    assert len(sched._models[0].queue) == 8
    assert loads(out) == [(0, 1)]               # a second copy, on the other GPU


def test_a_request_for_a_model_without_a_copy_still_loads_it():
    sched, clock, out = model_0_on_gpu_0()
    sched.on_request(Request(1, None, 1, 0, 1, clock.now, 100 * MS, []))
    sched.tick()
    assert sched._bound.valid and not loads(out)
    clock.now += 1 * MS
    sched.on_request(Request(2, None, 2, 1, 1, clock.now, 100 * MS, []))   # model 1: no copy
    sched.tick()
    assert loads(out) == [(1, 1)]
    skipped = sched._bound.skipped
    clock.now += 200_000
    sched.tick()                                # being loaded: no longer a reason to rank
    assert sched._bound.skipped == skipped + 1 and not sched._bound.cold


def test_b1_estimate_changing_for_a_queued_model_moves_its_shares():
    sched, clock, out = model_0_on_gpu_0()
    for rid in range(1, 6):                     # 3 sent, 2 ms of work left queued on GPU 0
        sched.on_request(Request(rid, None, rid, 0, 1, clock.now, 100 * MS, []))
    sched.tick()
    assert sched._bound.valid and len(sched._models[0].queue) == 2
    for (w, a, _), d in zip(out.actions, (3 * MS, MS // 2)):    # b1 x3 (6 ms queued), then a little less
        sched.on_result(w, a, InferResult(a.action_id, d, d, 0, 0, 0, d, d, d, d, 1980, 1980), [bytes(8)])
        check_bound(sched, clock.now)


def test_requests_requeued_after_a_lost_infer_count():
    sched, clock, out = model_0_on_gpu_0()
    for rid in range(1, 6):                     # 3 sent, 2 ms of work left queued on GPU 0
        sched.on_request(Request(rid, None, rid, 0, 1, clock.now, 100 * MS, []))
    sched.tick()
    assert sched._bound.valid and len(sched._models[0].queue) == 2
    w, a, _ = out.actions[0]
    sched.on_result(w, a, ErrorResult(a.action_id, 23, Status.WORKER_LOST, "lost"), [])
    assert len(sched._models[0].queue) == 3
    check_bound(sched, clock.now)


def test_worker_lost_or_joined_with_copies_of_a_queued_model():
    clock, out = Clock(), Recorder()
    infos = {0: model_info(0, EXEC)}
    sched = make_scheduler("infer4", {**CONFIG, "max_batch_size": 1}, clock, out)
    sched._bound = CheckedBound(sched.s.default_slo, sched)
    sched.start(dict(infos), {0: worker_state(infos.values(), gpus=1, loaded=[0]),
                              1: worker_state(infos.values(), gpus=1)})
    for rid in range(1, 11):                    # 3 sent, 7 ms left: over 6 ms, a copy on worker 1
        sched.on_request(Request(rid, None, rid, 0, 1, clock.now, 100 * MS, []))
    sched.tick()
    assert loads(out) == [(0, 0)] and out.actions[-1][0] == 1
    clock.now += 100_000
    sched.tick()                                # one more sent; 6 ms over two copies: ranks nothing
    assert sched._bound.valid and len(sched._models[0].queue) == 6
    sched.on_worker_lost(1)                     # nothing ran there yet: the copy was loading
    check_bound(sched, clock.now)
    clock.now += 100_000
    sched.tick()                                # 6 ms on worker 0 alone: not over capacity
    assert sched._bound.valid and len(sched._models[0].queue) == 6
    sched.on_worker_joined(1, worker_state(infos.values(), gpus=1, loaded=[0]))
    check_bound(sched, clock.now)
