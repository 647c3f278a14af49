"""The telemetry PUB stream: snapshot content from known traffic, events, late joiners, slow
subscribers, and (when the worker and schedulers exist) a real emulated system."""
from __future__ import annotations

import pytest
import zmq

from clockwork.status import Status, describe
from clockwork.telemetry import messages as tm
from clockwork.telemetry.publisher import MODELS_PER_STEP, TelemetryPublisher
from clockwork.transport.sockets import free_port
from telemetry_fakes import MS, FakeController, FakePending

pytestmark = pytest.mark.timeout(60)
SECOND = 1_000_000_000


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def system(ctx):
    """(fake controller, publisher, address); the publisher is always closed."""
    ctl = FakeController(workers=1, gpus=2, models=3)
    port = free_port()
    pub = TelemetryPublisher(ctl, ctx, "127.0.0.1", port)
    ctl.telemetry = pub
    yield ctl, pub, f"tcp://127.0.0.1:{port}"
    pub.close()


def subscriber(ctx, address, topic=b"", **opts):
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        sock.setsockopt(getattr(zmq, k), v)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(address)
    return sock


def publish(ctl, pub, seconds=1.0):
    """Let `seconds` pass and run housekeeping until a snapshot is complete; return it."""
    ctl.advance(int(seconds * SECOND))
    before = pub.last_snapshot
    for _ in range(1000):
        pub.maybe_publish(ctl.now)
        if pub.last_snapshot is not before:
            return pub.last_snapshot
        ctl.advance(50 * MS)
    raise AssertionError("no snapshot built")


def connect(ctl, pub, sock):
    """Publish until `sock` receives something (PUB drops messages for peers not yet connected),
    then drain it. Returns the seq of the last message read."""
    for _ in range(200):
        publish(ctl, pub)
        if sock.poll(100):
            break
    else:
        raise AssertionError("subscriber never connected")
    last = None
    while sock.poll(0):
        last = tm.decode(sock.recv())
    return last


def next_snapshot(sock, after_seq):
    while True:
        assert sock.poll(5000), "no snapshot arrived"
        msg = tm.decode(sock.recv())
        if type(msg) is tm.Snapshot and msg.seq > after_seq:
            return msg


def test_snapshot_reports_known_traffic(ctx, system):
    ctl, pub, address = system
    sock = subscriber(ctx, address, tm.TOPIC_SNAPSHOT)
    last = connect(ctl, pub, sock)
    # known traffic for model 0, in one interval
    fast, slow, skipped = [5 * MS] * 10, [150 * MS] * 2, 3
    for lat in fast:
        ctl.answer(0, Status.SUCCESS, lat, slo=100 * MS, exec_ns=3 * MS)
    for lat in slow:
        ctl.answer(0, Status.SUCCESS, lat, slo=100 * MS, exec_ns=3 * MS, coldstart=True)
    for _ in range(skipped):
        ctl.answer(0, Status.CONTROLLER_SKIPPED, 20 * MS)
    batches = [4, 4, 4, 8]
    for b in batches:
        ctl.infer(0, 1, 0, b, 6 * MS)
    ctl.load(0, 0, 0)
    ctl.load(0, 0, 1)
    ctl.evict(0, 0, 1)
    ctl.pending[999] = FakePending(ctl.workers[0], type("A", (), {"gpu_id": 1})())
    ctl.scheduler.numbers = {"queued_by_model": {0: 7}, "batches_planned": 12}
    snap = publish(ctl, pub)
    got = next_snapshot(sock, last.seq)
    assert got.seq == snap.seq
    span = got.interval_s

    m0 = {m.model_id: m for m in got.models}[0]
    answered = len(fast) + len(slow) + skipped
    assert m0.rate == pytest.approx(answered / span, rel=1e-3)
    assert m0.goodput == pytest.approx(len(fast) / span, rel=1e-3)
    assert m0.slo == pytest.approx(len(fast) / answered)
    assert 5.0 <= m0.p50_ms <= 5.0 * 1.1          # bucket upper bound: within 10% above
    assert m0.max_ms == pytest.approx(150.0)
    assert m0.failures == skipped
    assert m0.coldstarts == len(slow)
    assert dict(m0.batches) == {4: 3, 8: 1}
    assert m0.batch_mean == pytest.approx(sum(batches) / len(batches))
    assert m0.queue == 7 and got.queue == 7
    assert m0.gpus == 1 and m0.name == "resnet0"
    assert m0.total == answered and m0.total_met == len(fast)
    assert got.failures == {describe(Status.CONTROLLER_SKIPPED): skipped}
    assert got.scheduler_stats["batches_planned"] == 12
    assert got.models_registered == len(ctl.models)

    gpus = {(g.worker_id, g.gpu_id): g for g in got.gpus}
    assert set(gpus) == {(0, 0), (0, 1)}
    g0, g1 = gpus[(0, 0)], gpus[(0, 1)]
    assert g1.infer_rate == pytest.approx(len(batches) / span, rel=1e-3)
    assert g1.request_rate == pytest.approx(sum(batches) / span, rel=1e-3)
    assert g1.busy == pytest.approx(len(batches) * 6 * MS / (span * SECOND), rel=1e-3)
    assert g1.outstanding == 1 and g0.outstanding == 0
    assert g0.loaded_models == 1
    assert g0.free_pages == g0.total_pages - ctl.models[0].num_pages
    assert g0.load_rate == pytest.approx(2 / span, rel=1e-3)
    assert g0.evict_rate == pytest.approx(1 / span, rel=1e-3)
    reading = ctl.workers[0].readings[1]
    assert g1.utilization == pytest.approx(reading.utilization)
    assert (g1.sm_clock_mhz, g1.temperature_c, g1.memory_total) == \
        (reading.sm_clock_mhz, reading.temperature_c, reading.memory_total)
    assert g0.health == "ok" and g0.name == "Fake GPU 0"
    sock.close()


