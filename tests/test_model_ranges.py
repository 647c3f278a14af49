"""Copies of one model as one range of ids (issue 14, a million instances): clockwork.id_ranges,
the worker runtime's instances, the compact LoadModelFromDiskResult and the controller's
ModelRegistry, with the older one-ModelInfo-per-copy answer still understood both ways."""
from pathlib import Path

import pytest

from clockwork.controller.model_loading import answered_models
from clockwork.controller.model_registry import ModelRegistry
from clockwork.id_ranges import IdRanges
from clockwork.limits import MAX_COPIES
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.worker.runtime import ModelInstance

from test_worker_runtime import Harness, error, zoo  # noqa: F401  (zoo: the module fixture)

pytestmark = pytest.mark.timeout(120)


def info(mid, pages=3, src="zoo/resnet50"):
    return s.ModelInfo(mid, src, 100, 10, 1 << 20, pages, [1, 2, 4], [10, 15, 25], 7, [3], "float32", [1],
                       "float32")


# ---------------------------------------------------------------- IdRanges

def test_id_ranges_find_overlap_and_ids():
    r = IdRanges()
    r.add(10, 5, "a")           # 10..14
    r.add(0, 3, "b")            # 0..2
    r.add(20, 1, "c")
    assert [r.find(i) for i in (0, 2, 3, 9, 10, 14, 15, 20, 21, -1)] == [
        (0, "b"), (0, "b"), None, None, (10, "a"), (10, "a"), None, (20, "c"), None, None]
    assert len(r) == 9 and 14 in r and 15 not in r
    assert list(r.ids()) == [0, 1, 2, 10, 11, 12, 13, 14, 20]
    assert list(r.ids(12)) == [12, 13, 14, 20] and list(r.ids(3)) == [10, 11, 12, 13, 14, 20]
    assert r.overlap(3, 7) is None and r.overlap(3, 8) == 10 and r.overlap(14, 3) == 14
    assert r.overlap(15, 5) is None and r.overlap(1, 100) == 1
    for first, count in ((12, 1), (8, 3), (14, 6), (0, 100)):
        with pytest.raises(ValueError, match="already exists"):
            r.add(first, count, "x")
    assert len(r) == 9            # a refused range leaves nothing behind
    c = r.copy()
    c.add(3, 7, "d")
    assert 3 in c and 3 not in r


# ---------------------------------------------------------------- the worker runtime

def test_runtime_compact_answer_and_lazy_instances(zoo):  # noqa: F811
    h = Harness(zoo, gpus=2)
    res = h.load_model(path="resnet18", model_id=100, copies=1_000_000, compact=True)
    assert isinstance(res, s.LoadModelFromDiskResult)
    assert res.copies == 1_000_000 and len(res.models) == 1 and res.models[0].model_id == 100
    assert len(h.rt.models) == 1_000_000 and len(h.rt.models._made) == 0   # nothing per copy yet
    # any copy is a model of its own: last, middle; one past the end is not
    for mid in (1_000_099, 500_000):
        assert isinstance(h.load_weights(model_id=mid, gpu_id=1), s.LoadWeightsResult)
    assert h.rt.models[500_000].id == 500_000 and isinstance(h.rt.models[500_000], ModelInstance)
    assert len(h.rt.models._made) == 2
    error(h.load_weights(model_id=1_000_100), Status.UNKNOWN_MODEL)
    error(h.load_weights(model_id=99), Status.UNKNOWN_MODEL)
    # ranges may not overlap, from either side
    assert "1000099" in error(h.load_model(path="mlp", model_id=1_000_099, copies=5), Status.MODEL_EXISTS).message
    assert "100 " in error(h.load_model(path="mlp", model_id=50, copies=51), Status.MODEL_EXISTS).message + " "
    assert isinstance(h.load_model(path="mlp", model_id=50, copies=50, compact=True), s.LoadModelFromDiskResult)
    assert isinstance(h.load_model(path="mlp", model_id=1_000_100, copies=1), s.LoadModelFromDiskResult)
    assert h.rt.models[1_000_100].kind is not h.rt.models[100].kind
    assert h.rt.models[60].kind.info.source.endswith("mlp") and h.rt.models[99].kind.info.source.endswith("mlp")


