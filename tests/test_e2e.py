"""End to end over loopback with real processes: emulated worker + controller + client."""
import re
from collections import Counter

import numpy as np
import pytest
import zmq

from clockwork.client.api import Client, RequestFailed
from clockwork.local import LocalCluster
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport.sockets import dealer, parse_address, recv, wait

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(gpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    c = Client(cluster.address, log=lambda *_: None)
    c.load_model("resnet50", copies=2)
    c.load_model("mlp", copies=1)
    yield c
    c.close()


def _ids(client, name):
    return [m.model_id for m in client.ls() if m.source.rstrip("/").endswith(name)]


def test_simple_workload_all_succeed(cluster):
    result = cluster.run_client("simple", ["--duration", "4"], timeout=120)
    assert result.returncode == 0, result.stdout
    summary = [l for l in result.stdout.splitlines() if "Summary" in l]
    assert summary, result.stdout
    sent = int(re.search(r"\bsent=(\d+)", summary[-1]).group(1))
    succeeded = int(re.search(r"\bsucceeded=(\d+)", summary[-1]).group(1))
    assert sent > 0 and succeeded == sent, summary[-1]


def test_outputs_have_the_model_output_size(client):
    mid = _ids(client, "resnet50")[0]
    info = {m.model_id: m for m in client.ls()}[mid]
    x = np.ones(3 * 224 * 224 * 2, dtype=np.float32)
    reply = client.infer(mid, inputs=x, batch_size=2)
    assert reply.response.status == Status.SUCCESS
    assert len(reply.output) == 2 * info.output_size
    assert reply.response.exec_ns > 0


def test_unknown_model_is_invalid_request(client):
    with pytest.raises(RequestFailed) as e:
        client.infer(987654)
    assert e.value.status == Status.INVALID_REQUEST
    assert "unknown model" in e.value.message


def test_wrong_input_size_is_invalid_request(client):
    mid = _ids(client, "mlp")[0]
    with pytest.raises(RequestFailed) as e:
        client.infer(mid, inputs=np.ones(7, dtype=np.float32))
    assert e.value.status == Status.INVALID_REQUEST
    assert "bytes" in e.value.message


@pytest.mark.parametrize("batch", [0, 17, 10**6])
def test_bad_batch_size_is_invalid_request(client, batch):
    mid = _ids(client, "mlp")[0]
    with pytest.raises(RequestFailed) as e:
        client.infer(mid, batch_size=batch)
    assert e.value.status == Status.INVALID_REQUEST


def test_absurd_slo_is_invalid_request(client):
    mid = _ids(client, "mlp")[0]
    with pytest.raises(RequestFailed) as e:
        client.infer(mid, slo_ns=10**18)
    assert e.value.status == Status.INVALID_REQUEST


@pytest.mark.parametrize("path", ["../../etc", "/etc", "nonexistent-model"])
def test_bad_model_paths_are_refused(client, path):
    with pytest.raises(RequestFailed) as e:
        client.load_model(path, copies=1)
    assert e.value.status != Status.SUCCESS


def test_garbage_gets_a_clear_status_and_service_continues(cluster, client):
    host, port = parse_address(cluster.address, 0)
    ctx = zmq.Context()
    sock = dealer(ctx, host, port)
    try:
        for junk in ([b"\x01\xc1"], [b""], [b"\x09zzz"], [b"\x01" + bytes(1000)]):
            sock.send_multipart(junk)
            assert wait([sock], 10) == [sock]
            _, msg, _ = recv(sock, s.RESPONSE_DECODER, routed=False)
            assert type(msg) is s.ErrorResponse and msg.status == Status.INVALID_REQUEST
    finally:
        sock.close(0)
        ctx.term()
    mid = _ids(client, "mlp")[0]
    assert client.infer(mid).response.status == Status.SUCCESS


def test_disconnecting_client_does_not_disturb_others(cluster, client):
    mid = _ids(client, "resnet50")[0]
    quitter = Client(cluster.address, log=lambda *_: None)
    for _ in range(50):
        quitter.infer_async(mid, lambda *a: None)
    quitter.close()   # gone with 50 requests in flight
    for _ in range(20):
        assert client.infer(mid).response.status == Status.SUCCESS


def test_overload_gives_rejections_not_growing_latency(cluster, client):
    """Offer far more than 2 emulated GPUs can serve within the SLO: the excess is refused
    instead of being served after the backlog."""
    mid = _ids(client, "resnet50")[0]
    slo_ns = 50_000_000
    results = []
    for _ in range(4000):    # ~16 x one GPU's b16 capacity for this model, sent at once
        client.infer_async(mid, lambda r, d, lat: results.append((r.status, r.latency_ns)),
                           slo_ns=slo_ns, timeout_s=60)
    client.drain(60)
    assert len(results) == 4000
    ok = [lat for st, lat in results if st == Status.SUCCESS]
    # refused by the controller, or by the worker when CPU contention made it start too late
    refusals = (Status.COULD_NOT_START_IN_TIME, Status.TIMEOUT, Status.CONTROLLER_SKIPPED,
                Status.OVERLOADED, Status.ACTION_TOO_LATE)
    rejected = [st for st, _ in results if st in refusals]
    assert ok and rejected
    assert len(ok) + len(rejected) == len(results), Counter(st for st, _ in results)
    # Without admission control all 4000 would be served, the last after the whole backlog
    # (over 2 s at ~1,500/s, 50x the SLO). Here far fewer are served and the rest are refused
    # instead of queueing behind them. How long the served ones took is a timing, measured by
    # tools/bench/overload.py (BENCHMARKS.md, "Overload"), not a test threshold.
    assert len(rejected) > len(results) // 2, Counter(st for st, _ in results)
