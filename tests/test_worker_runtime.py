"""WorkerRuntime on the emulated backend, driven with explicit times (no sockets, no sleeps)."""
import pytest

from clockwork.model.emulated import EmulatedBackend
from clockwork.model.format import load_spec
from clockwork.model.zoo import write_emulated_zoo
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.worker.memory import Arena, PageAllocator
from clockwork.worker.runtime import WorkerRuntime

PAGE = 16 * 1024 * 1024
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    write_emulated_zoo(d, profile="h200-tvm", log=lambda *a: None)   # timings the tests assume
    return d


@pytest.fixture(scope="module")
def r50(zoo):
    return load_spec(zoo / "resnet50")


class Harness:
    """A runtime plus a recording `send` and a hand-driven clock."""

    def __init__(self, zoo, gpus=2, pages=64, io=512 * MiB, workspace=512 * MiB):
        self.sent = []
        self.now = 1_000_000_000
        self.backend = EmulatedBackend(gpus, PAGE, pages, io, workspace)
        self.rt = WorkerRuntime(self.backend, zoo, self._send, PAGE, pages, io, workspace,
                                clock=lambda: self.now)
        self.ids = iter(range(1, 1 << 30))

    def _send(self, reply_to, msg, data):
        self.sent.append((reply_to, msg, list(data)))

    def act(self, cls, data=(), **kw):
        """Hand an action to the runtime at the current time; returns its action id."""
        aid = next(self.ids)
        if cls not in (s.GetWorkerState, s.Reset, s.ClearCache):
            kw.setdefault("earliest", self.now)
            kw.setdefault("latest", self.now + 10_000_000_000)
        self.rt.handle(cls(action_id=aid, **kw), list(data), "ctl", self.now)
        self.rt.advance(self.now)
        return aid

    def run(self, until=None):
        """Advance through every timer (up to `until`)."""
        while True:
            t = self.rt.next_time()
            if t is None or (until is not None and t > until):
                break
            self.now = max(self.now, t)
            self.rt.advance(self.now)
        if until is not None:
            self.now = max(self.now, until)
            self.rt.advance(self.now)

    def result(self, aid):
        found = [(m, d) for _, m, d in self.sent if getattr(m, "action_id", None) == aid]
        assert len(found) == 1, f"expected one result for A{aid}, got {found}"
        return found[0]

    def load_model(self, path="resnet50", model_id=0, copies=1, **kw):
        aid = self.act(s.LoadModelFromDisk, model_id=model_id, path=path, copies=copies, **kw)
        return self.result(aid)[0]

    def load_weights(self, model_id=0, gpu_id=0):
        aid = self.act(s.LoadWeights, model_id=model_id, gpu_id=gpu_id)
        self.run()
        return self.result(aid)[0]

    def state(self):
        return self.result(self.act(s.GetWorkerState))[0].state


def error(msg, status):
    assert isinstance(msg, s.ErrorResult), f"expected an ErrorResult({status.name}), got {msg}"
    assert msg.status == status, f"expected {status.name}, got {Status(msg.status).name}: {msg.message}"
    return msg


# ---------------------------------------------------------------- memory

def test_page_allocator_all_or_nothing():
    p = PageAllocator(10)
    a = p.alloc(7)
    assert len(set(a)) == 7 and p.free == 3
    assert p.alloc(4) is None and p.free == 3
    b = p.alloc(3)
    assert not set(a) & set(b) and p.free == 0
    p.release(a)
    assert p.free == 7


def test_arena_reuses_and_coalesces():
    a = Arena(4096)
    r1, r2, r3 = a.alloc(1000), a.alloc(1000), a.alloc(1000)
    assert a.alloc(2000) is None
    a.release(r2)
    assert a.alloc(2000) is None           # 1024 + 1024 free, not contiguous
    a.release(r1)                          # now r1+r2 is one 2048-byte hole
    r4 = a.alloc(2000)
    assert r4 is not None and r4.offset == 0
    a.release(r3)
    a.release(r4)
    assert a.used == 0 and a.alloc(4096) is not None