def test_runtime_lists_every_copy_for_an_older_controller(zoo):  # noqa: F811
    h = Harness(zoo)
    res = h.load_model(path="mlp", model_id=7, copies=4)           # compact not asked for
    assert res.copies == 0 and [m.model_id for m in res.models] == [7, 8, 9, 10]
    assert all(s.ModelInfo(**{**_fields(m), "model_id": 7}) == res.models[0] for m in res.models)
    st = h.state()
    assert [m.model_id for m in st.models] == [7, 8, 9, 10] and st.models == res.models
    h.act(s.Reset)
    assert len(h.rt.models) == 0 and h.state().models == []


def test_runtime_copies_limit(zoo):  # noqa: F811
    h = Harness(zoo)
    msg = error(h.load_model(path="mlp", copies=MAX_COPIES + 1, compact=True), Status.LOAD_FAILED)
    assert str(MAX_COPIES) in msg.message and len(h.rt.models) == 0


def test_backends_that_prepare_instances_still_see_every_copy(zoo):  # noqa: F811
    """The CUDA backend captures each copy's graphs at LoadModelFromDisk (prepare_instance):
    copies kept as a range must still be prepared one by one where a backend does that."""
    from clockwork.model.emulated import EmulatedBackend

    class Preparing(EmulatedBackend):
        def __init__(self, *a):
            super().__init__(*a)
            self.prepared = []

        def prepare_instance(self, hm, instance):
            self.prepared.append(instance)

    h = Harness(zoo)
    h.rt.backend = h.backend = Preparing(2, h.rt.page_size, 64, 512 << 20, 512 << 20)
    h.load_model(path="mlp", model_id=3, copies=5, compact=True)
    assert h.backend.prepared == [3, 4, 5, 6, 7]


def _fields(m):
    return {f: getattr(m, f) for f in m.__struct_fields__}


# ---------------------------------------------------------------- the controller's registry

def test_registry_reads_like_a_dict_of_one_info_per_id():
    reg = ModelRegistry()
    reg.add_copies(info(10), 1000)
    reg.add_copies(info(0, pages=5, src="zoo/mlp"), 2)
    assert len(reg) == 1002 and 10 in reg and 1009 in reg and 1010 not in reg and 2 not in reg
    assert "10" not in reg and reg.get("10") is None and reg.get(None) is None
    m = reg[537]
    assert m.model_id == 537 and m.num_pages == 3 and reg[537] is m          # made once, kept
    assert reg.get(1010) is None and reg.get(5, "no") == "no"
    with pytest.raises(KeyError):
        reg[1010]
    assert list(reg)[:4] == [0, 1, 10, 11] and list(reg.ids(1008)) == [1008, 1009]
    items = list(reg.items())
    assert [k for k, _ in items] == list(reg) and all(k == v.model_id for k, v in items)
    assert items[1][1].source == "zoo/mlp" and items[2][1].source == "zoo/resnet50"
    assert reg.total_pages() == 1000 * 3 + 2 * 5 == sum(v.num_pages for v in reg.values())
    assert [k for k, _ in reg.items(1008)] == [1008, 1009] and [k for k, _ in reg.items(2)] == list(range(10, 1010))
    assert len(reg._made) == 1                  # iterating made nothing to keep
    assert dict(reg) == {k: v for k, v in items}


def test_registry_writes_and_copies():
    reg = ModelRegistry({3: info(3), 4: info(4)})
    assert list(reg) == [3, 4]
    assert reg.setdefault(4, info(4, pages=9)).num_pages == 3                  # present: unchanged
    assert reg.setdefault(9, info(9, pages=9)).num_pages == 9 and reg[9].num_pages == 9
    reg[3] = info(3, pages=1)                                                   # replaces
    assert reg[3].num_pages == 1
    c = reg.copy()
    c.add_copies(info(100), 10)
    assert 105 in c and 105 not in reg
    new = ModelRegistry()
    new.add_copies(info(100), 10)
    reg.update(new)
    assert reg[105].model_id == 105 and len(reg) == len(c) == 13
    with pytest.raises(ValueError, match="already exists"):
        reg.add_copies(info(104), 3)


def test_older_workers_list_of_copies_becomes_ranges():
    reg = ModelRegistry()
    reg.add_list([info(0), info(1), info(2), info(3, pages=4), info(4, pages=4), info(5)])
    assert len(reg._ranges._firsts) == 3                                        # 0..2, 3..4, 5
    assert [reg[i].num_pages for i in range(6)] == [3, 3, 3, 4, 4, 3]


