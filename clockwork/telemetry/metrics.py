"""Prometheus endpoint of the controller (prometheus-client), on [controller] metrics_port.

Nothing is observed through prometheus-client on the hot path: a custom collector turns the
telemetry recorder's counters into samples when Prometheus scrapes (in the HTTP server's
thread). It copies each counter list or dict in one step (atomic under the GIL) and reads GPU
gauges from the last published snapshot, so the controller's event loop is never locked.

Names follow Prometheus conventions (base units, _total for counters, _seconds histograms):
    clockwork_request_success_total{model}            requests answered successfully
    clockwork_request_failure_total{model,reason}     requests answered with an error
    clockwork_request_slo_met_total{model}            successes within their deadline (goodput)
    clockwork_request_coldstart_total{model}          requests served by a cold start
    clockwork_inference_total{model}                  inputs executed (sum of batch sizes)
    clockwork_execution_total{model}                  Infer actions (batches) executed
    clockwork_request_duration_seconds                successful requests, arrival -> response
    clockwork_request_queue_duration_seconds          ... minus their batch's execution time
    clockwork_request_compute_duration_seconds        ... their batch's execution time
    clockwork_gpu_utilization_ratio{worker,gpu}       device reading (NVML / emulated)
    clockwork_gpu_busy_ratio{worker,gpu}              exec time / wall time, controller's view
    clockwork_gpu_weights_cache_pages{worker,gpu}     pages in the weights cache
    clockwork_gpu_weights_cache_free_pages{worker,gpu}
    clockwork_gpu_loaded_models{worker,gpu}
    clockwork_gpu_outstanding_actions{worker,gpu}
    clockwork_gpu_sm_clock_hertz / _temperature_celsius / _memory_used_bytes {worker,gpu}
    clockwork_gpu_infer_total / _weights_load_total / _weights_evict_total / _action_errors_total {worker,gpu}
    clockwork_worker_up{worker}                       1 while the worker answers
    clockwork_request_queue_length                    requests waiting (when the scheduler says)
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..status import describe
from .recorder import PROM_BOUNDS_S, PROM_INDEX


def _counter(name: str, doc: str, labels=("model",)) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels=("worker", "gpu")) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _buckets(counts: list[int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs at the Prometheus bounds, from fine bucket counts."""
    out = []
    cum = 0
    start = 0
    for bound, idx in zip(PROM_BOUNDS_S, PROM_INDEX):
        cum += sum(counts[start:idx + 1])
        start = idx + 1
        out.append((repr(bound), cum))
    out.append(("+Inf", cum + sum(counts[start:])))
    return out