# ---------------------------------------------------------------- LoadModelFromDisk

def test_load_model_reports_profiled_info(zoo, r50):
    h = Harness(zoo)
    res = h.load_model(copies=2, model_id=5)
    assert isinstance(res, s.LoadModelFromDiskResult)
    assert [m.model_id for m in res.models] == [5, 6]
    m = res.models[0]
    assert m.input_size == r50.input_size and m.output_size == r50.output_size
    assert m.batch_sizes == r50.batch_sizes
    assert m.exec_ns == [r50.exec_ns[b] for b in r50.batch_sizes]
    assert m.weights_load_ns == r50.weights_load_ns
    assert m.num_pages == r50.num_pages(PAGE)
    assert res.received == h.now and res.begin <= res.end


def test_load_model_drops_big_and_slow_batches(zoo, r50):
    h = Harness(zoo)
    assert h.load_model(max_batch_size=4).models[0].batch_sizes == [b for b in r50.batch_sizes if b <= 4]
    limit = r50.exec_ns[8] - 1
    m = h.load_model(model_id=10, max_exec_ns=limit).models[0]
    assert m.batch_sizes == [b for b in r50.batch_sizes if r50.exec_ns[b] <= limit]


def test_load_model_confined_to_model_dir(zoo, tmp_path):
    import shutil
    models, outside = tmp_path / "models", tmp_path / "outside"
    shutil.copytree(zoo / "mlp", models / "mlp")
    shutil.copytree(zoo / "mlp", outside / "mlp")
    (models / "link").symlink_to(outside / "mlp")
    h = Harness(models)
    assert isinstance(h.load_model(path="mlp"), s.LoadModelFromDiskResult)
    for path in ("../outside/mlp", str(outside / "mlp"), "link"):
        msg = error(h.load_model(path=path, model_id=1), Status.LOAD_FAILED)
        assert "outside the model directory" in msg.message


def test_load_model_errors(zoo, r50, tmp_path):
    h = Harness(zoo)
    error(h.load_model(path="no-such-model"), Status.LOAD_FAILED)
    error(h.load_model(max_exec_ns=min(r50.exec_ns.values()) - 1), Status.LOAD_FAILED)
    error(h.load_model(copies=0), Status.LOAD_FAILED)
    h.load_model(model_id=0, copies=3)
    msg = error(h.load_model(model_id=2), Status.MODEL_EXISTS)
    assert "2" in msg.message
    assert h.rt.stats.pending == 0


def test_load_model_without_measurements_fails_clearly(zoo, tmp_path):
    import shutil
    d = tmp_path / "nomeas"
    shutil.copytree(zoo / "mlp", d)
    (d / "measurements.json").unlink()
    h = Harness(tmp_path)
    assert "measurements" in error(h.load_model(path="nomeas"), Status.LOAD_FAILED).message


def test_load_model_4000_copies_share_one_host_model(zoo):
    h = Harness(zoo, gpus=4)
    res = h.load_model(path="resnet18", copies=4000)
    assert [m.model_id for m in res.models] == list(range(4000))
    assert len({id(h.rt.models[i].kind) for i in range(4000)}) == 1
    assert len(h.state().models) == 4000
    # every copy is a usable model of its own
    assert isinstance(h.load_weights(model_id=3999, gpu_id=3), s.LoadWeightsResult)


# ---------------------------------------------------------------- LoadWeights / Evict

