"""The front end inside the controller's process (`cw controller --http 8000 --frontend-in-process`).

The separate `cw frontend` process reaches the controller over TCP, through libzmq's I/O
threads on both sides: each hop is two thread hand-offs and wake-ups more than the HTTP
request itself needs. Here the front end (the same servers and link, command.serve) runs its
event loop on a thread of the controller process, and its client library connects to the
controller's own client ROUTER over inproc://, which passes messages between the two threads
directly (no I/O thread, no TCP, no handshake). Its requests meet exactly the admission code
any client's meet: it is one more client of the same socket.

Both loops share the GIL: while one runs Python, the other waits. The controller's loop
releases it whenever it waits for its sockets, and the front end's loop whenever it waits in
epoll, so at low load each gets it when it needs it; under load they take turns on one core
(BENCHMARKS.md measures what that costs). Separate processes stay the default.

Failures stay on their side:
- the front end thread failing (a bug in it) is logged; the controller goes on serving its
  other clients;
- the controller's loop ending (or stalling for LOOP_STALL_S) makes the front end not ready
  (503, /v2/health/ready false); once ended, its requests in flight are answered 503 at once.
"""
from __future__ import annotations

import asyncio
import threading

LOOP_STALL_NS = 1_000_000_000      # the controller's loop passes every 50 ms at most; this is a stall
THREAD_NAME = b"cw-frontend"       # the thread's name in top -H, ps -T, /proc/PID/task/*/comm


def name_this_thread(name: bytes) -> None:
    """Set the OS name of the calling thread (Linux; best effort): tools see the front end's CPU."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)       # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class InProcessFrontend:
    """start() before the controller's run() (the inproc endpoint is bound on the controller's
    socket, which belongs to the loop's thread); stop() after it, or from any thread."""

    def __init__(self, controller, settings: dict, log=print):
        """settings: command.serve()'s keyword arguments (command.in_process_settings)."""
        self.controller = controller
        self.settings = settings
        self.log = log
        self.endpoint = f"inproc://clockwork-clients-{id(controller):x}"
        self.ports: dict[str, int] = {}
        self.error: str | None = None          # why the thread ended, if it failed
        self._listening = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 60.0) -> dict:
        """Bind the inproc endpoint, start the thread, wait until it listens; returns its ports.
        ValueError (one line) if it could not (a port in use, a bad certificate)."""
        self.controller.bind_in_process(self.endpoint)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME.decode(), daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout_s):
            self.stop()
            raise ValueError(f"the in-process front end did not start listening within {timeout_s:g} s")
        if self.error is not None:
            self._thread.join()
            raise ValueError(f"front end: {self.error}")
        return self.ports

    def _run(self) -> None:
        from .command import serve
        name_this_thread(THREAD_NAME)
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                self._loop = runner.get_loop()
                self._stop = asyncio.Event()
                runner.run(serve(self.endpoint, **self.settings, log=self.log, stop=self._stop,
                                 ctx=self.controller.ctx, controller_gone=self._controller_gone,
                                 listening=self._on_listening))
        except (ValueError, OSError) as e:       # before listening: a port in use, unreadable key files
            self.error = str(e)
            if self._listening.is_set():
                self.log(f"frontend: stopped: {e}; the controller goes on serving its other clients")
        except BaseException as e:               # a bug: the controller must not go down with us
            self.error = f"internal error: {e!r}"
            self.log(f"frontend: stopped by an internal error: {e!r}; the controller goes on serving "
                     "its other clients")
        finally:
            self._listening.set()

    def _on_listening(self, ports: dict) -> None:
        self.ports = ports
        self._listening.set()

    def _controller_gone(self):
        """None while the controller's loop runs; else (why, whether it ended for good)."""
        c = self.controller
        if c.loop_ended:
            return c.loop_ended, True
        last = c.last_pass_ns
        if not last:
            return "the controller's loop has not started", False
        stalled = c.clock() - last
        if stalled > LOOP_STALL_NS:
            return f"the controller's loop has not run for {stalled / 1e9:.1f} s", False
        return None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the servers and the link, end the thread (waits at most timeout_s)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:                 # its loop has already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout_s)
