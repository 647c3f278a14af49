"""Wire schema: every message survives a round trip; bad frames raise ProtocolError."""
import msgspec

import pytest
import zmq

from clockwork.transport import schema as s
from clockwork.transport.sockets import dealer, free_port, recv, router, send, wait

INFO = s.ModelInfo(3, "resnet50", 602112, 4000, 102017952, 7, [1, 2, 4], [1, 2, 3], 1900000)
STATE = s.WorkerState(16 << 20, [s.GpuState(0, 1376, 1369, 1 << 29, 1 << 29, [3])], [INFO])

SAMPLES = [
    (s.InferRequest(1, 3, 4, 1.5, 0, 7), s.REQUEST_DECODER),
    (s.LoadModelRequest(2, "resnet50", 10), s.REQUEST_DECODER),
    (s.LsRequest(3), s.REQUEST_DECODER),
    (s.InferResponse(1, 0, "", 3, 4, 5_000_000, 4_000_000, True), s.RESPONSE_DECODER),
    (s.LoadModelResponse(2, 0, "", 10, 10, 602112, 4000), s.RESPONSE_DECODER),
    (s.LsResponse(3, 0, "", [INFO]), s.RESPONSE_DECODER),
    (s.ErrorResponse(-1, 6, "bad"), s.RESPONSE_DECODER),
    (s.LoadModelFromDisk(1, 0, 10, 0, "resnet50", 3, 16, 250), s.ACTION_DECODER),
    (s.LoadWeights(2, 5, 9, 0, 1, 100), s.ACTION_DECODER),
    (s.EvictWeights(3, 5, 9, 0, 1), s.ACTION_DECODER),
    (s.Infer(4, 5, 9, 0, 1, 8, 100), s.ACTION_DECODER),
    (s.ClearCache(5, 0, 1), s.ACTION_DECODER),
    (s.GetWorkerState(6), s.ACTION_DECODER),
    (s.Reset(7), s.ACTION_DECODER),
    (s.ErrorResult(4, 23, 21, "too late", 1, 2), s.RESULT_DECODER),
    (s.LoadModelFromDiskResult(1, 1, 2, 3, 4, [INFO]), s.RESULT_DECODER),
    (s.LoadWeightsResult(2, 1, 2, 3, 4, 1), s.RESULT_DECODER),
    (s.EvictWeightsResult(3, 1, 2, 3, 4), s.RESULT_DECODER),
    (s.InferResult(4, 1, 2, 3, 4, 5, 6, 1, 7, 8, 1980, 1980), s.RESULT_DECODER),
    (s.ClearCacheResult(5, 1, 2), s.RESULT_DECODER),
    (s.WorkerStateResult(6, 1, 2, STATE), s.RESULT_DECODER),
    (s.Heartbeat(9, 0, [s.GpuReading(0, 1980, 3201, 40, 1, 2, 0.5)]), s.RESULT_DECODER),
]


@pytest.mark.parametrize("msg,decoder", SAMPLES, ids=[type(m).__name__ for m, _ in SAMPLES])
def test_round_trip(msg, decoder):
    frame = s.encode(msg)
    assert frame[0] == s.PROTOCOL_VERSION
    assert s.decode(frame, decoder) == msg
    assert s.decode(memoryview(frame), decoder) == msg


def test_wrong_direction_is_rejected():
    with pytest.raises(s.ProtocolError, match="malformed"):
        s.decode(s.encode(s.Infer(1, 0, 0, 0, 0, 1)), s.REQUEST_DECODER)


def test_version_mismatch_is_explained():
    frame = bytes([s.PROTOCOL_VERSION + 1]) + s.encode(s.LsRequest(1))[1:]
    with pytest.raises(s.ProtocolError, match="protocol version mismatch"):
        s.decode(frame, s.REQUEST_DECODER)


def test_fatal_text_is_readable():
    with pytest.raises(s.ProtocolError, match="go away"):
        s.decode(s.fatal("go away"), s.RESULT_DECODER)