def test_load_weights_takes_pages_and_profiled_time(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    start = h.now
    res = h.load_weights()
    assert isinstance(res, s.LoadWeightsResult)
    assert res.begin == start and res.end - res.begin == r50.weights_load_ns == res.duration
    st = h.state()
    assert st.gpus[0].loaded_models == [0] and st.gpus[1].loaded_models == []
    assert st.gpus[0].free_pages == 64 - r50.num_pages(PAGE)


def test_not_enough_pages_and_no_automatic_eviction(zoo, r50):
    n = r50.num_pages(PAGE)
    h = Harness(zoo, pages=n + 1)
    h.load_model(copies=2)
    h.load_weights(model_id=0)
    msg = error(h.load_weights(model_id=1), Status.NOT_ENOUGH_PAGES)
    assert f"needs {n} pages" in msg.message
    assert h.state().gpus[0].loaded_models == [0]          # the worker evicted nothing
    h.act(s.EvictWeights, model_id=0, gpu_id=0)
    h.run()
    assert isinstance(h.load_weights(model_id=1), s.LoadWeightsResult)


def test_weights_already_present_and_evict_errors(zoo):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    error(h.load_weights(), Status.WEIGHTS_ALREADY_PRESENT)
    aid = h.act(s.EvictWeights, model_id=0, gpu_id=1)
    h.run()
    error(h.result(aid)[0], Status.WEIGHTS_NOT_PRESENT)
    aid = h.act(s.EvictWeights, model_id=0, gpu_id=0)
    h.run()
    assert isinstance(h.result(aid)[0], s.EvictWeightsResult)
    assert h.state().gpus[0].free_pages == 64


@pytest.mark.parametrize("cls", [s.LoadWeights, s.EvictWeights, s.Infer])
def test_unknown_model_and_invalid_gpu(zoo, cls):
    h = Harness(zoo)
    h.load_model()
    extra = {"batch_size": 1} if cls is s.Infer else {}
    error(h.result(h.act(cls, model_id=7, gpu_id=0, **extra))[0], Status.UNKNOWN_MODEL)
    error(h.result(h.act(cls, model_id=0, gpu_id=2, **extra))[0], Status.INVALID_GPU)
    error(h.result(h.act(cls, model_id=0, gpu_id=-1, **extra))[0], Status.INVALID_GPU)
    assert h.rt.stats.pending == 0


# ---------------------------------------------------------------- Infer

def infer(h, batch_size=1, data=(), model_id=0, gpu_id=0, **kw):
    return h.act(s.Infer, data, model_id=model_id, gpu_id=gpu_id, batch_size=batch_size, **kw)


def test_infer_stages_and_padding(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    earliest = h.now + 1_000_000
    frames = [bytes(r50.input_size), bytes(2 * r50.input_size)]
    aid = infer(h, 3, frames, earliest=earliest)
    h.run()
    res, data = h.result(aid)
    assert isinstance(res, s.InferResult)
    assert res.copy_input_begin >= earliest
    assert res.copy_input_begin <= res.copy_input_end <= res.exec_begin
    assert res.exec_end - res.exec_begin == res.exec_duration == r50.exec_ns[4]   # 3 runs as batch 4
    assert res.exec_end <= res.copy_output_begin <= res.copy_output_end
    assert res.gpu_clock > 0 and res.gpu_clock_before > 0
    assert len(data) == 1 and len(data[0]) == 3 * r50.output_size
    assert h.rt.stats.pending == 0 and h.rt.stats.infers == 1
    mem = h.rt.gpus[0].mem
    assert mem.io.used == 0 and mem.workspace.used == 0


def test_infer_generates_inputs_when_none_sent(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    aid = infer(h, 16)
    h.run()
    res, data = h.result(aid)
    assert isinstance(res, s.InferResult) and len(data[0]) == 16 * r50.output_size


def test_infers_on_one_gpu_do_not_overlap_exec(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    ids = [infer(h, 1) for _ in range(3)]
    h.run()
    res = [h.result(i)[0] for i in ids]
    for a, b in zip(res, res[1:]):
        assert b.exec_begin >= a.exec_end


@pytest.mark.parametrize("batch", [0, -1, 17])
def test_invalid_batch_size(zoo, batch):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    error(h.result(infer(h, batch))[0], Status.INVALID_BATCH_SIZE)


def test_batch_size_limit_follows_max_batch_size(zoo):
    h = Harness(zoo)
    h.load_model(max_batch_size=4)
    h.load_weights()
    error(h.result(infer(h, 5))[0], Status.INVALID_BATCH_SIZE)


@pytest.mark.parametrize("nbytes_of", [lambda n: n - 1, lambda n: n + 1, lambda n: 2 * n])
def test_invalid_input_size(zoo, r50, nbytes_of):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    msg = error(h.result(infer(h, 1, [bytes(nbytes_of(r50.input_size))]))[0], Status.INVALID_INPUT_SIZE)
    assert str(r50.input_size) in msg.message


def test_weights_not_present(zoo):
    h = Harness(zoo)
    h.load_model()
    aid = infer(h)
    h.run()
    assert "copy_input" in error(h.result(aid)[0], Status.WEIGHTS_NOT_PRESENT).message


def test_exec_while_weights_still_loading(zoo):
    h = Harness(zoo)
    h.load_model()
    h.act(s.LoadWeights, model_id=0, gpu_id=0)
    aid = infer(h)           # input copy may overlap the load; exec may not
    h.run()
    assert "still loading" in error(h.result(aid)[0], Status.WEIGHTS_NOT_PRESENT).message


def test_evict_during_infer_is_weights_changed(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    aid = infer(h)
    evict = h.act(s.EvictWeights, model_id=0, gpu_id=0, earliest=h.now + r50.exec_ns[1] // 2)
    h.run()
    assert isinstance(h.result(evict)[0], s.EvictWeightsResult)
    assert "exec" in error(h.result(aid)[0], Status.WEIGHTS_CHANGED).message
    assert h.rt.gpus[0].mem.io.used == 0


def test_evict_and_reload_between_input_copy_and_exec_is_weights_changed(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    start = h.now
    busy = infer(h)                                       # occupies exec for exec_ns[1]
    victim = infer(h, earliest=start + 100_000)          # input copied at +100us, exec waits
    h.act(s.EvictWeights, model_id=0, gpu_id=0, earliest=start + 200_000)
    h.act(s.LoadWeights, model_id=0, gpu_id=0, earliest=start + 300_000)
    h.run()
    error(h.result(busy)[0], Status.WEIGHTS_CHANGED)         # evicted during its exec
    error(h.result(victim)[0], Status.WEIGHTS_CHANGED)
    assert h.state().gpus[0].loaded_models == [0]        # the reload itself succeeded


def test_too_late_names_the_stage(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    # window already over when it arrives: the input copy misses it
    msg = error(h.result(infer(h, earliest=h.now - 2000, latest=h.now - 1000))[0], Status.ACTION_TOO_LATE)
    assert msg.message.startswith("copy_input")
    # behind a 5 ms exec, a 1 ms window for exec is impossible: fails at once, not at its end
    first = infer(h)
    second = infer(h, earliest=h.now + 100_000, latest=h.now + 1_000_000)
    h.run(until=h.now + 200_000)
    msg = error(h.result(second)[0], Status.ACTION_TOO_LATE)
    assert msg.message.startswith("exec")
    h.run()
    assert isinstance(h.result(first)[0], s.InferResult)
    assert h.rt.stats.pending == 0


@pytest.mark.parametrize("cls", [s.Infer, s.LoadWeights, s.EvictWeights, s.LoadModelFromDisk, s.ClearCache])
def test_earliest_absurdly_far_ahead_is_too_early(zoo, cls):
    from clockwork.worker.runtime import MAX_AHEAD_NS
    h = Harness(zoo)
    h.load_model()
    kw = {"ClearCache": {}, "LoadModelFromDisk": {"model_id": 5, "path": "mlp"},
          "Infer": {"model_id": 0, "gpu_id": 0, "batch_size": 1}}.get(cls.__name__, {"model_id": 0, "gpu_id": 0})
    aid = h.act(cls, earliest=h.now + MAX_AHEAD_NS + 1, latest=h.now + 2 * MAX_AHEAD_NS, **kw)
    assert "out of sync" in error(h.result(aid)[0], Status.ACTION_TOO_EARLY).message
    ok = h.act(cls, earliest=h.now + MAX_AHEAD_NS, latest=h.now + 2 * MAX_AHEAD_NS, **kw)
    assert not [m for _, m, _ in h.sent if m.action_id == ok]      # queued: waits for its earliest


def test_load_weights_too_late(zoo):
    h = Harness(zoo)
    h.load_model()
    aid = h.act(s.LoadWeights, model_id=0, gpu_id=0, earliest=h.now - 10, latest=h.now - 1)
    assert error(h.result(aid)[0], Status.ACTION_TOO_LATE).message.startswith("load_weights")
    assert h.state().gpus[0].free_pages == 64


def test_io_pool_exhausted(zoo, r50):
    per = r50.input_size + r50.output_size
    h = Harness(zoo, io=per + per // 2)
    h.load_model()
    h.load_weights()
    ok = infer(h)
    full = infer(h)          # its input copy comes while the first still holds its io
    h.run()
    assert isinstance(h.result(ok)[0], s.InferResult)
    assert "io pool" in error(h.result(full)[0], Status.IO_POOL_EXHAUSTED).message
    aid = infer(h)           # released: works again
    h.run()
    assert isinstance(h.result(aid)[0], s.InferResult)


def test_workspace_exhausted(zoo):
    h = Harness(zoo, workspace=4096)
    h.load_model()
    h.load_weights()
    aid = infer(h)
    h.run()
    assert "exec" in error(h.result(aid)[0], Status.WORKSPACE_EXHAUSTED).message
    assert h.rt.gpus[0].mem.io.used == 0 and h.rt.gpus[0].mem.workspace.used == 0


# ---------------------------------------------------------------- ClearCache / Reset / state

def test_clear_cache_frees_every_gpu_and_changes_weights(zoo, r50):
    h = Harness(zoo)
    h.load_model(copies=2)
    h.load_weights(0, 0)
    h.load_weights(1, 1)
    aid = infer(h)
    clear = h.act(s.ClearCache, earliest=h.now + 1000)
    h.run()
    assert isinstance(h.result(clear)[0], s.ClearCacheResult)
    error(h.result(aid)[0], Status.WEIGHTS_CHANGED)
    st = h.state()
    assert all(g.free_pages == g.total_pages and g.loaded_models == [] for g in st.gpus)
    assert len(st.models) == 2


def test_reset_drops_everything_silently(zoo):
    h = Harness(zoo)
    h.load_model(copies=2)
    h.load_weights()
    queued = infer(h, earliest=h.now + 1_000_000)
    running = infer(h)
    h.rt.advance(h.now)
    reset = h.act(s.Reset)
    h.run()
    assert not [m for _, m, _ in h.sent if m.action_id in (queued, running)]
    assert isinstance(h.result(reset)[0], s.ClearCacheResult)       # the ack
    st = h.state()
    assert st.models == [] and all(g.free_pages == g.total_pages for g in st.gpus)
    assert h.rt.stats.pending == 0 and h.rt.next_time() is None
    # and the worker is fully usable afterwards, with the same ids
    h.load_model(copies=2)
    h.load_weights()
    aid = infer(h)
    h.run()
    assert isinstance(h.result(aid)[0], s.InferResult)


def test_readings_fill_memory_from_accounting(zoo, r50):
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    r = h.rt.readings(h.now)
    assert [x.gpu_id for x in r] == [0, 1]
    assert r[0].memory_used == r50.num_pages(PAGE) * PAGE and r[1].memory_used == 0


# ---------------------------------------------------------------- ops of unknown end (CUDA-like)

class PollingBackend(EmulatedBackend):
    """Emulated timings, but every op's end is only revealed by poll(), as with CUDA events."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hidden = []

    def _hide(self, op):
        self.hidden.append((op.end, op))
        op.end = -1
        return op

    def load_weights(self, *a, **kw):
        return self._hide(super().load_weights(*a, **kw))

    def copy_input(self, *a):
        return self._hide(super().copy_input(*a))

    def execute(self, *a, **kw):
        return self._hide(super().execute(*a, **kw))

    def copy_output(self, *a):
        return self._hide(super().copy_output(*a))

    def poll(self, now):
        done = [(e, op) for e, op in self.hidden if e <= now]
        self.hidden = [(e, op) for e, op in self.hidden if e > now]
        for e, op in done:
            op.end = e
        return [op for _, op in done]

    def reset(self):
        self.hidden = []


def test_ops_completed_through_poll(zoo, r50):
    h = Harness(zoo)
    h.backend = h.rt.backend = PollingBackend(2, PAGE, 64, 512 * MiB, 512 * MiB)

    def drive(until):
        while h.now < until:
            h.now += 10_000
            h.rt.poll_backend(h.now)

    h.load_model()
    load = h.act(s.LoadWeights, model_id=0, gpu_id=0)
    assert h.rt.waiting_on_backend() and h.rt.next_time() is None
    drive(h.now + 3_000_000)
    assert isinstance(h.result(load)[0], s.LoadWeightsResult)
    a, b = infer(h, 2), infer(h, 1)
    drive(h.now + 30_000_000)
    ra, rb = h.result(a)[0], h.result(b)[0]
    assert ra.exec_duration == r50.exec_ns[2] and rb.exec_duration == r50.exec_ns[1]
    assert rb.exec_begin >= ra.exec_end                      # one exec at a time on the stream
    assert not h.rt.waiting_on_backend() and h.rt.stats.pending == 0
    # evict while an exec is in flight: its completion, learned through poll, is WEIGHTS_CHANGED
    c = infer(h)
    h.act(s.EvictWeights, model_id=0, gpu_id=0, earliest=h.now + 1_000_000)
    drive(h.now + 30_000_000)
    error(h.result(c)[0], Status.WEIGHTS_CHANGED)
    # Reset forgets ops in flight: nothing is reported for them
    reload = h.act(s.LoadWeights, model_id=0, gpu_id=0)
    drive(h.now + 3_000_000)
    assert isinstance(h.result(reload)[0], s.LoadWeightsResult)
    d = infer(h)
    assert h.rt.waiting_on_backend()
    h.act(s.Reset)
    drive(h.now + 30_000_000)
    assert not [m for _, m, _ in h.sent if m.action_id == d]
    assert not h.rt.waiting_on_backend()


class FlakyBackend(EmulatedBackend):
    """Raises from the device calls until told otherwise (a backend bug, a driver error)."""
    broken = True

    def load_weights(self, *a, **kw):
        if self.broken:
            raise RuntimeError("driver fell over")
        return super().load_weights(*a, **kw)

    def execute(self, *a, **kw):
        if self.broken:
            raise RuntimeError("driver fell over")
        return super().execute(*a, **kw)


def test_backend_exceptions_fail_the_action_and_leak_nothing(zoo):
    h = Harness(zoo)
    h.backend = h.rt.backend = FlakyBackend(2, PAGE, 64, 512 * MiB, 512 * MiB)
    h.load_model()
    msg = error(h.load_weights(), Status.RUNTIME_ERROR)
    assert "driver fell over" in msg.message
    assert h.state().gpus[0].free_pages == 64 and h.state().gpus[0].loaded_models == []
    h.backend.broken = False
    h.load_weights()
    h.backend.broken = True
    aid = infer(h)
    h.run()
    assert "exec" in error(h.result(aid)[0], Status.RUNTIME_ERROR).message
    mem = h.rt.gpus[0].mem
    assert mem.io.used == 0 and mem.workspace.used == 0
    assert h.rt.stats.pending == 0


def test_actions_leave_no_reference_cycles(zoo):
    """Per-action objects must be freed by reference counting: cyclic garbage would make the
    collector run (and pause the event loop) in proportion to the action rate."""
    import gc
    h = Harness(zoo)
    h.load_model(copies=2)
    h.run()
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            h.load_weights(model_id=1, gpu_id=1)
            infer(h, 3, model_id=1, gpu_id=1)
            infer(h, 17, model_id=1, gpu_id=1)                                 # invalid batch
            infer(h, model_id=1, gpu_id=1, earliest=h.now - 2, latest=h.now - 1)   # too late
            h.act(s.EvictWeights, model_id=1, gpu_id=1, earliest=h.now + 50_000_000)
            h.run()
            h.load_weights(model_id=1, gpu_id=1)
            h.act(s.EvictWeights, model_id=1, gpu_id=1)
            h.run()
        assert sum(isinstance(m, s.InferResult) for _, m, _ in h.sent) == 50
        h.sent.clear()
        assert gc.collect() == 0
    finally:
        gc.enable()


def _edited_model(zoo, tmp_path, change):
    """A copy of the mlp model directory with model.json changed by `change(meta)`."""
    import json
    import shutil
    shutil.copytree(zoo / "mlp", tmp_path / "bad")
    path = tmp_path / "bad" / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("change, message", [
    (lambda m: m["input"].update(shape=["x"]), "input.shape[0] must be an integer"),
    (lambda m: m["weights"].update(size=1 << 40), "need 65536 pages; a GPU's weights cache holds 64"),
    (lambda m: m["input"].update(shape=[200_000_000]), "in the 536870912-byte io pool"),
], ids=["non-numeric shape", "weights beyond the cache", "input beyond the io pool"])
def test_impossible_models_fail_to_load_with_one_line(zoo, tmp_path, change, message):
    h = Harness(_edited_model(zoo, tmp_path, change))
    msg = error(h.load_model(path="bad"), Status.LOAD_FAILED)
    assert message in msg.message and "\n" not in msg.message
    assert h.rt.stats.pending == 0 and len(h.rt.models) == 0


def test_a_load_that_raises_is_finished_once(zoo, monkeypatch):
    """Issue 9: a load failing with an unexpected exception was counted finished twice (once
    before the work, once by the executor's failure path): the pending count went to -1."""
    h = Harness(zoo)

    def boom(spec):
        raise RuntimeError("backend bug")

    monkeypatch.setattr(h.backend, "load_host_model", boom)
    msg = error(h.load_model(path="mlp"), Status.RUNTIME_ERROR)
    assert "backend bug" in msg.message
    assert h.rt.stats.pending == 0
    monkeypatch.undo()
    assert isinstance(h.load_model(path="mlp", model_id=1), s.LoadModelFromDiskResult)
    assert h.rt.stats.pending == 0


def test_an_op_callback_that_raises_fails_its_infer_once(zoo):
    """Same class as a load counted finished twice: an exception in an op's completion (here
    the GPU clock read as the output copy ends) must answer the Infer once (RUNTIME_ERROR),
    free its io and leave the pending count right, not escape the runtime unanswered."""
    h = Harness(zoo)
    h.load_model()
    h.load_weights()
    real = h.backend.gpu_clock_mhz
    calls = []

    def clock(gpu):
        calls.append(gpu)
        if len(calls) == 2:                  # the read when the output copy completes
            raise RuntimeError("nvml went away")
        return real(gpu)

    h.backend.gpu_clock_mhz = clock
    aid = infer(h)
    h.run()
    msg = error(h.result(aid)[0], Status.RUNTIME_ERROR)
    assert "nvml went away" in msg.message
    assert h.rt.stats.pending == 0 and h.rt.gpus[0].mem.io.used == 0
    h.backend.gpu_clock_mhz = real
    ok = infer(h)
    h.run()
    assert isinstance(h.result(ok)[0], s.InferResult) and h.rt.stats.pending == 0