class TelemetryCollector:
    """Builds every clockwork_* metric family from a TelemetryPublisher at scrape time."""

    def __init__(self, publisher):
        self.pub = publisher

    def describe(self):
        return []   # samples vary with models and GPUs; no fixed description

    def collect(self):
        rec = self.pub.recorder
        models = list(rec.models.values())
        fam = {
            "success": _counter("clockwork_request_success", "Requests answered successfully."),
            "failure": _counter("clockwork_request_failure", "Requests answered with an error, by reason.",
                                ("model", "reason")),
            "met": _counter("clockwork_request_slo_met", "Successful requests answered within their deadline."),
            "cold": _counter("clockwork_request_coldstart", "Requests served by a cold start (weights loaded first)."),
            "inf": _counter("clockwork_inference", "Inputs executed (sum of batch sizes of successful Infer actions)."),
            "exe": _counter("clockwork_execution", "Infer actions (batches) executed successfully."),
        }
        for m in models:
            mid = [str(m.model_id)]
            fam["success"].add_metric(mid, m.successes)
            for status, n in list(m.failures.items()):
                fam["failure"].add_metric([mid[0], describe(status).replace(" ", "_")], n)
            fam["met"].add_metric(mid, m.met)
            fam["cold"].add_metric(mid, m.coldstarts)
            fam["inf"].add_metric(mid, m.inferences)
            fam["exe"].add_metric(mid, m.executions)
        yield from fam.values()
        for name, doc, hist, total in (
                ("clockwork_request_duration_seconds",
                 "Latency of successful requests, controller arrival to response.",
                 rec.request_hist, rec.request_sum),
                ("clockwork_request_queue_duration_seconds",
                 "Time successful requests spent outside their batch's execution (queueing, transfers).",
                 rec.queue_hist, rec.queue_sum),
                ("clockwork_request_compute_duration_seconds",
                 "Execution time of the batch that served each successful request.",
                 rec.compute_hist, rec.compute_sum)):
            h = HistogramMetricFamily(name, doc)
            h.add_metric([], _buckets(list(hist)), total / 1e9)
            yield h
        yield from self._gpu_families()

    def _gpu_families(self):
        snap = self.pub.last_snapshot
        rec = self.pub.recorder
        gl = ("worker", "gpu")
        g = {
            "util": _gauge("clockwork_gpu_utilization_ratio", "Utilization reported by the worker (NVML/emulated)."),
            "busy": _gauge("clockwork_gpu_busy_ratio",
                           "Fraction of the last interval the GPU spent executing, from Infer results."),
            "pages": _gauge("clockwork_gpu_weights_cache_pages", "Pages in the GPU's weights cache."),
            "free": _gauge("clockwork_gpu_weights_cache_free_pages", "Free pages in the GPU's weights cache."),
            "loaded": _gauge("clockwork_gpu_loaded_models", "Model instances whose weights are on the GPU."),
            "out": _gauge("clockwork_gpu_outstanding_actions", "Actions sent to the GPU and not yet answered."),
            "clock": _gauge("clockwork_gpu_sm_clock_hertz", "SM clock reported by the worker."),
            "temp": _gauge("clockwork_gpu_temperature_celsius", "GPU temperature reported by the worker."),
            "mem": _gauge("clockwork_gpu_memory_used_bytes", "Device memory in use reported by the worker."),
        }
        up = _gauge("clockwork_worker_up", "1 while the worker answers the controller.", ("worker",))
        queue = _gauge("clockwork_request_queue_length", "Requests waiting in the scheduler.", ())
        workers = {}
        if snap is not None:
            for r in snap.gpus:
                workers[r.worker_id] = 1 if r.health in ("ok", "starting") else 0
                if r.gpu_id < 0:
                    continue
                lv = [str(r.worker_id), str(r.gpu_id)]
                if r.utilization >= 0:
                    g["util"].add_metric(lv, r.utilization)
                g["busy"].add_metric(lv, r.busy)
                g["pages"].add_metric(lv, r.total_pages)
                g["free"].add_metric(lv, r.free_pages)
                g["loaded"].add_metric(lv, r.loaded_models)
                g["out"].add_metric(lv, r.outstanding)
                if r.sm_clock_mhz >= 0:
                    g["clock"].add_metric(lv, r.sm_clock_mhz * 1e6)
                if r.temperature_c >= 0:
                    g["temp"].add_metric(lv, r.temperature_c)
                if r.memory_used >= 0:
                    g["mem"].add_metric(lv, r.memory_used)
            if snap.queue >= 0:
                queue.add_metric([], snap.queue)
        for w, v in sorted(workers.items()):
            up.add_metric([str(w)], v)
        yield from g.values()
        yield up
        yield queue
        c = {
            "infer": _counter("clockwork_gpu_infer", "Infer actions completed on the GPU.", gl),
            "load": _counter("clockwork_gpu_weights_load", "LoadWeights actions completed on the GPU.", gl),
            "evict": _counter("clockwork_gpu_weights_evict", "EvictWeights actions completed on the GPU.", gl),
            "err": _counter("clockwork_gpu_action_errors", "Actions for the GPU that failed.", gl),
        }
        for (w, gpu), gc in sorted(list(rec.gpus.items())):
            lv = [str(w), str(gpu)]
            c["infer"].add_metric(lv, gc.infers)
            c["load"].add_metric(lv, gc.loads)
            c["evict"].add_metric(lv, gc.evicts)
            c["err"].add_metric(lv, gc.errors)
        yield from c.values()


class MetricsServer:
    """An HTTP /metrics endpoint (prometheus-client's server thread) for one publisher."""

    def __init__(self, publisher, host: str, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TelemetryCollector(publisher))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ValueError(f"cannot serve Prometheus metrics on {host}:{port}: {e}") from None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
