"""A real emulated worker process on a free 127.0.0.1 port, talked to through a DEALER."""
import collections
import os
import signal
import subprocess
import sys
import time

import msgspec
import pytest
import zmq
from click.testing import CliRunner

from clockwork.model import backend as backend_mod
from clockwork.model.format import load_spec
from clockwork.model.zoo import write_emulated_zoo
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.transport import sockets
from clockwork.worker.command import worker_command

pytestmark = pytest.mark.timeout(60)
PAGE = 16 * 1024 * 1024
CACHE_PAGES = 64
WAIT_S = 20.0


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    write_emulated_zoo(d, log=lambda *a: None)
    return d


@pytest.fixture
def worker(zoo, tmp_path, request):
    """(process, port, log path); the process is always killed, even if the test fails.
    Emulates 2 GPUs unless parametrized indirectly with another count."""
    gpus = getattr(request, "param", 2)
    port = sockets.free_port()
    log = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CLOCKWORK_CONFIG_FILE", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clockwork.worker.command", "--emulate", str(gpus), "--host", "127.0.0.1",
             "--port", str(port), "--model-dir", str(zoo), "--weights-cache", str(CACHE_PAGES * PAGE)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
            # as when started with `&` from a script: SIGINT ignored; the worker must still stop on it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        yield proc, port, log
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def dealer(worker):
    """The worker's controller link: it has sent the Reset handshake."""
    ctx = zmq.Context()
    sock = sockets.dealer(ctx, "127.0.0.1", worker[1])
    try:
        assert isinstance(call(sock, s.Reset(0))[0], s.ClearCacheResult)
        yield sock
    finally:
        sock.close(0)
        ctx.term()


_batched: dict = {}     # socket -> results of a ResultBatch not yet returned, in order


def recv_result(sock, want=None, timeout_s=WAIT_S):
    """The next message that is not a Heartbeat (or, with want=Heartbeat, the next heartbeat);
    the results of a ResultBatch one by one, in order."""
    held = _batched.setdefault(sock, collections.deque())
    deadline = time.monotonic() + timeout_s
    while True:
        if held and want is not s.Heartbeat:
            return held.popleft()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want.__name__ if want else 'result'} within {timeout_s}s")
        if not sockets.wait([sock], left):
            continue
        frames = sock.recv_multipart()
        if frames[0][:1] == s.FATAL_PREFIX:
            return frames[0], frames[1:]
        msg = s.decode(frames[0], s.RESULT_DECODER)
        if type(msg) is s.ResultBatch:
            held.extend(s.unbatch(msg, frames[1:]))
        elif (want is s.Heartbeat) == isinstance(msg, s.Heartbeat):
            return msg, frames[1:]


def call(sock, msg, data=()):
    sockets.send(sock, msg, list(data))
    return recv_result(sock)


def test_full_round_trip(worker, dealer, zoo):
    proc, port, _ = worker
    spec = load_spec(zoo / "resnet50")
    t0 = time.monotonic_ns()
    st, _ = call(dealer, s.GetWorkerState(1))
    assert isinstance(st, s.WorkerStateResult) and st.action_id == 1
    assert len(st.state.gpus) == 2 and st.state.page_size == PAGE
    assert all(g.total_pages == g.free_pages == CACHE_PAGES for g in st.state.gpus)
    assert t0 <= st.received <= st.sent <= time.monotonic_ns()      # same monotonic clock

    res, _ = call(dealer, s.LoadModelFromDisk(2, 0, 0, model_id=0, path="resnet50", copies=3))
    assert isinstance(res, s.LoadModelFromDiskResult)
    assert [m.model_id for m in res.models] == [0, 1, 2]
    assert res.models[0].input_size == spec.input_size

    res, _ = call(dealer, s.LoadWeights(3, 0, 0, model_id=1, gpu_id=1))
    assert isinstance(res, s.LoadWeightsResult) and res.end - res.begin == spec.weights_load_ns

    inputs = [bytes(spec.input_size), bytes(spec.input_size)]
    now = time.monotonic_ns()
    res, data = call(dealer, s.Infer(4, now, now + 5_000_000_000, model_id=1, gpu_id=1, batch_size=2), inputs)
    assert isinstance(res, s.InferResult), res
    assert res.exec_duration == spec.exec_ns[2]
    assert res.copy_input_begin >= now and res.exec_begin >= res.copy_input_end
    assert [len(f) for f in data] == [2 * spec.output_size]

    res, _ = call(dealer, s.Infer(5, 0, 0, model_id=0, gpu_id=0, batch_size=1))
    assert res.status == Status.WEIGHTS_NOT_PRESENT
    res, _ = call(dealer, s.Infer(6, 0, 0, model_id=9, gpu_id=0, batch_size=1))
    assert res.status == Status.UNKNOWN_MODEL
    res, _ = call(dealer, s.Infer(7, 0, 1, model_id=1, gpu_id=1, batch_size=1))
    assert res.status == Status.ACTION_TOO_LATE and res.action_tag == s.Infer.__struct_config__.tag

    st, _ = call(dealer, s.GetWorkerState(8))
    assert st.state.gpus[1].loaded_models == [1] and len(st.state.models) == 3
    assert proc.poll() is None


