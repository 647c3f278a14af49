"""Prometheus metrics of the front end (served at GET /metrics on its HTTP port).

    clockwork_frontend_requests_total{protocol,code}        inference requests answered, by HTTP
                                                            status (gRPC requests by the HTTP
                                                            equivalent of their code)
    clockwork_frontend_failures_total{protocol,clockwork_status}
                                                            failed ones that carried a clockwork
                                                            status (e.g. 8 could not start in time)
    clockwork_frontend_request_duration_seconds{protocol}   successful requests, received -> answered
    clockwork_frontend_inflight_requests                    waiting for the controller now
    clockwork_frontend_controller_ready                     1 while /v2/health/ready is true
The controller's own metrics ([controller] metrics_port) count the same requests from its side.
As there, nothing goes through prometheus-client on the hot path: a request adds to plain
dictionaries and a bucket list, and a custom collector turns them into samples when scraped
(on the event loop's thread, like the requests, so nothing is locked).
"""
from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class FrontendMetrics:
    def __init__(self, inflight=lambda: 0):
        self.inflight = inflight
        self.requests: dict[tuple[str, int], int] = {}
        self.failures: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}          # protocol -> count per bucket (+Inf last)
        self.sums: dict[str, float] = {}
        self.is_ready = False
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def success(self, protocol: str, seconds: float) -> None:
        key = (protocol, 200)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.buckets.get(protocol)
        if counts is None:
            counts = self.buckets[protocol] = [0] * (len(BUCKETS_S) + 1)
            self.sums[protocol] = 0.0
        counts[bisect_left(BUCKETS_S, seconds)] += 1
        self.sums[protocol] += seconds

    def failure(self, protocol: str, http: int, status: int | None) -> None:
        key = (protocol, http)
        self.requests[key] = self.requests.get(key, 0) + 1
        if status is not None:
            key = (protocol, status)
            self.failures[key] = self.failures.get(key, 0) + 1

    def set_ready(self, ready: bool) -> None:
        self.is_ready = ready

    def collect(self):
        """prometheus-client's collector protocol: the samples, built at scrape time."""
        requests = CounterMetricFamily("clockwork_frontend_requests_total", "Inference requests answered",
                                       labels=["protocol", "code"])
        for (protocol, code), n in sorted(self.requests.items()):
            requests.add_metric([protocol, str(code)], n)
        failures = CounterMetricFamily("clockwork_frontend_failures_total",
                                       "Failed inference requests by clockwork status",
                                       labels=["protocol", "clockwork_status"])
        for (protocol, status), n in sorted(self.failures.items()):
            failures.add_metric([protocol, str(status)], n)
        duration = HistogramMetricFamily("clockwork_frontend_request_duration_seconds",
                                         "Successful inference requests, received to answered",
                                         labels=["protocol"])
        for protocol, counts in sorted(self.buckets.items()):
            cumulative, total = [], 0
            for bound, n in zip((*map(repr, BUCKETS_S), "+Inf"), counts):
                total += n
                cumulative.append((bound, total))
            duration.add_metric([protocol], cumulative, self.sums[protocol])
        yield requests
        yield failures
        yield duration
        yield GaugeMetricFamily("clockwork_frontend_inflight_requests", "Requests waiting for the controller",
                                value=self.inflight())
        yield GaugeMetricFamily("clockwork_frontend_controller_ready", "1 while the controller is ready",
                                value=1 if self.is_ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
