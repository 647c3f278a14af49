"""The client library against a tiny in-test controller (clockwork.client.echo on a thread,
bound to a free 127.0.0.1 port and always stopped)."""
import socket
import struct
import threading

import pytest
import zmq

from clockwork.client import api
from clockwork.client.api import (Client, ControllerUnreachable, RequestFailed, RequestTimeout)
from clockwork.client.echo import EchoController, zoo_sizes
from clockwork.status import Status
from clockwork.transport import schema
from clockwork.transport.schema import ErrorResponse, InferResponse, LsResponse
from clockwork.transport.sockets import free_port

pytestmark = pytest.mark.timeout(60)

RESNET_IN, RESNET_OUT, _ = zoo_sizes()["resnet50"]


@pytest.fixture
def client(echo):
    c = Client(echo.address, timeout_s=10, connect_timeout_s=10, retry_interval_s=0.01, log=lambda m: None)
    try:
        yield c
    finally:
        c.close()


def test_load_ls_and_blocking_infer(client, echo):
    first, copies, r = client.load_model("resnet50", copies=3)
    assert (first, copies) == (0, 3)
    assert r.input_size == RESNET_IN and r.output_size == RESNET_OUT
    first2, copies2, _ = client.load_model("mlp")
    assert (first2, copies2) == (3, 1)              # ids keep counting
    models = client.ls()
    assert [m.model_id for m in models] == [0, 1, 2, 3]
    assert models[3].source == "mlp"
    reply = client.infer(1, inputs=bytes(RESNET_IN))
    assert reply.response.status == Status.SUCCESS and reply.response.model_id == 1
    assert len(reply.output) == RESNET_OUT
    assert reply.latency_s > 0
    reply = client.infer(2)                          # no inputs: the controller makes them
    assert reply.response.status == Status.SUCCESS
    assert echo.infers[-2][3] == RESNET_IN and echo.infers[-1][3] == 0


def test_load_model_sends_no_ls_first(client, echo):
    """The controller ends its LoadModel stage on the first Ls (as the original), so the
    client must not probe with one before loading: it checks the connection at the
    transport level instead."""
    client.load_model("resnet50", 1)
    assert client.connected
    assert echo.received["ls"] == 0 and echo.received["load"] == 1


def test_inputs_as_a_reused_frame_and_as_several_frames(client, echo):
    client.load_model("resnet50", 1)
    frame = zmq.Frame(bytes(RESNET_IN))
    for _ in range(3):                               # the same frame backs every request
        assert client.infer(0, inputs=frame).response.status == Status.SUCCESS
    half = RESNET_IN  # batch of 2 as two frames
    r = client.infer(0, inputs=[bytes(half), bytes(half)], batch_size=2)
    assert len(r.output) == 2 * RESNET_OUT
    assert [i[3] for i in echo.infers] == [RESNET_IN] * 3 + [2 * RESNET_IN]


def test_request_fields_reach_the_controller(client, echo):
    client.load_model("resnet50", 1)
    client.infer(0, slo_factor=3.5, slo_ns=7_000_000)
    assert echo.infers[-1][:3] == (0, 3.5, 7_000_000)


def test_failures_raise_with_status(client):
    client.load_model("resnet50", 1)
    with pytest.raises(RequestFailed) as e:
        client.infer(0, inputs=b"short")
    assert e.value.status == Status.INVALID_REQUEST and "602112" in str(e.value)
    with pytest.raises(RequestFailed) as e:
        client.infer(99)
    assert e.value.status == Status.INVALID_REQUEST and "unknown model 99" in str(e.value)
    with pytest.raises(RequestFailed, match="no model 'nosuch'"):
        client.load_model("nosuch")
    with pytest.raises(ValueError):
        client.load_model("resnet50", copies=0)