@pytest.mark.parametrize("worker", [64], indirect=True)
def test_64_gpus_4000_models_pipelined(worker, dealer, zoo):
    spec = load_spec(zoo / "mlp")
    res, _ = call(dealer, s.LoadModelFromDisk(1, 0, 0, model_id=0, path="mlp", copies=4000))
    assert len(res.models) == 4000
    for g in range(64):                                        # model g on gpu g, all in flight
        sockets.send(dealer, s.LoadWeights(100 + g, 0, 0, model_id=g, gpu_id=g))
    loads = [recv_result(dealer)[0] for _ in range(64)]
    assert all(isinstance(r, s.LoadWeightsResult) for r in loads)
    for i in range(640):
        g = i % 64
        sockets.send(dealer, s.Infer(1000 + i, 0, 0, model_id=g, gpu_id=g, batch_size=1 + i % 16))
    results = {}
    for _ in range(640):
        msg, data = recv_result(dealer)
        results[msg.action_id] = (msg, data)
    assert sorted(results) == list(range(1000, 1640))
    for aid, (msg, data) in results.items():
        b = 1 + (aid - 1000) % 16
        assert isinstance(msg, s.InferResult), msg
        assert len(data[0]) == b * spec.output_size
    st, _ = call(dealer, s.GetWorkerState(2))
    assert len(st.state.gpus) == 64 and len(st.state.models) == 4000
    assert all(g.loaded_models == [g.gpu_id] for g in st.state.gpus)


def test_heartbeats_once_a_controller_spoke(worker, dealer):
    hb, _ = recv_result(dealer, want=s.Heartbeat)
    assert [r.gpu_id for r in hb.readings] == [0, 1] and hb.pending == 0
    hb2, _ = recv_result(dealer, want=s.Heartbeat)
    assert hb2.sent > hb.sent


def test_state_queries_do_not_steal_heartbeats(worker, dealer):
    call(dealer, s.Reset(1))                                   # the controller announces itself
    ctx = zmq.Context()
    tool = sockets.dealer(ctx, "127.0.0.1", worker[1])
    try:
        assert isinstance(call(tool, s.GetWorkerState(2))[0], s.WorkerStateResult)
        for _ in range(2):                                     # heartbeats keep coming to the controller
            recv_result(dealer, want=s.Heartbeat)
        assert not tool.poll(0), "a heartbeat went to the tool"
    finally:
        tool.close(0)
        ctx.term()


def test_garbage_never_kills_the_worker(worker, dealer):
    proc = worker[0]
    garbage = [
        [b"garbage"],                                           # wrong version byte
        [s.VERSION_BYTE + b"\x93\x01\x02"],                     # truncated / unknown msgpack
        [b""],                                                  # empty header
        [s.encode(s.Heartbeat(1, 2))],                          # a result, not an action
        [s.VERSION_BYTE + b"\xc1" * 1000],                      # invalid msgpack bytes
        [s.VERSION_BYTE + msgspec.msgpack.encode([25, "one"]), b"x"],   # field of the wrong type
        [s.VERSION_BYTE + msgspec.msgpack.encode([99, 1])],            # unknown tag
    ]
    for frames in garbage:
        dealer.send_multipart(frames)
        reply, _ = recv_result(dealer)
        if frames[0][:1] not in (s.VERSION_BYTE, b""):
            assert reply.startswith(s.FATAL_PREFIX) and b"version mismatch" in reply
        else:
            assert isinstance(reply, s.ErrorResult) and reply.status == Status.BAD_MESSAGE, reply
            assert reply.action_id == -1 and reply.message
    dealer.send_multipart([s.fatal("I give up")])              # a peer's fatal text: logged, not answered
    res, _ = call(dealer, s.GetWorkerState(42))
    assert isinstance(res, s.WorkerStateResult) and res.action_id == 42
    res, _ = call(dealer, s.LoadModelFromDisk(43, 0, 0, model_id=0, path="../../etc"))
    assert res.status == Status.LOAD_FAILED
    res, _ = call(dealer, s.Infer(44, 0, 0, model_id=0, gpu_id=0, batch_size=1), [b"x" * 3])
    assert res.status == Status.UNKNOWN_MODEL
    assert proc.poll() is None