def test_answered_models_checks_the_ids():
    def res(models, copies=0):
        return s.LoadModelFromDiskResult(1, 0, 0, 0, 0, models, copies)
    reg = answered_models(res([info(5)], 1_000_000), 5, 1_000_000)
    assert len(reg) == 1_000_000 and reg[1_000_004].model_id == 1_000_004
    legacy = answered_models(res([info(5), info(6), info(7)]), 5, 3)
    assert list(legacy) == [5, 6, 7] and legacy[6] == info(6)
    for bad in (res([info(5)], 3), res([info(6)], 4), res([info(5), info(6)], 4), res([], 4),
                res([info(5), info(7), info(8), info(9)]), res([info(5)] * 4), res([info(5)])):
        assert answered_models(bad, 5, 4) is None, bad


# ---------------------------------------------------------------- a trace over more instances than rows

def test_azure_spreads_each_trace_row_over_a_block_of_instances(tmp_path):
    """`azure --instances N` with N above the trace's rows: every row's requests go to its own
    block of instances at random, so all N are registered (as ranges) and many more than the
    rows are asked for; each request is answered once."""
    from collections import defaultdict

    from clockwork.client.azure import row_blocks, write_synthetic_trace
    from clockwork.sim import config as sim_config
    from clockwork.sim.run import Simulation

    assert list(row_blocks(3, 10)) == [0, 4, 7, 10] and list(row_blocks(4, 4)) == [0, 1, 2, 3, 4]
    write_synthetic_trace(tmp_path / "trace", functions=20, mean_rate_per_min=12_000)
    cfg = sim_config.load(None)
    cfg.profile, cfg.workers, cfg.gpus, cfg.duration_s, cfg.log_dir = "h200-fp32", 2, 2, 2.0, str(tmp_path / "logs")
    cfg.base["controller"]["max_models"] = cfg.base["controller"]["max_models_per_client"] = 20_000
    cfg.workload = "azure"
    cfg.workload_args = ["--instances=20000", "--load_factor=0.5", f"--trace_dir={tmp_path / 'trace'}"]
    sim = Simulation(cfg, out=lambda *_: None)
    oc = sim.run()
    assert len(sim.engine.models) == 20_000 == len(sim.controller.models)
    assert oc.sent > 200 and oc.answered == oc.sent and oc.duplicates == 0
    rows = Path(tmp_path / "logs", "clockwork_request_log.tsv").read_text().splitlines()
    head = rows[0].split("\t")
    by_row = defaultdict(set)
    for r in rows[1:]:
        f = dict(zip(head, r.split("\t")))
        by_row[f["user_id"]].add(f["model_id"])
    assert len(by_row) <= 20 < sum(len(ids) for ids in by_row.values())
    assert max(len(ids) for ids in by_row.values()) > 50          # a busy row's block: 1,000 instances
    blocks = [ids for ids in by_row.values()]
    assert all(not a & b for i, a in enumerate(blocks) for b in blocks[i + 1:])   # rows do not share


def test_infer4_on_a_registry_keeps_only_what_it_serves():
    """INFER4 given the controller's registry (as Controller._start_scheduling does) makes state
    only for the models asked for, also when a worker rejoins listing every instance."""
    import itertools

    from clockwork.controller.scheduler import Request
    from clockwork.controller.schedulers import make_scheduler

    from test_sched_infer4 import Clock, Recorder, worker

    reg = ModelRegistry()
    reg.add_copies(info(0, pages=1), 100_000)
    clock, out = Clock(), Recorder()
    sched = make_scheduler("infer4", {}, clock, out)
    sched.start(reg.copy(), {0: worker(pages=100)})
    sched.on_worker_joined(1, worker(pages=100, models=list(reg.values())))      # a rejoin lists all
    ids = itertools.count(1)
    for mid in (7, 99_999):
        rid = next(ids)
        sched.on_request(Request(rid, None, rid, mid, 1, clock.now, 10 ** 9, []))
    clock.now += 1
    sched.tick()
    assert len(sched._models) == 2 and len(sched.models._made) <= 2
    assert {a.model_id for _, a, _ in out.actions} == {7, 99_999}              # loads for both
