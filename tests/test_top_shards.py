"""`cw top` over a sharded controller: the shards' snapshots combined (telemetry/shards.py) and
rendered as one view (telemetry/top.py), without sockets; then once against a real
`cw controller --shards 2`."""
from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from rich.console import Console

from clockwork.client.shards import ShardedClient
from clockwork.config import load_config
from clockwork.controller.shards import port_blocks
from clockwork.limits import SHARD_ID_BITS
from clockwork.local import LocalCluster
from clockwork.status import Status
from clockwork.telemetry import messages as tm
from clockwork.telemetry.shards import combine
from clockwork.telemetry.top import TopState, _resolve, render, top_command

pytestmark = pytest.mark.timeout(180)


def gpu(worker: int, gpu_id: int, name: str) -> tm.GpuSnapshot:
    return tm.GpuSnapshot(worker, gpu_id, name, f"127.0.0.1:{20000 + worker}", "ok", 0.5, 0.4, 10.0, 20.0,
                          0.0, 0.0, 0, 3, 100, 40, 1)


def model(model_id: int, rate: float, p99: float) -> tm.ModelSnapshot:
    return tm.ModelSnapshot(model_id, f"zoo/m{model_id}", rate, rate, 1.0, p99 / 2, p99, p99 + 1, 0, 1.0,
                            [], 0, 1, 0, 100, 100)


def snapshot(rate, goodput, p50, p99, max_ms, queue, total, gpus, models, phase="running",
             failures=None) -> tm.Snapshot:
    return tm.Snapshot(seq=1, wall_ns=0, uptime_s=60.0, interval_s=1.0, phase=phase, scheduler="infer4",
                       rate=rate, goodput=goodput, slo=goodput / rate, p50_ms=p50, p99_ms=p99, max_ms=max_ms,
                       queue=queue, total=total, total_met=total, models_registered=len(models),
                       failures=failures or {}, gpus=gpus, models=models)


# shard 0 busy and fast, shard 1 quiet and slow: a mean of their fractions or percentiles would lie
SHARD_0 = snapshot(900.0, 891.0, 2.0, 5.0, 9.0, 4, 9000, [gpu(0, 0, "GPU zero"), gpu(0, 1, "GPU one")],
                   [model(0, 900.0, 5.0)], failures={"OVERLOADED": 9})
SHARD_1 = snapshot(100.0, 50.0, 30.0, 80.0, 95.0, 6, 1000, [gpu(0, 0, "GPU other")],
                   [model(1 << 40, 100.0, 80.0)], phase="loading", failures={"OVERLOADED": 1, "TIMEOUT": 2})


def text(state: TopState, width: int = 200) -> str:
    console = Console(width=width, force_terminal=False, soft_wrap=False, record=True)
    with console.capture() as cap:
        console.print(render(state, width=width, height=200, now=state.received_at, interactive=False))
    return cap.get()


def test_combine_sums_what_adds_up_and_never_averages_percentiles():
    merged, shards = combine([SHARD_0, SHARD_1])
    assert (merged.rate, merged.goodput, merged.total, merged.queue) == (1000.0, 941.0, 10000, 10)
    assert merged.slo == pytest.approx(0.941)            # summed goodput / summed rate, not (0.99 + 0.5) / 2
    assert (merged.p50_ms, merged.p99_ms, merged.max_ms) == (30.0, 80.0, 95.0)   # the worst shard's
    assert merged.failures == {"OVERLOADED": 10, "TIMEOUT": 2}
    assert [g.name for g in merged.gpus] == ["GPU zero", "GPU one", "GPU other"] and shards == [0, 0, 1]
    assert [m.model_id for m in merged.models] == [0, 1 << 40]
    assert merged.phase == "loading"                     # the least advanced shard's
    only_1, shards = combine([None, SHARD_1])            # shard 0 not heard from yet
    assert (only_1.rate, only_1.p99_ms, shards) == (100.0, 80.0, [1])


