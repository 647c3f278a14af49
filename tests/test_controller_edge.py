"""The controller edge (server.Controller) between the scheduler and the wire, driven without
processes: a fake clock, the wire captured where the edge sends, and worker messages handed to
the edge as its socket reader would. A stand-in worker whose clock is 7 s ahead answers.

- every window goes out in the worker's clock and every result time comes back in the
  controller's, while the scheduler's own copy of an action is left in controller time;
- a send that fails reaches the scheduler after the tick, never from inside its own send."""
import msgspec
import pytest
import zmq

from clockwork.config import load_config
from clockwork.controller import actions, logs, replies
from clockwork.controller import server as server_mod
from clockwork.controller.scheduler import Request
from clockwork.controller.simulator import MS, model_info
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport.sockets import free_port
from spy import Spy

pytestmark = pytest.mark.timeout(60)

OFFSET = 7_000_000_000          # the worker's clock reads 7 s more than the controller's
LATENCY = 20_000                # one way, ns


class Clock:
    def __init__(self):
        self.now = 1_000_000_000

    def __call__(self):
        return self.now


@pytest.fixture
def edge(monkeypatch):
    """(controller, clock, wire): a running-phase controller with one worker (1 GPU, model 0
    loaded) whose handshake taught it the 7 s offset; `wire` lists (message, data) as sent."""
    yield from _edge(monkeypatch, None)


@pytest.fixture
def logged_edge(monkeypatch, tmp_path):
    """The same, writing its request and action logs into tmp_path."""
    yield from _edge(monkeypatch, tmp_path)


def _edge(monkeypatch, log_dir):
    clock = Clock()
    monkeypatch.setattr(server_mod.time, "monotonic_ns", clock)
    wire = []
    real_send = actions.send

    def capture(sock, msg, data=(), ident=None, flags=0):
        if type(msg) is s.ActionBatch:      # the actions one by one
            wire.extend((m, list(d)) for m, d in s.unbatch(msg, list(data)))
        else:
            wire.append((msg, list(data)))
        if ident is not None:
            real_send(sock, msg, data, ident=ident, flags=flags)
    monkeypatch.setattr(actions, "send", capture)       # actions to workers
    monkeypatch.setattr(replies, "send", capture)          # answers to clients
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)     # no PUB socket, no port taken
    c = server_mod.Controller(config, [f"127.0.0.1:{free_port()}"], scheduler="infer4",
                              client_port=free_port(), out=lambda *a: None, log_dir=log_dir)
    try:
        w = c.workers[0]
        c._probe(w, clock.now)                      # Reset, GetWorkerState
        c.send_actions()                            # (as the loop does at the end of its pass)
        models = {0: model_info(0, {1: 2 * MS, 2: 3 * MS}, output_size=8)}
        state = s.WorkerState(page_size=16 << 20, models=list(models.values()),
                              gpus=[s.GpuState(0, 100, 99, 1 << 29, 1 << 29, [0])])
        for msg, _ in list(wire):
            answer_at = clock.now + LATENCY + OFFSET
            if type(msg) is s.Reset:
                res = s.ClearCacheResult(msg.action_id, answer_at, answer_at)
            else:
                res = s.WorkerStateResult(msg.action_id, answer_at, answer_at, state)
            c.actions.on_message(w, res, [], clock.now + 2 * LATENCY)
        assert w.alive and w.sync.offset == OFFSET
        c.models.update(models)
        c._pad.add(0, 1, [0, 1, 2])
        c._start_scheduling()
        wire.clear()
        yield c, clock, wire
    finally:
        c.close()


def _request(c, clock, rid):
    return Request(rid, None, rid, 0, 1, clock.now, 100 * MS, [])


def _answer(c, clock, wire_infer):
    """The worker gets `wire_infer` one network delay after it was sent, runs it at its
    earliest (the worker's clock) for 2 ms and answers; the answer arrives one delay later."""
    sent_at = c.pending[wire_infer.action_id].sent
    received = sent_at + LATENCY + OFFSET
    begin = max(wire_infer.earliest, received)
    end = begin + 2 * MS
    res = s.InferResult(wire_infer.action_id, received, end, begin, begin, begin, end,
                        2 * MS, end, end, 1980, 1980)
    clock.now = end - OFFSET + LATENCY
    c.actions.on_message(c.workers[0], res, [bytes(8 * wire_infer.batch_size)], clock.now)
    return res


