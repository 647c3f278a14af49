"""Several actions per message to a worker, several results per message back (issue 13).

A real WorkerServer (emulated GPU) runs its loop on a thread with a real ROUTER socket; the
test speaks the wire through a DEALER, and in the last test a real Controller (INFER4) drives
it while clients send requests.

- single actions and ActionBatches mixed: every action exactly one result, with its own id and
  the status its content deserves, and each Infer of a batch gets its own input frames;
- a batch with an unreadable entry answers that entry BAD_MESSAGE (with its id) and runs the
  rest; frame counts that do not add up fail every entry of that batch and nothing else;
- results made in one loop turn leave as one ResultBatch; neither the worker nor the
  controller holds a result or an action when it waits (checked at every wait, not timed).
"""
import collections
import threading
import time

import msgspec
import pytest
import zmq

from clockwork.model.emulated import EmulatedBackend
from clockwork.model.format import load_spec
from clockwork.model.zoo import write_emulated_zoo
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport import sockets
from clockwork.worker import server as worker_server
from clockwork.worker.runtime import WorkerRuntime

pytestmark = pytest.mark.timeout(90)
PAGE = 16 * 1024 * 1024
CACHE_PAGES = 64
WAIT_S = 20.0


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    write_emulated_zoo(d, models=["resnet50"], log=lambda *a: None)
    return d


class WorkerThread:
    """A WorkerServer on a loop thread; `held_at_wait` lists, per wait of its loop, how many
    results it still held then."""

    def __init__(self, zoo, monkeypatch, batch_results=True):
        self.held_at_wait = []
        real_wait = worker_server.WorkerServer._wait

        def checked_wait(server, timeout_s, *spin):
            self.held_at_wait.append(sum(len(h) for h in server._results.values()))
            return real_wait(server, min(timeout_s, 0.05), *spin)
        monkeypatch.setattr(worker_server.WorkerServer, "_wait", checked_wait)
        backend = EmulatedBackend(1, PAGE, CACHE_PAGES, 1 << 24, 1 << 24)
        rt = WorkerRuntime(backend, zoo, None, PAGE, CACHE_PAGES, 1 << 24, 1 << 24)
        self.ctx = zmq.Context()
        self.port = sockets.free_port()
        self.server = worker_server.WorkerServer(rt, "127.0.0.1", self.port, log=lambda *a: None, ctx=self.ctx,
                                                 batch_results=batch_results)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def close(self):
        self.server.stop()
        self.thread.join(WAIT_S)
        self.server.close()
        self.ctx.term()


@pytest.fixture
def worker(zoo, monkeypatch, request):
    """Batching results unless parametrized indirectly with False."""
    w = WorkerThread(zoo, monkeypatch, getattr(request, "param", True))
    try:
        yield w
    finally:
        w.close()


class Link:
    """A controller's end of a worker link, reading results one by one from single messages
    and ResultBatches alike; `messages` counts (single, batched) result messages."""

    def __init__(self, port):
        self.ctx = zmq.Context()
        self.sock = sockets.dealer(self.ctx, "127.0.0.1", port)
        self.held = collections.deque()
        self.messages = collections.Counter()

    def send(self, action, data=()):
        sockets.send(self.sock, action, list(data))

    def send_batch(self, actions, data=None):
        batch, frames = s.batch(s.ActionBatch, actions, data or [[] for _ in actions])
        sockets.send(self.sock, batch, frames)

    def results(self, n):
        """action id -> [(result, data frames)] for the next n results (heartbeats skipped)."""
        got = collections.defaultdict(list)
        deadline = time.monotonic() + WAIT_S
        while sum(map(len, got.values())) < n:
            if not self.held:
                assert sockets.wait([self.sock], max(0.0, deadline - time.monotonic())), \
                    f"only {sum(map(len, got.values()))} of {n} results came"
                frames = self.sock.recv_multipart()
                msg = s.decode(frames[0], s.RESULT_DECODER)
                if type(msg) is s.ResultBatch:
                    self.messages["batched"] += 1
                    self.held.extend(s.unbatch(msg, frames[1:]))
                elif type(msg) is not s.Heartbeat:
                    self.messages["single"] += 1
                    self.held.append((msg, frames[1:]))
                continue
            res, data = self.held.popleft()
            got[res.action_id].append((res, data))
        return got

    def close(self):
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def link(worker):
    lk = Link(worker.port)
    try:
        yield lk
    finally:
        lk.close()