def test_async_callbacks_run_once_each_in_poll(client):
    client.load_model("resnet50", 2)
    seen = {}

    def cb(resp, data, latency):
        assert resp.request_id not in seen
        seen[resp.request_id] = (resp.status, len(data[0].buffer) if data else 0)

    ids = [client.infer_async(i % 2, cb) for i in range(500)]
    assert len(set(ids)) == 500
    assert not seen                                  # nothing runs outside poll()
    assert client.drain(20) == 0
    assert set(seen) == set(ids)
    assert all(v == (Status.SUCCESS, RESNET_OUT) for v in seen.values())
    assert client.outstanding == 0


def test_futures(client):
    client.load_model("resnet50", 1)
    futs = [client.infer_future(0) for _ in range(10)]
    assert not any(f.done() for f in futs)
    client.drain(20)
    assert all(f.done() and f.status == Status.SUCCESS for f in futs)


def test_initializing_is_retried_then_succeeds():
    logs = []
    with EchoController(initializing_requests=3) as ec:
        c = Client(ec.address, connect_timeout_s=10, retry_interval_s=0.01, log=logs.append)
        try:
            first, copies, _ = c.load_model("resnet50", 2)
            assert (first, copies) == (0, 2)
            assert ec.received["load"] == 1          # the three bounced attempts were not loads
            assert any("initializing" in m for m in logs)
        finally:
            c.close()


def test_initializing_forever_gives_a_clear_error():
    with EchoController(initializing_requests=10**9) as ec:
        c = Client(ec.address, connect_timeout_s=0.3, retry_interval_s=0.05, log=lambda m: None)
        try:
            with pytest.raises(RequestFailed) as e:
                c.ls()
            assert e.value.status == Status.INITIALIZING
            assert "still initializing" in str(e.value)
        finally:
            c.close()


def test_infer_timeout_is_a_clear_error(client, echo):
    client.load_model("resnet50", 2)
    echo.silent_models.add(1)
    with pytest.raises(RequestTimeout, match="no answer from .* within 0.2 s"):
        client.infer(1, timeout_s=0.2)
    got = []
    client.infer_async(1, lambda r, d, l: got.append(r), timeout_s=0.1)
    client.infer_async(0, lambda r, d, l: got.append(r), timeout_s=5)
    client.drain(10)
    statuses = sorted(r.status for r in got)
    assert statuses == [api.NO_ANSWER, Status.SUCCESS]
    assert api.status_name(api.NO_ANSWER).startswith("no answer")


def test_slow_load_is_waited_for_once_the_controller_answered():
    """LoadModel may take longer than connect_timeout_s (thousands of copies): a controller
    that answered Ls is there, so the client keeps waiting (load_timeout_s)."""
    with EchoController(load_delay_s=0.6) as ec:
        c = Client(ec.address, connect_timeout_s=0.2, log=lambda m: None)
        try:
            first, copies, _ = c.load_model("resnet50", 3)
            assert (first, copies) == (0, 3)
        finally:
            c.close()
        c = Client(ec.address, connect_timeout_s=5, load_timeout_s=0.1, log=lambda m: None)
        try:
            with pytest.raises(RequestTimeout, match="load model"):
                c.load_model("resnet50", 1)
        finally:
            c.close()


