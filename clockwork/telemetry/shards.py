"""The telemetry of a sharded controller (`cw controller --shards K`) as one view, for `cw top`.

Each shard publishes its own Snapshot on its own port; `combine` makes one Snapshot of their
latest ones, saying only what the parts support:
- rates, counts, queues and failures are summed (each shard's requests are its own);
- SLO attainment is the summed goodput over the summed rate (not a mean of fractions);
- max latency is the largest max; p50 and p99 are the WORST shard's: percentiles of different
  request populations cannot be combined from the percentiles alone, and a mean of them means
  nothing. `cw top` labels them so and shows each shard's own beside them;
- GPUs and models are listed shard after shard (model ids already name their shard; the GPUs'
  shards are returned beside them, since worker ids repeat across shards);
- the phase is the least advanced shard's, the uptime the youngest shard's.

Pure logic: no sockets, no clock.
"""
from __future__ import annotations

from . import messages as tm

PHASES = ("connecting", "loading", "running")


def _worst(values) -> float:
    known = [v for v in values if v >= 0]
    return max(known) if known else -1.0


def _phase_rank(phase: str) -> int:
    return PHASES.index(phase) if phase in PHASES else -1


def combine(snapshots: list[tm.Snapshot | None]) -> tuple[tm.Snapshot, list[int]]:
    """One Snapshot over the shards' latest ones (None: none received from that shard yet;
    at least one must be there), and the shard of each of its GPUs, in order."""
    present = [(k, s) for k, s in enumerate(snapshots) if s is not None]
    parts = [s for _, s in present]
    rate = sum(s.rate for s in parts)
    goodput = sum(s.goodput for s in parts)
    queues = [s.queue for s in parts if s.queue >= 0]
    failures: dict[str, int] = {}
    for s in parts:
        for status, n in s.failures.items():
            failures[status] = failures.get(status, 0) + n
    merged = tm.Snapshot(
        seq=max(s.seq for s in parts), wall_ns=max(s.wall_ns for s in parts),
        uptime_s=min(s.uptime_s for s in parts), interval_s=max(s.interval_s for s in parts),
        phase=min((s.phase for s in parts), key=_phase_rank),
        scheduler="/".join(sorted({s.scheduler for s in parts})),
        rate=rate, goodput=goodput, slo=goodput / rate if rate > 0 else -1.0,
        p50_ms=_worst(s.p50_ms for s in parts), p99_ms=_worst(s.p99_ms for s in parts),
        max_ms=_worst(s.max_ms for s in parts),
        queue=sum(queues) if queues else -1,
        total=sum(s.total for s in parts), total_met=sum(s.total_met for s in parts),
        models_registered=sum(s.models_registered for s in parts), failures=failures,
        gpus=[g for s in parts for g in s.gpus], models=[m for s in parts for m in s.models])
    return merged, [k for k, s in present for _ in s.gpus]
