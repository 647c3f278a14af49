#!/usr/bin/env python3
"""Controller cost: controller CPU microseconds per request, and the highest open-loop rate at
which >= 99.9% of requests meet their SLO, against one emulated worker with N GPUs.

Each step runs an open-loop Poisson load (no inputs: this measures scheduling, not copying)
spread evenly over many resnet50 copies, and reads the controller process's CPU time
(utime + stime from /proc) before and after: the whole process ("ctl us/req": the Python
event loop plus ZeroMQ's I/O thread doing the TCP work), the Python thread alone ("py"), and
(--threads) every thread by name. The clients are this process (--clients 1) or that many
client processes sharing the rate; worker, controller and clients share the machine's cores,
which the figures printed say.

--wire single sends one ZeroMQ message per request and per answer (the format before request
and reply batching), for the ratio; --worker-wire single likewise one message per action and
per result between controller and worker (before action and result batching); --shards K runs
a sharded controller (`cw controller --shards K`: K scheduler processes over the --workers
worker processes, the copies loaded in K equal blocks, one per shard; controller CPU summed over
every shard process and the supervisor, per thread name as before); --py-spy FILE records the
controller with py-spy (on PATH) during the last step, writes its collapsed stacks to FILE and prints where the time went.

    python tools/bench/controller_cost.py --gpus 8 --rates 500,1000,2000,4000
    python tools/bench/controller_cost.py --gpus 64 --copies 256 --rates 3000 --wire single --threads
    python tools/bench/controller_cost.py --gpus 256 --copies 4096 --workers 4 --shards 4 --rates 40000,100000 --clients 8 --threads
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.client.api import Client  # noqa: E402
from clockwork.client.shards import make_client  # noqa: E402
from clockwork.local import LocalCluster, quick_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float:
    """Whole process: the Python thread plus ZeroMQ's I/O threads."""
    return _cpu(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """The Python event loop alone (its thread id is the pid)."""
    return _cpu(f"/proc/{pid}/task/{pid}/stat")


def controller_pids(pid: int) -> list[int]:
    """The controller process and its shard processes (`cw controller --shards`: its children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *map(int, f.read().split())]
    except OSError:
        return [pid]


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed; the main thread is 'python')."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = "python" if tid == str(pid) else f.read().strip()
            out[name] = out.get(name, 0.0) + _cpu(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            pass        # the thread ended meanwhile
    return out


def _client_process(address, model_ids, rate, seconds, slo_ns, seed, coalesce, burst, ready, go, results):
    """One of --clients N sender processes: connect, wait for the go, send, report."""
    client = make_client(address, log=lambda *_: None, coalesce=coalesce)
    client.connect()
    ready.put(True)
    go.wait()
    results.put(send_load(client, model_ids, rate, seconds, slo_ns, random.Random(seed), burst))
    client.close()


def send_load(client: Client, model_ids: list[int], rate: float, seconds: float, slo_ns: int,
              rng: random.Random, burst: int = 1) -> dict:
    """Open-loop Poisson sends for `seconds` (in bursts of `burst` requests at once), then wait
    for the answers."""
    lat = []
    statuses = {}

    def done(resp, data, latency_s):
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        if resp.status == 0:
            lat.append(latency_s)

    t0 = time.perf_counter()
    next_t = t0
    sent = 0
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while next_t <= now:
            for _ in range(burst):
                client.infer_async(rng.choice(model_ids), done, slo_ns=slo_ns, timeout_s=5.0)
            sent += burst
            next_t += rng.expovariate(rate / burst)
        client.poll(min(max(0.0, next_t - time.perf_counter()), 0.005))
    client.drain(10.0)
    return {"sent": sent, "statuses": statuses, "lat": lat}


def run_step(client: Client, pids: list[int], model_ids: list[int], rate: float, seconds: float,
             slo_ns: int, rng: random.Random, clients: int = 1, coalesce: bool = True, burst: int = 1,
             edges: list | None = None, worker_pids: tuple = ()) -> dict:
    """One load step; `pids`: the controller's processes (summed; the Python thread is each
    one's main thread). `edges` [(pid, address)]: the clients connect to these edge processes
    (round robin) instead of to the controller, and their CPU is counted too."""
    import multiprocessing as mp
    procs = []
    edges = edges or []
    if clients > 1 or edges:    # separate sender processes, each started and connected beforehand
        ctx = mp.get_context("spawn")
        ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_client_process, args=(
            edges[i % len(edges)][1] if edges else client.address, model_ids, rate / clients, seconds,
            slo_ns, rng.random(), coalesce, burst, ready, go, results)) for i in range(clients)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
    threads0 = _sum_threads(pids)
    edges0 = sum(cpu_seconds(e) for e, _ in edges)
    worker0 = sum(cpu_seconds(w) for w in worker_pids)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    pys0 = [main_thread_cpu_seconds(p) for p in pids]
    t0 = time.perf_counter()
    if procs:
        go.set()
        parts = [results.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join()
    else:
        parts = [send_load(client, model_ids, rate, seconds, slo_ns, rng, burst)]
    elapsed = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    pys = [main_thread_cpu_seconds(p) - p0 for p, p0 in zip(pids, pys0)]
    py = sum(pys)
    edge_cpu = sum(cpu_seconds(e) for e, _ in edges) - edges0
    worker_cpu = sum(cpu_seconds(w) for w in worker_pids) - worker0
    threads1 = _sum_threads(pids)
    sent = sum(p["sent"] for p in parts)
    statuses: dict = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    lat = sorted(x for p in parts for x in p["lat"])
    answered = sum(statuses.values())
    ok = sum(1 for x in lat if x * 1e9 <= slo_ns)
    return {
        "rate": rate, "sent": sent, "answered": answered, "elapsed": elapsed,
        "within_slo": ok / sent if sent else 0.0,
        "cpu_us_per_req": cpu / max(1, answered) * 1e6,
        "py_us_per_req": py / max(1, answered) * 1e6,
        "edges_us_per_req": edge_cpu / max(1, answered) * 1e6,
        "worker_us_per_req": worker_cpu / max(1, answered) * 1e6,
        "threads_us_per_req": {k: (v - threads0.get(k, 0.0)) / max(1, answered) * 1e6
                               for k, v in threads1.items()},
        "controller_cpu_util": cpu / elapsed,
        "python_thread_util": [x / elapsed for x in pys],     # per process, in pids' order
        "p50_ms": lat[len(lat) // 2] * 1e3 if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3 if lat else float("nan"),
        "statuses": statuses,
    }


def _sum_threads(pids: list[int]) -> dict[str, float]:
    """CPU seconds per thread name over the processes (a sharded controller's shards)."""
    out: dict[str, float] = {}
    for pid in pids:
        for name, cpu in thread_cpu_seconds(pid).items():
            out[name] = out.get(name, 0.0) + cpu
    return out


def start_edges(n: int, controller: str, config) -> list:
    """[(process, address)] of n `cw edge` processes in front of `controller`, listening."""
    import subprocess
    from clockwork.transport.sockets import free_port
    edges = []
    for _ in range(n):
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "clockwork.cli", "edge", controller, "--port", str(port),
                              "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            if "listening" in line:
                break
        else:
            raise SystemExit("an edge process did not start")
        edges.append((p, f"127.0.0.1:{port}"))
    return edges


def print_profile(path: str, top: int = 25) -> None:
    """Share of samples per function: inclusive (on the stack) and self (innermost)."""
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            total += n
            # "func (path/file.py:line)" -> "func (file.py)": one entry per function
            frames = [fr.split(" (")[0] + " (" + fr.rsplit("/", 1)[-1].split(":")[0].rstrip(")") + ")"
                      for fr in stack.split(";")]
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    print(f"         py-spy: {total} samples; top functions, % inclusive / % self:")
    for fr, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"         {100 * n / total:6.1f} {100 * own.get(fr, 0) / total:6.1f}  {fr}")
    print("         top self:")
    for fr, n in sorted(own.items(), key=lambda kv: -kv[1])[:top // 2]:
        print(f"         {100 * incl[fr] / total:6.1f} {100 * n / total:6.1f}  {fr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=8, help="emulated GPUs in all")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes sharing the GPUs (--gpus must divide evenly)")
    ap.add_argument("--copies", type=int, default=0, help="resnet50 copies (default 4 per GPU)")
    ap.add_argument("--rates", default="500,1000,2000,3000,4000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--scheduler", default="infer4")
    ap.add_argument("--clients", type=int, default=1, help="client processes sharing the rate")
    ap.add_argument("--wire", choices=["batched", "single"], default="batched",
                    help="batched: requests and answers coalesced per message; single: one message each")
    ap.add_argument("--worker-wire", choices=["batched", "single"], default="batched",
                    help="batched: actions and results coalesced per worker per loop pass; single: one message each")
    ap.add_argument("--burst", type=int, default=1, help="requests sent at once per arrival (same total rate)")
    ap.add_argument("--shards", type=int, default=1,
                    help="controller shards (`cw controller --shards K`; needs --workers >= K)")
    ap.add_argument("--edges", type=int, default=0,
                    help="put this many `cw edge` processes between the clients and the controller")
    ap.add_argument("--logs", choices=["off", "inline", "child"], default="off",
                    help="request and action logs: none (default), formatted on the controller's loop "
                         "thread, or by writer child processes ([logging] writer_process)")
    ap.add_argument("--threads", action="store_true", help="print the controller's CPU per thread")
    ap.add_argument("--py-spy", dest="py_spy", default=None, metavar="FILE.svg",
                    help="record the controller with py-spy during the last step")
    args = ap.parse_args()
    copies = args.copies or 4 * args.gpus
    coalesce = args.wire == "batched"
    worker_batching = str(args.worker_wire == "batched").lower()
    cfg = quick_config(3600, {"controller": {"batch_replies": str(coalesce).lower(), "batch_actions": worker_batching},
                              "worker": {"batch_results": worker_batching},
                              "logging": {"writer_process": str(args.logs == "child").lower()}})
    print(f"# controller_cost: {args.scheduler}, {args.gpus} emulated H200 GPUs in {args.workers} worker "
          f"process(es), {copies} resnet50 copies, "
          f"open-loop Poisson, no inputs, SLO {args.slo_ms:g} ms, {args.seconds:g} s per step, "
          f"{os.cpu_count()} cores shared by client, controller and worker; wire {args.wire}, "
          f"worker wire {args.worker_wire}, "
          f"{args.clients} client process(es), bursts of {args.burst}, {args.shards} controller shard(s); load average {os.getloadavg()[0]:.1f}")
    import tempfile
    log_dir = None if args.logs == "off" else tempfile.mkdtemp(prefix="controller-cost-logs-")
    if args.workers < 1 or args.gpus % args.workers:
        raise SystemExit("--gpus must be a multiple of --workers")
    if not 1 <= args.shards <= args.workers or (args.shards > 1 and args.edges):
        raise SystemExit("--shards must be 1..--workers (each shard has workers of its own), without --edges")
    with LocalCluster(gpus=args.gpus // args.workers, workers=args.workers, scheduler=args.scheduler,
                      config_file=cfg, log_dir=log_dir, shards=args.shards) as cluster:
        client = make_client(cluster.address, log=lambda *_: None, coalesce=coalesce)
        ids = []
        for k in range(args.shards):     # one block of copies per shard (loads go round-robin)
            first, n, _ = client.load_model("resnet50", copies=copies * (k + 1) // args.shards
                                            - copies * k // args.shards)
            ids += range(first, first + n)
        client.ls()
        pids = controller_pids(cluster.controller.pid) if args.shards > 1 else [cluster.controller.pid]
        # warm-up: load weights everywhere they will be needed
        run_step(client, pids, ids, 200, 3.0, int(args.slo_ms * 1e6), random.Random(0))
        edges = start_edges(args.edges, cluster.address, cfg)
        best = None
        print(f"{'rate/s':>8} {'sent':>7} {'in SLO':>8} {'ctl us/req':>10} {'py us/req':>9} {'ctl CPU':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7}  statuses")
        rates = [float(r) for r in args.rates.split(",")]
        for i, rate in enumerate(rates):
            spy = None
            if args.py_spy and i == len(rates) - 1:
                import subprocess
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(pids[min(1, len(pids) - 1)]),  # shard 0
                                        "--duration", str(int(args.seconds)), "--rate", "200",
                                        "--nonblocking", "--format", "raw", "-o", args.py_spy],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            r = run_step(client, pids, ids, rate, args.seconds,
                         int(args.slo_ms * 1e6), random.Random(i + 1), args.clients, coalesce, args.burst,
                         [(e.pid, a) for e, a in edges], [w.pid for w in cluster.worker_procs])
            if spy is not None:
                spy.wait()
            print(f"{r['rate']:8.0f} {r['sent']:7d} {100 * r['within_slo']:7.3f}% "
                  f"{r['cpu_us_per_req']:10.1f} {r['py_us_per_req']:9.1f} {100 * r['controller_cpu_util']:7.1f}% "
                  f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f}  {r['statuses']}", flush=True)
            if edges:
                print(f"         edges: {r['edges_us_per_req']:.1f} us/req in {len(edges)} processes; controller "
                      f"+ edges {r['cpu_us_per_req'] + r['edges_us_per_req']:.1f} us/req", flush=True)
            if args.threads:
                print("         controller us/req by thread: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in sorted(r["threads_us_per_req"].items(), key=lambda kv: -kv[1])
                    if v >= 0.05) + f"; worker processes {r['worker_us_per_req']:.1f}", flush=True)
                if args.shards > 1:
                    print("         Python thread CPU per shard: " + ", ".join(
                        f"{100 * u:.0f}%" for u in r["python_thread_util"][1:]), flush=True)
            if spy is not None:
                print_profile(args.py_spy)
            if r["within_slo"] >= 0.999:
                best = r
        client.close()
        for e, _ in edges:
            e.terminate()
            e.wait(10)
    cfg.unlink()
    if log_dir is not None:
        import shutil
        shutil.rmtree(log_dir, ignore_errors=True)
    if best:
        print(f"highest rate with >= 99.9% within SLO: {best['rate']:.0f} r/s "
              f"(controller {best['cpu_us_per_req']:.1f} us CPU per request)")
    else:
        print("no step met 99.9% within SLO")


if __name__ == "__main__":
    main()