def test_no_controller_is_a_clear_error():
    port = free_port()
    c = Client(f"127.0.0.1:{port}", connect_timeout_s=0.3, log=lambda m: None)
    try:
        with pytest.raises(ControllerUnreachable, match=f"no controller answered at 127.0.0.1:{port}"):
            c.ls()
        with pytest.raises(ControllerUnreachable):
            c.load_model("resnet50")
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_a_connection_closed_in_mid_handshake_is_not_a_security_error():
    """A controller killed or restarting closes connections in the middle of ZeroMQ's
    handshake. The client must wait for the controller that comes up on that port, not end
    connect() with "it requires CURVE security" (a failure of test_faults' restart test)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    closed = []
    swapped = threading.Event()
    echo = EchoController(port=port)

    def close_then_serve():
        """Accept and reset three connections (the client reconnects after each), then serve."""
        while len(closed) < 3:
            conn, _ = listener.accept()
            conn.recv(10)                         # the start of the client's greeting
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()                          # reset: the handshake fails with no detail
            closed.append(1)
        listener.close()
        echo.start()
        swapped.set()

    server = threading.Thread(target=close_then_serve, daemon=True)
    server.start()
    c = Client(f"127.0.0.1:{port}", connect_timeout_s=30, log=lambda m: None)
    try:
        c.connect()                               # polls the monitor through the three resets
        assert swapped.is_set() and len(closed) == 3
        assert c.handshake_failed is None
        first, n, _ = c.load_model("resnet50", 1)
        assert c.infer(first).response.status == Status.SUCCESS
    finally:
        c.close()
        server.join(10)
        echo.stop()
        listener.close()


def test_bad_address():
    with pytest.raises(ValueError, match="port"):
        Client("localhost:notaport")
    with pytest.raises(ValueError, match="bad address 'a b:12'"):
        Client("a b:12")


def test_answers_to_abandoned_requests_are_ignored(client):
    client.load_model("resnet50", 1)
    client.infer_async(0, lambda *a: pytest.fail("abandoned callback ran"))
    assert client.abandon()
    # the answer arrives later and is counted, not delivered
    client.infer(0)
    client.drain(1)
    assert client.answered_unknown == 1


def test_garbage_and_unmatched_errors_from_a_controller_do_not_crash():
    """A raw ROUTER answering with a bad header, then an ErrorResponse(-1), then the answer."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if not sock.poll(50):
                continue
            ident, header = sock.recv_multipart()[:2]
            rid = schema.decode(header, schema.REQUEST_DECODER).request_id
            sock.send_multipart([ident, b"\x63garbage"])
            sock.send_multipart([ident, schema.encode(ErrorResponse(-1, 6, "could not decode"))])
            sock.send_multipart([ident, schema.encode(LsResponse(rid, 0, "", []))])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    logs = []
    c = Client(f"127.0.0.1:{port}", connect_timeout_s=5, log=logs.append)
    try:
        assert c.ls() == []
        assert c.bad_messages == 1
        assert any("protocol version mismatch" in m for m in logs)
        assert any("could not decode" in m for m in logs)
    finally:
        c.close()
        stop.set()
        t.join(5)
        sock.close(0)
        ctx.term()


def test_send_queue_full_is_reported_not_blocking():
    """Nothing listening and a tiny send queue: sends must fail fast with SEND_FAILED."""
    port = free_port()
    c = Client(f"127.0.0.1:{port}", log=lambda m: None)
    try:
        c._sock.setsockopt(zmq.SNDHWM, 1)
        got = []
        for _ in range(5000):
            c.infer_async(0, lambda r, d, l: got.append(r.status), inputs=bytes(100))
        assert api.SEND_FAILED in got
        assert c.outstanding + got.count(api.SEND_FAILED) == 5000
    finally:
        c.close()


def test_infer_response_type_is_what_callbacks_get(client):
    client.load_model("mlp", 1)
    f = client.infer_future(0)
    client.drain(10)
    assert isinstance(f.response, InferResponse)


def test_model_ids_across_a_restart_never_collide():
    """After a controller restart the caller keeps its ids; ids of later loads (or ls) that
    equal one of them get other handles, so one handle never names two models."""
    from clockwork.client.lifetimes import ModelIds
    ids = ModelIds()
    ids.adopt(1)
    assert ids.register("resnet50", 2, 0) == 0 and ids.register("mlp", 1, 2) == 2
    assert ids.route is None                         # first lifetime: ids as the controller gave them
    r50, mlp = ids.registrations
    ids.switch(2, {r50: 5, mlp: 0})                  # loaded again: resnet50 at 5-6, mlp at 0
    assert ids.route == {0: 5, 1: 6, 2: 0} and ids.old_epoch == 1
    assert ids.register("resnet18", 2, 1) == 3       # new ids 1-2 are handles already: fresh block
    assert ids.route[3] == 1 and ids.route[4] == 2
    assert ids.register("resnet34", 1, 7) == 7       # a free number stays as it is
    assert ids.handle_block(5, 1) == 0               # ls naming resnet50's new id: the caller's id
    assert len(set(ids.route.values())) == len(ids.route)
