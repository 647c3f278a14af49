"""INFER4's batching (docs/design.md, "INFER4"): which batch sizes a model may run, which batch
to form from its deadline-ordered queue, and the window the Infer is sent with.

A batch of n requests may be padded up to the next compiled size (the worker supports it); the
original only formed compiled sizes. Deadlines are checked with the padded size's estimate.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..scheduler import Request

EARLIEST_LEAD = 1_000_000       # an Infer may start this much before its expected start
LATEST_MIN = 1_000_000          # kept for the answer after the estimated end; latest >= now + this


def batch_sizes(compiled: list[int], est_ns: list[int], max_batch_size: int, max_exec: int) -> list[int]:
    """The compiled sizes used to batch several requests, ascending: <= max_batch_size and
    estimated (est_ns, by size) <= max_exec. The smallest is always allowed, as the original
    kept batch 1."""
    allowed = [b for b in compiled if b <= max_batch_size and est_ns[b] <= max_exec]
    limit = allowed[-1] if allowed else compiled[0]
    return [b for b in compiled if b <= limit]


def choose_batch(q: deque[Request], sizes: list[int], est: list[int], clk: int, t: int) -> tuple[int, int]:
    """The batch serving the most requests in time if it starts at `t`, from the queue `q`
    (deadline order, its front can finish in time alone): (items, requests to skip first).
    For each allowed size c, the requests that can finish by t + est(c) are a suffix of the
    queue; take up to c items from its start. Requests before that suffix are skipped
    (CONTROLLER_SKIPPED), as the original skips requests ahead of the strategy it runs; under
    overload this keeps batches large instead of spending the GPU on small batches of nearly
    expired requests. The original reached this through its strategy heap (the first feasible
    strategy, then an upgrade); choosing the largest feasible batch directly keeps goodput at
    the GPU's largest-batch capacity under overload. (0, 0): the front request alone (larger
    than any batch limit)."""
    qlen = len(q)
    best_items, best_skip = 0, 0
    for c in sizes:
        finish = t + est[c] // clk
        i = 0
        while i < qlen and q[i].exec_deadline < finish:
            i += 1
        if i == qlen:
            break                   # larger batches finish later still
        items = 0
        j = i
        while j < qlen and items + q[j].batch_size <= c:
            items += q[j].batch_size
            j += 1
        if items > best_items:
            best_items, best_skip = items, i
        if j == qlen:
            break                   # queue exhausted: a larger c cannot take more
    return best_items, best_skip


def infer_window(t: int, now: int, deadline: int, e: int) -> tuple[int, int]:
    """[earliest, latest] of an Infer expected to start at `t` and take `e`, whose requests'
    earliest SLO deadline is `deadline`. earliest = max(now, t - EARLIEST_LEAD) (the original
    used now: its actions could start far ahead of the work planned before them); latest = the
    last start at which every request is still answered within its SLO, LATEST_MIN kept for the
    answer (the original's expected start + latest_delta both refused starts still in time and
    allowed ones finishing after the SLO)."""
    earliest = t - EARLIEST_LEAD
    if earliest < now:
        earliest = now
    latest = deadline - e - LATEST_MIN
    if latest < now + LATEST_MIN:
        latest = now + LATEST_MIN
    return earliest, latest
