#!/usr/bin/env python3
"""Wire codec cost per request: one InferRequest per message vs InferRequestBatch of N, and a
columnar layout (one list per field, no struct per request) as the alternative issue 13 asked
to measure. Decode is what the controller pays per request before admission; encode is the
client's. Pure CPU, no sockets: prints the median of --repeat timings in us per request.

    python tools/bench/wire_codec.py --batch 16,256
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.transport import schema as s  # noqa: E402


class Columns(msgspec.Struct, array_like=True):
    """A hypothetical columnar batch: the InferRequest fields as parallel lists."""
    request_id: list[int]
    model_id: list[int]
    batch_size: list[int]
    slo_factor: list[float]
    slo_ns: list[int]
    user_id: list[int]
    epoch: list[int]
    sent_ns: list[int]


def per_request_us(fn, n_requests: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / n_requests * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="16,256")
    ap.add_argument("--messages", type=int, default=200, help="messages per timing")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    epoch, now = (1 << 62) + 12345, 1_234_567_890_123
    print(f"# wire_codec: us per request, median of {args.repeat}")
    print(f"{'layout':>22} {'encode':>7} {'decode':>7} {'decode+fields':>14}")
    reqs = [s.InferRequest(i, i % 256, 1, 0.0, 100_000_000, 0, epoch, now + i) for i in range(max(
        int(b) for b in args.batch.split(",")))]
    frames = [s.encode(r) for r in reqs[:args.messages]]
    dec = s.REQUEST_DECODER

    def touch(msgs):         # what admission reads of each request
        for m in msgs:
            m.request_id, m.model_id, m.batch_size, m.slo_ns, m.epoch, m.sent_ns
    n = len(frames)
    enc = per_request_us(lambda: [s.encode(r) for r in reqs[:n]], n, args.repeat)
    d = per_request_us(lambda: [s.decode(f, dec) for f in frames], n, args.repeat)
    df = per_request_us(lambda: touch([s.decode(f, dec) for f in frames]), n, args.repeat)
    print(f"{'single':>22} {enc:7.2f} {d:7.2f} {df:14.2f}")
    col_dec = msgspec.msgpack.Decoder(Columns)
    for b in (int(x) for x in args.batch.split(",")):
        part = reqs[:b]
        msgs = max(1, args.messages * 1 // b) or 1
        batch = [s.encode(s.InferRequestBatch(part)) for _ in range(msgs)]
        total = msgs * b
        enc = per_request_us(lambda: [s.encode(s.InferRequestBatch(part)) for _ in range(msgs)], total, args.repeat)
        d = per_request_us(lambda: [s.decode(f, dec) for f in batch], total, args.repeat)
        df = per_request_us(lambda: [touch(s.decode(f, dec).requests) for f in batch], total, args.repeat)
        print(f"{f'InferRequestBatch {b}':>22} {enc:7.2f} {d:7.2f} {df:14.2f}")
        cols = Columns(*[[getattr(r, f) for r in part] for f in Columns.__struct_fields__])
        raw = [msgspec.msgpack.encode(cols) for _ in range(msgs)]

        def col_touch(c):
            for i in range(len(c.request_id)):
                c.request_id[i], c.model_id[i], c.batch_size[i], c.slo_ns[i], c.epoch[i], c.sent_ns[i]
        enc = per_request_us(lambda: [msgspec.msgpack.encode(Columns(*[[getattr(r, f) for r in part]
                                                                    for f in Columns.__struct_fields__]))
                                      for _ in range(msgs)], total, args.repeat)
        d = per_request_us(lambda: [col_dec.decode(f) for f in raw], total, args.repeat)
        df = per_request_us(lambda: [col_touch(col_dec.decode(f)) for f in raw], total, args.repeat)
        print(f"{f'columns {b}':>22} {enc:7.2f} {d:7.2f} {df:14.2f}")


if __name__ == "__main__":
    main()
