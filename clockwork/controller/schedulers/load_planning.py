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
slots). Between passes a ShareBound keeps an upper bound on each GPU's queued share, so that a
pass sure to rank nothing (most passes at or below capacity) does not walk the waiting models.
Pure functions of the scheduler's state: the scheduler sends the actions.
"""
from __future__ import annotations

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


def helpable(m, now: int, max_load_slo: int) -> bool:
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


class ShareBound:
    """Whether the next load pass could rank anything, known without ranking.

    rank_demand ranks a model with copies only if one of its GPUs holds a queued share above
    `capacity`, and a model without copies only while a load could help its newest request. So
    this keeps, per GPU index, an integer `work` >= that GPU's share as rank_demand would sum
    it (over every queued model, helpable or not: items x batch-1 estimate / copies, each
    rounded up), set at a ranking pass (refill) and raised by what can raise a share: queued
    items (add) and copies being loaded (copy_added). What lowers a share (batches sent,
    timeouts, more copies) is left out: the bound only gets looser until the next ranking pass.
    What the scheduler does not report item by item (a batch-1 estimate rising for a queued
    model, a queued model losing a copy, workers joining or lost, requeued requests) makes it
    stale: the next pass ranks. `cold`: models asked for without a copy since the last ranking.
    Integers, so the float shares rank_demand sums never exceed them (rounding is monotone)."""
    __slots__ = ("capacity", "valid", "work", "over", "cold")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.valid = False                  # no ranking pass yet, or stale since
        self.work: dict[int, int] = {}      # GPU index -> bound on its queued share
        self.over = 0                       # GPUs whose bound exceeds capacity
        self.cold: list = []                # models asked for with no copy (repeats allowed)

    def stale(self) -> None:
        self.valid = False

    def may_rank(self, now: int, max_load_slo: int) -> bool:
        """False only if rank_demand would rank nothing now: no GPU over capacity, and no model
        without copies whose newest request arrived within max_load_slo."""
        if not self.valid or self.over:
            return True
        cold = self.cold
        while cold:
            m = cold[-1]
            q = m.queue
            if q and not m.gpus and not m.loading_gpus and q[-1].arrival + max_load_slo > now:
                return True
            cold.pop()                      # (for good: only a new request brings it back)
        return False

    def refill(self, wanting: dict, share_of: dict, now: int, max_load_slo: int) -> None:
        """After rank_demand: the bound from scratch. Not kept while a GPU's share is over
        capacity already (every pass ranks then until one finds none)."""
        capacity = self.capacity
        for w in share_of.values():
            if w > capacity:
                self.valid = False
                return
        work: dict[int, int] = {}
        cold = []
        for m in wanting.values():
            q = m.queue
            if not q:
                continue
            gpus, loading = m.gpus, m.loading_gpus
            k = len(gpus) + len(loading)
            if k:
                c = -(-m.items * m.b1ns // k)
                for h in gpus:
                    work[h.index] = work.get(h.index, 0) + c
                for h in loading:
                    work[h.index] = work.get(h.index, 0) + c
            elif q[-1].arrival + max_load_slo > now:
                cold.append(m)
        self.work, self.cold, self.valid = work, cold, True
        self.over = sum(1 for w in work.values() if w > capacity)

    def add(self, m, items: int) -> None:
        """Model `m`'s queue has `items` more items."""
        if not self.valid:
            return
        gpus, loading = m.gpus, m.loading_gpus
        k = len(gpus) + len(loading)
        if not k:
            self.cold.append(m)
            return
        c = -(-items * m.b1ns // k)
        for h in gpus:
            self._raise(h.index, c)
        for h in loading:
            self._raise(h.index, c)

    def copy_added(self, m, g) -> None:
        """Model `m` is now loading on GPU `g` too (in m.loading_gpus): its share lands there."""
        if self.valid and m.items:
            self._raise(g.index, -(-m.items * m.b1ns // (len(m.gpus) + len(m.loading_gpus))))

    def _raise(self, i: int, c: int) -> None:
        w = self.work.get(i, 0)
        if w + c > self.capacity >= w:
            self.over += 1
        self.work[i] = w + c


def rank_demand(wanting: dict, n_gpus: int, now: int, max_load_slo: int,
                capacity: int) -> tuple[list[tuple[float, int]], dict[int, float]]:
    """Models whose demand is not met by the copies they have or are loading, neediest first:
    ([(-unmet work, model id)], {gpu index: queued work it holds}). Forgets models in `wanting`
    whose queues emptied. `capacity`: the work a GPU serves per SLO (default_slo)."""
    demand = []                 # (model, queued work, copies)
    share_of: dict[int, float] = {}
    loadable = False
    emptied = None
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


def eviction_victims(g, need: int, models: dict) -> list[int] | None:
    """Models to evict from GPU `g` to free `need` pages: models without queued requests, least
    recently used first, then any, LRU. A model with an Infer in flight on `g` is never chosen
    (the original could, and the Infer then failed with WEIGHTS_CHANGED). None if not enough."""
    victims = []
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