def test_next_interval_starts_from_zero(system):
    ctl, pub, _ = system
    for _ in range(5):
        ctl.answer(1, Status.SUCCESS, 4 * MS)
    first = publish(ctl, pub)
    second = publish(ctl, pub)
    m1 = [m for m in first.models if m.model_id == 1][0]
    assert m1.rate > 0
    m1 = [m for m in second.models if m.model_id == 1][0]
    assert (m1.rate, m1.goodput, m1.slo, m1.p50_ms, m1.total) == (0.0, 0.0, -1.0, -1.0, 5)
    assert second.rate == 0.0 and second.slo == -1.0


def test_events_are_published(ctx, system):
    ctl, pub, address = system
    snaps = subscriber(ctx, address, tm.TOPIC_SNAPSHOT)
    events = subscriber(ctx, address, tm.TOPIC_EVENTS)
    connect(ctl, pub, snaps)
    # the events socket subscribed at the same time; make sure it is connected too
    for _ in range(200):
        pub.event("worker_joined", "probe", 0)
        publish(ctl, pub)
        if events.poll(100):
            break
    while events.poll(0):
        events.recv()
    ctl.load(0, 1, 2)
    pub.event("worker_lost", "Worker 0 lost", 0)
    publish(ctl, pub)
    seen = []
    while events.poll(2000):
        msg = tm.decode(events.recv())
        assert type(msg) is tm.Events
        seen.extend(msg.events)
        if any(e.kind == "worker_lost" for e in seen):
            break
    kinds = [e.kind for e in seen]
    assert kinds == ["load", "worker_lost"]
    assert "model 2" in seen[0].text and "W0-GPU1" in seen[0].text
    assert seen[1].worker_id == 0
    # a lost worker's caches are empty
    snap = next_snapshot(snaps, 0)
    assert all(g.loaded_models == 0 for g in snap.gpus)


def test_late_joiner_gets_full_snapshot(ctx, system):
    ctl, pub, address = system
    for mid in ctl.models:
        ctl.answer(mid, Status.SUCCESS, 3 * MS)
    for _ in range(3):
        publish(ctl, pub)
    late = subscriber(ctx, address, tm.TOPIC_SNAPSHOT, CONFLATE=1)
    msg = connect(ctl, pub, late)
    publish(ctl, pub)
    snap = next_snapshot(late, msg.seq)
    # nothing happened since the first interval, yet every model and GPU is there
    assert sorted(m.model_id for m in snap.models) == sorted(ctl.models)
    assert all(m.total == 1 for m in snap.models)
    assert len(snap.gpus) == sum(len(w.state.gpus) for w in ctl.workers)


def test_snapshot_is_built_in_chunks(system):
    ctl, pub, _ = system
    n = MODELS_PER_STEP * 2 + 5
    for mid in range(n):
        ctl.answer(mid, Status.SUCCESS, 3 * MS)
    ctl.advance(SECOND)
    calls = 0
    before = pub.last_snapshot
    while pub.last_snapshot is before:
        pub.maybe_publish(ctl.now)
        calls += 1
        assert calls < 100
    assert calls == 3      # one call per MODELS_PER_STEP models
    assert len(pub.last_snapshot.models) == n
    assert pub.last_snapshot.total == n