def _one_each(got, ids):
    assert sorted(got) == sorted(ids) and all(len(v) == 1 for v in got.values()), dict(got)
    return {aid: v[0] for aid, v in got.items()}


def test_single_and_batched_actions_mixed(worker, link, zoo):
    spec = load_spec(zoo / "resnet50")
    link.send_batch([s.Reset(1), s.LoadModelFromDisk(2, 0, 0, model_id=0, path="resnet50", copies=2)])
    link.send(s.GetWorkerState(3))
    first = _one_each(link.results(3), [1, 2, 3])
    assert type(first[2][0]) is s.LoadModelFromDiskResult and type(first[3][0]) is s.WorkerStateResult
    link.send_batch([s.LoadWeights(4, 0, 0, model_id=0, gpu_id=0), s.LoadWeights(5, 0, 0, model_id=1, gpu_id=0)])
    _one_each(link.results(2), [4, 5])
    one = bytes(spec.input_size)
    # Infers with their own inputs, generated ones (no frames) and a bad one, in batches and alone
    link.send_batch([s.Infer(10, 0, 0, 0, 0, 1), s.Infer(11, 0, 0, 1, 0, 2), s.Infer(12, 0, 0, 0, 0, 1),
                     s.Infer(13, 0, 0, 7, 0, 1)],
                    [[one], [], [one[:100], one[100:]], []])
    link.send(s.Infer(14, 0, 0, 1, 0, 2), [one, one])
    link.send_batch([s.Infer(15, 0, 0, 0, 0, 1), s.Infer(16, 0, 0, 1, 0, 2)], [[], [one + one]])
    got = _one_each(link.results(7), range(10, 17))
    for aid in (10, 11, 12, 14, 15, 16):
        res, data = got[aid]
        assert type(res) is s.InferResult, (aid, res)
        assert [len(f) for f in data] == [spec.output_size * (2 if aid in (11, 14, 16) else 1)], aid
    assert got[13][0].status == Status.UNKNOWN_MODEL


@pytest.mark.parametrize("worker", [True, False], indirect=True, ids=["batch_results", "single_results"])
def test_results_ready_in_one_turn_leave_in_one_message(worker, link):
    link.send(s.Reset(1))
    link.results(1)
    link.messages.clear()
    # unknown models: each answered while the batch is handled, so all in the same loop turn
    link.send_batch([s.EvictWeights(20 + i, 0, 0, model_id=50 + i, gpu_id=0) for i in range(8)])
    got = _one_each(link.results(8), range(20, 28))
    assert all(r.status == Status.UNKNOWN_MODEL for r, _ in got.values())
    if worker.server.batch_results:
        assert link.messages == {"batched": 1}
        assert len({r.sent for r, _ in got.values()}) == 1          # stamped when the batch left
    else:                                                            # [worker] batch_results = false
        assert link.messages == {"single": 8}
    assert max(worker.held_at_wait) == 0


def test_an_unreadable_entry_costs_only_itself(worker, link):
    link.send(s.Reset(1))
    link.results(1)
    good = msgspec.Raw(msgspec.msgpack.encode(s.EvictWeights(31, 0, 0, model_id=9, gpu_id=0)))
    bad_fields = msgspec.Raw(msgspec.msgpack.encode([22, 32, "not a time", 0, 9, 0]))
    garbage = msgspec.Raw(msgspec.msgpack.encode({"x": 1}))
    nested = msgspec.Raw(msgspec.msgpack.encode(s.ActionBatch([good])))
    sockets.send(link.sock, s.ActionBatch([good, bad_fields, garbage, nested, good]))
    got = link.results(5)
    assert sorted(got) == [-1, 31, 32], dict(got)
    assert [r.status for r, _ in got[31]] == [Status.UNKNOWN_MODEL] * 2     # both served
    (bad, _), = got[32]
    assert bad.status == Status.BAD_MESSAGE and bad.action_tag == s.EvictWeights.__struct_config__.tag
    assert "entry 1" in bad.message
    # no id to give: the map, and a batch inside a batch
    assert [r.status for r, _ in got[-1]] == [Status.BAD_MESSAGE] * 2
    # frame counts that do not add up: every entry of that batch fails, the next batch is served
    batch, _ = s.batch(s.ActionBatch, [s.Infer(40, 0, 0, 0, 0, 1), s.EvictWeights(41, 0, 0, 9, 0)], [[b"x"], []])
    sockets.send(link.sock, batch, [b"x", b"y"])
    link.send_batch([s.EvictWeights(42, 0, 0, 9, 0)])
    got = _one_each(link.results(3), [40, 41, 42])
    assert got[40][0].status == got[41][0].status == Status.BAD_MESSAGE and "carries 2" in got[40][0].message
    assert got[42][0].status == Status.UNKNOWN_MODEL