def test_windows_leave_and_results_come_back_through_the_clock_boundary(edge):
    c, clock, wire = edge
    seen = []
    on_result = c.scheduler.on_result
    c.scheduler = Spy(c.scheduler, on_result=lambda wid, a, r, d: (seen.append((a, r)), on_result(wid, a, r, d)))
    answered = []
    c.respond = lambda req, status, *a, **k: answered.append((req.id, status))
    c.scheduler.on_request(_request(c, clock, 1))
    c._tick()
    ((sent, _),) = wire
    planned = c.pending[sent.action_id].action          # the scheduler's copy
    assert type(sent) is s.Infer and planned is not sent
    assert planned.earliest <= clock.now < planned.latest
    assert (sent.earliest, sent.latest) == (planned.earliest + OFFSET, planned.latest + OFFSET)
    ran = _answer(c, clock, sent)
    ((action, result),) = seen
    assert action is planned and action.earliest == sent.earliest - OFFSET   # not rewritten
    for name in ("received", "sent", "exec_begin", "exec_end", "copy_output_end"):
        assert getattr(result, name) == getattr(ran, name) - OFFSET, name     # controller time
    assert planned.earliest <= result.exec_begin <= planned.latest
    assert answered == [(1, Status.SUCCESS)]


def test_a_failed_send_reaches_the_scheduler_after_the_tick(edge, monkeypatch):
    c, clock, wire = edge
    sending = []
    fail_next = [True]
    capture = actions.send

    def send(sock, msg, data=(), ident=None, flags=0):
        sending.append(True)
        try:
            if type(msg) is s.Infer and fail_next:
                fail_next.pop()
                raise zmq.Again()
            capture(sock, msg, data, ident, flags)
        finally:
            sending.pop()
    monkeypatch.setattr(actions, "send", send)
    results = []
    on_result = c.scheduler.on_result

    def watch(wid, action, result, data):
        assert not sending, "the scheduler was called back from inside its own send"
        results.append(result)
        on_result(wid, action, result, data)
    c.scheduler = Spy(c.scheduler, on_result=watch)
    answered = []
    c.respond = lambda req, status, *a, **k: answered.append((req.id, status))
    for rid in (1, 2):
        c.scheduler.on_request(_request(c, clock, rid))
    assert c._tick() == clock.now                      # tick again at once: a failure came in
    assert [(type(r), r.status) for r in results] == [(s.ErrorResult, Status.WORKER_LOST)]
    assert not answered and not wire
    c._tick()                                          # re-queued, sent again
    ((sent, _),) = wire
    assert sent.batch_size == 2
    _answer(c, clock, sent)
    assert sorted(answered) == [(1, Status.SUCCESS), (2, Status.SUCCESS)]


