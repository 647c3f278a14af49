"""One clock boundary: every timestamp that crosses between the controller and a worker goes
through ClockSync.action_to_worker / result_to_controller, which return new structs. Tested at
the codec level (every field of every message) and with workers whose clocks are skewed and
drift, in the simulator, with a scripted scheduler and with INFER4: the outcome must be what it
is with synchronised clocks, and a conversion that is off or reversed makes these fail."""
import msgspec
import pytest

from clockwork.controller.scheduler import Scheduler
from clockwork.controller.simulator import MS, SECOND, Simulator, model_info, models_from_profile
from clockwork.status import Status
from clockwork.transport import schema
from clockwork.transport.clocksync import ClockSync
from clockwork.transport.schema import ErrorResult, Infer, InferResult

pytestmark = pytest.mark.timeout(120)

# timestamps in worker time, per result type (durations, clocks, ids are not times)
RESULT_TIMES = {
    "InferResult": {"received", "sent", "copy_input_begin", "copy_input_end", "exec_begin",
                    "exec_end", "copy_output_begin", "copy_output_end"},
    "LoadWeightsResult": {"received", "sent", "begin", "end"},
    "EvictWeightsResult": {"received", "sent", "begin", "end"},
    "LoadModelFromDiskResult": {"received", "sent", "begin", "end"},
    "ClearCacheResult": {"received", "sent"},
    "WorkerStateResult": {"received", "sent"},
    "ErrorResult": {"received", "sent"},
    "Heartbeat": {"sent"},
}
OFFSET = 7_000_000_000          # worker clock 7 s ahead


def _sync(offset=OFFSET):
    c = ClockSync()
    c.add(1000, 1000 + offset + 10, 1000 + offset + 20, 1030)     # rtt 20, offset exact
    assert c.offset == offset
    return c


def _filled(cls):
    """An instance of `cls` with a distinct value in every int field."""
    kw = {}
    for i, f in enumerate(msgspec.structs.fields(cls)):
        if f.type is int:
            kw[f.name] = 10_000_000_000 + 1000 * i
        elif f.default is not msgspec.NODEFAULT:
            continue
        elif f.name == "state":
            kw[f.name] = schema.WorkerState(1, [], [])
        elif f.name == "message":
            kw[f.name] = ""
        else:
            kw[f.name] = []
    return cls(**kw)


@pytest.mark.parametrize("cls", schema.RESULTS, ids=lambda c: c.__name__)
def test_every_result_timestamp_comes_back_in_controller_time(cls):
    c = _sync()
    r = _filled(cls)
    before = msgspec.structs.asdict(r)
    out = c.result_to_controller(r)
    assert out is not r and msgspec.structs.asdict(r) == before       # a new struct
    times = RESULT_TIMES[cls.__name__]
    for name, value in msgspec.structs.asdict(out).items():
        expected = before[name] - OFFSET if name in times else before[name]
        assert value == expected, name


@pytest.mark.parametrize("cls", schema.ACTIONS, ids=lambda c: c.__name__)
def test_every_action_window_leaves_in_worker_time(cls):
    c = _sync()
    a = _filled(cls)
    before = msgspec.structs.asdict(a)
    out = c.action_to_worker(a)
    assert msgspec.structs.asdict(a) == before         # the scheduler's copy is untouched
    for name, value in msgspec.structs.asdict(out).items():
        expected = before[name] + OFFSET if name in ("earliest", "latest") else before[name]
        assert value == expected, name


def test_an_error_made_by_the_controller_keeps_its_zero_times():
    err = ErrorResult(1, 23, Status.WORKER_LOST, "lost")
    assert _sync().result_to_controller(err) == err


# ---------------------------------------------------------------- skewed and drifting workers

class Periodic(Scheduler):
    """Sends an Infer every 10 ms with a 1 ms window starting 2 ms after sending."""
    name = "periodic"

    def __init__(self, config, clock, out, until=3 * SECOND):
        super().__init__(config, clock, out)
        self.until = until
        self.next = 0
        self.sent = {}
        self.results = []

    def on_request(self, req):
        pass

    def tick(self):
        now = self.clock()
        if now >= self.next and now < self.until:
            aid = next(self.out.action_ids)
            a = Infer(aid, now + 2 * MS, now + 3 * MS, 0, 0, 1)
            self.sent[aid] = (a.earliest, a.latest)
            self.out.send_action(0, a)
            self.next = now + 10 * MS
        return self.next if self.next < self.until else None

    def on_result(self, worker_id, action, result, data):
        self.results.append((self.clock(), action, result))


