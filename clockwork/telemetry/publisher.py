"""The controller's telemetry publisher: a PUB socket that `cw top` (or anything) subscribes to.

About once a second it publishes a complete Snapshot (every GPU and every model that has seen a
request), and every housekeeping call (~50 ms) the Events gathered since the last one. It never
slows the controller down:
  - the hot-path hooks only bump counters (see recorder.py);
  - the PUB socket has a small send high-water mark and sends without blocking: a subscriber
    that cannot keep up loses messages instead of growing the controller's memory, and since
    every snapshot is complete it is whole again with the next one it receives;
  - a snapshot is built a chunk of models at a time over successive housekeeping calls, so even
    with thousands of active models no single call holds the event loop for long.

It also serves the Prometheus endpoint (metrics.py) when [controller] metrics_port is set.

Scheduler numbers: every int/float value of Scheduler.stats() is passed on in
`scheduler_stats`; "queued" (int) is the total queue length and "queues" (or
"queued_by_model"; dict model id -> int) the per-model queue lengths, when the scheduler
provides them.
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import zmq

from ..percentiles import histogram_percentile
from ..status import describe
from ..transport.sockets import tcp
from . import messages as tm
from .recorder import BOUNDS, Recorder

PUBLISH_INTERVAL_NS = 1_000_000_000
MODELS_PER_STEP = 200          # models turned into snapshot rows per housekeeping call (~2 ms)
SNDHWM = 8                     # messages queued per subscriber before PUB drops for it
MAX_EVENTS_PER_MESSAGE = 64


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _per_s(n: int, span_s: float) -> float:
    return round(n / span_s, 2) if span_s > 0 else 0.0


def percentiles(counts: list[int], qs: tuple[float, ...], hi: int) -> list[float]:
    """Latency percentiles (ms) from bucket counts: each bucket's upper bound, capped by the
    observed maximum `hi`; -1 each when there are no samples."""
    if not any(counts):
        return [-1.0] * len(qs)
    return [_ms(histogram_percentile(counts, q, BOUNDS, hi)) for q in qs]


class WorkerView(NamedTuple):
    """One worker as telemetry sees it."""
    id: int
    address: str
    health: str                   # connecting | starting | ok | lost
    state: object                 # its WorkerState (None while connecting)
    readings: list                # its last GpuReadings ([] once lost: they are stale)
    in_flight: int                # actions not yet answered
    clock_offset_ns: int
    rtt_ns: int


class ControllerView(NamedTuple):
    """What the publisher reads of the controller, built by Controller.telemetry_view() once per
    snapshot: nothing else of the controller is touched."""
    phase: str
    scheduler_name: str
    models: dict                  # model id -> ModelInfo (read only)
    workers: list                 # WorkerView
    outstanding: dict             # (worker id, gpu id) -> actions in flight
    scheduler_stats: dict | None  # Scheduler.stats(); None: it raised


class TelemetryPublisher:
    """Built by the controller edge (server.py) when a telemetry or metrics port is configured.

    request_done(req, status, latency_ns, now_ns, exec_ns=0)  per answered request (hot path)
    action_done(worker, action, result, now_ns)               per completed action (hot path)
    event(kind, text, worker_id=-1, model_id=-1)              worker connected/joined/lost, model registered
    maybe_publish(now_ns)                                     from housekeeping, every ~50 ms
    close()
    """

    def __init__(self, controller, ctx: zmq.Context, host: str, port: int,
                 interval_ns: int = PUBLISH_INTERVAL_NS, security=None):
        """`controller`: anything with clock(), models (id -> ModelInfo, for event texts) and
        telemetry_view() -> ControllerView; `security`: CURVE for the PUB socket, or None."""
        self.controller = controller
        self.clock = controller.clock
        self.interval_ns = interval_ns
        self.recorder = rec = Recorder()
        # the hot-path hooks go straight to the recorder (no extra call layer)
        self.request_done = rec.request_done
        self.sock = None
        if port:
            sock = ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, SNDHWM)
            if security is not None:      # CURVE: only clients with accepted keys may watch
                security.server(sock, "controller")
            try:
                sock.bind(tcp(host, port))
            except zmq.ZMQError as e:
                sock.close(0)
                raise ValueError(f"cannot publish telemetry on {host}:{port}: {e}") from None
            self.sock = sock
        self.port = port
        self.started = self.clock()
        self.seq = 0
        self.next_publish = 0
        self.last_snapshot: tm.Snapshot | None = None   # read by the metrics thread
        self.sent = 0                                   # messages handed to the socket
        self._build = None                              # snapshot in progress (a generator)
        self._last_t = 0
        self._names: dict[int, str] = {}                # model id -> short name
        self.metrics = None
        metrics_port = controller.config["controller"].get("metrics_port", 0)   # (a plain setting)
        if metrics_port:
            try:
                from .metrics import MetricsServer
            except ImportError as e:   # say so rather than let the edge drop telemetry silently
                self.close()
                raise ValueError(f"metrics_port is set but {e.name or e} is not installed "
                                 f"(pip install prometheus-client)") from None
            try:
                self.metrics = MetricsServer(self, host, metrics_port)
            except ValueError:
                self.close()
                raise

    # ------------------------------------------------------------------ hooks

    def action_done(self, worker, action, result, now: int) -> None:
        self.recorder.action_done(worker.id, action, result, now)

    def event(self, kind: str, text: str, worker_id: int = -1, model_id: int = -1) -> None:
        if kind in ("worker_connected", "worker_lost"):
            self.recorder.worker_reset(worker_id)   # Reset on connect, gone when lost: caches empty
        self.recorder.event(self.clock(), kind, text, worker_id, -1, model_id)

    def maybe_publish(self, now: int) -> None:
        if self.recorder.events:
            self._publish_events(now)
        if self._build is None and now >= self.next_publish:
            self.next_publish = now + self.interval_ns
            self._build = self._snapshot(now)
        if self._build is not None:
            snap = next(self._build, None)
            if snap is not None:
                self._build = None
                self.last_snapshot = snap
                self._send(snap)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    # ------------------------------------------------------------------ sending

    def _send(self, msg) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(tm.encode(msg), zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:   # PUB drops rather than blocks; kept for safety with odd socket options
            pass

    def _publish_events(self, now: int) -> None:
        rec = self.recorder
        wall_now = time.time_ns()
        models = self.controller.models
        out = []
        while rec.events and len(out) < MAX_EVENTS_PER_MESSAGE:
            t, kind, text, w, g, m = rec.events.popleft()
            if not text:
                src = models.get(m)
                name = os.path.basename(src.source.rstrip("/")) if src is not None else "?"
                text = f"{kind} model {m} ({name}) on W{w}-GPU{g}"
            out.append(tm.Event(wall_now - (now - t), kind, text, w, g, m))
        dropped = rec.events_dropped + len(rec.events)
        rec.events_dropped = 0
        rec.events.clear()
        self.seq += 1
        self._send(tm.Events(self.seq, out, dropped))

    # ------------------------------------------------------------------ snapshots

    @staticmethod
    def _scheduler_stats(raw: dict | None) -> tuple[dict[str, float], int, dict]:
        if raw is None:     # the scheduler's stats() raised (the controller caught it)
            return {"stats_error": 1.0}, -1, {}
        scalars = {str(k): float(v) for k, v in raw.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        total = raw.get("queued", -1)
        by_model = raw.get("queued_by_model", raw.get("queues", {}))
        return scalars, total if isinstance(total, int) else -1, by_model if isinstance(by_model, dict) else {}

    def _gpus(self, c: ControllerView, now: int, span: float) -> tuple[list[tm.GpuSnapshot], dict[int, int]]:
        rec = self.recorder
        outstanding = c.outstanding
        holders: dict[int, int] = {}
        rows = []
        for w in c.workers:
            st = w.state
            if st is None:
                rows.append(tm.GpuSnapshot(w.id, -1, "", w.address, "connecting", 0.0, -1.0, 0.0, 0.0,
                                           0.0, 0.0, 0, 0, 0, 0, w.in_flight))
                continue
            health = w.health
            readings = {r.gpu_id: r for r in w.readings}
            for gs in st.gpus:
                g = rec.gpu(w.id, gs.gpu_id)
                cur = (g.infers, g.inferences, g.exec_ns, g.loads, g.evicts, g.errors)
                d = [a - b for a, b in zip(cur, g.prev)]
                g.prev = cur
                pages = 0
                for m in g.loaded:
                    holders[m] = holders.get(m, 0) + 1
                    info = c.models.get(m)
                    pages += info.num_pages if info is not None else 0
                r = readings.get(gs.gpu_id)
                row = tm.GpuSnapshot(
                    w.id, gs.gpu_id, gs.name, w.address, health,
                    round(min(1.0, d[2] / (span * 1e9)), 4) if span > 0 else 0.0,
                    float(r.utilization) if r is not None else -1.0,
                    _per_s(d[0], span), _per_s(d[1], span), _per_s(d[3], span), _per_s(d[4], span), d[5], len(g.loaded),
                    gs.total_pages, max(0, gs.total_pages - pages),
                    outstanding.get((w.id, gs.gpu_id), 0),
                    clock_offset_ns=w.clock_offset_ns, rtt_ns=w.rtt_ns)
                if r is not None:
                    row.sm_clock_mhz = r.sm_clock_mhz
                    row.mem_clock_mhz = r.mem_clock_mhz
                    row.temperature_c = r.temperature_c
                    row.memory_used = r.memory_used
                    row.memory_total = r.memory_total
                rows.append(row)
        return rows, holders

    def _model_row(self, m, now: int, since: int, queue: int, holders: int, name: str) -> tm.ModelSnapshot:
        """One model's row for the interval since its last row (or `since`, for a new model)."""
        cur = (m.requests, m.met, m.coldstarts, m.requests - m.successes)
        d = [a - b for a, b in zip(cur, m.prev)]
        span = (now - (m.prev_t or since)) / 1e9
        m.prev = cur
        m.prev_t = now
        p50, p99 = percentiles(m.hist, (50, 99), m.lat_max)
        max_ms = _ms(m.lat_max) if m.lat_max else -1.0
        if d[0]:
            m.hist[:] = _ZEROS
            m.lat_max = 0
        batches = sorted(m.batch_hist.items())
        m.batch_hist.clear()
        n_batches = sum(n for _, n in batches)
        return tm.ModelSnapshot(
            m.model_id, name, round(d[0] / span, 2) if span > 0 else 0.0,
            round(d[1] / span, 2) if span > 0 else 0.0, round(d[1] / d[0], 6) if d[0] else -1.0,
            p50, p99, max_ms, queue,
            round(sum(b * n for b, n in batches) / n_batches, 2) if n_batches else 0.0,
            batches, d[2], holders, d[3], m.requests, m.met)

    def _snapshot(self, now: int):
        """Generator: yields None while building (MODELS_PER_STEP models a step), then the Snapshot."""
        c = self.controller.telemetry_view()
        rec = self.recorder
        since = self._last_t or self.started
        span = (now - since) / 1e9
        self._last_t = now
        sched, queued, queued_by_model = self._scheduler_stats(c.scheduler_stats)
        gpus, holders = self._gpus(c, now, span)
        p50, p99 = percentiles(rec.total_hist, (50, 99), rec.total_max)
        max_ms = _ms(rec.total_max) if rec.total_max else -1.0
        rec.total_hist[:] = _ZEROS
        rec.total_max = 0
        failures = {describe(k): v for k, v in sorted(rec.by_status.items())}
        rec.by_status.clear()
        models = []
        rows = 0
        rate = goodput = 0.0
        for mid, m in list(rec.models.items()):
            if not m.requests:
                continue
            name = self._names.get(mid)
            if name is None:
                info = c.models.get(mid)
                name = os.path.basename(info.source.rstrip("/")) if info is not None else ""
                if info is not None:
                    self._names[mid] = name
            row = self._model_row(m, now, since, int(queued_by_model.get(mid, -1)), holders.get(mid, 0), name)
            models.append(row)
            rate += row.rate
            goodput += row.goodput
            rows += 1
            if rows % MODELS_PER_STEP == 0:
                yield None
                now = self.clock()   # later rows cover the requests answered meanwhile
        total = sum(m.total for m in models)
        total_met = sum(m.total_met for m in models)
        if queued < 0 and queued_by_model:
            queued = int(sum(queued_by_model.values()))
        self.seq += 1
        yield tm.Snapshot(
            self.seq, time.time_ns(), round((now - self.started) / 1e9, 3), round(span, 3), c.phase,
            c.scheduler_name, round(rate, 2), round(goodput, 2),
            round(goodput / rate, 6) if rate > 0 else -1.0, p50, p99, max_ms, queued, total, total_met,
            len(c.models), failures, gpus, models, sched)


_ZEROS = [0] * (len(BOUNDS) + 1)
