"""Several requests per client message and several answers per message (issue 13).

A real Controller (ECHO scheduler: every valid request is answered SUCCESS at once, so the
answers come back within the loop pass that read the request) runs its loop on a thread with
real sockets; clients are the client library, with and without request batching, and raw
DEALER sockets speaking the wire directly.

- batched and single messages mixed from several clients: every request exactly one answer,
  with its own id and the status its content deserves;
- a batch with an invalid request answers that one with an error and serves the rest;
- answers are coalesced per client within one loop pass only: every answer made in a pass is
  on the wire before the loop waits again (checked at every wait, not timed);
- Replies sends one InferResponseBatch per batching client, single messages to the others.
"""
import threading

import pytest
import zmq

from clockwork.client.api import Client
from clockwork.config import load_config
from clockwork.controller import replies as replies_mod
from clockwork.controller import server as server_mod
from clockwork.controller.simulator import MS, model_info
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport.sockets import free_port

pytestmark = pytest.mark.timeout(60)

INPUT = 16          # bytes of one input of model 0
OUTPUT = 8


@pytest.fixture
def controller(monkeypatch):
    """A running ECHO controller serving model 0 on a loop thread; yields (controller, address,
    waits) where waits lists, per call of the loop's wait(), the answers still held then."""
    waits = []
    real_wait = server_mod.wait

    def checked_wait(sockets, timeout_s, spin_s=0.0, *args):
        waits.append(sum(len(q) for q in c.replies.waiting.values()))
        return real_wait(sockets, min(timeout_s, 0.05), spin_s, *args)
    monkeypatch.setattr(server_mod, "wait", checked_wait)
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    port = free_port()
    c = server_mod.Controller(config, [f"127.0.0.1:{free_port()}"], scheduler="echo", client_port=port,
                              out=lambda *a: None)
    c.models[0] = model_info(0, {1: 2 * MS, 2: 3 * MS}, input_size=INPUT, output_size=OUTPUT)
    c.phase = "running"
    c.scheduler.start(dict(c.models), {})
    loop = threading.Thread(target=c.run, daemon=True)
    loop.start()
    try:
        yield c, f"127.0.0.1:{port}", waits
    finally:
        c.stop()
        loop.join(10)


def _dealer(ctx, address):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{address}")
    return sock


def _answers(sock, expected: int) -> dict[int, list]:
    """request id -> [(status, output bytes)], reading until `expected` answers came."""
    got: dict[int, list] = {}
    n = 0
    while n < expected:
        assert sock.poll(20_000), f"only {n} of {expected} answers came"
        frames = sock.recv_multipart()
        msg = s.decode(frames[0], s.RESPONSE_DECODER)
        if type(msg) is s.InferResponseBatch:
            counts = msg.frames or [0] * len(msg.responses)
            at = 1
            for r, k in zip(msg.responses, counts):
                got.setdefault(r.request_id, []).append((r.status, b"".join(frames[at:at + k])))
                at += k
                n += 1
        else:
            got.setdefault(msg.request_id, []).append((msg.status, b"".join(frames[1:])))
            n += 1
    return got


def test_batched_and_single_requests_from_several_clients_each_get_one_answer(controller):
    c, address, waits = controller
    expected = {}           # (client, request id) -> status
    answers = {}
    clients = {"batched": Client(address, coalesce=True, log=lambda *a: None),
               "single": Client(address, coalesce=False, log=lambda *a: None)}
    batches_read = []
    read_batch = Client._answer_batch
    clients["batched"]._answer_batch = lambda b, f: (batches_read.append(len(b.responses)),
                                                      read_batch(clients["batched"], b, f))[1]
    try:
        for name, client in clients.items():
            for i in range(40):
                model = 0 if i % 5 else 7                # every fifth names an unknown model
                data = bytes(INPUT) if i % 3 == 0 else None
                rid = client.infer_async(model, lambda r, d, lat, name=name: answers.setdefault(
                    (name, r.request_id), []).append((r.status, b"".join(bytes(f.buffer) for f in d))),
                    inputs=data)
                expected[(name, rid)] = Status.SUCCESS if model == 0 else Status.INVALID_REQUEST
        for client in clients.values():
            assert client.drain(30) == 0
        assert {k: [st for st, _ in v] for k, v in answers.items()} == {k: [v] for k, v in expected.items()}
        assert all(out == bytes(OUTPUT) for k, v in answers.items() for st, out in v if st == Status.SUCCESS)
        assert sum(batches_read) > 1, "the batching client got no answer batch"
    finally:
        for client in clients.values():
            client.close()
    assert not any(waits), "the loop waited while holding answers"


