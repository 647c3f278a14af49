"""The simulated network's delays: drawn a block at a time for speed, they must be exactly the
values one draw per message gives (the first round's formula), or every simulation's logs change."""
import random

import pytest

from clockwork.sim.network import Delay

pytestmark = pytest.mark.timeout(60)


def one_by_one(kind, min_ns, jitter_ns, rng):
    if jitter_ns <= 0 or kind == "const":
        return min_ns
    if kind == "exp":
        return min_ns + int(rng.expovariate(1.0 / jitter_ns))
    return min_ns + int(rng.random() * 2 * jitter_ns)


@pytest.mark.parametrize("kind", Delay.KINDS)
@pytest.mark.parametrize("min_ns,jitter_ns", [(100_000, 50_000), (0, 7), (20_000, 0)])
def test_block_draws_equal_one_by_one(kind, min_ns, jitter_ns):
    d = Delay(min_ns, jitter_ns, kind, random.Random(11))
    ref = random.Random(11)
    n = 3 * Delay.BLOCK + 5                  # across block refills
    got = [d.sample() for _ in range(n)]
    assert got == [one_by_one(kind, min_ns, jitter_ns, ref) for _ in range(n)]
    if jitter_ns and kind != "const":
        assert len(set(got)) > min(jitter_ns, 100)   # really random, not a constant
