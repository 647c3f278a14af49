"""ClockSync: offsets from round trips, and windows converted to worker time."""
from clockwork.transport.clocksync import ClockSync


def test_offset_from_the_least_queued_round_trip():
    c = ClockSync()
    c.add(t0=1000, t1=1500 + 300, t2=1600 + 300, t3=1400)      # rtt 300, offset 300 (approx)
    c.add(t0=2000, t1=2050 + 200, t2=2060 + 200, t3=2120)      # rtt 110: this one wins
    assert c.rtt == 110
    assert c.offset == ((2250 - 2000) + (2260 - 2120)) // 2
    assert c.to_worker(5000) == 5000 + c.offset
    assert c.to_controller(c.to_worker(5000)) == 5000


def test_an_open_earliest_stays_open():
    """earliest 0 means "no lower bound" (fifo, direct, evictions): it must reach the worker as 0,
    not as the current offset estimate. Shifted by an estimate that changes between sends, two
    open actions reached the worker's executor out of send order (found by tools/bench/azure.py:
    fifo's LoadWeights ran before the EvictWeights that made room for it, NOT_ENOUGH_PAGES)."""
    c = ClockSync()
    c.add(t0=1000, t1=1500, t2=1600, t3=1200)
    assert c.offset != 0
    assert c.to_worker(0) == 0
