"""INFER4's load planning (docs/design.md, "INFER4"): which models need another copy loaded,
and which models to evict to make room for one.

Load demand: a model's queued work (requests x batch-1 estimate) while its newest request could
still be helped by a load (within max_load_slo of arrival, and with time left for load + exec).
A GPU already holding the model serves its share of that demand in proportion to
default_slo / (the GPU's total queued share) -- the original LoadTracker's capacity rule,
without its incremental priority sets: demand is re-evaluated over the models with queued
requests at most every LOAD_INTERVAL (longer when many models wait), and only when something
changed. With thousands of models waiting passes are tens of ms apart, longer than a cold
request stays helpable (max_load_slo): then a model with no copy at all is loaded at once on
the next GPU with a free load slot, in turn (DIRECT_LOAD_AFTER; INFER4 keeps the queue and the
slots). A ShareBound keeps each GPU's queued share (rounded up) as it changes, so that a pass
sure to rank nothing (most passes at or below capacity) does not walk the waiting models.
Pure functions of the scheduler's state: the scheduler sends the actions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..scheduler import mypyc_attr

if TYPE_CHECKING:       # (types only: infer4 imports this module)
    from .infer4 import _Gpu, _Model

LOAD_INTERVAL = 100_000         # load decisions at most every 100 us (the original's)
DIRECT_LOAD_AFTER = 1_000_000   # cold models are loaded at once when the next pass is further off


def load_latest(start: int, now: int, latest_delta: int, latest_min: int, last_useful: int) -> int:
    """The latest start of a LoadWeights expected to start at `start`: the original's start +
    latest_delta (now + latest_min at least), or later if the requests it is loaded for allow:
    `last_useful` is when it must start at the latest for the newest of them to still finish
    in time (its exec deadline - load estimate - batch-1 estimate). Tied to those deadlines as
    an Infer's window is, so a load reaching a worker late (a slow link, a busy process) still
    runs while it can help, instead of failing ACTION_TOO_LATE 11 ms after it was planned."""
    latest = start + latest_delta
    if latest < now + latest_min + latest_delta:
        latest = now + latest_min + latest_delta
    return latest if latest > last_useful else last_useful


def helpable(m: _Model, now: int, max_load_slo: int) -> bool:
    """Whether a load of model `m` could still help a request in its queue: the newest arrived
    within max_load_slo and has time left for a load and a batch-1 exec (as in rank_demand)."""
    q = m.queue
    if not q:
        return False
    back = q[-1]
    return back.arrival + max_load_slo > now and back.exec_deadline > now + m.weights_est + m.b1ns


def next_load_pass(now: int, models_waiting: int) -> int:
    """When the next pass may run: a pass costs O(models waiting), so passes space out as that grows."""
    return now + LOAD_INTERVAL * max(1, models_waiting >> 3)


def forget_emptied(wanting: dict, emptied: dict) -> None:
    """Forget the models in `wanting` whose queues are empty, as rank_demand does on its way,
    without walking `wanting`: `emptied` (id -> model) holds every model whose queue emptied
    since the last pass (the scheduler adds them). Empties `emptied`."""
    for m in emptied.values():
        if m.wanting and not m.queue:
            m.wanting = False
            del wanting[m.id]
    emptied.clear()


@mypyc_attr(allow_interpreted_subclasses=True)     # tests/test_load_bound.py subclasses it (docs/compiled.md)
class ShareBound:
    """Whether the next load pass could rank anything, known without ranking.

    rank_demand ranks a model with copies only if one of its GPUs holds a queued share above
    `capacity`, and a model without copies only while a load could help its newest request. So
    this keeps, per GPU index, `work`: the sum over the queued models it holds or is loading of
    items x batch-1 estimate / copies, each rounded up to an integer (over every queued model,
    helpable or not, so it is never below the float share rank_demand sums: rounding is
    monotone). Brought up to date at each pass: the scheduler reports each model whose queued
    items or batch-1 estimate changed (touch: noted, applied once per pass however many times
    it changed, so an event costs O(1) and a pass O(copies of the models that changed), never
    more than ranking would) and each copy being loaded (copy_added); a change it does not
    report item by item (a model with queued work losing a copy, requeued requests, workers
    lost or joined) makes it stale, and the next pass recomputes it (refill). `cold`: models
    asked for without a copy (add), until they get one or can no longer be helped."""
    __slots__ = ("capacity", "valid", "work", "contrib", "over", "cold", "changed")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.valid = False                  # not computed yet, or stale since
        self.work: dict[int, int] = {}      # GPU index -> queued share, rounded up per model
        self.contrib: dict[int, int] = {}   # model id -> its share on each of its GPUs (if > 0)
        self.over = 0                       # GPUs whose work exceeds capacity
        self.cold: dict = {}                # model id -> model asked for with no copy
        self.changed: dict = {}             # model id -> model, touched since the last pass

    def stale(self) -> None:
        self.valid = False

    def copy_lost(self, m) -> None:
        """Model `m` lost a copy (evicted, or a load failed): its share on its other copies rose,
        if it had any."""
        if m.items or m.id in self.contrib:
            self.valid = False

    def may_rank(self, wanting: dict, now: int, max_load_slo: int) -> bool:
        """False only if rank_demand would rank nothing now: no GPU over capacity, and no model
        without copies whose newest request arrived within max_load_slo."""
        self.catch_up(wanting, now, max_load_slo)
        if self.over:
            return True
        if self.cold:                       # keep those still cold and helpable (a request brings one back)
            self.cold = {i: m for i, m in self.cold.items() if m.queue and not m.gpus and not m.loading_gpus
                         and m.queue[-1].arrival + max_load_slo > now}
            return bool(self.cold)
        return False

    def catch_up(self, wanting: dict, now: int, max_load_slo: int) -> None:
        """Bring the shares up to date: the changes noted since the last pass, or from scratch."""
        if not self.valid:
            self.refill(wanting, now, max_load_slo)
        elif self.changed:
            for m in self.changed.values():
                self._apply(m)
            self.changed.clear()

    def refill(self, wanting: dict, now: int, max_load_slo: int) -> None:
        """The shares from scratch, over the models in `wanting` (every model with queued work)."""
        capacity = self.capacity
        work: dict[int, int] = {}
        contrib: dict[int, int] = {}
        cold = {}
        for m in wanting.values():
            q = m.queue
            if not q:
                continue
            gpus, loading = m.gpus, m.loading_gpus
            k = len(gpus) + len(loading)
            if k:
                c = contrib[m.id] = -(-m.items * m.b1ns // k)
                for h in gpus:
                    work[h.index] = work.get(h.index, 0) + c
                for h in loading:
                    work[h.index] = work.get(h.index, 0) + c
            elif q[-1].arrival + max_load_slo > now:
                cold[m.id] = m
        self.work, self.contrib, self.cold, self.valid = work, contrib, cold, True
        self.over = sum(1 for w in work.values() if w > capacity)
        self.changed.clear()

    def add(self, m) -> None:
        """A request joined model `m`'s queue."""
        if not self.valid:
            return
        if m.gpus or m.loading_gpus:
            self.changed[m.id] = m
        else:
            self.cold[m.id] = m

    def touch(self, m) -> None:
        """Model `m`'s queued items or batch-1 estimate changed (not its copies)."""
        if self.valid:
            self.changed[m.id] = m

    def _apply(self, m) -> None:
        """Move model `m`'s share on its GPUs to what its items and estimate make it now."""
        gpus, loading = m.gpus, m.loading_gpus
        k = len(gpus) + len(loading)
        if not k:
            return
        c = -(-m.items * m.b1ns // k)
        contrib = self.contrib
        old = contrib.get(m.id, 0)
        if c == old:
            return
        if c:
            contrib[m.id] = c
        else:
            del contrib[m.id]
        self._shift(gpus, c - old)
        if loading:
            self._shift(loading, c - old)

    def copy_added(self, m, g) -> None:
        """Model `m` is now loading on GPU `g` too (appended to m.loading_gpus)."""
        if not self.valid:
            return
        contrib = self.contrib
        old = contrib.get(m.id, 0)
        c = -(-m.items * m.b1ns // (len(m.gpus) + len(m.loading_gpus)))
        if c:
            contrib[m.id] = c
        elif old:
            del contrib[m.id]
        self._shift(m.gpus, c - old)
        self._shift(m.loading_gpus, c - old)
        self._shift((g,), old)              # (g had none of it)

    def _shift(self, hosts, d: int) -> None:
        """Add `d` to the work of each GPU in `hosts`, counting those crossing capacity."""
        work, capacity = self.work, self.capacity
        for h in hosts:
            i = h.index
            w = work.get(i, 0)
            work[i] = w + d
            if (w + d > capacity) != (w > capacity):
                self.over += 1 if d > 0 else -1


def rank_demand(wanting: dict[int, _Model], n_gpus: int, now: int, max_load_slo: int,
                capacity: int) -> tuple[list[tuple[float, int]], dict[int, float]]:
    """Models whose demand is not met by the copies they have or are loading, neediest first:
    ([(-unmet work, model id)], {gpu index: queued work it holds}). Forgets models in `wanting`
    whose queues emptied. `capacity`: the work a GPU serves per SLO (default_slo)."""
    demand: list[tuple[_Model, int, int]] = []     # (model, queued work, copies)
    share_of: dict[int, float] = {}
    loadable = False
    emptied: list[_Model] | None = None
    for m in wanting.values():
        q = m.queue
        if not q:
            if emptied is None:
                emptied = []
            emptied.append(m)
            continue
        back = q[-1]
        b1 = m.b1ns
        if back.arrival + max_load_slo <= now or back.exec_deadline <= now + m.weights_est + b1:
            continue            # no queued request could still be helped by a load
        d = m.items * b1
        gpus, loading = m.gpus, m.loading_gpus
        k = len(gpus) + len(loading)
        demand.append((m, d, k))
        if k:
            share = d / k
            for h in gpus:
                share_of[h.index] = share_of.get(h.index, 0.0) + share
            for h in loading:
                share_of[h.index] = share_of.get(h.index, 0.0) + share
        if k < n_gpus:
            loadable = True
    if emptied is not None:
        for m in emptied:
            m.wanting = False
            del wanting[m.id]
    if not loadable:
        return [], share_of     # every model that could use a load is on every GPU already
    # A model with copies has unmet demand only if one of its GPUs holds more than `capacity`
    # (otherwise unmet = d - k * (d / k), zero up to rounding, never above 0.5)
    over = {i for i, w in share_of.items() if w > capacity}
    ranked = []
    for m, d, k in demand:
        if k >= n_gpus:
            continue
        unmet = float(d)
        if k:
            if not over:
                continue
            hit = False
            for h in m.gpus:
                if h.index in over:
                    hit = True
                    break
            if not hit:
                for h in m.loading_gpus:
                    if h.index in over:
                        hit = True
                        break
            if not hit:
                continue
            share = d / k
            for h in m.gpus:
                unmet -= share * min(1.0, capacity / share_of[h.index])
            for h in m.loading_gpus:
                unmet -= share * min(1.0, capacity / share_of[h.index])
        if unmet > 0.5:
            ranked.append((-unmet, m.id))
    ranked.sort()
    return ranked, share_of


def eviction_victims(g: _Gpu, need: int, models: dict[int, _Model]) -> list[int] | None:
    """Models to evict from GPU `g` to free `need` pages: models without queued requests, least
    recently used first, then any, LRU. A model with an Infer in flight on `g` is never chosen
    (the original could, and the Infer then failed with WEIGHTS_CHANGED). None if not enough."""
    victims: list[int] = []
    freed = 0
    for idle_only in (True, False):
        for mid in g.loaded:
            if freed >= need:
                break
            if g.busy.get(mid) or mid in victims:
                continue
            other = models[mid]
            if idle_only and other.queue:
                continue
            victims.append(mid)
            freed += other.pages
    return victims if freed >= need else None
