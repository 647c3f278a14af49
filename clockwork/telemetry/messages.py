"""Telemetry messages: what the controller's PUB socket carries (read by `cw top`).

Every message is ONE frame: a 4-byte topic, a version byte, then a msgpack array (msgspec).
Single frames keep subscribers free to conflate (ZMQ_CONFLATE drops multipart messages), and
each Snapshot is complete (not a delta), so a subscriber that joins late or drops messages is
whole again with the next one. Subscribe to TOPIC_SNAPSHOT with CONFLATE to always read the
latest snapshot, and to TOPIC_EVENTS on a second socket to see every event.

Rates are per second over the snapshot's interval; latencies are milliseconds; -1 means
"unknown" (e.g. no reading from the device yet, or no request in the interval).
"""
from __future__ import annotations

import msgspec

TELEMETRY_VERSION = 1
TOPIC_SNAPSHOT = b"snap"
TOPIC_EVENTS = b"evts"
_VERSION = bytes([TELEMETRY_VERSION])


class GpuSnapshot(msgspec.Struct, array_like=True):
    worker_id: int
    gpu_id: int
    name: str
    address: str                  # the worker's HOST:PORT
    health: str                   # ok | starting | lost | connecting
    busy: float                   # exec time / interval, from InferResults (controller view)
    utilization: float            # the worker's device reading (NVML or emulated); -1: none
    infer_rate: float             # Infer actions completed / s
    request_rate: float           # inputs executed / s (sum of batch sizes)
    load_rate: float              # LoadWeights completed / s
    evict_rate: float             # EvictWeights completed / s
    errors: int                   # actions that failed in the interval
    loaded_models: int            # model instances whose weights are on this GPU
    total_pages: int
    free_pages: int
    outstanding: int              # actions sent to this GPU, not yet answered
    sm_clock_mhz: int = -1
    mem_clock_mhz: int = -1
    temperature_c: int = -1
    memory_used: int = -1
    memory_total: int = -1
    clock_offset_ns: int = 0      # worker clock - controller clock
    rtt_ns: int = 0


class ModelSnapshot(msgspec.Struct, array_like=True):
    model_id: int
    name: str                     # model directory it was loaded from
    rate: float                   # requests answered / s
    goodput: float                # requests answered successfully within their deadline / s
    slo: float                    # goodput / rate (fraction); -1: no request in the interval
    p50_ms: float                 # latency of successful requests in the interval
    p99_ms: float
    max_ms: float
    queue: int                    # requests waiting in the scheduler; -1: scheduler says nothing
    batch_mean: float             # mean size of the batches executed in the interval; 0: none
    batches: list[tuple[int, int]]   # (batch size, Infer count) in the interval
    coldstarts: int               # requests served by a cold start in the interval
    gpus: int                     # GPUs holding this model's weights now
    failures: int                 # requests answered with an error in the interval
    total: int                    # requests answered since the controller started
    total_met: int                # ... successfully within their deadline


class Snapshot(msgspec.Struct, array_like=True):
    seq: int
    wall_ns: int                  # time.time_ns() at the controller
    uptime_s: float
    interval_s: float
    phase: str                    # connecting | loading | running
    scheduler: str
    rate: float                   # totals over every model, same meanings as ModelSnapshot
    goodput: float
    slo: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    queue: int
    total: int
    total_met: int
    models_registered: int        # model instances the controller knows (shown or not)
    failures: dict[str, int]      # status name -> requests in the interval
    gpus: list[GpuSnapshot]
    models: list[ModelSnapshot]   # every model that has seen a request
    scheduler_stats: dict[str, float] = {}


class Event(msgspec.Struct, array_like=True):
    wall_ns: int
    kind: str                     # worker_connected | worker_joined | worker_lost | model_registered | load | evict
    text: str
    worker_id: int = -1
    gpu_id: int = -1
    model_id: int = -1


class Events(msgspec.Struct, array_like=True):
    seq: int
    events: list[Event]
    dropped: int = 0              # events not sent since the last message (rate limit)


class TelemetryError(ValueError):
    """A frame that is not a telemetry message of this version."""


_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
_events_decoder = msgspec.msgpack.Decoder(Events)


def encode(msg: Snapshot | Events) -> bytes:
    topic = TOPIC_SNAPSHOT if type(msg) is Snapshot else TOPIC_EVENTS
    return topic + _VERSION + _encoder.encode(msg)


def decode(frame: bytes) -> Snapshot | Events:
    topic, version, body = frame[:4], frame[4:5], frame[5:]
    if version != _VERSION:
        raise TelemetryError(f"telemetry version mismatch: got {version[0] if version else None}, "
                             f"expected {TELEMETRY_VERSION}")
    try:
        if topic == TOPIC_SNAPSHOT:
            return _snapshot_decoder.decode(body)
        if topic == TOPIC_EVENTS:
            return _events_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise TelemetryError(f"malformed telemetry message: {e}") from None
    raise TelemetryError(f"unknown telemetry topic {topic!r}")