def test_controller_and_worker_hold_nothing_when_they_wait(worker, monkeypatch):
    """A real Controller (INFER4) and the worker thread; clients with and without request
    batching. Every request is answered; actions went batched (the handshake's Reset and
    GetWorkerState at least) and results too; at every wait of either loop nothing was held;
    every socket the controller sent on (actions, answers) since its last wait is among those
    its wait asks before sleeping (after a send, a message may be waiting without the socket
    signalling), and the first wait asks every socket."""
    from clockwork.client.api import Client
    from clockwork.config import load_config
    from clockwork.controller import server as server_mod
    from clockwork.controller import actions, replies

    held = []
    unasked = []                # per wait: sockets sent on since the last one, not asked
    sent = set()
    real_wait = server_mod.wait
    real_send = actions.send       # (the same function replies uses)

    def recorded_send(sock, *args, **kw):
        sent.add(sock)
        return real_send(sock, *args, **kw)
    monkeypatch.setattr(actions, "send", recorded_send)    # actions
    monkeypatch.setattr(replies, "send", recorded_send)       # answers

    def checked_wait(socks, timeout_s, spin_s=0.0, touched=None, *args):
        held.append(len(ctl.actions.outgoing) + sum(len(w.outbox) for w in ctl.workers)
                    + sum(len(q) for q in ctl.replies.waiting.values()))
        if not unasked:         # the first wait asks every socket (one never asked does not signal)
            sent.update(socks)
        unasked.append(len(sent - (set(socks) if touched is None else touched)))
        sent.clear()
        return real_wait(socks, min(timeout_s, 0.05), spin_s, touched, *args)
    monkeypatch.setattr(server_mod, "wait", checked_wait)
    batches = collections.Counter()
    real_batch = s.batch

    def counted(cls, messages, data):
        batches[cls.__name__] += 1
        return real_batch(cls, messages, data)
    monkeypatch.setattr(s, "batch", counted)
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    port = sockets.free_port()
    ctl = server_mod.Controller(config, [f"127.0.0.1:{worker.port}"], scheduler="infer4", client_port=port,
                                out=lambda *a: None)
    loop = threading.Thread(target=ctl.run, daemon=True)
    loop.start()
    clients = [Client(f"127.0.0.1:{port}", log=lambda *a: None, coalesce=c) for c in (True, False)]
    try:
        first, n, _ = clients[0].load_model("resnet50", copies=4)
        for c in clients:
            c.ls()
        answers = []
        for i in range(40):
            for k, c in enumerate(clients):
                c.infer_async(first + i % n, lambda r, d, lat, k=k: answers.append((k, r.request_id, r.status)),
                              timeout_s=WAIT_S)
            if i % 8 == 7:
                for c in clients:
                    c.drain(WAIT_S)
        for c in clients:
            c.drain(WAIT_S)
        assert len(answers) == len(set((k, rid) for k, rid, _ in answers)) == 80
        assert all(status == Status.SUCCESS for _, _, status in answers), answers
    finally:
        for c in clients:
            c.close()
        ctl.stop()
        loop.join(WAIT_S)
    assert batches["ActionBatch"] >= 1 and batches["ResultBatch"] >= 1, batches
    assert held and max(held) == 0
    assert unasked and max(unasked) == 0
    assert worker.held_at_wait and max(worker.held_at_wait) == 0
