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
Label children are bound once and cached, so a request costs two dictionary lookups and two
increments, no string formatting.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class FrontendMetrics:
    def __init__(self, inflight=lambda: 0):
        self.registry = CollectorRegistry()
        self._requests = Counter("clockwork_frontend_requests_total", "Inference requests answered",
                                 ["protocol", "code"], registry=self.registry)
        self._failures = Counter("clockwork_frontend_failures_total",
                                 "Failed inference requests by clockwork status",
                                 ["protocol", "clockwork_status"], registry=self.registry)
        self._duration = Histogram("clockwork_frontend_request_duration_seconds",
                                   "Successful inference requests, received to answered",
                                   ["protocol"], buckets=BUCKETS_S, registry=self.registry)
        Gauge("clockwork_frontend_inflight_requests", "Requests waiting for the controller",
              registry=self.registry).set_function(inflight)
        self.ready = Gauge("clockwork_frontend_controller_ready", "1 while the controller is ready",
                           registry=self.registry)
        self._children: dict = {}

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*[str(x) for x in labels])
        return c

    def success(self, protocol: str, seconds: float) -> None:
        self._child(self._requests, protocol, 200).inc()
        self._child(self._duration, protocol).observe(seconds)

    def failure(self, protocol: str, http: int, status: int | None) -> None:
        self._child(self._requests, protocol, http).inc()
        if status is not None:
            self._child(self._failures, protocol, status).inc()

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
