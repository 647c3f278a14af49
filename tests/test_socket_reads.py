"""Reading messages frame by frame (transport.sockets.recv_frames) and the controller's drains
that ask the socket whether more is waiting after each message instead of before the first.

- every recv returns exactly one message, its frames in order, whatever their number; a bad
  header is reported after its whole message was read, so the next message reads right;
- NOBLOCK with nothing waiting raises zmq.Again instead of blocking;
- wait() asking only the sockets touched since they were last found empty (the others when
  they signal) still returns every socket with a message waiting: one that arrived before the
  call, one that arrives during it, one waiting behind a send on its socket;
- the controller's drains (client requests, worker results) read everything waiting, answer
  every request once, and return when nothing is waiting: they never make a blocking recv on
  an empty socket (which would stop the loop until a message came).
"""
import pytest
import zmq

from clockwork.config import load_config
from clockwork.controller import server as server_mod
from clockwork.controller.simulator import MS, model_info
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport.sockets import EVENTS, NOBLOCK, POLLIN, free_port, recv, recv_frames, wait

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    """(router, dealer) connected over inproc, a message delivered before the test reads."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://reads")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect("inproc://reads")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def _arrived(sock) -> None:
    assert sock.poll(10_000), "the message did not arrive"


def test_each_recv_returns_one_whole_message_in_order(pair):
    router, dealer = pair
    messages = [[b"a"], [b"b1", b"b2", b"b3"], [b"c"], [b"d1", b"", b"d3", b"d4", b"d5"]]
    for m in messages:
        dealer.send_multipart(m)
    _arrived(router)
    got, idents = [], set()
    for _ in messages:
        frames = recv_frames(router, NOBLOCK)
        idents.add(frames[0].bytes)             # the ROUTER's name for the dealer
        got.append([f.bytes for f in frames[1:]])
    assert got == messages and len(idents) == 1
    with pytest.raises(zmq.Again):
        recv_frames(router, NOBLOCK)


def test_a_bad_header_costs_its_message_only(pair):
    router, dealer = pair
    dealer.send_multipart([b"not msgpack \xc1", b"data", b"more data"])
    dealer.send_multipart([s.encode(s.LsRequest(7)), b"x"])
    _arrived(router)
    with pytest.raises(s.ProtocolError) as e:
        recv(router, s.REQUEST_DECODER, routed=True, flags=NOBLOCK)
    assert e.value.ident is not None
    ident, msg, data = recv(router, s.REQUEST_DECODER, routed=True, flags=NOBLOCK)
    assert type(msg) is s.LsRequest and msg.request_id == 7 and [f.bytes for f in data] == [b"x"]
    with pytest.raises(zmq.Again):
        recv(router, s.REQUEST_DECODER, routed=True, flags=NOBLOCK)


@pytest.fixture
def links():
    """Three ROUTER <- DEALER links over TCP, as the controller's: [(router, dealer)]."""
    ctx = zmq.Context()
    out = []
    for _ in range(3):
        r = ctx.socket(zmq.ROUTER)
        port = r.bind_to_random_port("tcp://127.0.0.1")
        d = ctx.socket(zmq.DEALER)
        d.connect(f"tcp://127.0.0.1:{port}")
        out.append((r, d))
    for r, d in out:            # connected, and both ends found empty since
        d.send(b"hello")
        assert r.poll(10_000)
        r.recv_multipart()
        assert not r.get(EVENTS) & POLLIN and not d.get(EVENTS) & POLLIN
    yield out
    for r, d in out:
        r.close(0)
        d.close(0)
    ctx.term()


def test_wait_finds_what_arrived_before_and_during_it_asking_only_the_touched(links):
    dealers = [d for _, d in links]
    (r0, d0), (r1, d1), (r2, d2) = links
    ident1, ident2 = _ident(r1, d1), _ident(r2, d2)
    assert wait(dealers, 0.0, touched=set()) == []
    # a message arrives before the call: its socket signals, and is asked
    r1.send_multipart([ident1, b"before"])
    assert wait(dealers, 30.0, touched=set()) == [d1]
    assert d1.recv() == b"before" and not d1.get(EVENTS) & POLLIN
    # one arrives while wait() sleeps (sent from another thread, on a socket only it uses)
    import threading
    later = threading.Timer(0.05, lambda: r2.send_multipart([ident2, b"during"]))
    later.start()
    assert wait(dealers, 30.0, touched=set()) == [d2]
    later.join()
    assert d2.recv() == b"during" and not d2.get(EVENTS) & POLLIN


