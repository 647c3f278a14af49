"""Server processes end with the process that started them, even one killed outright.

`cw run` (LocalCluster) and `cw controller --http` stop their children when they stop; killed
with SIGKILL (or by the OOM killer) they cannot, and the workers, controller and front end would
live on, holding their ports (and, for a real worker, its GPUs). So the spawner names itself in
the child's environment (`child_env`), and the child (`exit_with_parent`, called first thing by
each server command) watches its parent: when getppid() changes, the parent is gone, and the
child sends itself SIGTERM, the same clean shutdown as `kill`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

ENV = "CLOCKWORK_PARENT_PID"
CHECK_S = 0.5          # how often the watcher looks: a child outlives its parent by at most this


def child_env(env: dict) -> dict:
    """`env` for a server process we start, which then ends with us."""
    env[ENV] = str(os.getpid())
    return env


def exit_with_parent() -> bool:
    """If our spawner asked for it (child_env), end this process with it. The variable is
    taken out of the environment, so processes we start ourselves are not bound to it."""
    value = os.environ.pop(ENV, None)
    try:
        parent = int(value) if value else 0
    except ValueError:
        return False
    if parent <= 1:
        return False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="cw-parent-watch", daemon=True).start()
    return True


def run_until_one_exits(argvs: list[list[str]], poll_s: float = 0.2, **popen) -> subprocess.Popen | None:
    """Start a process per argv (`popen`: Popen's keywords) and wait until SIGINT / SIGTERM
    (returns None) or until one of them exits (returns it). Either way every process is stopped
    before this returns (SIGTERM, then SIGKILL after 10 s), as is each one started before a
    failed start: processes started together stop together (`cw controller --shards`, `cw
    frontend --processes`)."""
    stop = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: list[subprocess.Popen] = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(argv, **popen))
        while not stop.wait(poll_s):
            for p in procs:
                if p.poll() is not None:
                    return p
        return None
    finally:
        stop_all(procs)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def stop_all(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM every process still running, then wait for each; one still there after grace_s
    is killed. All are asked at once, so they wind down together, not one after another."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

