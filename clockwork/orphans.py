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