def test_replies_go_to_each_sender(worker, dealer):
    ctx = zmq.Context()
    other = sockets.dealer(ctx, "127.0.0.1", worker[1])
    try:
        sockets.send(other, s.GetWorkerState(100))
        sockets.send(dealer, s.GetWorkerState(200))
        assert recv_result(other)[0].action_id == 100
        assert recv_result(dealer)[0].action_id == 200
    finally:
        other.close(0)
        ctx.term()


def test_reset_then_state_is_empty(worker, dealer):
    call(dealer, s.LoadModelFromDisk(1, 0, 0, model_id=0, path="mlp", copies=2))
    ack, _ = call(dealer, s.Reset(2))
    assert isinstance(ack, s.ClearCacheResult) and ack.action_id == 2
    st, _ = call(dealer, s.GetWorkerState(3))
    assert st.action_id == 3 and st.state.models == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_cleanly(worker, dealer, sig):
    proc, _, log = worker
    call(dealer, s.GetWorkerState(1))
    proc.send_signal(sig)
    assert proc.wait(timeout=WAIT_S) == 0
    text = log.read_text()
    assert "Received A1:GetWorkerState" in text and "Worker stopped" in text


def test_cli_help_and_missing_backend(tmp_path, monkeypatch):
    # hermetic: the real cuda backend may exist and (on a GPU host) would start serving
    monkeypatch.setitem(backend_mod.BACKENDS, "cuda", "clockwork.model._absent_backend:Nothing")
    r = CliRunner().invoke(worker_command, ["--help"])
    assert r.exit_code == 0 and "--emulate" in r.output and "--weights-cache" in r.output
    r = CliRunner().invoke(worker_command, ["--model-dir", str(tmp_path), "--port", str(sockets.free_port()),
                                            "--host", "127.0.0.1"])
    assert r.exit_code == 1 and "not available" in r.output and "--emulate" in r.output, r.output
    r = CliRunner().invoke(worker_command, ["--emulate", "1", "--weights-cache", "lots"])
    assert r.exit_code == 2 and "not a size" in r.output


def test_port_in_use_is_a_clear_error(zoo):
    ctx = zmq.Context()
    port = sockets.free_port()
    holder = sockets.router(ctx, "127.0.0.1", port)
    try:
        r = subprocess.run([sys.executable, "-m", "clockwork.worker.command", "--emulate", "1",
                            "--host", "127.0.0.1", "--port", str(port), "--model-dir", str(zoo)],
                           capture_output=True, text=True, timeout=WAIT_S)
        assert r.returncode == 1 and "cannot listen" in r.stderr and "Traceback" not in r.stderr
    finally:
        holder.close(0)
        ctx.term()


def test_stats_line_counts_and_resets(zoo):
    from clockwork.model.emulated import EmulatedBackend
    from clockwork.worker.runtime import WorkerRuntime
    from clockwork.worker.server import WorkerServer
    backend = EmulatedBackend(1, PAGE, CACHE_PAGES, 1 << 20, 1 << 20)
    rt = WorkerRuntime(backend, zoo, None, PAGE, CACHE_PAGES, 1 << 20, 1 << 20)
    ctx = zmq.Context()
    server = WorkerServer(rt, "127.0.0.1", sockets.free_port(), log=lambda *a: None, ctx=ctx)
    try:
        now = time.monotonic_ns()
        rt.handle(s.Infer(1, 0, 0, model_id=3, gpu_id=0, batch_size=1), [], b"nobody", now)
        rt.handle(s.Infer(2, 0, 0, model_id=3, gpu_id=0, batch_size=1), [], b"nobody", now)
        line = server.stats_line()
        assert "Errors=2" in line and "unknown model=2" in line
        assert "Errors=0" in server.stats_line() and "unknown model" not in server.stats_line()
    finally:
        server.close()
        ctx.term()