def test_wait_asks_a_socket_sent_on_since_it_was_found_empty(links):
    (r0, d0), _, _ = links
    r0.send_multipart([_ident(r0, d0), b"answer"])
    assert _eventually(lambda: [d0] if d0.poll(0) else [])
    d0.send(b"request")         # a send may take the arrival's signal: only asking finds it
    assert wait([d for _, d in links], 10.0, touched={d0}) == [d0]
    assert d0.recv() == b"answer"


def _ident(router, dealer) -> bytes:
    """The ROUTER's name for `dealer`; leaves both ends found empty."""
    dealer.send(b"who")
    assert router.poll(10_000)
    ident, _ = router.recv_multipart()
    assert not router.get(EVENTS) & POLLIN and not dealer.get(EVENTS) & POLLIN
    return ident


def _eventually(f):
    """f() once it returns something (a message on its way over TCP), within 10 s."""
    import time
    end = time.monotonic() + 10
    while time.monotonic() < end:
        got = f()
        if got:
            return got
        time.sleep(0.001)
    return f()


class NeverBlock:
    """A socket that fails the test instead of making a blocking recv with nothing waiting."""

    def __init__(self, sock):
        self.sock = sock
        self.recvs = 0

    def recv(self, flags=0, copy=True):
        if not flags & NOBLOCK and not self.sock.get(EVENTS) & POLLIN:
            raise AssertionError("a blocking recv on an empty socket: the loop would stop here")
        self.recvs += 1
        return self.sock.recv(flags, copy=copy)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def controller():
    """An ECHO controller, running phase, loop not started (the test calls its drains)."""
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    port = free_port()
    c = server_mod.Controller(config, [f"127.0.0.1:{free_port()}"], scheduler="echo", client_port=port,
                              out=lambda *a: None)
    c.models[0] = model_info(0, {1: 2 * MS}, input_size=0, output_size=0)
    c.phase = "running"
    c.scheduler.start(dict(c.models), {})
    real = c.client_sock
    c.client_sock = c.replies.sock = NeverBlock(real)
    try:
        yield c, f"tcp://127.0.0.1:{port}"
    finally:
        c.client_sock = c.replies.sock = real
        c._sockets[-1] = real
        c.close()


def test_client_drain_reads_all_waiting_and_returns_when_empty(controller):
    c, address = controller
    ctx = zmq.Context()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(address)
    try:
        c._drain_clients()                      # nothing waiting: returns
        sent = list(range(1, 31))
        for rid in sent[:10]:
            client.send(s.encode(s.InferRequest(rid, 0)))
        client.send(s.encode(s.InferRequestBatch([s.InferRequest(rid, 0) for rid in sent[10:]], [])))
        while c.requests.arrivals < len(sent):           # (over TCP the messages may come in pieces)
            assert c.client_sock.poll(10_000), f"{c.requests.arrivals} of {len(sent)} requests came"
            c._drain_clients()
        c.replies.flush()
        answered = {}
        while sum(map(len, answered.values())) < len(sent):
            assert client.poll(10_000), f"{len(answered)} of {len(sent)} answered"
            msg = s.decode(client.recv_multipart()[0], s.RESPONSE_DECODER)
            for r in (msg.responses if type(msg) is s.InferResponseBatch else [msg]):
                answered.setdefault(r.request_id, []).append(r.status)
        assert answered == {rid: [Status.SUCCESS] for rid in sent}
        c._drain_clients()                      # empty again: returns
    finally:
        client.close(0)
        ctx.term()


def test_worker_drain_returns_when_nothing_is_waiting(controller):
    c, _ = controller
    w = c.workers[0]
    real = w.sock
    w.sock = NeverBlock(real)
    try:
        c._drain_worker(w)                      # housekeeping calls it without asking first
        assert w.sock.recvs == 1                # one non-blocking try, answered zmq.Again
    finally:
        w.sock = real
