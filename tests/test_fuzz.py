"""Bad input: the message decoder and the listening ports fuzzed (hypothesis), bad requests.

Properties: the decoder only ever returns a message or raises ProtocolError; the controller's
client port answers every message it gets, exactly once, with a status (INVALID_REQUEST for
anything it cannot accept); the worker port answers malformed frames BAD_MESSAGE (or a fatal
text on a version mismatch); raw TCP garbage, truncated frames and frames over the size cap
cost the sender its connection only. Throughout, no process dies and a well-behaved client
keeps being served.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import time

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clockwork.client.api import Client, RequestFailed
from clockwork.local import LocalCluster
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport import sockets

pytestmark = pytest.mark.timeout(180)
WAIT_S = 10.0
I64 = st.integers(-(2 ** 63), 2 ** 63 - 1)
U64ISH = st.one_of(I64, st.integers(2 ** 63, 2 ** 64 - 1), st.integers(2 ** 64, 2 ** 70))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------ the decoder alone

DECODERS = [s.ACTION_DECODER, s.RESULT_DECODER, s.REQUEST_DECODER, s.RESPONSE_DECODER]
MSGPACK_INTS = st.integers(-(2 ** 63), 2 ** 64 - 1)
msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), MSGPACK_INTS, FLOATS, st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=8), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20)


def _decode_or_protocol_error(frame: bytes) -> None:
    for dec in DECODERS:
        try:
            msg = s.decode(frame, dec)
        except s.ProtocolError:
            continue
        assert isinstance(msg, s.Message)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=200))
def test_decoder_random_bytes(frame):
    _decode_or_protocol_error(frame)
    _decode_or_protocol_error(s.VERSION_BYTE + frame)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 60), st.lists(msgpack_values, max_size=10))
def test_decoder_wrong_types_and_arities(tag, fields):
    _decode_or_protocol_error(s.VERSION_BYTE + msgspec.msgpack.encode([tag, *fields]))


VALID = [s.InferRequest(1, 2, 3, 0.5, 4, 5), s.LoadModelRequest(1, "resnet50", 2), s.LsRequest(9),
         s.Infer(1, 2, 3, 4, 0, 16), s.LoadModelFromDisk(1, 0, 0, 3, "mlp", 2),
         s.InferResult(*range(12)), s.Heartbeat(1, 2, [s.GpuReading(0, 1, 2, 3, 4, 5, 0.5)])]


@pytest.mark.parametrize("msg", VALID, ids=lambda m: type(m).__name__)
def test_decoder_every_truncation(msg):
    frame = s.encode(msg)
    for n in range(len(frame)):
        _decode_or_protocol_error(frame[:n])
        _decode_or_protocol_error(frame[:n] + b"\x00" * 3)


# ------------------------------------------------------------------ the processes

@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(gpus=1) as c:
        client = Client(c.address, log=lambda *_: None, timeout_s=WAIT_S)
        mid, _, _ = client.load_model("mlp", copies=1)
        assert client.infer(mid).response.status == Status.SUCCESS
        c.legit = (client, mid)
        try:
            yield c
        finally:
            client.close()


def _served(cluster) -> None:
    """No process died, and a well-behaved client is still served."""
    assert cluster.controller.poll() is None, "controller died"
    assert all(p.poll() is None for p in cluster.worker_procs), "worker died"
    client, mid = cluster.legit
    assert client.infer(mid).response.status == Status.SUCCESS


@pytest.fixture(scope="module")
def raw(cluster):
    """A DEALER to the controller's client port and one to the worker port."""
    ctx = zmq.Context()
    c = sockets.dealer(ctx, "127.0.0.1", cluster.client_port)
    w = sockets.dealer(ctx, "127.0.0.1", cluster.worker_ports[0])
    try:
        yield c, w
    finally:
        c.close(0)
        w.close(0)
        ctx.term()


def _one_reply(sock) -> list[bytes]:
    assert sockets.wait([sock], WAIT_S) == [sock], "no reply"
    return sock.recv_multipart()


SENTINEL_ID = 2 ** 62 + 7


def _no_more(sock) -> bool:
    """Nothing more comes for what was sent before: a sentinel Ls sent now is answered after
    anything the controller still had to say about earlier messages (one socket, in order),
    so a late duplicate shows up before the sentinel's answer instead of after the check."""
    sockets.send(sock, s.LsRequest(SENTINEL_ID))
    frames = _one_reply(sock)
    reply = s.decode(frames[0], s.RESPONSE_DECODER)
    return type(reply) is s.LsResponse and reply.request_id == SENTINEL_ID


def _header(msg) -> bytes:
    return s.encode(msg)


requests = st.one_of(
    st.builds(s.InferRequest, U64ISH, I64, I64, FLOATS, I64, I64),
    st.builds(s.LoadModelRequest, U64ISH, st.text(max_size=40), I64),
    st.builds(s.LsRequest, U64ISH),
)


