"""Faults with real processes: workers killed, stopped and restarted, the controller restarted.

Each test runs a LocalCluster (emulated workers, INFER4 controller) on free loopback ports and
a client in this process. The invariant checked everywhere: every request sent gets exactly one
answer (count sent == answered, none of them "no answer"); the failure itself is seen in the
controller's structured telemetry events (worker_lost / worker_joined with the worker's id);
counts that only the controller's lines carry (actions failed, late results discarded) are read
from those lines. Waits are for conditions, each bounded.
"""
from __future__ import annotations

import re
import signal
import sys
import time
from collections import Counter

import pytest
import zmq

from clockwork.client.api import CONNECTION_LOST, NO_ANSWER, Client, RequestFailed
from clockwork.config import load_config
from clockwork.local import LocalCluster
from clockwork.status import Status
from clockwork.telemetry import messages as tm

pytestmark = pytest.mark.timeout(120)
WAIT_S = 30.0
WORKER_TIMEOUT_MS = load_config()["controller"]["worker_timeout_ms"]
# answers a healthy system gives when the machine is too busy to start work in time
SCHEDULER_DROPS = {Status.TIMEOUT, Status.CONTROLLER_SKIPPED, Status.COULD_NOT_START_IN_TIME,
                   Status.ACTION_TOO_LATE}


class Tally:
    """Counts every answer the client gives for requests sent through it."""

    def __init__(self):
        self.sent = 0
        self.answered = 0
        self.statuses = Counter()

    def cb(self, resp, data, latency_s):
        self.answered += 1
        self.statuses[resp.status] += 1

    def send(self, client, model_id, n=1, **kw):
        for _ in range(n):
            client.infer_async(model_id, self.cb, timeout_s=WAIT_S, **kw)
            self.sent += 1


def lines(cluster, name="controller"):
    return list(cluster.output.get(name, []))


def _keep_going(client, tally, model_id):
    """One ~5 ms step of a bounded wait: a request through `tally` if given, and the client's
    answers read (or a plain sleep without a client)."""
    if tally is not None:
        tally.send(client, model_id)
    if client is not None:
        client.poll(0.005)
    else:
        time.sleep(0.005)


def wait_for(cluster, pattern, start=0, client=None, tally=None, model_id=None, name="controller"):
    """Wait (bounded) for a line matching `pattern` in a process's output after line `start`,
    keeping the client's traffic going (a request every ~5 ms) if a tally is given."""
    rx = re.compile(pattern)
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        for line in lines(cluster, name)[start:]:
            m = rx.search(line)
            if m:
                return m
        _keep_going(client, tally, model_id)
    raise AssertionError(f"no line matching {pattern!r} within {WAIT_S}s:\n" + "".join(lines(cluster, name)[-30:]))


class Events:
    """The controller's structured telemetry events (kind, worker id), subscribed to before the
    faults: it waits for one periodic snapshot first, which proves the subscription is live."""

    def __init__(self, cluster):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(f"tcp://127.0.0.1:{cluster.telemetry_port}")
        self.seen: list[tm.Event] = []
        assert self.sock.poll(WAIT_S * 1000), "no telemetry from the controller"

    def _read(self) -> None:
        while self.sock.poll(0):
            msg = tm.decode(self.sock.recv())
            if type(msg) is tm.Events:
                self.seen.extend(msg.events)

    def mark(self) -> int:
        self._read()
        return len(self.seen)

    def wait(self, kind, worker_id, since, client=None, tally=None, model_id=None) -> tm.Event:
        """The first `kind` event of `worker_id` after event number `since` (bounded wait),
        keeping the client's traffic going if a tally is given."""
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            self._read()
            for e in self.seen[since:]:
                if e.kind == kind and e.worker_id == worker_id:
                    return e
            _keep_going(client, tally, model_id)
        raise AssertionError(f"no {kind} event for worker {worker_id} within {WAIT_S}s: {self.seen[since:]}")

    def close(self) -> None:
        self.sock.close(0)