def test_a_batch_with_invalid_requests_answers_those_with_errors_and_serves_the_rest(controller):
    c, address, waits = controller
    ctx = zmq.Context()
    old, new = _dealer(ctx, address), _dealer(ctx, address)
    try:
        reqs = [s.InferRequest(1, 0), s.InferRequest(2, 9), s.InferRequest(3, 0, batch_size=2),
                s.InferRequest(4, 0, batch_size=99), s.InferRequest(5, 0)]
        # inputs: 1 frame for 1, none for 2, 2 frames for 3 (2 x 16 bytes), none for 4, a short one for 5
        new.send_multipart([s.encode(s.InferRequestBatch(reqs, [1, 0, 2, 0, 1])), bytes(INPUT),
                            bytes(INPUT), bytes(INPUT), bytes(INPUT - 1)])
        old.send_multipart([s.encode(s.InferRequest(6, 0)), bytes(INPUT)])     # an old client
        got = _answers(new, 5)
        assert {rid: [st for st, _ in v] for rid, v in got.items()} == {
            1: [Status.SUCCESS], 2: [Status.INVALID_REQUEST], 3: [Status.SUCCESS],
            4: [Status.INVALID_REQUEST], 5: [Status.INVALID_REQUEST]}
        assert got[1][0][1] == bytes(OUTPUT) and got[3][0][1] == bytes(2 * OUTPUT)
        frames = old.recv_multipart()          # the old client: one plain InferResponse
        reply = s.decode(frames[0], s.RESPONSE_DECODER)
        assert type(reply) is s.InferResponse and (reply.request_id, reply.status) == (6, Status.SUCCESS)
        # frame counts that do not add up: every request of that batch answered INVALID_REQUEST
        new.send_multipart([s.encode(s.InferRequestBatch([s.InferRequest(7, 0), s.InferRequest(8, 0)], [1, 1])),
                            bytes(INPUT)])
        assert {rid: [st for st, _ in v] for rid, v in _answers(new, 2).items()} == {
            7: [Status.INVALID_REQUEST], 8: [Status.INVALID_REQUEST]}
    finally:
        old.close(0)
        new.close(0)
        ctx.term()
    assert not any(waits), "the loop waited while holding answers"


def test_a_bug_handling_a_batch_costs_that_batch_not_the_controller(controller, monkeypatch):
    c, address, waits = controller

    real_split = s.split_frames

    def broken(counts, n, data, what="entries"):
        if what == "requests":              # (an InferRequestBatch's frames are split first)
            raise RuntimeError("planted")
        return real_split(counts, n, data, what)
    monkeypatch.setattr(s, "split_frames", broken)
    ctx = zmq.Context()
    sock = _dealer(ctx, address)
    try:
        sock.send_multipart([s.encode(s.InferRequestBatch([s.InferRequest(1, 0), s.InferRequest(2, 0)]))])
        sock.send_multipart([s.encode(s.InferRequest(3, 0))])
        assert _answers(sock, 2) == {-1: [(Status.ERROR, b"")], 3: [(Status.SUCCESS, bytes(OUTPUT))]}
    finally:
        sock.close(0)
        ctx.term()


class _Sock:
    pass


def test_replies_are_one_batch_per_batching_client_and_singles_to_others(monkeypatch):
    sent = []
    monkeypatch.setattr(replies_mod, "send", lambda sock, msg, data=(), ident=None: sent.append((ident, msg, list(data))))
    replies = replies_mod.Replies(_Sock(), batching=True)
    replies.client_batches(b"new")
    out = [b"a", b"b"]
    for rid, ident in ((1, b"new"), (2, b"old"), (3, b"new"), (4, b"old"), (5, b"new")):
        replies.add(ident, s.InferResponse(rid, Status.SUCCESS), [out[rid % 2]] if rid != 3 else [])
    replies.add(b"new", s.LsResponse(6, Status.SUCCESS))
    assert not sent                                    # nothing before the end of the pass
    replies.flush()
    assert not replies.waiting
    batches = [(ident, m, d) for ident, m, d in sent if type(m) is s.InferResponseBatch]
    assert [(ident, [r.request_id for r in m.responses], m.frames, d) for ident, m, d in batches] == [
        (b"new", [1, 3, 5], [1, 0, 1], [b"b", b"b"])]
    assert [(ident, m.request_id) for ident, m, d in sent if type(m) is not s.InferResponseBatch] == [
        (b"new", 6), (b"old", 2), (b"old", 4)]
    # in the order made: the Ls answered after the Infers reaches the client after their answers
    assert [type(m) for ident, m, d in sent if ident == b"new"] == [s.InferResponseBatch, s.LsResponse]
    sent.clear()
    replies.add(b"new", s.InferResponse(7, Status.SUCCESS))
    replies.add(b"new", s.LsResponse(8, Status.SUCCESS))
    replies.add(b"new", s.InferResponse(9, Status.SUCCESS))
    replies.add(b"new", s.InferResponse(10, Status.SUCCESS))
    replies.flush()
    assert [(type(m).__name__, getattr(m, "request_id", None)) for _, m, _ in sent] == [
        ("InferResponse", 7), ("LsResponse", 8), ("InferResponseBatch", None)]
    assert [r.request_id for r in sent[2][1].responses] == [9, 10]
    sent.clear()
    unbatched = replies_mod.Replies(_Sock(), batching=False)
    unbatched.client_batches(b"new")
    unbatched.add(b"new", s.InferResponse(9, Status.SUCCESS))
    assert [m.request_id for _, m, _ in sent] == [9]     # batching off: sent at once