def test_render_labels_gpus_with_their_shard_and_shows_each_shards_latency():
    state = TopState(["127.0.0.1:5000", "127.0.0.1:5001"])
    state.on_message(SHARD_0, 10.0, 0)
    state.on_message(SHARD_1, 10.0, 1)
    state.on_message(tm.Events(1, [tm.Event(0, "worker_lost", "worker 0 lost")]), 10.0, 1)
    out = text(state)
    assert "2 shards" in out
    for label, name in (("S0 W0-GPU0", "GPU zero"), ("S0 W0-GPU1", "GPU one"), ("S1 W0-GPU0", "GPU other")):
        row = next(line for line in out.splitlines() if label in line)
        assert name in row, row
    assert "requests 1000.0/s  goodput 941.0/s  SLO 94.10%" in out
    assert "p99 80.0 ms (worst shard)" in out
    shard_lines = [line for line in out.splitlines() if line.strip().startswith("shard ")]
    assert "127.0.0.1:5000" in shard_lines[0] and "p99 5.0 ms" in shard_lines[0]
    assert "127.0.0.1:5001" in shard_lines[1] and "p99 80.0 ms" in shard_lines[1]
    assert "shard 1: worker 0 lost" in out
    assert len(state.rates) == 1                         # one history point per round of snapshots


def test_render_names_a_shard_that_stopped_publishing():
    state = TopState(["127.0.0.1:5000", "127.0.0.1:5001"])
    state.started = 0.0
    state.on_message(SHARD_0, 1.0, 0)
    state.on_message(SHARD_1, 1.0, 1)
    state.on_message(SHARD_0, 10.0, 0)                   # shard 1 silent since 1.0
    out = text(state)
    assert "no snapshot from shard 1 for 9 s" in out and "shard 0 for" not in out


def test_a_single_controller_renders_as_before():
    state = TopState("127.0.0.1:5000")
    state.on_message(SHARD_0, 1.0)
    out = text(state)
    assert "W0-GPU0" in out and "S0 " not in out and "worst shard" not in out and "shards" not in out


def test_addresses_of_the_shards():
    cc = load_config()["controller"]
    first = port_blocks(3, cc["client_port"], cc["telemetry_port"], cc.get("metrics_port", 0))[1]
    assert [a for a, _ in _resolve(None, 3)] == [f"127.0.0.1:{p}" for p in first]
    assert [a for a, _ in _resolve("h:5000", 2)] == ["h:5000", "h:5001"]
    assert [a for a, _ in _resolve("a:1,b:2")] == ["a:1", "b:2"]
    r = CliRunner().invoke(top_command, ["a:1,b:2", "--shards", "2", "--once"])
    assert r.exit_code == 2 and "not both" in r.output and "Traceback" not in r.output


def one_mlp_per_shard(cluster: LocalCluster) -> list[int]:
    """Load mlp once on each of the cluster's two shards and serve one request from each; the
    two model ids."""
    client = ShardedClient(cluster.address.split(","), log=lambda *_: None)
    try:
        ids = [client.load_model("mlp")[0] for _ in range(2)]       # one on each shard
        assert [client.infer(i).response.status for i in ids] == [Status.SUCCESS] * 2
    finally:
        client.close()
    return ids


def test_cw_top_once_shows_both_shards_of_a_real_sharded_controller():
    with LocalCluster(gpus=2, workers=2, shards=2) as c:
        ids = one_mlp_per_shard(c)
        r = subprocess.run([sys.executable, "-m", "clockwork.telemetry.top", f"127.0.0.1:{c.telemetry_port}",
                            "--shards", "2", "--once", "--timeout", "60", "--width", "200"],
                           capture_output=True, text=True, timeout=120, env=c.env())
    assert r.returncode == 0, r.stderr
    for label in ("S0 W0-GPU0", "S0 W0-GPU1", "S1 W0-GPU0", "S1 W0-GPU1"):
        assert label in r.stdout, r.stdout
    assert f"shard 1 127.0.0.1:{c.telemetry_port + 1}" in r.stdout, r.stdout
    rows = {int(line.split()[0]) for line in r.stdout.splitlines() if line.split()[1:2] == ["mlp"]}
    assert rows == set(ids) and {i >> SHARD_ID_BITS for i in ids} == {0, 1}, r.stdout


def test_each_shard_serves_its_own_prometheus_metrics():
    """`cw controller --shards 2 --metrics-port P`: shard k on P + k (printed), its models only."""
    import re
    import urllib.request

    from clockwork.transport.sockets import free_ports
    base = free_ports(2)
    with LocalCluster(gpus=1, workers=2, shards=2, controller_args=("--metrics-port", str(base))) as c:
        ids = one_mlp_per_shard(c)
        printed = "".join(c.output["controller"])
        for k, mid in enumerate(ids):
            assert f"metrics on http://127.0.0.1:{base + k}/metrics" in printed, printed
            body = urllib.request.urlopen(f"http://127.0.0.1:{base + k}/metrics", timeout=30).read().decode()
            served = set(re.findall(r'clockwork_request_success_total\{model="(\d+)"', body))
            assert served == {str(mid)}, (k, served)