def _rows(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_logs_have_the_originals_meaning(logged_edge, tmp_path):
    """Request log: deadline = the SLO relative to arrival, deadline_met only for a success
    within it, per-model counts. Action log: real values in every column the original had."""
    c, clock, wire = logged_edge
    c.respond = server_mod.Controller.respond.__get__(c)
    for rid in (1, 2):                                 # two arrivals of model 0 (ids 1, 2)
        c.requests.infer(b"client", s.InferRequest(rid, 0, 1), [])
    late = Request(3, None, 3, 0, 1, clock.now - 150 * MS, 100 * MS, [])    # arrived 150 ms ago
    failed = _request(c, clock, 4)
    c.respond(late, Status.SUCCESS)                    # a success after its 100 ms SLO: not met
    c.respond(failed, Status.COULD_NOT_START_IN_TIME)  # not a success: not met either
    c._tick()
    (sent, _), = [x for x in wire if type(x[0]) is s.Infer]
    assert sent.batch_size == 2
    ran = _answer(c, clock, sent)
    c.request_log.close()                              # every row written (by the writer child)
    c.action_log.close()
    rows = {int(r["request_id"]): r for r in _rows(c.request_log.path)}
    slo = str(100 * MS)
    assert {k: (r["result"], r["deadline"], r["deadline_met"]) for k, r in rows.items()} == {
        3: ("0", slo, "0"), 4: (str(int(Status.COULD_NOT_START_IN_TIME)), slo, "0"),
        1: ("0", slo, "1"), 2: ("0", slo, "1")}
    assert [(r["arrival_count"], r["departure_count"]) for r in rows.values()] == [
        ("2", "1"), ("2", "2"), ("2", "3"), ("2", "4")]
    (act,) = [r for r in _rows(c.action_log.path) if r["action_type"] == "Infer"]
    p_sent = int(act["t"]) - int(act["controller_action_duration"])
    assert int(act["worker_exec_complete"]) == ran.exec_end - OFFSET - p_sent
    assert int(act["worker_action_received"]) == ran.received - OFFSET - p_sent
    assert int(act["worker_copy_output_complete"]) == ran.copy_output_end - OFFSET - p_sent
    assert act["expected_gpu_clock"] == act["worker_gpu_clock_before"] == act["worker_gpu_clock"] == "1980"
    assert int(act["goodput"]) == int(act["worker_exec_duration"]) == 2 * MS
    assert (act["copies_loaded"], act["requests_queued"]) == ("1", "0")


def test_evictions_have_a_row():
    from clockwork.controller.logs import ACTION_COLUMNS
    no_socket = type("NoSocket", (), {"get_monitor_socket": lambda self, events: None})()
    p = actions.Pending(actions.WorkerLink(3, "w3", no_socket), s.EvictWeights(9, 0, 1 << 62, 5, 1), 1000, 0,
                        None, (1980, 7, 2))
    row = dict(zip(ACTION_COLUMNS, logs.action_row(p, s.EvictWeightsResult(9, 1100, 1400, 1200, 1300), 1500)))
    assert (row["action_type"], row["worker_id"], row["gpu_id"], row["model_id"]) == ("EvictWeights", 3, 1, 5)
    assert (row["worker_action_received"], row["worker_result_sent"], row["controller_action_duration"]) == (
        100, 400, 500)
    assert (row["requests_queued"], row["copies_loaded"]) == (7, 2)


def test_an_unreadable_result_in_a_batch_fails_its_action_and_the_rest_are_read(edge):
    c, clock, wire = edge
    results = []
    on_result = c.scheduler.on_result
    c.scheduler = Spy(c.scheduler, on_result=lambda wid, a, r, d: (results.append(r), on_result(wid, a, r, d)))
    c.respond = lambda req, status, *a, **k: None
    c.scheduler.on_request(_request(c, clock, 1))
    c._tick()
    ((sent, _),) = wire
    bad = msgspec.Raw(msgspec.msgpack.encode([44, sent.action_id, "not a time"]))
    beat = msgspec.Raw(msgspec.msgpack.encode(s.Heartbeat(clock.now, 3, [s.GpuReading(0, 1, 2, 3, 4, 5, 0.5)])))
    w = c.workers[0]
    c.actions.on_batch(w, s.ResultBatch([bad, beat]), [], clock.now)
    assert [(type(r), r.status, r.action_id) for r in results] == [(s.ErrorResult, Status.BAD_MESSAGE, sent.action_id)]
    assert sent.action_id not in c.pending and sent.action_id not in w.pending
    assert [g.gpu_id for g in w.readings] == [0]          # the heartbeat after it was read


def test_a_failed_batch_send_fails_each_of_its_actions_after_the_pass(edge, monkeypatch):
    c, clock, wire = edge

    def send(sock, msg, data=(), ident=None, flags=0):
        if type(msg) is s.ActionBatch:
            raise zmq.Again()
    monkeypatch.setattr(actions, "send", send)
    w = c.workers[0]
    got = []
    ids = [next(c.action_ids) for _ in range(3)]
    for aid in ids:
        c.send_action(w.id, s.ClearCache(aid), on_done=lambda w, r: got.append((r.action_id, r.status)))
    assert not got and len(w.outbox) == 3             # held, nothing reported from inside a send
    assert c._send_outgoing() is True                 # the loop ticks again at once
    assert got == [(aid, Status.WORKER_LOST) for aid in ids]
    assert not w.outbox and not set(ids) & set(c.pending)


def test_with_batch_actions_off_an_action_leaves_at_once(monkeypatch):
    wire = []
    monkeypatch.setattr(actions, "send", lambda sock, msg, data=(), ident=None, flags=0: wire.append(msg))
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0, batch_actions=False)
    c = server_mod.Controller(config, [f"127.0.0.1:{free_port()}"], scheduler="infer4",
                              client_port=free_port(), out=lambda *a: None)
    try:
        c._probe(c.workers[0], 0)
        assert [type(m) for m in wire] == [s.Reset, s.GetWorkerState] and not c.actions.outgoing
    finally:
        c.close()


def test_an_infer_before_the_controller_runs_is_answered_or_starts_it():
    """Connecting, or loading with a load in flight: INITIALIZING, and the scheduler sees
    nothing. Loading with no load in flight: the Infer starts scheduling and is admitted (here
    refused as an unknown model, which only a running controller says). A model id of another
    controller lifetime is STALE_EPOCH whatever the phase."""
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    c = server_mod.Controller(config, [f"127.0.0.1:{free_port()}"], scheduler="infer4",
                              client_port=free_port(), out=lambda *a: None)
    seen = []
    c.scheduler = Spy(c.scheduler, on_request=seen.append)

    def answers():
        return [(m.request_id, m.status) for m, _ in c.replies.waiting.pop(b"client", [])]
    try:
        c.requests.infer(b"client", s.InferRequest(1, 0, 1), [])                # connecting
        c.requests.infer(b"client", s.InferRequest(2, 0, 1, epoch=c.epoch ^ 1), [])
        assert answers() == [(1, Status.INITIALIZING), (2, Status.STALE_EPOCH)]
        c.phase = "loading"
        c.load_jobs[0] = object()                                           # a LoadModel in flight
        c.requests.infer(b"client", s.InferRequest(3, 0, 1), [])
        assert answers() == [(3, Status.INITIALIZING)] and c.phase == "loading"
        del c.load_jobs[0]
        c.requests.infer(b"client", s.InferRequest(4, 0, 1), [])
        assert answers() == [(4, Status.INVALID_REQUEST)] and c.phase == "running"
        assert not seen and c.requests.arrivals == 4
    finally:
        c.close()
