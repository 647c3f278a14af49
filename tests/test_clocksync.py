"""ClockSync: offsets from round trips, and windows converted to worker time."""
from clockwork.transport.clocksync import ClockSync


def test_offset_from_the_least_queued_round_trip():
    """The sample with the smallest round trip wins, whatever its position in the window: here
    it comes first, and a later, more queued sample (the latest) must not replace it."""
    c = ClockSync()
    c.add(t0=2000, t1=2050 + 200, t2=2060 + 200, t3=2120)      # rtt 110, offset 195: wins
    c.add(t0=1000, t1=1500 + 300, t2=1600 + 300, t3=1400)      # rtt 300, offset 650: latest
    assert c.rtt == 110
    assert c.offset == ((2250 - 2000) + (2260 - 2120)) // 2 == 195
    assert c.to_worker(5000) == 5000 + 195
    assert c.to_controller(c.to_worker(5000)) == 5000


def test_old_samples_leave_the_window():
    """A drifting worker clock: once the best sample is older than the window, the best of the
    newer ones is used (the estimate follows the drift)."""
    c = ClockSync(window=2)
    c.add(t0=0, t1=1000, t2=1000, t3=10)          # rtt 10, offset 995
    c.add(t0=100, t1=1200, t2=1200, t3=150)       # rtt 50, offset 1075
    assert c.offset == 995
    c.add(t0=200, t1=1300, t2=1300, t3=240)       # rtt 40, offset 1080: the rtt-10 sample is gone
    assert (c.rtt, c.offset) == (40, 1080)


def test_an_open_earliest_stays_open():
    """earliest 0 means "no lower bound" (fifo, direct, evictions): it must reach the worker as 0,
    not as the current offset estimate. Shifted by an estimate that changes between sends, two
    open actions reached the worker's executor out of send order (found by tools/bench/azure.py:
    fifo's LoadWeights ran before the EvictWeights that made room for it, NOT_ENOUGH_PAGES)."""
    c = ClockSync()
    c.add(t0=1000, t1=1500, t2=1600, t3=1200)
    assert c.offset != 0
    assert c.to_worker(0) == 0