def test_slow_subscriber_does_not_block_the_publisher(ctx, system):
    ctl, pub, address = system
    for mid in range(2000):       # ~100 KB snapshots
        ctl.answer(mid, Status.SUCCESS, 3 * MS)
    slow = subscriber(ctx, address, b"", RCVHWM=1, RCVBUF=4096)
    connect(ctl, pub, slow)
    sent_before = pub.sent
    published = 300
    for _ in range(published):
        publish(ctl, pub)        # would hang (and time out) if a send blocked
    assert pub.sent - sent_before == published
    received = 0
    while slow.poll(500):
        slow.recv()
        received += 1
    assert 0 < received < published


def test_worker_health(system):
    ctl, pub, _ = system
    w = ctl.workers[0]
    assert {g.health for g in publish(ctl, pub).gpus} == {"ok"}
    w.alive = False
    lost = publish(ctl, pub).gpus
    assert {g.health for g in lost} == {"lost"}
    assert {(g.utilization, g.temperature_c) for g in lost} == {(-1.0, -1)}   # last readings are stale
    w.alive, w.joined = True, False          # answering again, not yet handed to the scheduler
    assert {g.health for g in publish(ctl, pub).gpus} == {"starting"}
    w.state = None                           # never answered: one row for the worker
    rows = publish(ctl, pub).gpus
    assert [(g.worker_id, g.gpu_id, g.health) for g in rows] == [(0, -1, "connecting")]


def test_scheduler_stats_failure_does_not_stop_publishing(system):
    ctl, pub, _ = system

    def broken():
        raise RuntimeError("bug")
    ctl.scheduler.stats = broken
    snap = publish(ctl, pub)
    assert snap.scheduler_stats == {"stats_error": 1.0} and snap.queue == -1


def test_decode_rejects_foreign_frames():
    with pytest.raises(tm.TelemetryError, match="version"):
        tm.decode(tm.TOPIC_SNAPSHOT + b"\x09" + b"\x90")
    with pytest.raises(tm.TelemetryError, match="topic"):
        tm.decode(b"what" + bytes([tm.TELEMETRY_VERSION]) + b"\x90")
    with pytest.raises(tm.TelemetryError, match="malformed"):
        tm.decode(tm.TOPIC_SNAPSHOT + bytes([tm.TELEMETRY_VERSION]) + b"\x93\x01")


def test_port_in_use_is_a_clear_error(ctx, system):
    ctl, pub, address = system
    port = int(address.rsplit(":", 1)[1])
    with pytest.raises(ValueError, match="cannot publish telemetry"):
        TelemetryPublisher(ctl, ctx, "127.0.0.1", port)


@pytest.mark.timeout(180)
def test_stream_of_a_real_run(ctx):
    """Snapshots and events of an emulated system agree with what its client saw."""
    import re

    from clockwork.local import LocalCluster
    gpus = 2
    with LocalCluster(gpus=gpus) as cluster:
        address = f"tcp://127.0.0.1:{cluster.telemetry_port}"
        snaps = subscriber(ctx, address, tm.TOPIC_SNAPSHOT)
        events = subscriber(ctx, address, tm.TOPIC_EVENTS)
        assert snaps.poll(60_000), "the controller published nothing"
        first = tm.decode(snaps.recv())
        while first.phase == "connecting":      # published before the worker had answered
            first = next_snapshot(snaps, first.seq)
        assert len(first.gpus) == gpus and first.phase in ("loading", "running")
        result = cluster.run_client("simple", ["--duration", "3"], timeout=120)
        assert result.returncode == 0, result.stdout
        m = re.search(r"answered=(\d+) succeeded=(\d+)", result.stdout)
        answered, succeeded = int(m.group(1)), int(m.group(2))
        assert answered > 0
        last = first
        while last.total < answered:                  # the client is done: totals catch up
            last = next_snapshot(snaps, last.seq)
        assert last.total == answered
        assert last.total_met <= succeeded
        assert sorted(mm.model_id for mm in last.models) == [0, 1]     # simple: 2 copies of resnet50
        assert {mm.name for mm in last.models} == {"resnet50"}
        assert sum(mm.total for mm in last.models) == answered
        assert len(last.gpus) == gpus and all(g.health == "ok" for g in last.gpus)
        assert {g.name for g in last.gpus} == {f"Emulated GPU {i}" for i in range(gpus)}
        assert all(g.sm_clock_mhz > 0 and g.memory_total > 0 for g in last.gpus)   # device readings
        seen = []
        while events.poll(0):
            seen.extend(tm.decode(events.recv()).events)
        kinds = [e.kind for e in seen]
        assert "model_registered" in kinds and "load" in kinds
        loaded = {e.model_id for e in seen if e.kind == "load"}
        assert loaded <= {0, 1} and loaded
