"""One worker with 4 emulated GPUs + INFER4 controller + client, as real processes.

What several GPUs of one worker must give end to end: INFER4 spreads one model's load over
every GPU (each GPU executes Infers of it, read from the controller's action log), and with
more copies than the GPUs' weights caches hold (weights churn) every request is answered
exactly once.
"""
import csv
from collections import Counter

import pytest

from clockwork.client.api import Client
from clockwork.local import LocalCluster
from clockwork.model.zoo import write_emulated_zoo
from clockwork.status import Status

pytestmark = pytest.mark.timeout(240)

G = 4
PAGE = 16 << 20
CACHE_PAGES = 16          # resnet50 (float16 profile) takes 4 pages: 4 copies per GPU
CACHE_COPIES = G * 4


def _actions(log_dir):
    rows = []
    for path in log_dir.glob("*action*"):
        with open(path) as f:
            rows += list(csv.DictReader(f, delimiter="\t"))
    assert rows, f"no action log in {log_dir}"
    return rows


def _send_waves(client, waves, per_model, slo_ns):
    """For each wave (a list of model ids), `per_model` requests to each of its models sent
    at once, all answered before the next wave. Returns every request's answer count and the
    statuses."""
    answers = Counter()
    statuses = Counter()
    n = 0
    for models in waves:
        for k in range(per_model * len(models)):
            def done(r, d, lat, i=n):
                answers[i] += 1
                statuses[r.status] += 1
            client.infer_async(models[k % len(models)], done, slo_ns=slo_ns, timeout_s=120)
            n += 1
        left = client.drain(150)
        assert left == 0, f"{left} requests unanswered"
    assert set(answers) == set(range(n)) and set(answers.values()) == {1}, Counter(answers.values())
    return statuses


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "small-cache.toml"
    path.write_text(f"[worker]\npage_size = {PAGE}\nweights_cache_size = {CACHE_PAGES * PAGE}\n")
    return path


def test_one_model_is_spread_over_all_four_gpus_and_churn_answers_every_request_once(
        tmp_path, config):
    logs = tmp_path / "logs"
    zoo = tmp_path / "zoo"         # bursts sized for resnet50's ~1.3 ms exec (TVM-conv profile)
    write_emulated_zoo(zoo, profile="h200-tvm", log=lambda *_: None)
    with LocalCluster(gpus=G, log_dir=logs, config_file=config, model_dir=zoo) as cluster:
        client = Client(cluster.address, log=lambda *_: None)
        try:
            hot, _, _ = client.load_model("resnet50", copies=1)
            # one model, bursts of more than one GPU serves in the SLO
            statuses = _send_waves(client, [[hot]] * 4, 600, slo_ns=100_000_000)
            assert statuses[Status.SUCCESS] > 0, statuses
            # twice the copies the caches hold, asked for half at a time: loads evict others
            first, copies, _ = client.load_model("resnet50", copies=2 * CACHE_COPIES)
            churn = list(range(first, first + copies))
            half = copies // 2
            statuses = _send_waves(client, [churn[:half], churn[half:], churn[:half]], 25,
                                   slo_ns=2_000_000_000)
            assert statuses[Status.SUCCESS] > 0, statuses
        finally:
            client.close()
    rows = _actions(logs)
    ok_infers = Counter(int(r["gpu_id"]) for r in rows
                        if r["action_type"] == "Infer" and r["status"] == "0"
                        and int(r["model_id"]) == hot)
    assert sorted(ok_infers) == list(range(G)), f"Infers of model {hot} per GPU: {ok_infers}"
    loads = Counter(int(r["model_id"]) for r in rows
                    if r["action_type"] == "LoadWeights" and r["status"] == "0"
                    and int(r["model_id"]) in churn)
    evicts = sum(1 for r in rows if r["action_type"] == "EvictWeights" and r["status"] == "0")
    served = {int(r["model_id"]) for r in rows if r["action_type"] == "Infer" and r["status"] == "0"
              and int(r["model_id"]) in churn}
    assert len(served) > CACHE_COPIES, f"only {len(served)} copies served: no churn through the cache"
    assert sum(loads.values()) > CACHE_COPIES and evicts > 0, (loads, evicts)
