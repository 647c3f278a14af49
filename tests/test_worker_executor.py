"""The timed executor's window semantics, driven by an explicit clock (no sleeps)."""
import pytest

from clockwork.model.backend import PENDING
from clockwork.status import Status
from clockwork.worker.executor import Executor, Task


class Recorder:
    """Makes tasks that record when they ran or failed; each occupies the stream `duration`."""

    def __init__(self):
        self.events = []

    def task(self, name, earliest, latest, duration=0, stage="exec"):
        def run(now):
            self.events.append(("run", name, now))
            if duration is None:
                return None
            if duration == PENDING:
                return PENDING
            return now + duration

        def fail(status, message, now):
            self.events.append(("fail", name, now, status, message))

        return Task(earliest, latest, stage, run, fail)


def drive(ex, until):
    """Advance the executor at every time it asks for, up to `until`."""
    t = ex.next_time()
    while t is not None and t <= until:
        ex.advance(t)
        nt = ex.next_time()
        if nt == t and len(ex) and ex.busy_until != PENDING:
            raise AssertionError("executor asked for the same time twice without progress")
        t = nt


def test_nothing_starts_before_earliest():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 100, 1000))
    ex.advance(50)
    assert r.events == []
    assert ex.next_time() == 100
    ex.advance(99)
    assert r.events == []
    ex.advance(100)
    assert r.events == [("run", "a", 100)]


def test_ordered_by_earliest_not_by_submission():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("late", 300, 10_000))
    ex.submit(r.task("early", 100, 10_000))
    ex.submit(r.task("middle", 200, 10_000))
    drive(ex, 10_000)
    assert [e[1] for e in r.events] == ["early", "middle", "late"]
    assert [e[2] for e in r.events] == [100, 200, 300]


def test_past_latest_fails_at_once_naming_the_stage():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 100, 200, stage="copy_input"))
    ex.advance(250)
    kind, name, now, status, message = r.events[0]
    assert (kind, name, now, status) == ("fail", "a", 250, Status.ACTION_TOO_LATE)
    assert message.startswith("copy_input: too late")
    assert len(ex) == 0 and ex.next_time() is None


def test_start_exactly_at_latest_is_allowed():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 100, 200))
    ex.advance(200)
    assert r.events == [("run", "a", 200)]


def test_serial_stream_waits_for_the_op_in_flight():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 0, 1000, duration=500))
    ex.submit(r.task("b", 100, 1000, duration=10))
    ex.advance(0)
    assert ex.next_time() == 500
    ex.advance(300)
    assert r.events == [("run", "a", 0)]
    ex.advance(500)
    assert r.events == [("run", "a", 0), ("run", "b", 500)]


def test_busy_past_latest_fails_before_earliest_arrives():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 0, 1000, duration=500))
    ex.submit(r.task("b", 100, 300, duration=10))
    ex.submit(r.task("c", 200, 5000, duration=10))
    ex.advance(0)
    # b could only start at 500 > 300: it fails now, at 0, not when its earliest comes
    assert r.events[1][:4] == ("fail", "b", 0, Status.ACTION_TOO_LATE)
    assert "could start at 500" in r.events[1][4]
    drive(ex, 10_000)
    assert r.events[2] == ("run", "c", 500)


def test_no_retry_after_too_late():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 0, 10))
    ex.advance(11)
    drive(ex, 10_000)
    assert [e[0] for e in r.events] == ["fail"]


def test_task_that_finishes_inline_leaves_the_stream_free():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 100, 1000, duration=None))
    ex.submit(r.task("b", 100, 1000, duration=None))
    ex.advance(100)
    assert r.events == [("run", "a", 100), ("run", "b", 100)]


def test_pending_op_blocks_until_completed():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 0, 1000, duration=PENDING))
    ex.submit(r.task("b", 10, 1000, duration=10))
    ex.advance(0)
    assert ex.next_time() is None          # nothing to do until the backend reports
    ex.advance(900)
    assert r.events == [("run", "a", 0)]
    ex.completed(400)
    assert ex.next_time() == 400
    ex.advance(900)
    assert r.events[-1] == ("run", "b", 900)


def test_pending_op_completing_after_latest_fails_the_next():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 0, 1000, duration=PENDING))
    ex.submit(r.task("b", 10, 200, duration=10))
    ex.advance(0)
    ex.completed(300)
    ex.advance(300)
    assert r.events[-1][:4] == ("fail", "b", 300, Status.ACTION_TOO_LATE)


def test_clear_drops_queued_tasks():
    r, ex = Recorder(), Executor("x")
    ex.submit(r.task("a", 0, 1000, duration=500))
    ex.submit(r.task("b", 10, 1000))
    ex.advance(0)
    dropped = ex.clear()
    assert len(dropped) == 1 and len(ex) == 0
    assert ex.next_time() is None
    ex.submit(r.task("c", 10, 1000))
    ex.advance(10)                          # the stream is free again after clear
    assert r.events[-1] == ("run", "c", 10)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_equal_earliest_keeps_submission_order(order):
    r, ex = Recorder(), Executor("x")
    for i in order:
        ex.submit(r.task(i, 100, 1000))
    ex.advance(100)
    assert [e[1] for e in r.events] == order


def test_a_task_that_raises_fails_with_runtime_error_and_frees_the_stream():
    r, ex = Recorder(), Executor("x")

    def boom(now):
        raise ValueError("driver fell over")

    ex.submit(Task(0, 1000, "exec", boom, lambda st, msg, now: r.events.append(("fail", st, msg))))
    ex.submit(r.task("b", 0, 1000))
    ex.advance(5)
    assert r.events[0] == ("fail", Status.RUNTIME_ERROR, "exec: ValueError: driver fell over")
    assert r.events[1] == ("run", "b", 5)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

task_st = st.tuples(st.integers(0, 1000), st.integers(0, 400), st.integers(0, 300),
                    st.integers(0, 1000))   # earliest, window length, duration, submitted at


@settings(max_examples=200, deadline=None)
@given(st.lists(task_st, min_size=1, max_size=25))
def test_window_invariants_hold_for_any_schedule(tasks):
    """Whatever the arrival order: every task runs or fails exactly once; none starts before its
    earliest or after its latest; ops never overlap; a task fails only if it truly could not
    have started by its latest given the op in flight."""
    ex = Executor("x")
    outcome = {}
    spans = []

    def make(i, earliest, latest, duration):
        def run(now):
            assert i not in outcome
            assert earliest <= now <= latest
            assert not spans or spans[-1][1] <= now      # previous op over
            outcome[i] = ("run", now)
            spans.append((now, now + duration))
            return now + duration

        def fail(status, message, now):
            assert i not in outcome and status == Status.ACTION_TOO_LATE
            busy = spans[-1][1] if spans else 0
            assert max(now, busy, earliest) > latest
            outcome[i] = ("fail", now)
        return Task(earliest, latest, "exec", run, fail)

    arrivals = sorted((sub, i) for i, (_, _, _, sub) in enumerate(tasks))
    now = 0
    pending = list(arrivals)
    while pending or ex.next_time() is not None:
        t_arrival = pending[0][0] if pending else None
        t_exec = ex.next_time()
        now = max(now, min(t for t in (t_arrival, t_exec) if t is not None))
        while pending and pending[0][0] <= now:
            _, i = pending.pop(0)
            earliest, length, duration, _ = tasks[i]
            ex.submit(make(i, earliest, earliest + length, duration))
        ex.advance(now)
    assert sorted(outcome) == list(range(len(tasks)))