def test_only_the_controller_link_is_obeyed(worker, dealer):
    """Issue 9: a peer that sent one valid action used to become the peer the worker
    heartbeated to, so the real controller declared the worker lost. Now any action but
    GetWorkerState from a peer that did not send Reset is refused and changes nothing."""
    call(dealer, s.LoadModelFromDisk(1, 0, 0, model_id=0, path="mlp"))
    assert isinstance(call(dealer, s.LoadWeights(2, 0, 0, model_id=0, gpu_id=0))[0], s.LoadWeightsResult)
    ctx = zmq.Context()
    stray = sockets.dealer(ctx, "127.0.0.1", worker[1])
    try:
        for i, action in enumerate([s.EvictWeights(10, 0, 0, model_id=0, gpu_id=0),
                                    s.EvictWeights(11, 0, 0, model_id=99, gpu_id=0),
                                    s.ClearCache(12), s.Infer(13, 0, 0, 0, 0, 1),
                                    s.LoadModelFromDisk(14, 0, 0, model_id=5, path="mlp")]):
            res, _ = call(stray, action)
            assert isinstance(res, s.ErrorResult) and res.status == Status.NOT_CONTROLLER, res
            assert res.action_id == action.action_id and "Reset" in res.message
        assert isinstance(call(stray, s.GetWorkerState(20))[0], s.WorkerStateResult)   # read-only: fine
        for _ in range(3):                                     # heartbeats still come to the controller
            recv_result(dealer, want=s.Heartbeat)
        assert not stray.poll(0), "the stray peer got a heartbeat"
        st, _ = call(dealer, s.GetWorkerState(3))              # nothing changed
        assert [m.model_id for m in st.state.models] == [0] and st.state.gpus[0].loaded_models == [0]
        res, _ = call(dealer, s.Infer(4, 0, 0, model_id=0, gpu_id=0, batch_size=1))
        assert isinstance(res, s.InferResult)
    finally:
        stray.close(0)
        ctx.term()


def test_a_reset_takes_the_worker_over_and_tells_the_old_controller(worker, dealer):
    ctx = zmq.Context()
    new = sockets.dealer(ctx, "127.0.0.1", worker[1])
    try:
        assert isinstance(call(new, s.Reset(1))[0], s.ClearCacheResult)
        notice, _ = recv_result(dealer)
        assert notice.status == Status.NOT_CONTROLLER and notice.action_id == -1
        res, _ = call(dealer, s.ClearCache(2))                 # the old link is refused from now on
        assert res.status == Status.NOT_CONTROLLER
        recv_result(new, want=s.Heartbeat)
        assert isinstance(call(new, s.ClearCache(3))[0], s.ClearCacheResult)
    finally:
        new.close(0)
        ctx.term()


def test_a_controller_resets_a_worker_that_refuses_it():
    """A worker that refuses an action (NOT_CONTROLLER) without having been taken over (a new
    process, or a re-made connection, received actions queued before the controller's Reset)
    must be probed and reset again, not given up as if another controller had taken it.
    A raw ROUTER plays that worker: it refuses the first GetWorkerState, then answers."""
    import threading
    from clockwork.config import load_config
    from clockwork.controller.server import Controller
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    ctl = Controller(load_config(), [f"127.0.0.1:{port}"], client_port=sockets.free_port(),
                     telemetry_port=0, out=lambda *_: None)
    thread = threading.Thread(target=ctl.run, daemon=True)
    thread.start()
    try:
        seen = []
        deadline = time.monotonic() + WAIT_S
        while sum(cls is s.GetWorkerState for cls in seen) < 2 and time.monotonic() < deadline:
            if not fake.poll(50):
                continue
            ident, header = fake.recv_multipart()[:2]
            msg = s.decode(header, s.ACTION_DECODER)
            for msg, _ in s.unbatch(msg, []) if type(msg) is s.ActionBatch else [(msg, [])]:
                seen.append(type(msg))
                if type(msg) is s.GetWorkerState:
                    fake.send_multipart([ident, s.encode(s.ErrorResult(
                        msg.action_id, 25, Status.NOT_CONTROLLER, "send Reset first", 1, 2))])
        assert seen.count(s.GetWorkerState) >= 2, seen      # probed again after the refusal
        assert seen[:2] == [s.Reset, s.GetWorkerState] and s.Reset in seen[2:], seen
    finally:
        ctl.stop()
        thread.join(WAIT_S)
        fake.close(0)
        ctx.term()