def finish(client, tally):
    """Every request answered: nothing outstanding, nothing unanswered."""
    assert client.drain(WAIT_S) == 0
    assert tally.answered == tally.sent, (tally.sent, tally.answered)
    assert tally.statuses[NO_ANSWER] == 0, tally.statuses


def load_traffic(client, tally, model_id, seconds):
    """Open-loop traffic for a while (about 200 r/s)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tally.send(client, model_id)
        client.poll(0.005)


@pytest.fixture
def two_workers():
    with LocalCluster(gpus=1, workers=2) as c:
        client = Client(c.address, log=lambda *_: None, timeout_s=WAIT_S)
        c.events = Events(c)
        try:
            mid, _, _ = client.load_model("resnet50", copies=1)
            client.ls()
            yield c, client, mid
        finally:
            client.close()
            c.events.close()


def test_worker_killed_under_load_then_rejoins(two_workers):
    cluster, client, mid = two_workers
    tally = Tally()
    load_traffic(client, tally, mid, 1.0)
    assert tally.statuses[Status.SUCCESS] > 0
    mark = cluster.events.mark()
    cluster.worker_procs[0].send_signal(signal.SIGKILL)
    # a dead process closes its connection: noticed at once, before any heartbeat is missed
    lost = cluster.events.wait("worker_lost", 0, mark, client, tally, mid)
    assert "connection closed" in lost.text
    before = tally.statuses[Status.SUCCESS]
    load_traffic(client, tally, mid, 0.5)              # worker 1 alone still serves
    assert tally.statuses[Status.SUCCESS] > before
    finish(client, tally)

    mark = cluster.events.mark()
    cluster.start_worker(0)                            # same port: the controller's probes find it
    cluster.events.wait("worker_joined", 0, mark, client, tally, mid)
    mark = cluster.events.mark()
    cluster.worker_procs[1].send_signal(signal.SIGKILL)   # now only the rejoined worker can serve
    cluster.events.wait("worker_lost", 1, mark, client, tally, mid)
    before = tally.statuses[Status.SUCCESS]
    load_traffic(client, tally, mid, 0.5)
    assert tally.statuses[Status.SUCCESS] > before, tally.statuses   # models loaded on it again
    finish(client, tally)
    assert cluster.controller.poll() is None


def test_worker_stopped_then_continued_late_results_discarded(two_workers):
    cluster, client, mid = two_workers
    tally = Tally()
    load_traffic(client, tally, mid, 1.0)
    w0 = cluster.worker_procs[0]
    mark = len(lines(cluster))
    w0.send_signal(signal.SIGSTOP)                     # a partition: alive but silent
    try:
        m = wait_for(cluster, r"Worker 0 .* lost: no message for (\d+) ms; (\d+) actions in flight failed",
                     mark, client, tally, mid)
    finally:
        w0.send_signal(signal.SIGCONT)
    assert int(m.group(1)) >= WORKER_TIMEOUT_MS        # noticed through missing heartbeats
    in_flight = int(m.group(2))
    m = wait_for(cluster, r"Worker 0 .* joined .*; (\d+) late results discarded", mark, client, tally, mid)
    # the actions it had when stopped were failed by the controller; their results came later
    assert in_flight >= 1 and int(m.group(1)) >= 1
    finish(client, tally)

    mark = cluster.events.mark()
    cluster.worker_procs[1].send_signal(signal.SIGKILL)   # state consistent: worker 0 serves alone
    cluster.events.wait("worker_lost", 1, mark, client, tally, mid)
    before = tally.statuses[Status.SUCCESS]
    load_traffic(client, tally, mid, 0.5)
    assert tally.statuses[Status.SUCCESS] > before, tally.statuses
    finish(client, tally)


def test_worker_killed_during_load_weights():
    with LocalCluster(gpus=1, workers=1) as cluster:
        client = Client(cluster.address, log=lambda *_: None, timeout_s=WAIT_S)
        try:
            mid, _, _ = client.load_model("resnet50", copies=1)   # on disk only: no weights on the GPU
            client.ls()
            worker = cluster.worker_procs[0]
            worker.send_signal(signal.SIGSTOP)
            tally = Tally()
            tally.send(client, mid, 20)                # the controller answers by sending LoadWeights
            for _ in range(3):
                client.ls()                            # round trips: the scheduler has ticked since
            worker.send_signal(signal.SIGKILL)         # ... so it dies with the LoadWeights unanswered
            worker.wait(WAIT_S)
            m = wait_for(cluster, r"Worker 0 .* lost: .*; (\d+) actions in flight failed", 0, client)
            assert int(m.group(1)) >= 1
            finish(client, tally)
            assert tally.statuses[Status.SUCCESS] == 0

            mark = len(lines(cluster))
            cluster.start_worker(0)
            wait_for(cluster, r"Worker 0 .* joined", mark, client)
            reply = client.infer(mid)                  # loads weights again on the new worker
            assert reply.response.status == Status.SUCCESS
        finally:
            client.close()


def test_controller_restart_errors_not_hangs_and_workers_reset():
    with LocalCluster(gpus=1, workers=1) as cluster:
        client = Client(cluster.address, log=lambda *_: None, timeout_s=WAIT_S)
        try:
            mid, _, _ = client.load_model("resnet50", copies=2)
            assert client.infer(mid).response.status == Status.SUCCESS
            tally = Tally()
            tally.send(client, mid + 1, 50, slo_ns=10_000_000_000)   # cold model, long SLO: outstanding
            cluster.controller.send_signal(signal.SIGKILL)
            cluster.controller.wait(WAIT_S)
            finish(client, tally)                      # answered by the client, not by timeouts:
            assert tally.statuses[CONNECTION_LOST] + tally.statuses[Status.SUCCESS] == tally.sent
            with pytest.raises(RequestFailed) as e:
                client.infer(mid)                      # nobody there: an error at once, not a hang
            assert e.value.status == CONNECTION_LOST

            mark = len(lines(cluster))
            cluster.start_controller()
            # the new controller resets the worker before asking for its state: nothing left
            m = wait_for(cluster, r"Worker 0 .* (\d+) GPUs (\d+) models", mark)
            assert m.group(2) == "0"
            m = wait_for(cluster, r"GPU 0 .* (\d+) loaded models", mark)
            assert m.group(1) == "0"
            # the same client reconnects by itself
            mid2, _, _ = client.load_model("resnet50", copies=1)
            assert client.infer(mid2).response.status == Status.SUCCESS
        finally:
            client.close()


def test_worker_restarted_before_its_loss_was_noticed(two_workers):
    """A new worker process on the same port at once: it has no models, whatever the
    controller believed of the old one, so it must be reset and rejoin, not be sent Infers."""
    cluster, client, mid = two_workers
    tally = Tally()
    load_traffic(client, tally, mid, 0.5)
    mark = cluster.events.mark()
    old = cluster.worker_procs[0]
    old.send_signal(signal.SIGKILL)
    old.wait(WAIT_S)
    cluster.start_worker(0)
    cluster.events.wait("worker_joined", 0, mark, client, tally, mid)
    finish(client, tally)
    mark = cluster.events.mark()
    cluster.worker_procs[1].send_signal(signal.SIGKILL)
    cluster.events.wait("worker_lost", 1, mark, client, tally, mid)
    before = tally.statuses[Status.SUCCESS]
    load_traffic(client, tally, mid, 0.5)
    assert tally.statuses[Status.SUCCESS] > before, tally.statuses
    finish(client, tally)


def test_worker_stopped_long_then_killed_and_restarted(two_workers):
    """Probes sent to a stopped worker die with it: the controller must probe the new one."""
    cluster, client, mid = two_workers
    tally = Tally()
    w0 = cluster.worker_procs[0]
    mark = cluster.events.mark()
    w0.send_signal(signal.SIGSTOP)
    cluster.events.wait("worker_lost", 0, mark, client, tally, mid)
    load_traffic(client, tally, mid, 1.0)            # probes (every 0.5 s) reach its socket buffer
    w0.send_signal(signal.SIGKILL)
    w0.wait(WAIT_S)
    mark = cluster.events.mark()
    cluster.start_worker(0)
    cluster.events.wait("worker_joined", 0, mark, client, tally, mid)
    finish(client, tally)


def test_load_model_while_a_worker_dies(two_workers):
    """A LoadModel broadcast to a worker that dies is answered from the others, and the new
    model is loaded on the worker when it comes back."""
    cluster, client, mid = two_workers
    w0 = cluster.worker_procs[0]
    w0.send_signal(signal.SIGSTOP)
    done = []
    client.load_model_async("resnet18", 2, lambda r, d, lat: done.append(r), timeout_s=WAIT_S)
    client.ls()                                        # the load has been sent to both workers
    w0.send_signal(signal.SIGKILL)
    w0.wait(WAIT_S)
    assert client.drain(WAIT_S) == 0
    assert done[0].status == Status.SUCCESS, done[0]
    new = done[0].model_id
    mark = cluster.events.mark()
    cluster.start_worker(0)
    cluster.events.wait("worker_joined", 0, mark, client)
    mark = cluster.events.mark()
    cluster.worker_procs[1].send_signal(signal.SIGKILL)
    cluster.events.wait("worker_lost", 1, mark, client)
    for m in (mid, new, new + 1):                      # every model, old and new, on worker 0
        assert client.infer(m).response.status == Status.SUCCESS


def test_silence_during_load_from_disk_is_not_a_loss(two_workers):
    """LoadModelFromDisk blocks a worker's loop (no heartbeats): that is tolerated, unlike
    silence with nothing but Infers in flight (test_worker_stopped_then_continued...)."""
    cluster, client, mid = two_workers
    w0 = cluster.worker_procs[0]
    mark = len(lines(cluster))
    w0.send_signal(signal.SIGSTOP)                     # as if its load took long
    try:
        done = []
        client.load_model_async("resnet18", 1, lambda r, d, lat: done.append(r), timeout_s=WAIT_S)
        end = time.monotonic() + 2.5 * WORKER_TIMEOUT_MS / 1000
        while time.monotonic() < end:                  # well past the heartbeat timeout
            client.poll(0.01)
        assert not any("lost" in line for line in lines(cluster)[mark:]), lines(cluster)[mark:]
        assert not done                                # still waiting for worker 0's load
    finally:
        w0.send_signal(signal.SIGCONT)
    assert client.drain(WAIT_S) == 0 and done[0].status == Status.SUCCESS, done
    assert not any("lost" in line for line in lines(cluster)[mark:])


def test_controller_restart_never_serves_another_model():
    """Issue 9's reproduction: client A holds resnet50's id; the controller is killed and
    restarted on the same port; client B loads resnet101 first and gets the same id. A's
    requests must never be answered with resnet101's output (exec time), and A must load its
    model again by itself and be served again."""
    with LocalCluster(gpus=1, workers=1) as cluster:
        a = Client(cluster.address, log=lambda *_: None, timeout_s=WAIT_S, retry_interval_s=0.05)
        b = Client(cluster.address, log=lambda *_: None, timeout_s=WAIT_S, retry_interval_s=0.05)
        try:
            mid, _, _ = a.load_model("resnet50")
            r50 = set({m.model_id: m for m in a.ls()}[mid].exec_ns)
            answers = {"a": [], "b": []}

            def send(client, who, model_id):
                client.infer_async(model_id, lambda r, d, lat: answers[who].append(r), timeout_s=WAIT_S)

            for _ in range(5):
                send(a, "a", mid)
            assert a.drain(WAIT_S) == 0
            assert [r.status for r in answers["a"]] == [Status.SUCCESS] * 5

            cluster.controller.send_signal(signal.SIGKILL)
            cluster.controller.wait(WAIT_S)
            mark = len(lines(cluster))
            cluster.start_controller()
            wait_for(cluster, r"Awaiting LoadModel", mark)
            bid, _, _ = b.load_model("resnet101")
            assert bid == mid                            # the new lifetime reuses the number
            r101 = set({m.model_id: m for m in b.ls()}[bid].exec_ns)
            assert r50 and r101 and not r50 & r101

            restart = len(answers["a"])
            end = time.monotonic() + WAIT_S
            while time.monotonic() < end:
                send(a, "a", mid)
                send(b, "b", bid)
                a.poll(0.005)
                b.poll(0)
                after = [r.status for r in answers["a"][restart:]]
                if after.count(Status.SUCCESS) >= 10:
                    break
            assert a.drain(WAIT_S) == 0 and b.drain(WAIT_S) == 0
            for r in answers["a"]:
                if r.status == Status.SUCCESS:
                    assert r.exec_ns in r50, (r, r50, r101)   # never resnet101's output
            for r in answers["a"]:      # scheduler drops (late, skipped) may happen on a busy machine
                assert r.status not in (Status.INVALID_REQUEST, NO_ANSWER), r
            for r in answers["b"]:
                if r.status == Status.SUCCESS:
                    assert r.exec_ns in r101, r
            after = [r.status for r in answers["a"][restart:]]
            assert after.count(Status.SUCCESS) >= 10, Counter(after)
            assert any(r.status == Status.SUCCESS for r in answers["b"])
            assert a.restarts_seen == 1
            assert {m.model_id: m.source for m in a.ls()}[mid].endswith("resnet50")   # caller's ids
        finally:
            a.close()
            b.close()


def test_a_stray_peer_cannot_take_a_worker(two_workers):
    """Issue 9: one valid action from any peer used to make the worker heartbeat to that peer,
    so the controller declared it lost and reset it. Now it is refused and nothing changes."""
    import zmq
    from clockwork.transport import schema as s
    from clockwork.transport import sockets
    cluster, client, mid = two_workers
    mark = len(lines(cluster))
    ctx = zmq.Context()
    stray = sockets.dealer(ctx, "127.0.0.1", cluster.worker_ports[0])
    try:
        sockets.send(stray, s.EvictWeights(1, 0, 1 << 62, model_id=12345, gpu_id=0))
        assert sockets.wait([stray], WAIT_S)
        reply = s.decode(stray.recv_multipart()[0], s.RESULT_DECODER)
        assert reply.status == Status.NOT_CONTROLLER, reply
        tally = Tally()
        load_traffic(client, tally, mid, 3 * WORKER_TIMEOUT_MS / 1000)   # well past the heartbeat timeout
        finish(client, tally)
        assert not any("lost" in line for line in lines(cluster)[mark:]), lines(cluster)[mark:]
        # the worker kept serving this controller: every request answered, none by a lost or
        # refused worker; a CPU-starved machine may still have the scheduler drop a few late
        assert tally.answered == tally.sent and tally.statuses[Status.SUCCESS] > 0, tally.statuses
        assert set(tally.statuses) <= {Status.SUCCESS, *SCHEDULER_DROPS}, tally.statuses
    finally:
        stray.close(0)
        ctx.term()


def test_a_second_controller_takes_the_worker_without_a_fight():
    """Two controllers pointed at one worker: the later Reset wins, and the first one says so
    and stops probing it instead of resetting it back (they would take turns forever)."""
    from clockwork.transport.sockets import free_port
    with LocalCluster(gpus=1, workers=1) as cluster:
        client = Client(cluster.address, log=lambda *_: None, timeout_s=WAIT_S)
        try:
            mid, _, _ = client.load_model("resnet50")
            assert client.infer(mid).response.status == Status.SUCCESS
            port2 = free_port()
            cluster._spawn("controller2", [
                sys.executable, "-m", "clockwork.controller.command", "--host", "127.0.0.1",
                "--port", str(port2), "--telemetry-port", "0", "--no-logs",
                f"127.0.0.1:{cluster.worker_ports[0]}"])
            wait_for(cluster, r"Awaiting LoadModel", name="controller2")
            wait_for(cluster, r"Worker 0 .* taken over by another controller")
            end = time.monotonic() + 4 * WORKER_TIMEOUT_MS / 1000     # several probe intervals
            while time.monotonic() < end:
                client.poll(0.01)
            assert not any("lost" in line for line in lines(cluster, "controller2"))
            assert sum("taken over" in line for line in lines(cluster)) == 1
            with Client(f"127.0.0.1:{port2}", log=lambda *_: None, timeout_s=WAIT_S) as c2:
                m2, _, _ = c2.load_model("resnet50")
                assert c2.infer(m2).response.status == Status.SUCCESS
        finally:
            client.close()


def test_cw_client_says_the_controller_is_gone_and_counts_connection_lost():
    """Issue 9: after kill -9 of the controller `cw client` printed only throughput=0.00 and its
    summary called the requests the library had answered CONNECTION_LOST unanswered."""
    with LocalCluster(gpus=1, workers=1) as cluster:
        client = cluster._spawn("client", [
            sys.executable, "-m", "clockwork.client.command", cluster.address, "-w", "poisson-open-loop",
            "--duration", "6", "--print-interval", "1", "--", "1", "100", "resnet50"])
        wait_for(cluster, r"Starting workload", name="client")
        wait_for(cluster, r"throughput=[1-9]", name="client")     # some answers came back
        cluster.controller.send_signal(signal.SIGKILL)
        assert client.wait(WAIT_S + 10) == 0
        cluster._threads["client"].join(10)
        out = "".join(lines(cluster, "client"))
        assert re.search(r"the controller at .* is gone \(connection lost\)", out), out
        m = re.search(r"Summary: .* sent=(\d+) answered=(\d+) succeeded=\d+ connection lost=(\d+) "
                      r"unanswered=(\d+)", out)
        assert m, out
        sent, answered, lost, unanswered = map(int, m.groups())
        assert lost > 0 and unanswered == 0 and answered + lost == sent, out
        assert re.search(rf"status -3 connection to controller lost: {lost} ", out), out


def test_requests_whose_slo_passed_in_a_stalled_controller_time_out():
    """Issue 9: requests that waited in a stopped controller were served as if fresh (success,
    5 s latency). One whose SLO passed before the controller read it is answered TIMEOUT."""
    with LocalCluster(gpus=1, workers=1) as cluster:
        client = Client(cluster.address, log=lambda *_: None, timeout_s=WAIT_S)
        try:
            mid, _, _ = client.load_model("resnet50")
            for _ in range(5):                          # the controller learns this client's delay
                assert client.infer(mid, slo_ns=1_000_000_000).response.status == Status.SUCCESS
            slo_ns = 200_000_000
            tally = Tally()
            cluster.controller.send_signal(signal.SIGSTOP)
            try:
                tally.send(client, mid, 20, slo_ns=slo_ns)
                time.sleep(3 * slo_ns / 1e9)            # the stall: longer than their SLO
            finally:
                cluster.controller.send_signal(signal.SIGCONT)
            finish(client, tally)
            assert tally.statuses == {Status.TIMEOUT: 20}, tally.statuses
            reply = client.infer(mid, slo_ns=1_000_000_000)   # fresh requests are served again
            assert reply.response.status == Status.SUCCESS
        finally:
            client.close()
