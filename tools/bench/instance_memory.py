#!/usr/bin/env python3
"""Memory and time per model instance: what registering N copies of one model costs a worker
runtime (LoadModelFromDisk) and the controller's model registry, and what each instance then
used (asked for) adds. tracemalloc counts the Python allocations made; CPU is process time.

    python tools/bench/instance_memory.py --copies 100000,1000000 --used 10000

Runs against any checkout (PYTHONPATH): where the LoadModelFromDisk action has no `compact`
field (before issue 14's ranges) the worker answers one ModelInfo per copy and the controller
side is a dict of them, as the controller then kept.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.model.emulated import EmulatedBackend  # noqa: E402
from clockwork.model.zoo import write_emulated_zoo  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from clockwork.worker.runtime import WorkerRuntime  # noqa: E402

PAGE = 16 * 1024 * 1024
POOL = 512 * 1024 * 1024
COMPACT = "compact" in s.LoadModelFromDisk.__struct_fields__


def measure(fn):
    """(result, bytes allocated by fn and still held, CPU s)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    c0 = time.process_time()
    out = fn()
    cpu = time.process_time() - c0
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return out, used, cpu


def worker(zoo: Path, copies: int, used: int) -> None:
    sent = []
    rt = WorkerRuntime(EmulatedBackend(8, PAGE, 1376, POOL, POOL), zoo, lambda r, m, d: sent.append(m),
                       PAGE, 1376, POOL, POOL)
    kw = {"compact": True} if COMPACT else {}
    _, load_b, load_cpu = measure(lambda: rt.handle(s.LoadModelFromDisk(0, 0, 0, 0, "resnet50", copies, **kw),
                                                    [], None, 1))
    res = sent.pop()
    wire = len(s.encode(res))
    step = max(1, copies // used)
    _, use_b, _ = measure(lambda: [rt.models.get(mid) for mid in range(0, copies, step)[:used]])
    print(f"worker runtime, {copies:>9,} copies: LoadModelFromDisk {load_b / copies:8.1f} B/instance "
          f"({load_b / 2**20:7.1f} MiB), {1e6 * load_cpu / copies:6.2f} us CPU/instance, answer "
          f"{len(res.models)} ModelInfo(s), {wire:,} bytes; each instance used "
          f"adds {use_b / used:.0f} B (its first action makes its object)", flush=True)
    return res


def controller(res, copies: int, used: int) -> None:
    """What the controller holds once it decoded the answer (from its bytes, as it does)."""
    frame = s.encode(res)
    if COMPACT:
        from clockwork.controller.model_loading import answered_models
        reg, reg_b, reg_cpu = measure(lambda: answered_models(s.decode(frame, s.RESULT_DECODER), 0, copies))
    else:
        reg, reg_b, reg_cpu = measure(lambda: {m.model_id: m for m in s.decode(frame, s.RESULT_DECODER).models})
    step = max(1, copies // used)
    _, use_b, _ = measure(lambda: [reg[mid] for mid in range(0, copies, step)[:used]])
    print(f"controller registry, {copies:>9,}: {reg_b / copies:8.1f} B/instance ({reg_b / 2**20:7.1f} MiB), "
          f"{1e6 * reg_cpu / copies:6.2f} us CPU/instance; each instance looked up adds {use_b / used:.0f} B",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", default="100000,1000000")
    ap.add_argument("--used", type=int, default=10_000, help="instances then used (looked up, loaded)")
    a = ap.parse_args()
    print(f"compact ranges: {COMPACT}")
    with tempfile.TemporaryDirectory() as tmp:
        write_emulated_zoo(Path(tmp), "h200-fp32", page_size=PAGE, log=lambda *_: None)
        for n in [int(x) for x in a.copies.split(",")]:
            res = worker(Path(tmp), n, min(a.used, n))
            controller(res, n, min(a.used, n))


if __name__ == "__main__":
    main()