def _safe(msg) -> bool:
    """Encodable (msgpack ints stop at 64 bits) and not a legitimate load of a real model."""
    try:
        s.encode(msg)
    except (OverflowError, msgspec.EncodeError):
        return False
    return True


headers = st.one_of(
    st.binary(max_size=64),                                        # garbage
    requests.filter(_safe).map(_header),                           # well formed, any values
    requests.filter(_safe).map(_header).flatmap(                   # truncated
        lambda h: st.integers(0, len(h) - 1).map(lambda n: h[:n])),
    st.lists(msgpack_values, max_size=6).map(lambda f: s.VERSION_BYTE + msgspec.msgpack.encode([1, *f]))
)
data_frames = st.lists(st.binary(max_size=64), max_size=4)


@FUZZ
@given(headers, data_frames)
def test_controller_port_answers_everything_once(cluster, raw, header, data):
    sock = raw[0]
    sock.send_multipart([header, *data])
    frames = _one_reply(sock)
    reply = s.decode(frames[0], s.RESPONSE_DECODER)
    try:
        sent = s.decode(header, s.REQUEST_DECODER)
    except s.ProtocolError:
        assert type(reply) is s.ErrorResponse and reply.status == Status.INVALID_REQUEST and reply.message
    else:
        assert reply.request_id == sent.request_id
        if type(sent) is s.InferRequest and reply.status != Status.SUCCESS:
            assert reply.message
    assert _no_more(sock)


def test_controller_port_after_fuzzing(cluster):
    _served(cluster)


def _is_action(header: bytes) -> bool:
    try:
        s.decode(header, s.ACTION_DECODER)
        return True
    except s.ProtocolError:
        return False


@FUZZ
@given(st.one_of(st.binary(max_size=64),
                 st.lists(msgpack_values, max_size=8).map(
                     lambda f: s.VERSION_BYTE + msgspec.msgpack.encode([23, *f]))),
       data_frames)
def test_worker_port_answers_malformed_frames(cluster, raw, header, data):
    # a well-formed action is the controller's business (and, with security on, only it can
    # reach this port); everything else must be answered, never obeyed or fatal
    assume(not _is_action(header) and not header.startswith(s.FATAL_PREFIX))
    sock = raw[1]
    sock.send_multipart([header, *data])
    while True:
        frames = _one_reply(sock)
        if frames[0].startswith(s.FATAL_PREFIX):
            assert b"version mismatch" in frames[0]
            break
        reply = s.decode(frames[0], s.RESULT_DECODER)
        if type(reply) is s.Heartbeat:
            continue
        assert type(reply) is s.ErrorResult and reply.status == Status.BAD_MESSAGE, reply
        break


def test_worker_port_after_fuzzing(cluster):
    _served(cluster)


# ------------------------------------------------------------------ raw TCP: below ZeroMQ