LATENCY = 50_000
SLACK = 100_000
WORKER_CLOCKS = [(OFFSET, 0.0), (-OFFSET, 0.0), (OFFSET, 100.0), (-OFFSET, -100.0)]


@pytest.mark.parametrize("worker_clock", WORKER_CLOCKS, ids=str)
def test_actions_start_inside_their_window_in_controller_time(worker_clock):
    """1 ms windows, a worker clock 7 s off and (some runs) drifting 100 ppm, 0.3 ms over the run:
    every Infer runs, starting inside the window it was given, read back in controller time."""
    sched = None

    def factory(config, clock, out):
        nonlocal sched
        sched = Periodic(config, clock, out)
        return sched
    sim = Simulator(factory, [model_info(0, {1: 1 * MS})], preload=True, latency=LATENCY,
                    worker_clock=worker_clock)
    sim.run()
    assert len(sched.results) == 300
    for now, action, result in sched.results:
        assert type(result) is InferResult, result
        earliest, latest = sched.sent[action.action_id]
        assert (action.earliest, action.latest) == (earliest, latest)   # not rewritten in place
        # When it really started (simulated time: the result arrives one network delay after
        # the end of the 1 ms exec) is inside its window, and the result says so in controller
        # time, both to within the clock estimate's error: the drift since its best sample
        # (100 ppm of at most the 640 ms its window spans) and half a round trip.
        began = now - LATENCY - 1 * MS
        assert earliest - SLACK <= began <= latest + SLACK
        assert abs(result.exec_begin - began) <= SLACK


def _infer4_outcome(worker_clock):
    models = models_from_profile("h200", ["resnet50"], copies=4)
    sim = Simulator("infer4", models, workers=2, gpus=2, noise=0.05, seed=5,
                    worker_clock=worker_clock)
    sim.poisson(rate=1500, duration=2 * SECOND)
    sim.run()
    assert not sim.unanswered()
    ok = sim.with_status(Status.SUCCESS)
    return len(sim.requests), len(ok), sum(1 for x in ok if x.time <= x.req.deadline), sim


@pytest.mark.parametrize("worker_clock", WORKER_CLOCKS, ids=str)
def test_infer4_with_skewed_and_drifting_worker_clocks(worker_clock):
    """INFER4 plans in controller time; the windows it sends and the exec_end it reads back must
    cross the clock boundary correctly, or Infers fail ACTION_TOO_LATE, wait seconds, or the GPU's
    predicted free time goes seconds off."""
    n, ok, met, sim = _infer4_outcome(worker_clock)
    assert ok == met == n, sim.summary()
    assert not sim.errors


# ---------------------------------------------------------------- end to end

@pytest.mark.timeout(180)
@pytest.mark.parametrize("offset", [OFFSET, -OFFSET])
def test_a_worker_whose_clock_is_seconds_off_serves_every_request(tmp_path, offset):
    """Real processes: an emulated worker whose clock reads 7 s more (or less) than the
    controller's. Every window reaches it in its own clock and every result comes back in the
    controller's, so requests succeed as with synchronised clocks; with the controller's
    conversion switched off or reversed they fail ACTION_TOO_LATE, or wait seconds and time out."""
    from clockwork.client.api import Client
    from clockwork.local import LocalCluster
    conf = tmp_path / "skew.toml"
    conf.write_text(f"[worker]\nemulated_clock_offset_ns = {offset}\n")
    with LocalCluster(gpus=1, config_file=conf) as cluster:
        client = Client(cluster.address, log=lambda *_: None, timeout_s=30)
        try:
            mid, _, _ = client.load_model("resnet50", copies=1)
            answers = []
            for _ in range(40):
                client.infer_async(mid, lambda r, d, lat: answers.append(r.status), timeout_s=30)
                client.poll(0.01)
            assert client.drain(30) == 0
            assert answers == [Status.SUCCESS] * 40, answers
        finally:
            client.close()
