"""The worker's busy-waits ([worker] spin_us, timer_spin_us; issue 13, overhead at low load).

A timed sleep wakes tens of us after its deadline, and that lateness is added to every result
the worker sends at an op's end; timer_spin_us has the loop sleep until that long before its
next planned event and busy-wait the rest. These tests check what the waits do, not how fast:
- a spinning wait still returns as soon as a message arrives (the spin checks the socket);
- a timer's spin never ends the wait before the event is due;
- a worker spinning both ways serves Infers exactly as one that sleeps.
"""
import threading
import time

import pytest
import zmq

from clockwork.model.emulated import EmulatedBackend
from clockwork.model.zoo import write_emulated_zoo
from clockwork.transport import schema as s
from clockwork.transport import sockets
from clockwork.worker.runtime import WorkerRuntime
from clockwork.worker.server import WorkerServer

pytestmark = pytest.mark.timeout(60)
PAGE = 16 * 1024 * 1024
PAGES = 64
LONG_S = 30.0       # a spin this long would outlast the test's timeout if it missed the message


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    write_emulated_zoo(d, models=["resnet50"], log=lambda *a: None)
    return d


@pytest.fixture
def make_server(zoo):
    made = []

    def make(**kw):
        ctx = zmq.Context()
        rt = WorkerRuntime(EmulatedBackend(1, PAGE, PAGES, 1 << 24, 1 << 24), zoo, None, PAGE, PAGES,
                           1 << 24, 1 << 24)
        server = WorkerServer(rt, "127.0.0.1", sockets.free_port(), log=lambda *a: None, ctx=ctx, **kw)
        dealer = sockets.dealer(ctx, "127.0.0.1", int(server.address.rsplit(":", 1)[1]))
        made.append((server, dealer, ctx))
        return server, dealer
    yield make
    for server, dealer, ctx in made:
        server.stop()
        dealer.close(0)
        server.close()
        ctx.term()


def _wait_on_thread(server, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(server._wait(*args)), daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("how", ["message_spin", "timer_spin"])
def test_a_spinning_wait_returns_when_a_message_arrives(make_server, how):
    if how == "message_spin":
        server, dealer = make_server(spin_us=LONG_S * 1e6)
        t, out = _wait_on_thread(server, LONG_S)
    else:
        server, dealer = make_server()
        t, out = _wait_on_thread(server, LONG_S, int(LONG_S * 1e9))
    sockets.send(dealer, s.GetWorkerState(1))
    t.join(LONG_S + 5)
    assert out == [(True, False)]


def test_a_timer_spin_does_not_end_the_wait_before_the_timer(make_server):
    server, _ = make_server()
    for timeout_s in (0.0, 0.002, 0.02):
        start = time.monotonic_ns()
        assert server._wait(timeout_s, 10 ** 9) == (False, False)     # spins the whole wait
        assert time.monotonic_ns() >= start + int(timeout_s * 1e9)
        start = time.monotonic_ns()
        assert server._wait(timeout_s, 1_000) == (False, False)       # sleeps, then spins 1 us
        assert time.monotonic_ns() >= start + int(timeout_s * 1e9)


@pytest.mark.parametrize("spin", [{}, {"spin_us": 200, "timer_spin_us": 100}], ids=["sleeping", "spinning"])
def test_a_spinning_worker_serves_infers_as_a_sleeping_one(make_server, spin):
    server, dealer = make_server(**spin)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    sockets.send(dealer, s.Reset(1))
    sockets.send(dealer, s.LoadModelFromDisk(2, 0, 0, model_id=0, path="resnet50", copies=1))
    sockets.send(dealer, s.LoadWeights(3, 0, 0, model_id=0, gpu_id=0))
    got = {}
    want = {1, 2, 3} | set(range(10, 30))
    while not want <= set(got):
        assert sockets.wait([dealer], 20.0), f"results so far: {sorted(got)}"
        frames = dealer.recv_multipart()
        msg = s.decode(frames[0], s.RESULT_DECODER)
        for r in ([r for r, _ in s.unbatch(msg, frames[1:])] if type(msg) is s.ResultBatch else [msg]):
            if type(r) is s.Heartbeat:
                continue
            got[r.action_id] = r
            if r.action_id == 3:       # weights loaded: 20 Infers, queued on the one GPU
                for i in range(20):
                    sockets.send(dealer, s.Infer(10 + i, 0, 0, 0, 0, 1))
    server.stop()
    thread.join(10)
    infers = [got[10 + i] for i in range(20)]
    assert all(type(r) is s.InferResult for r in infers), infers
    for r in infers:
        assert r.received <= r.copy_input_begin <= r.copy_input_end <= r.exec_begin < r.exec_end
        assert r.exec_end <= r.copy_output_begin < r.copy_output_end <= r.sent
    assert [r.exec_begin for r in infers] == sorted(r.exec_begin for r in infers)


def test_the_timer_spin_is_only_for_a_lone_action(make_server, monkeypatch):
    """With several actions in flight (load) the worker sleeps to its timers: spinning before
    each of many dense timers would keep a core busy."""
    server, dealer = make_server(timer_spin_us=100)
    spins = []       # (actions in flight, spin asked for) at each wait
    real_wait = WorkerServer._wait

    def recording_wait(self, timeout_s, timer_spin_ns=0):
        spins.append((self.rt.stats.pending, timer_spin_ns))
        return real_wait(self, timeout_s, timer_spin_ns)
    monkeypatch.setattr(WorkerServer, "_wait", recording_wait)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    for action in (s.Reset(1), s.LoadModelFromDisk(2, 0, 0, model_id=0, path="resnet50", copies=1),
                   s.LoadWeights(3, 0, 0, model_id=0, gpu_id=0)):
        sockets.send(dealer, action)
    want = {1, 2, 3}
    sent = False
    got = set()
    while not want <= got:
        assert sockets.wait([dealer], 20.0), f"results so far: {sorted(got)}"
        frames = dealer.recv_multipart()
        msg = s.decode(frames[0], s.RESULT_DECODER)
        for r in ([r for r, _ in s.unbatch(msg, frames[1:])] if type(msg) is s.ResultBatch else [msg]):
            if type(r) is not s.Heartbeat:
                got.add(r.action_id)
        if 3 in got and not sent:     # one Infer alone, then four at once
            sent = True
            sockets.send(dealer, s.Infer(10, 0, 0, 0, 0, 1))
            want.add(10)
        if 10 in got and 20 not in want:
            batch, frames = s.batch(s.ActionBatch, [s.Infer(20 + i, 0, 0, 0, 0, 1) for i in range(4)],
                                    [[] for _ in range(4)])
            sockets.send(dealer, batch, frames)
            want |= {20, 21, 22, 23}
    server.stop()
    thread.join(10)
    assert any(n == 1 and spin == 100_000 for n, spin in spins)       # the lone Infer's timers
    assert any(n > 1 for n, _ in spins)
    assert all(spin == 0 for n, spin in spins if n > 1)
