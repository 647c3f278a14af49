"""Fixed weight addresses for CUDA graphs (clockwork.model.fixed_weights), on a fake device.

The CUDA backend's graph mode cannot run without a GPU, so its machinery runs here over a fake
virtual-memory driver that really resolves addresses: physical pages are byte arrays, a virtual
address reads whatever page is mapped there now. A fake backend built on it (emulated timings)
captures one "graph" per (instance, batch) at an instance's first LoadWeights, baking in the
instance's virtual base address exactly as a CUDA graph bakes in pointers, and replays it on
every Infer. Driven through the WorkerRuntime: any page placement, evict and reload into other
pages must give identical outputs from the same graph; Infer on evicted weights must answer
WEIGHTS_NOT_PRESENT.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clockwork.model.emulated import EmulatedBackend
from clockwork.model.fixed_weights import FixedAddressWeights, VmmDriver
from clockwork.model.zoo import write_emulated_zoo
from clockwork.status import Status
from clockwork.transport import schema as s
from clockwork.worker.runtime import WorkerRuntime

PAGE = 1 << 20
GRAN = 64 << 10
pytestmark = pytest.mark.timeout(120)


class FakeVmm(VmmDriver):
    """Virtual memory that resolves: map/unmap are checked like the driver checks them."""

    granularity = GRAN

    def __init__(self):
        self.physical: dict[int, np.ndarray] = {}
        self.mapped: dict[int, int] = {}        # va of a mapped page-sized slot -> handle
        self.ranges: dict[int, int] = {}        # reserved base -> size
        self.next_va = 1 << 40
        self.calls = {"map": 0, "unmap": 0}

    def create(self, size):
        h = len(self.physical) + 1
        self.physical[h] = np.zeros(size, np.uint8)
        return h

    def reserve(self, size):
        va, self.next_va = self.next_va, self.next_va + size + (1 << 30)
        self.ranges[va] = size
        return va

    def _check_inside(self, va, size):
        assert any(b <= va and va + size <= b + n for b, n in self.ranges.items()), \
            f"{va:#x}+{size} is not in a reserved range"

    def map(self, va, size, handle):
        self._check_inside(va, size)
        assert va not in self.mapped, f"{va:#x} is already mapped"
        assert size == len(self.physical[handle])
        self.mapped[va] = handle
        self.calls["map"] += 1

    def unmap(self, va, size):
        assert va in self.mapped, f"unmap of unmapped {va:#x}"
        del self.mapped[va]
        self.calls["unmap"] += 1

    def free_range(self, va, size):
        assert self.ranges.pop(va) == size
        assert not any(va <= m < va + size for m in self.mapped), "freeing a range still mapped"

    def release(self, handle):
        del self.physical[handle]

    def resolve(self, va):
        """(physical page, offset) that device address va reads now."""
        for base, h in self.mapped.items():
            n = len(self.physical[h])
            if base <= va < base + n:
                return self.physical[h], va - base
        raise AssertionError(f"device read of unmapped address {va:#x}")

    def write(self, va, data: bytes):
        page, off = self.resolve(va)
        assert off + len(data) <= len(page), "write straddles a page"
        page[off:off + len(data)] = np.frombuffer(data, np.uint8)

    def read(self, va, n) -> bytes:
        page, off = self.resolve(va)
        return page[off:off + n].tobytes()


# ---------------------------------------------------------------- FixedAddressWeights alone

def test_reload_elsewhere_keeps_the_base_and_remaps_only_changed_slots():
    drv = FakeVmm()
    fw = FixedAddressWeights(drv, PAGE, 6)
    base = fw.place("a", [4, 1, 2])
    drv.write(base + PAGE, b"model a page 1")
    assert drv.read(base + PAGE, 14) == b"model a page 1"
    assert fw.place("a", [4, 3, 2]) == base                 # reloaded: slot 1 moved to page 3
    assert drv.calls == {"map": 4, "unmap": 1}
    assert drv.resolve(base + PAGE)[0] is drv.physical[fw.pages[3]]
    other = fw.place("b", [1, 0])                           # another instance, its own range
    assert other != base and drv.resolve(other)[0] is drv.physical[fw.pages[1]]
    fw.close()
    assert not drv.mapped and not drv.ranges and not drv.physical


def test_page_size_must_be_a_multiple_of_the_granularity():
    with pytest.raises(ValueError, match="granularity"):
        FixedAddressWeights(FakeVmm(), GRAN + 4096, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.permutations(range(8))), min_size=1, max_size=30))
def test_any_placement_sequence_resolves_to_the_last_pages_given(moves):
    """Whatever pages each instance is (re)loaded into, in any order, its fixed base address
    never changes and slot k reads the physical page it was last given."""
    drv = FakeVmm()
    fw = FixedAddressWeights(drv, PAGE, 8)
    bases, last = {}, {}
    for inst, perm in moves:
        pages = list(perm[:inst % 3 + 1])
        if inst in last and len(last[inst]) != len(pages):
            pages = list(perm[:len(last[inst])])
        base = fw.place(inst, pages)
        assert bases.setdefault(inst, base) == base
        last[inst] = pages
        for i, pg in last.items():
            for k, p in enumerate(pg):
                assert drv.resolve(bases[i] + k * PAGE)[0] is drv.physical[fw.pages[p]]


# ---------------------------------------------------------------- behind the backend interface

class FakeGraphBackend(EmulatedBackend):
    """Emulated timings, but real bytes: weights written through each instance's fixed range,
    a graph per (instance, batch) captured at the instance's first LoadWeights that reads the
    weights at its baked-in base address on every replay."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.vmm = FakeVmm()
        self.fixed = FixedAddressWeights(self.vmm, self.page_size, self.total_pages)
        self.graphs: dict = {}
        self.inputs: dict = {}
        self.outputs: dict = {}

    @staticmethod
    def image(hm) -> bytes:
        seed = int.from_bytes(hashlib.sha256(hm.spec.name.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).integers(0, 256, hm.weights_size, np.uint8).tobytes()

    def load_weights(self, gpu, hm, pages, now, instance=-1):
        first = not self.fixed.mapped(instance)
        base = self.fixed.place(instance, pages)
        img = self.image(hm)
        for k in range(len(pages)):
            self.vmm.write(base + k * self.page_size, img[k * self.page_size:(k + 1) * self.page_size])
        if first:
            for b in hm.spec.batch_sizes:
                self.graphs[(instance, b)] = self._capture(hm, base, len(pages))
        return super().load_weights(gpu, hm, pages, now, instance=instance)

    def _capture(self, hm, base, n_pages):
        ps, size, vmm = self.page_size, hm.weights_size, self.vmm

        def graph(x: bytes, out_bytes: int) -> bytes:       # reads weights at the baked base
            w = b"".join(vmm.read(base + k * ps, min(ps, size - k * ps)) for k in range(n_pages))
            digest = hashlib.sha256(w + x).digest()
            return (digest * (out_bytes // len(digest) + 1))[:out_bytes]
        return graph

    def copy_input(self, gpu, hm, batch_size, inputs, io, now):
        self.inputs[io.offset] = b"".join(bytes(f) for f in inputs)
        return super().copy_input(gpu, hm, batch_size, inputs, io, now)

    def execute(self, gpu, hm, padded, pages, io, ws, now, instance=-1):
        graph = self.graphs[(instance, padded)]
        self.outputs[io.offset] = graph(self.inputs.pop(io.offset), padded * hm.output_size)
        return super().execute(gpu, hm, padded, pages, io, ws, now, instance=instance)

    def copy_output(self, gpu, hm, batch_size, io, now):
        op = super().copy_output(gpu, hm, batch_size, io, now)
        op.output = self.outputs.pop(io.offset)[:batch_size * hm.output_size]
        return op


class Harness:
    def __init__(self, zoo, pages=12):
        self.sent = {}
        self.now = 1_000_000_000
        self.backend = FakeGraphBackend(1, PAGE, pages, 64 << 20, 64 << 20)
        self.rt = WorkerRuntime(self.backend, zoo, self._send, PAGE, pages, 64 << 20, 64 << 20,
                                clock=lambda: self.now)
        self.ids = iter(range(1, 1 << 30))

    def _send(self, reply_to, msg, data):
        self.sent[msg.action_id] = (msg, [bytes(d) for d in data])

    def do(self, cls, data=(), **kw):
        aid = next(self.ids)
        self.rt.handle(cls(action_id=aid, earliest=self.now, latest=self.now + 10**10, **kw),
                       list(data), "ctl", self.now)
        while aid not in self.sent:
            t = self.rt.next_time()
            assert t is not None, "action never completed"
            self.now = max(self.now, t)
            self.rt.advance(self.now)
        return self.sent.pop(aid)

    def infer(self, model_id, x):
        return self.do(s.Infer, data=[x], model_id=model_id, gpu_id=0, batch_size=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    write_emulated_zoo(d, models=["mlp"], page_size=PAGE, log=lambda *a: None)
    return d


def test_graphs_survive_evict_and_reload_into_other_pages(zoo):
    h = Harness(zoo)
    assert isinstance(h.do(s.LoadModelFromDisk, model_id=0, path="mlp", copies=2)[0],
                      s.LoadModelFromDiskResult)
    x = np.arange(784, dtype=np.float32).tobytes()
    assert isinstance(h.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    first = list(h.rt.gpus[0].resident[0].pages)
    assert len(first) >= 2, "the test model should span pages"
    before = h.infer(0, x)[1][0]
    hm = h.rt.models[0].kind.host
    expected = hashlib.sha256(FakeGraphBackend.image(hm) + x).digest()
    assert before[:32] == expected                          # the graph read the true weights
    captured = len(h.backend.graphs)

    assert isinstance(h.do(s.EvictWeights, model_id=0, gpu_id=0)[0], s.EvictWeightsResult)
    msg, frames = h.infer(0, x)
    assert isinstance(msg, s.ErrorResult) and msg.status == Status.WEIGHTS_NOT_PRESENT, msg
    assert frames == []
    # garbage where the weights were, held by a blocker: model 0 must come back elsewhere
    for p in first:
        h.backend.vmm.physical[h.backend.fixed.pages[p]][:] = 0x7F
    blocker = h.rt.gpus[0].mem.pages.alloc(len(first))
    assert isinstance(h.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    second = list(h.rt.gpus[0].resident[0].pages)
    assert set(second).isdisjoint(first)
    assert h.infer(0, x)[1][0] == before                    # same graph, new pages, same bytes
    h.rt.gpus[0].mem.pages.release(blocker)
    assert isinstance(h.do(s.LoadWeights, model_id=1, gpu_id=0)[0], s.LoadWeightsResult)
    assert h.infer(1, x)[1][0] == before
    # one graph per (instance, batch): the copy added its own, the reload none
    assert len(h.backend.graphs) == 2 * captured
