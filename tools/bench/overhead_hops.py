#!/usr/bin/env python3
"""Where the overhead at concurrency 1 goes, hop by hop.

The same closed loop as overhead.py (one client, one model, one emulated GPU), with every hop
of each Infer timestamped: the client here, the controller through tools/bench/hop_trace.py
(which wraps a few of its methods from outside; clockwork itself is unchanged), the worker
through the raw timestamps its results carry. All processes share the host's monotonic clock
(the emulated worker's clock offset is 0), so the hops are differences of one clock. Prints,
per hop, the median, p90 and p99 in us, and the medians' sum beside the measured overhead.

    python tools/bench/overhead_hops.py --requests 2000
    python tools/bench/overhead_hops.py --requests 2000 --set controller.spin_us=50
    python tools/bench/overhead_hops.py --requests 2000 --tree ../main      # another checkout
"""
from __future__ import annotations

import argparse
import bisect
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

# --tree: measure another checkout's clockwork (e.g. main's, for a before/after) with this tool
TREE = Path(sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv[:-1] else
            Path(__file__).resolve().parents[2]).resolve()
sys.path.insert(0, str(TREE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(TREE)] + [p for p in [os.environ.get("PYTHONPATH")] if p])

from clockwork.client import api  # noqa: E402
from clockwork.client.api import Client, Future  # noqa: E402
from clockwork.local import PY, LocalCluster, quick_config  # noqa: E402
from clockwork.percentiles import percentile as pct  # noqa: E402

TRACER = str(Path(__file__).resolve().parent / "hop_trace.py")

HOPS = [   # (name, from, to): columns of one request's row
    ("client: call -> request sent", "call", "c_sent"),
    ("wire: client -> controller wakes", "c_sent", "ctl_wake_req"),
    ("controller: wake -> request admitted", "ctl_wake_req", "req"),
    ("controller: admitted -> Infer made (INFER4)", "req", "act"),
    ("controller: Infer made -> actions sent", "act", "act_sent"),
    ("wire: controller -> worker receives", "act_sent", "w_received"),
    ("worker: received -> exec begins (input copy 13 us)", "w_received", "w_exec_begin"),
    ("(exec, not overhead)", "w_exec_begin", "w_exec_end"),
    ("worker: exec ends -> worker wakes", "w_exec_end", "w_wake"),
    ("worker: wakes -> result sent (output copy 2 us)", "w_wake", "w_sent"),
    ("wire: worker -> controller wakes", "w_sent", "ctl_wake_res"),
    ("controller: wake -> result read", "ctl_wake_res", "res"),
    ("controller: result read -> answer made", "res", "ans"),
    ("controller: answer made -> answers sent", "ans", "ans_sent"),
    ("wire: controller -> client wakes", "ans_sent", "c_wake"),
    ("client: wakes -> call returns", "c_wake", "done"),
]


SEGMENTS = [   # the same, in legs whose ends do not depend on which thread a send preempted
    ("client call -> controller admitted it", "call", "req"),
    ("admitted -> worker received the Infer", "req", "w_received"),
    ("worker: received -> exec, exec -> result sent", None, None),
    ("result sent -> controller read it", "w_sent", "res"),
    ("result read -> client call returns", "res", "done"),
]


def parse_set(items):
    """--set section.key=value (several) -> {section: {key: value}} for quick_config."""
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            v = int(value)
        except ValueError:
            try:
                v = float(value)
            except ValueError:
                v = value
        out.setdefault(section, {})[name] = v
    return out


