"""Overload with real processes, CI-sized: far more than the emulated GPU can serve.

The figures (goodput as a fraction of capacity, rejection latency, RSS) are measured by
tools/bench/overload.py; here the properties that must hold at any speed: every request is
answered, the excess with a rejection status, the per-model queue bound is enforced (memory
stays bounded) by rejecting OVERLOADED at once, and service continues afterwards.
"""
from __future__ import annotations

from collections import Counter

import pytest

from clockwork.client.api import Client
from clockwork.local import LocalCluster
from clockwork.model.zoo import write_emulated_zoo
from clockwork.status import Status

pytestmark = pytest.mark.timeout(120)
QUEUE_BOUND = 50
BURST = 2000
REJECTIONS = {Status.OVERLOADED, Status.COULD_NOT_START_IN_TIME, Status.CONTROLLER_SKIPPED}
# also answers of an excess request on a CPU-starved machine: the worker refused a start that
# came too late, or the controller's timeout for a result that came too late
LATE = {Status.ACTION_TOO_LATE, Status.TIMEOUT}


@pytest.fixture
def cluster(tmp_path):
    conf = tmp_path / "bounded.toml"
    conf.write_text(f"[controller]\nmax_queue_per_model = {QUEUE_BOUND}\n")
    # float32 timings (resnet101 batch 16: 20 ms, ~800 r/s a GPU), so that the rates below are
    # far beyond capacity whatever the default profile's kernels achieve
    zoo = tmp_path / "zoo"
    write_emulated_zoo(zoo, profile="h200-fp32", log=lambda *_: None)
    with LocalCluster(gpus=1, config_file=conf, model_dir=zoo) as c:
        yield c


def test_burst_beyond_the_queue_bound_is_rejected_at_once(cluster):
    client = Client(cluster.address, log=lambda *_: None)
    try:
        mid, _, _ = client.load_model("resnet101", copies=1)
        assert client.infer(mid).response.status == Status.SUCCESS
        slo_ns = 10_000_000_000               # long SLO: nothing is dropped for its deadline soon
        answers = []                      # in the order they came back
        for _ in range(BURST):
            client.infer_async(mid, lambda r, d, lat: answers.append((r.status, lat)),
                               slo_ns=slo_ns, timeout_s=60)
        assert client.drain(60) == 0
        statuses = Counter(st for st, _ in answers)
        assert len(answers) == BURST
        assert set(statuses) <= {Status.SUCCESS} | REJECTIONS, statuses
        # the GPU cannot serve the burst in time to drain the queue: most of it is over the bound
        assert statuses[Status.OVERLOADED] > 0 and statuses[Status.SUCCESS] > 0, statuses
        # served requests all went through the bounded queue; the rest were refused
        assert statuses[Status.SUCCESS] + statuses[Status.OVERLOADED] == BURST, statuses
        # rejected at once, not held until their (10 s) deadline: every refusal came back before
        # the GPU finished serving the queue (which refilled as it drained) that refused it
        last_success = max(i for i, (st, _) in enumerate(answers) if st == Status.SUCCESS)
        assert all(i < last_success for i, (st, _) in enumerate(answers) if st == Status.OVERLOADED)
        # and the system still serves normally afterwards
        assert client.infer(mid).response.status == Status.SUCCESS
        assert cluster.controller.poll() is None
    finally:
        client.close()


def test_ten_times_capacity_every_request_answered(cluster):
    """Open loop at about 10x one GPU's resnet101 capacity (float32 profile) for a second: all answered, the
    excess rejected, some served."""
    import time
    client = Client(cluster.address, log=lambda *_: None)
    try:
        mid, _, _ = client.load_model("resnet101", copies=1)
        client.infer(mid)
        statuses = Counter()

        def done(r, d, lat):
            statuses[r.status] += 1

        sent = 0
        gap = 1 / 8000.0
        start = time.perf_counter()
        nxt = start
        while time.perf_counter() - start < 1.0:
            while nxt <= time.perf_counter():
                client.infer_async(mid, done, timeout_s=60)
                sent += 1
                nxt += gap
            client.poll(0.0005)
        assert client.drain(60) == 0
        assert sum(statuses.values()) == sent
        assert set(statuses) <= {Status.SUCCESS} | REJECTIONS | LATE, statuses
        assert statuses[Status.SUCCESS] > 0 and sum(statuses[s] for s in REJECTIONS) > 0
    finally:
        client.close()


def test_input_bytes_held_are_bounded(tmp_path):
    """Requests with inputs beyond [controller] max_queued_input_bytes are refused at once."""
    import signal

    import numpy as np
    held = 3
    size = 3 * 224 * 224 * 4                     # one resnet input
    conf = tmp_path / "budget.toml"
    conf.write_text(f"[controller]\nmax_queued_input_bytes = {held * size}\n")
    with LocalCluster(gpus=1, config_file=conf) as c:
        client = Client(c.address, log=lambda *_: None)
        try:
            mid, _, _ = client.load_model("resnet50", copies=1)
            x = np.zeros(size // 4, dtype=np.float32)
            assert client.infer(mid, inputs=x).response.status == Status.SUCCESS
            worker = c.worker_procs[0]
            worker.send_signal(signal.SIGSTOP)     # nothing completes: admitted requests stay held
            try:
                answers = []
                for _ in range(10):
                    client.infer_async(mid, lambda r, d, lat: answers.append(r), inputs=x,
                                       slo_ns=10_000_000_000, timeout_s=60)
                client.ls()                        # a round trip: all ten were handled
                client.poll(0)
                refused = [r for r in answers if r.status == Status.OVERLOADED]
                assert len(refused) == 10 - held and all("inputs" in r.message for r in refused)
            finally:
                worker.send_signal(signal.SIGCONT)
            assert client.drain(60) == 0 and len(answers) == 10
            # answered requests released their bytes: the whole budget is available again
            again = []
            for _ in range(held):
                client.infer_async(mid, lambda r, d, lat: again.append(r.status), inputs=x, timeout_s=60)
            assert client.drain(60) == 0
            assert again == [Status.SUCCESS] * held
        finally:
            client.close()
