"""INFER4's exec estimates (controller/schedulers/estimates.py) against a from-scratch
computation: for every compiled batch size, the percentile of its last `window` measurements,
set for every batch size padded to it. Measurements drawn from a few values so that a window
often gets back the value it drops (the estimate then skips its recomputation)."""
import random

import pytest

from clockwork.controller.schedulers.common import DEFAULT_CLOCK_MHZ
from clockwork.controller.schedulers.estimates import Estimates
from clockwork.controller.simulator import MS, model_info
from clockwork.percentiles import percentile

pytestmark = pytest.mark.timeout(60)

EXEC = {1: 1 * MS, 2: 1_200_000, 4: 1_500_000, 8: 2 * MS, 16: 3 * MS}


@pytest.mark.parametrize("seed,window,p", [(1, 10, 99.0), (2, 3, 50.0), (3, 1, 99.0)])
def test_estimates_equal_the_percentile_of_each_window_from_scratch(seed, window, p):
    rng = random.Random(seed)
    e = Estimates(model_info(0, EXEC))
    seen: dict[int, list[int]] = {}             # compiled size -> every measurement, in order
    expected = list(e.est)
    values = [rng.randrange(500_000, 4_000_000) * DEFAULT_CLOCK_MHZ for _ in range(4)]
    skipped = 0
    for _ in range(3000):
        items = rng.randint(1, 16)
        b = e.pad[items]
        scaled = rng.choice(values)
        seen.setdefault(b, []).append(scaled)
        last = seen[b][-window:]
        skipped += len(seen[b]) > window and seen[b][-window - 1] == scaled
        e.measure(items, scaled, window, p)
        value = int(percentile(last, p))
        for n in range(1, len(expected)):
            if e.pad[n] == b:
                expected[n] = value
        assert e.est == expected
        assert e.b1ns == expected[1] // DEFAULT_CLOCK_MHZ
    assert skipped > 100                        # the shortcut was taken, and stayed right
