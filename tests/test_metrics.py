"""The Prometheus endpoint: scraped over HTTP and parsed with prometheus-client's parser."""
from __future__ import annotations

import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from clockwork.status import Status
from clockwork.telemetry.publisher import TelemetryPublisher
from clockwork.transport.sockets import free_port
from telemetry_fakes import MS, FakeController

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def system():
    ctx = zmq.Context()
    port = free_port()
    ctl = FakeController(workers=1, gpus=2, models=2, metrics_port=port)
    pub = TelemetryPublisher(ctl, ctx, "127.0.0.1", 0)   # metrics only, no PUB socket
    ctl.telemetry = pub
    try:
        yield ctl, pub, f"http://127.0.0.1:{port}/metrics"
    finally:
        pub.close()
        ctx.destroy(linger=0)


def scrape(url) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of every sample."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def test_request_counters_and_histograms(system):
    ctl, pub, url = system
    lat = [2 * MS, 7 * MS, 30 * MS, 300 * MS]
    for x in lat:
        ctl.answer(0, Status.SUCCESS, x, slo=100 * MS, exec_ns=MS)
    ctl.answer(1, Status.COULD_NOT_START_IN_TIME, 50 * MS)
    ctl.answer(1, Status.SUCCESS, 4 * MS, coldstart=True, exec_ns=MS)
    ctl.infer(0, 0, 0, 4, 3 * MS)
    ctl.infer(0, 0, 0, 2, 3 * MS)
    m = scrape(url)
    assert m[("clockwork_request_success_total", (("model", "0"),))] == len(lat)
    assert m[("clockwork_request_success_total", (("model", "1"),))] == 1
    assert m[("clockwork_request_failure_total",
              (("model", "1"), ("reason", "could_not_start_in_time")))] == 1
    assert m[("clockwork_request_slo_met_total", (("model", "0"),))] == sum(x <= 100 * MS for x in lat)
    assert m[("clockwork_request_coldstart_total", (("model", "1"),))] == 1
    assert m[("clockwork_inference_total", (("model", "0"),))] == 6
    assert m[("clockwork_execution_total", (("model", "0"),))] == 2
    # request duration histogram: cumulative buckets agree with the latencies observed
    successes = lat + [4 * MS]
    for le in ("0.005", "0.01", "0.1", "+Inf"):
        bound = float(le) * 1e9 if le != "+Inf" else float("inf")
        assert m[("clockwork_request_duration_seconds_bucket", (("le", le),))] == \
            sum(x <= bound for x in successes), le
    assert m[("clockwork_request_duration_seconds_count", ())] == len(successes)
    assert m[("clockwork_request_duration_seconds_sum", ())] == pytest.approx(sum(successes) / 1e9)
    assert m[("clockwork_request_compute_duration_seconds_sum", ())] == pytest.approx(len(successes) * MS / 1e9)
    assert m[("clockwork_request_queue_duration_seconds_sum", ())] == \
        pytest.approx(sum(x - MS for x in successes) / 1e9)


def test_gpu_gauges_follow_the_last_snapshot(system):
    ctl, pub, url = system
    m = scrape(url)
    assert not any(k[0] == "clockwork_gpu_weights_cache_pages" for k in m)   # nothing published yet
    ctl.load(0, 1, 0)
    ctl.load(0, 1, 1)
    ctl.advance(1_000_000_000)
    pub.maybe_publish(ctl.now)
    m = scrape(url)
    w0g1 = (("gpu", "1"), ("worker", "0"))
    total = ctl.workers[0].state.gpus[1].total_pages
    assert m[("clockwork_gpu_weights_cache_pages", w0g1)] == total
    assert m[("clockwork_gpu_weights_cache_free_pages", w0g1)] == \
        total - ctl.models[0].num_pages - ctl.models[1].num_pages
    assert m[("clockwork_gpu_loaded_models", w0g1)] == 2
    assert m[("clockwork_gpu_utilization_ratio", w0g1)] == pytest.approx(ctl.workers[0].readings[1].utilization)
    assert m[("clockwork_gpu_sm_clock_hertz", w0g1)] == ctl.workers[0].readings[1].sm_clock_mhz * 1e6
    assert m[("clockwork_gpu_weights_load_total", w0g1)] == 2
    assert m[("clockwork_worker_up", (("worker", "0"),))] == 1
    ctl.workers[0].alive = False
    ctl.advance(1_000_000_000)
    pub.maybe_publish(ctl.now)
    assert scrape(url)[("clockwork_worker_up", (("worker", "0"),))] == 0


def test_port_in_use_is_a_clear_error(system):
    ctl, pub, url = system
    with pytest.raises(ValueError, match="cannot serve Prometheus metrics"):
        TelemetryPublisher(ctl, zmq.Context.instance(), "127.0.0.1", 0)


@pytest.mark.timeout(180)
def test_metrics_of_a_real_run():
    """`cw controller --metrics-port`: the scrape agrees with what the client saw."""
    import re

    from clockwork.local import LocalCluster
    port = free_port()
    with LocalCluster(gpus=2, controller_args=("--metrics-port", str(port))) as cluster:
        result = cluster.run_client("simple", ["--duration", "2"], timeout=120)
        assert result.returncode == 0, result.stdout
        succeeded = int(re.search(r"succeeded=(\d+)", result.stdout).group(1))
        m = scrape(f"http://127.0.0.1:{port}/metrics")
    assert succeeded > 0
    assert sum(v for (name, _), v in m.items() if name == "clockwork_request_success_total") == succeeded
    assert m[("clockwork_request_duration_seconds_count", ())] == succeeded
    assert sum(v for (name, _), v in m.items() if name == "clockwork_inference_total") >= succeeded
    assert {labels for (name, labels) in m if name == "clockwork_gpu_weights_cache_pages"} == \
        {(("gpu", str(g)), ("worker", "0")) for g in range(2)}