class TracedCluster(LocalCluster):
    """The controller runs under hop_trace.py; the worker as usual."""

    def __init__(self, trace_out: Path, pin: list[int] | None = None, **kw):
        super().__init__(**kw)
        self.trace_out = trace_out
        self.pin = pin
        self.cpu = None

    def env(self) -> dict:
        env = super().env()
        env["HOP_TRACE_OUT"] = str(self.trace_out)
        if self.cpu is not None:
            env["HOP_TRACE_CPU"] = str(self.cpu)
        return env

    def start_worker(self, index=0):
        self.trace_out, keep = self.trace_out.with_suffix(".worker"), self.trace_out
        self.cpu = self.pin[1] if self.pin else None
        try:
            return super().start_worker(index)
        finally:
            self.trace_out = keep

    def start_controller(self):
        self.cpu = self.pin[0] if self.pin else None
        return super().start_controller()

    def _spawn(self, name, args):
        if args[:2] == [PY, "-m"]:
            args = [PY, TRACER, *args[2:]]
        return super()._spawn(name, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config values for the controller, worker and client")
    ap.add_argument("--tree", default=str(TREE), help="the checkout whose clockwork runs (default: this one)")
    ap.add_argument("--pin", default="", metavar="CTL,WORKER,CLIENT",
                    help="pin the controller, the worker and this client each to a core, or cores (2+3), "
                         "with their ZeroMQ I/O threads")
    args = ap.parse_args()
    pin = args.pin.split(",") if args.pin else None
    if pin:
        os.sched_setaffinity(0, {int(c) for c in pin[2].split("+")})
    extra = parse_set(args.set)
    cfg = quick_config(3600, extra)
    client_spin = extra.get("client", {}).get("spin_us")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hops-") as tmp:
        trace = Path(tmp) / "controller.msgpack"
        with TracedCluster(trace, pin=pin, gpus=1, config_file=cfg) as cluster:
            client = Client(cluster.address, log=lambda *_: None, spin_us=client_spin)
            mid, _, _ = client.load_model(args.model, copies=1)
            client.ls()
            for _ in range(200):            # warm-up: weights loaded, estimates settled
                client.infer(mid)
            stamp = {}
            real_flush, real_wait = client._flush, api.wait_ready

            def flush():
                real_flush()
                stamp["c_sent"] = time.monotonic_ns()

            def wait_ready(*a, **kw):
                ready = real_wait(*a, **kw)
                stamp["c_wake"] = time.monotonic_ns()
                return ready
            client._flush = flush
            api.wait_ready = wait_ready
            gc.collect()
            gc.freeze()
            for _ in range(args.requests):
                stamp.clear()
                fut = Future()
                call = time.monotonic_ns()
                rid = client.infer_async(mid, fut._set)
                while not fut.done():
                    client.poll(0.05)
                done = time.monotonic_ns()
                if fut.response.status == 0:
                    rows.append(dict(rid=rid, call=call, done=done, exec=fut.response.exec_ns,
                                     c_sent=stamp.get("c_sent", call), c_wake=stamp.get("c_wake", done)))
            api.wait_ready = real_wait
            client.close()
        events = msgspec.msgpack.decode(trace.read_bytes())
        worker_events = msgspec.msgpack.decode(trace.with_suffix(".worker").read_bytes())
        if os.environ.get("HOP_TRACE_KEEP"):
            Path(os.environ["HOP_TRACE_KEEP"]).write_bytes(trace.read_bytes())
    cfg.unlink()
    joined = join(rows, events, worker_events)
    report(args, joined, len(rows))


def join(rows, events, worker_events):
    """Each client request's row completed with the controller's and worker's stamps."""
    wakes = sorted(e[2] for e in worker_events if e[0] == "wwake")
    req = {e[1]: e for e in events if e[0] == "req"}
    ans = {e[1]: e for e in events if e[0] == "ans"}
    acts = sorted((e for e in events if e[0] == "act"), key=lambda e: e[2])
    act_times = [e[2] for e in acts]
    sent = sorted(e[2] for e in events if e[0] == "sent")
    flushes = sorted(e[2] for e in events if e[0] == "flush")
    res = {e[1]: e for e in events if e[0] == "res"}
    out = []
    for r in rows:
        q, a = req.get(r["rid"]), ans.get(r["rid"])
        if q is None or a is None:
            continue
        i = bisect.bisect_left(act_times, q[2])
        if i == len(acts) or acts[i][2] > a[2]:
            continue
        act = acts[i]
        rs = res.get(act[1])
        j = bisect.bisect_left(sent, act[2])
        k = bisect.bisect_left(flushes, a[2])
        if rs is None or j == len(sent) or k == len(flushes):
            continue
        _, _, t_res, wake_res, received, _cin, exec_begin, exec_end, _cout, w_sent = rs
        w = bisect.bisect_right(wakes, w_sent) - 1
        if w < 0 or wakes[w] < exec_end:
            continue
        r.update(req=q[2], ctl_wake_req=q[3], act=act[2], earliest=act[4], latest=act[5],
                 act_sent=sent[j], w_received=received, w_exec_begin=exec_begin, w_exec_end=exec_end,
                 w_sent=w_sent, w_wake=wakes[w], ctl_wake_res=wake_res, res=t_res, ans=a[2], ans_sent=flushes[k])
        out.append(r)
    return out


def report(args, rows, n):
    print(f"# overhead hop by hop: {args.model}, {n} closed-loop requests ({len(rows)} traced), tree {TREE}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
          + (f", set {' '.join(args.set)}" if args.set else "") + (f", pinned {args.pin}" if args.pin else ""))
    print(f"{'hop':<55} {'p50':>8} {'p90':>8} {'p99':>8}   (us)")
    total = 0.0
    for name, a, b in HOPS:
        d = [(r[b] - r[a]) / 1e3 for r in rows]
        if not name.startswith("("):
            total += pct(d, 50)
        print(f"{name:<55} {pct(d, 50):8.1f} {pct(d, 90):8.1f} {pct(d, 99):8.1f}")
    print("legs (a send can preempt its sender on a busy machine: these legs do not depend on it)")
    for name, a, b in SEGMENTS:
        if a is None:
            d = [(r["w_exec_begin"] - r["w_received"] + r["w_sent"] - r["w_exec_end"]) / 1e3 for r in rows]
        else:
            d = [(r[b] - r[a]) / 1e3 for r in rows]
        print(f"{name:<55} {pct(d, 50):8.1f} {pct(d, 90):8.1f} {pct(d, 99):8.1f}")
    ahead = [(r["earliest"] - r["act"]) / 1e3 for r in rows]
    print(f"{'(Infer earliest - when made: planned wait)':<55} {pct(ahead, 50):8.1f} {pct(ahead, 90):8.1f} "
          f"{pct(ahead, 99):8.1f}")
    over = [(r["done"] - r["call"] - r["exec"]) / 1e3 for r in rows]
    rtt = [(r["done"] - r["call"]) / 1e3 for r in rows]
    print(f"sum of the hops' medians {total:.1f} us; overhead (call -> return - exec) p50={pct(over, 50):.1f} "
          f"p99={pct(over, 99):.1f} p99.9={pct(over, 99.9):.1f} us; round trip p50={pct(rtt, 50):.1f} us")


if __name__ == "__main__":
    main()