@pytest.mark.parametrize("frame", [b"", b"\x01", b"\x01\xc1", b"\x01" + b"\x93" + b"\x01" * 2,
                                   b"\x01" + msgspec.msgpack.encode([1, "x"])])
def test_garbage_raises_protocol_error(frame):
    with pytest.raises(s.ProtocolError):
        s.decode(frame, s.REQUEST_DECODER)


def test_wrong_field_types_are_rejected():
    frame = b"\x01" + msgspec.msgpack.encode([1, "one", 3, 1, 0.0, 0, 0])
    with pytest.raises(s.ProtocolError):
        s.decode(frame, s.REQUEST_DECODER)


@pytest.mark.timeout(20)
def test_router_dealer_zero_copy_frames_round_trip():
    ctx = zmq.Context()
    port = free_port()
    srv = router(ctx, "127.0.0.1", port)
    cli = dealer(ctx, "127.0.0.1", port)
    try:
        payload = bytearray(range(256)) * 100
        send(cli, s.InferRequest(7, 1, 2), [memoryview(payload)[:12800], memoryview(payload)[12800:]])
        assert wait([srv], 10) == [srv]
        ident, msg, data = recv(srv, s.REQUEST_DECODER, routed=True)
        assert msg == s.InferRequest(7, 1, 2)
        assert b"".join(f.bytes for f in data) == bytes(payload)
        send(srv, s.InferResponse(7, 0), ident=ident)
        assert wait([cli], 10) == [cli]
        _, back, data = recv(cli, s.RESPONSE_DECODER, routed=False)
        assert back.request_id == 7 and data == []
        send(cli, s.LsRequest(1))
        srv.recv_multipart()  # consume
        cli.send(b"\x01garbage")
        assert wait([srv], 10) == [srv]
        with pytest.raises(s.ProtocolError) as exc:
            recv(srv, s.REQUEST_DECODER, routed=True)
        assert exc.value.ident == ident
    finally:
        srv.close(0)
        cli.close(0)
        ctx.term()


@pytest.mark.timeout(20)
def test_wait_with_spin_returns_what_is_ready_and_nothing_when_nothing_is():
    """The spinning wait (config spin_us) finds a queued message, and with nothing coming
    returns empty (the spin bounded by the timeout)."""
    ctx = zmq.Context()
    port = free_port()
    srv = router(ctx, "127.0.0.1", port)
    cli = dealer(ctx, "127.0.0.1", port)
    try:
        assert wait([srv], 0.0, spin_s=0.001) == []
        assert wait([srv], 0.002, spin_s=1.0) == []          # the spin never outlasts the timeout
        send(cli, s.LsRequest(1))
        assert wait([srv], 10, spin_s=10) == [srv]
        srv.recv_multipart()
        send(cli, s.LsRequest(2))
        assert wait([cli, srv], None, spin_s=1e-9) == [srv]   # spun or slept: either way found
        assert recv(srv, s.REQUEST_DECODER, routed=True)[1] == s.LsRequest(2)
    finally:
        srv.close(0)
        cli.close(0)
        ctx.term()


def test_batches_round_trip_and_nest_the_single_structs():
    reqs = [s.InferRequest(1, 2), s.InferRequest(3, 4, batch_size=2, sent_ns=5)]
    batch = s.decode(s.encode(s.InferRequestBatch(reqs, [0, 2])), s.REQUEST_DECODER)
    assert batch == s.InferRequestBatch(reqs, [0, 2])
    answers = s.InferResponseBatch([s.InferResponse(1, 0, epoch=9), s.InferResponse(3, 6, "no")])
    assert s.decode(s.encode(answers), s.RESPONSE_DECODER) == answers
    with pytest.raises(s.ProtocolError):        # a batch is a request, never an answer
        s.decode(s.encode(s.InferRequestBatch(reqs)), s.RESPONSE_DECODER)
