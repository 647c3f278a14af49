"""`cw edge` (controller/edge.py): clients served through an edge process get what a direct
connection gives them, exactly one answer per request with their own ids.

A real Controller (ECHO: valid requests answered SUCCESS within the pass that read them) and
one or two Edges run their loops on threads with real sockets; clients are the client library
(batching and not) and raw DEALERs speaking the wire.
"""
import threading

import pytest
import zmq

from clockwork.client.api import Client
from clockwork.config import load_config
from clockwork.controller import server as server_mod
from clockwork.controller.edge import Edge
from clockwork.controller.simulator import MS, model_info
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport.sockets import free_port

pytestmark = pytest.mark.timeout(60)
INPUT = 16
OUTPUT = 8


def _config():
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    return config


def _start(target):
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def served():
    """An ECHO controller serving model 0 and two edges in front of it: yields the edges'
    addresses and the controller."""
    port = free_port()
    c = server_mod.Controller(_config(), [f"127.0.0.1:{free_port()}"], scheduler="echo", client_port=port,
                              out=lambda *a: None)
    c.models[0] = model_info(0, {1: 2 * MS, 2: 3 * MS}, input_size=INPUT, output_size=OUTPUT)
    c.phase = "running"
    c.scheduler.start(dict(c.models), {})
    edges = [Edge(_config(), f"127.0.0.1:{port}", "127.0.0.1", free_port(), out=lambda *a: None) for _ in range(2)]
    threads = [_start(c.run)] + [_start(e.run) for e in edges]
    try:
        yield [e.address for e in edges], c
    finally:
        for e in edges:
            e.stop()
        c.stop()
        for t in threads:
            t.join(10)


def test_clients_through_edges_each_get_one_answer_with_their_ids(served):
    addresses, c = served
    clients = {(a, batched): Client(a, coalesce=batched, log=lambda *a: None)
               for a in addresses for batched in (True, False)}
    expected, answers = {}, {}
    try:
        for key, client in clients.items():
            for i in range(30):
                model = 0 if i % 4 else 7                 # every fourth names an unknown model
                data = bytes(INPUT) if i % 3 == 0 else None
                rid = client.infer_async(model, lambda r, d, lat, key=key: answers.setdefault(
                    (key, r.request_id), []).append((r.status, b"".join(bytes(f.buffer) for f in d))),
                    inputs=data)
                expected[(key, rid)] = Status.SUCCESS if model == 0 else Status.INVALID_REQUEST
            ls = client.ls()                          # an Ls through the edge, after the Infers
            assert [m.model_id for m in ls] == [0]
        for client in clients.values():
            assert client.drain(30) == 0
        assert {k: [st for st, _ in v] for k, v in answers.items()} == {k: [v] for k, v in expected.items()}
        assert all(out == bytes(OUTPUT) for v in answers.values() for st, out in v if st == Status.SUCCESS)
    finally:
        for client in clients.values():
            client.close()
    assert c.requests.arrivals == len(expected)
    assert len(c.replies.batch_clients) == 2           # the controller saw two clients: the edges


def test_a_bad_batch_at_the_edge_is_answered_there(served):
    addresses, c = served
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{addresses[0]}")
    try:
        reqs = [s.InferRequest(1, 0), s.InferRequest(2, 0)]
        sock.send_multipart([s.encode(s.InferRequestBatch(reqs, [1, 1])), bytes(INPUT)])   # one frame short
        sock.send_multipart([s.encode(s.InferRequestBatch([s.InferRequest(3, 0), s.InferRequest(4, 9)], [1, 0])),
                             bytes(INPUT)])
        sock.send(b"\x01garbage")
        got = {}
        while len(got) < 5:
            assert sock.poll(20_000), got
            frames = sock.recv_multipart()
            msg = s.decode(frames[0], s.RESPONSE_DECODER)
            for r in (msg.responses if type(msg) is s.InferResponseBatch else [msg]):
                assert r.request_id not in got, r
                got[r.request_id] = r.status
        assert got == {1: Status.INVALID_REQUEST, 2: Status.INVALID_REQUEST, 3: Status.SUCCESS,
                       4: Status.INVALID_REQUEST, -1: Status.INVALID_REQUEST}
    finally:
        sock.close(0)
        ctx.term()


def test_requests_in_flight_when_the_controller_goes_are_answered():
    """A controller that reads and never answers, then closes: the edge answers ERROR. It got
    the requests in the order the client made them (an Ls after the Infers before it)."""
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    edge = Edge(_config(), f"127.0.0.1:{port}", "127.0.0.1", free_port(), out=lambda *a: None)
    thread = _start(edge.run)
    client = Client(edge.address, coalesce=True, log=lambda *a: None)
    try:
        answers = []
        for _ in range(5):
            client.infer_async(0, lambda r, d, lat: answers.append((r.request_id, r.status)), timeout_s=30)
        client.ls_async(lambda r, d, lat: answers.append((r.request_id, r.status)), timeout_s=30)
        client.poll(0)
        read = []
        while len(read) < 6:                       # the controller got them, the Infers batched
            assert fake.poll(20_000)
            msg = s.decode(fake.recv_multipart()[1], s.REQUEST_DECODER)
            read += [type(r) for r in msg.requests] if type(msg) is s.InferRequestBatch else [type(msg)]
        assert read == [s.InferRequest] * 5 + [s.LsRequest]
        fake.close(0)
        assert client.drain(20) == 0
        assert sorted(answers) == [(i, Status.ERROR) for i in range(1, 7)], answers
    finally:
        client.close()
        edge.stop()
        thread.join(10)
        ctx.term()


def test_edge_refuses_what_it_cannot_do_in_one_line():
    from click.testing import CliRunner

    from clockwork.controller.edge import edge_command
    config = _config()
    config["security"]["enabled"] = True
    with pytest.raises(ValueError, match="security"):
        Edge(config, "127.0.0.1:1", "127.0.0.1", free_port())
    ctx = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        r = CliRunner().invoke(edge_command, ["127.0.0.1:1", "--port", str(port)])
        assert r.exit_code == 1 and f"cannot listen for clients on 127.0.0.1:{port}" in r.output, r.output
        assert "Traceback" not in r.output
    finally:
        taken.close(0)
        ctx.term()
