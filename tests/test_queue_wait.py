"""QueueWait: how long a request waited before the controller read it (pure logic)."""
from clockwork.controller.queuewait import WINDOW_NS, QueueWait

OFFSET = 7_000_000_000_000      # the client's clock is far from the controller's: only deltas count


def test_wait_is_delay_beyond_the_least_seen():
    q = QueueWait()
    now = 1_000_000_000
    assert q.waited(b"a", now - OFFSET - 50_000, now) == 0          # first sample: the baseline
    assert q.waited(b"a", now - OFFSET - 80_000, now) == 30_000     # 30 us slower than the best
    stalled = q.waited(b"a", now - OFFSET - 5_000_000_000, now)      # read 5 s after it was sent
    assert stalled == 5_000_000_000 - 50_000
    assert q.waited(b"a", 0, now) == 0                               # no send time: unknown


def test_clients_are_separate_and_windows_follow_drift():
    q = QueueWait()
    t = 1_000_000_000
    q.waited(b"a", t - 100, t)
    assert q.waited(b"b", t - 10_000, t) == 0                        # b has its own baseline
    # a's clock drifts: its least delay grows by 1 ms; after two windows it is the new baseline
    for i in range(1, 4):
        t += WINDOW_NS
        w = q.waited(b"a", t - 100 - 1_000_000, t)
    assert w == 0


def test_silent_clients_are_forgotten():
    q = QueueWait()
    q.waited(b"a", 1, 10)
    q.waited(b"b", 1, 10)
    q.sweep(10)
    assert len(q) == 2
    q.sweep(10 + 3 * WINDOW_NS)
    assert len(q) == 0
