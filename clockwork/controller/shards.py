"""`cw controller --shards K`: K ordinary controllers, each scheduling its own share of the workers.

One controller's Python thread does admission, INFER4 and the answers for every request, which
bounds the rate one controller serves (BENCHMARKS.md, issue 13). Sharding the policy multiplies
that bound: the workers given are split into K groups (consecutive, sizes differing by at most
one), and shard k is a `cw controller` process of its own (its own thread, its own workers, its
own sockets) that issues model ids from [k << SHARD_ID_BITS, (k + 1) << SHARD_ID_BITS), so a
model id names its shard and a client sends each Infer straight to it (clockwork.client.shards).
A model loaded on shard k runs only on shard k's GPUs: that is the trade (docs/design.md).

Ports: shard k takes the client port `port + k`, the telemetry port `telemetry port + k` and the
Prometheus port `metrics port + k` (when on), each block of K moved past the blocks before it
where it would overlap them (with the defaults 12346 / 12347: clients 12346.., telemetry
12346 + K..). Each shard serves its own /metrics: Prometheus scrapes the K of them as K targets
(its `instance` label tells them apart; worker ids repeat across shards, model ids do not).

The shards start and stop together: this process supervises them; when one exits (it failed, or
was killed) the others are stopped and the command exits 1. With --http/--grpc, one `cw frontend`
child serves all K shards (clockwork.frontend.link drives a ShardedClient) and is supervised
with them, the same way. Each shard ends with this process
even if it is killed outright (clockwork.orphans).
"""
from __future__ import annotations

import os
import subprocess
import sys

from ..orphans import child_env, run_until_one_exits

POLL_S = 0.2        # how often the supervisor looks for a shard that exited


def split_workers(addresses: list[str], shards: int) -> list[list[str]]:
    """`shards` consecutive groups of the worker addresses, sizes differing by at most one."""
    n = len(addresses)
    return [addresses[k * n // shards:(k + 1) * n // shards] for k in range(shards)]


def port_blocks(shards: int, *bases: int) -> list[list[int]]:
    """For each base port (0: off), `shards` consecutive ports from it, moved past the blocks
    given out before it where it would overlap them. Raises ValueError past port 65535."""
    taken: list[range] = []
    blocks = []
    for base in bases:
        if not base:
            blocks.append([0] * shards)
            continue
        start = base
        while any(start < r.stop and r.start < start + shards for r in taken):
            start = max(r.stop for r in taken if start < r.stop and r.start < start + shards)
        if start + shards - 1 > 65535:
            raise ValueError(f"{shards} shards need ports {start}..{start + shards - 1}: past 65535")
        taken.append(range(start, start + shards))
        blocks.append(list(range(start, start + shards)))
    return blocks


def shard_argv(shard: int, workers: list[str], port: int, telemetry_port: int, metrics_port: int,
               log_dir: str | None, common: list[str]) -> list[str]:
    """The command line of shard `shard`: an ordinary `cw controller` (one shard: --shards 1)."""
    logs = ["--no-logs"] if log_dir is None else ["--log-dir", os.path.join(log_dir, f"shard-{shard}")]
    return [sys.executable, "-m", "clockwork.controller.command", "--shards", "1", "--shard-index", str(shard),
            "--port", str(port), "--telemetry-port", str(telemetry_port), "--metrics-port", str(metrics_port),
            *logs, *common, *workers]


def supervise(argvs: list[list[str]], out=print, config_file: str | None = None,
              frontend: list[str] | None = None) -> int:
    """Run the shards' processes (and `frontend`, the command line of a `cw frontend` child
    serving them all, if given) until SIGINT / SIGTERM (exit status 0) or until one of them
    exits (the others are stopped; status 1). Their output goes where ours goes."""
    env = child_env(dict(os.environ))
    if config_file:
        env["CLOCKWORK_CONFIG_FILE"] = config_file
    children = argvs + ([frontend] if frontend else [])
    exited = run_until_one_exits(children, POLL_S, env=env, stdin=subprocess.DEVNULL)
    if exited is None:
        return 0
    k = children.index(exited.args)
    what, others = (f"shard {k}", "the other shards") if k < len(argvs) else ("the front end", "the shards")
    out(f"{what} (pid {exited.pid}) exited with status {exited.returncode}: stopping {others}"
        + (" and the front end" if frontend and k < len(argvs) else ""))
    return 1