def _zmtp_greeting() -> bytes:
    """A ZMTP 3.0 NULL-mechanism greeting and READY as a DEALER (RFC 23)."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    return greeting + bytes([0x04, len(body)]) + body


def _closed_by_peer(sock: socket.socket) -> bool:
    """Read until the peer closes (True) or WAIT_S passes (False)."""
    sock.settimeout(WAIT_S)
    end = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


@pytest.mark.parametrize("port", ["client", "worker"])
def test_oversized_frame_drops_only_that_connection(cluster, port):
    p = cluster.client_port if port == "client" else cluster.worker_ports[0]
    with socket.create_connection(("127.0.0.1", p), timeout=WAIT_S) as sock:
        # a message announcing 1 TiB: over MAXMSGSIZE, refused before anything is allocated
        sock.sendall(_zmtp_greeting() + bytes([0x02]) + struct.pack(">Q", 1 << 40) + b"x" * 100)
        assert _closed_by_peer(sock)
    _served(cluster)


@pytest.mark.parametrize("port", ["client", "worker"])
def test_truncated_frames_and_garbage_over_tcp(cluster, port):
    p = cluster.client_port if port == "client" else cluster.worker_ports[0]
    with socket.create_connection(("127.0.0.1", p), timeout=WAIT_S) as sock:   # frame cut short
        sock.sendall(_zmtp_greeting() + bytes([0x00, 200]) + b"\x01" * 20)
    with socket.create_connection(("127.0.0.1", p), timeout=WAIT_S) as sock:   # not ZMTP at all
        # (libzmq may read this as ZMTP 1.0 frames and wait for more: only the sender waits)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
        _served(cluster)
    _served(cluster)


# ------------------------------------------------------------------ bad requests, clear statuses

BAD_INFERS = {
    "unknown model": dict(model_id=987654),
    "negative model": dict(model_id=-1),
    "batch 0": dict(batch_size=0),
    "batch 17": dict(batch_size=17),
    "absurd batch": dict(batch_size=2 ** 62),
    "negative batch": dict(batch_size=-5),
    "negative slo": dict(slo_ns=-1),
    "absurd slo": dict(slo_ns=10 ** 18),
    "negative slo factor": dict(slo_factor=-2.0),
    "infinite slo factor": dict(slo_factor=math.inf),
    "nan slo factor": dict(slo_factor=math.nan),
    "absurd slo factor": dict(slo_factor=1e300),
    "inputs too short (float16 for float32)": dict(inputs=bytes(784 * 2)),
    "inputs too long (float64 for float32)": dict(inputs=bytes(784 * 8)),
    "inputs for batch 2 sent with batch 1": dict(inputs=bytes(784 * 4 * 2)),
}


@pytest.mark.parametrize("case", list(BAD_INFERS), ids=list(BAD_INFERS))
def test_bad_infer_gets_a_clear_status(cluster, case):
    client, mid = cluster.legit
    kw = dict(BAD_INFERS[case])
    model_id = kw.pop("model_id", mid)
    with pytest.raises(RequestFailed) as e:
        client.infer(model_id, **kw)
    assert e.value.status == Status.INVALID_REQUEST and e.value.message
    _served(cluster)


@pytest.mark.parametrize("copies", [0, -1, 10 ** 6, 2 ** 62])
def test_absurd_copies_are_refused(cluster, copies):
    client, _ = cluster.legit
    done = []
    client.load_model_async("mlp", copies, lambda r, d, lat: done.append(r))
    client.drain(WAIT_S)
    assert done and done[0].status == Status.INVALID_REQUEST and "copies" in done[0].message
    _served(cluster)


# ------------------------------------------------------------------ a worker obeying absurd actions

@pytest.fixture(scope="module")
def lone_worker(tmp_path_factory):
    """A worker of its own (these actions are obeyed: Reset would wipe the cluster's)."""
    import subprocess
    import sys
    from clockwork.model.zoo import write_emulated_zoo
    zoo = tmp_path_factory.mktemp("zoo")
    write_emulated_zoo(zoo, log=lambda *a: None)
    port = sockets.free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CLOCKWORK_CONFIG_FILE", None)
    proc = subprocess.Popen([sys.executable, "-m", "clockwork.worker.command", "--emulate", "2", "--host",
                             "127.0.0.1", "--port", str(port), "--model-dir", str(zoo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ctx = zmq.Context()
    sock = sockets.dealer(ctx, "127.0.0.1", port)
    try:
        sockets.send(sock, s.Reset(0))                  # the handshake: this socket is its controller
        assert isinstance(_result(sock), s.ClearCacheResult)
        sockets.send(sock, s.LoadModelFromDisk(0, 0, 0, 0, "mlp", 2))
        assert isinstance(_result(sock), s.LoadModelFromDiskResult)
        sockets.send(sock, s.LoadWeights(0, 0, 0, 0, 0))
        assert isinstance(_result(sock), s.LoadWeightsResult)
        yield proc, sock
    finally:
        sock.close(0)
        ctx.term()
        proc.kill()
        proc.wait(WAIT_S)


def _result(sock):
    while True:
        frames = _one_reply(sock)
        msg = s.decode(frames[0], s.RESULT_DECODER)
        if type(msg) is not s.Heartbeat:
            return msg


SMALL = st.one_of(st.integers(-3, 20), I64)
PAST = st.one_of(st.integers(-(2 ** 63), 1000), st.just(0))       # windows already open
LATEST = st.one_of(st.just(0), st.integers(-(2 ** 63), 2 ** 63 - 1))
actions = st.one_of(
    st.builds(s.Infer, st.just(0), PAST, LATEST, SMALL, SMALL, SMALL, I64),
    st.builds(s.LoadWeights, st.just(0), PAST, LATEST, SMALL, SMALL, I64),
    st.builds(s.EvictWeights, st.just(0), PAST, LATEST, SMALL, SMALL),
    st.builds(s.LoadModelFromDisk, st.just(0), PAST, LATEST, SMALL,
              st.sampled_from(["mlp", "nope", "../mlp", "/etc", "mlp/model.json", ""]),
              st.one_of(st.integers(-2, 3), I64), SMALL, I64),
    st.builds(s.ClearCache, st.just(0), PAST, LATEST),
    st.builds(s.GetWorkerState, st.just(0)),
)


@FUZZ
@given(actions, st.lists(st.binary(max_size=128), max_size=3), st.integers(1, 2 ** 40))
def test_worker_answers_absurd_actions_once(lone_worker, action, data, aid):
    proc, sock = lone_worker
    action.action_id = aid
    sockets.send(sock, action, data)
    reply = _result(sock)
    assert reply.action_id == aid, (action, reply)
    if type(reply) is s.ErrorResult:
        assert reply.message and reply.status >= Status.ACTION_TOO_EARLY
    # exactly one answer: a sentinel GetWorkerState sent now is answered after anything the
    # worker still had to say about that action, so the next result must be the sentinel's
    sockets.send(sock, s.GetWorkerState(SENTINEL_ID))
    msg = _result(sock)
    assert type(msg) is s.WorkerStateResult and msg.action_id == SENTINEL_ID, (action, msg)
    assert proc.poll() is None
