"""The front end's connection to the controller: clockwork's client library on the asyncio loop.

The client library (clockwork.client.api.Client) is single-threaded and poll-driven, which fits
an event loop exactly: its sockets' file descriptors are watched with add_reader and every
wake-up runs `poll(0)`, so answers are handled on the loop's thread with no locks and no extra
thread hop. A ZeroMQ descriptor only signals "state changed" (edge-like), and a send may consume
that signal, so each send schedules one more poll; a slow tick (TICK_S) is the safety net and
expires overdue requests.

Readiness: ready once an LS succeeded (the controller is past initialisation and reachable) and
the models the front end was asked to load (`--model`) are there; not ready from the moment the
connection drops or an answer says STALE_EPOCH (ZeroMQ reconnects by itself; the next successful
LS makes it ready again, with the new controller's model ids and epoch, which every Infer then
names: a request can never reach another model that took an old id). A refresh asks only for
models added since the last one (LS pages from the next id), so thousands of models cost
nothing while nothing changes. The registry is refreshed every refresh_s, and at once when a
request names a model it does not know (a model loaded a moment ago by another client).
"""
from __future__ import annotations

import asyncio
import time

import zmq

from ..client.api import Client
from ..status import Status
from .registry import Registry, model_name

TICK_S = 0.05
RETRY_S = 0.5             # LS again this soon while not ready
MISS_REFRESH_S = 0.2      # a lookup miss refreshes the registry at most this often
CLOSE_S = 2.0             # close() waits at most this long for the link's own tasks to end


class ControllerLink:
    """Owns one Client; every method runs on the event loop's thread."""

    def __init__(self, address: str, *, timeout_s: float = 30.0, refresh_s: float = 2.0,
                 load: list[tuple[str, int]] = (), load_timeout_s: float = 600.0, log=print,
                 ctx: zmq.Context | None = None, controller_gone=None):
        """ctx and controller_gone: for a controller in this process (in_process.py), its
        ZeroMQ context (an inproc:// address needs it) and `controller_gone()`: None while its
        loop runs, else (why, ended: it will never answer again), checked every tick: the inproc link reports no disconnection, so a controller loop
        that stopped or stalls is noticed through this instead."""
        self.client = Client(address, timeout_s=timeout_s, connect_timeout_s=0, log=log, ctx=ctx)
        self.controller_gone = controller_gone
        self.address = self.client.address
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.load = list(load)
        self.load_timeout_s = load_timeout_s
        self.log = log
        self.registry = Registry()
        self.ready = False
        self.why_not_ready = f"no answer from the controller at {self.address} yet"
        self.on_ready_change = None          # callback(ready: bool), e.g. a metrics gauge
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fds: list[int] = []
        self._pump_scheduled = False
        self._disconnects = 0
        self._wake = asyncio.Event()
        self._refresh: asyncio.Future | None = None
        self._last_refresh = 0.0
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._logged: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._watch()
        self._tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self._refresher())]

    def _watch(self) -> None:
        """Watch the client's sockets (again if they changed, e.g. after a reconnect): the
        request socket wakes the lean pump, the connection monitor the full one."""
        fds = [s.getsockopt(zmq.FD) for s in self.client.sockets]
        if fds == self._fds:
            return
        for fd in self._fds:
            self._loop.remove_reader(fd)
        for i, fd in enumerate(fds):
            self._loop.add_reader(fd, self._pump if i == 0 else self._pump_all)
        self._fds = fds

    async def close(self) -> None:
        """Stop the link's tasks and close the client. Bounded: a task may miss its cancel
        (asyncio.wait_for can return a result it got at the same moment instead of raising
        CancelledError), so the loops also end on _closed, and close() does not wait on them
        past CLOSE_S: a front end told to stop must stop (one was seen hanging on SIGTERM)."""
        self._closed = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_S)
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._fds = []
        self.client.close()

    # ------------------------------------------------------------------ driving the client

    def _pump(self, monitor: bool = False) -> None:
        """Send what is queued, handle what arrived. The monitor (connects, disconnects) is
        read only when its own descriptor wakes us, or on the tick: it costs system calls."""
        self._pump_scheduled = False
        client = self.client
        while client.poll(0, monitor=monitor) >= 10_000:   # at most 10,000 answers per call
            pass
        if client.disconnects != self._disconnects:
            self._disconnects = client.disconnects
            self._set_ready(False, f"connection to the controller at {self.address} lost")
            self.registry = Registry()           # whoever answers next lists from scratch
            self._wake.set()

    def _pump_all(self) -> None:
        self._pump(monitor=True)

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    async def _ticker(self) -> None:
        while not self._closed:
            await asyncio.sleep(TICK_S)
            self._watch()
            self._pump_all()
            if self.controller_gone is not None:
                self._check_controller()

    def _check_controller(self) -> None:
        """Not ready while the in-process controller's loop is stalled or has ended; once it
        ended, nothing in flight will be answered: fail it now (503), as a lost connection."""
        gone = self.controller_gone()
        if gone is None:
            return
        why, ended = gone
        if self.ready:
            self._set_ready(False, why)
        if ended and self.client.outstanding:
            self.client.fail_outstanding(why)

    def _set_ready(self, ready: bool, why: str = "") -> None:
        if ready != self.ready:
            self.log(f"frontend: controller {self.address} " +
                     ("ready" if ready else f"not ready: {why}"))
            if self.on_ready_change is not None:
                self.on_ready_change(ready)
        self.ready = ready
        self.why_not_ready = why

    # ------------------------------------------------------------------ requests

    def infer(self, model_id: int, inputs, batch_size: int, slo_ns: int, answered) -> None:
        """Send one Infer; `answered(response, data_frames, latency_s)` runs on the loop's
        thread when the controller answers (or the client library gives up: NO_ANSWER,
        CONNECTION_LOST, SEND_FAILED), possibly before this returns. No future, no task: the
        caller's callback is the whole per-request state."""
        self.client.infer_async(model_id, answered, inputs, batch_size, slo_ns=slo_ns)
        self._schedule_pump()

    def _call(self, send, timeout_s: float) -> asyncio.Future:
        fut = self._loop.create_future()

        def answered(response, data, latency_s):
            if not fut.done():
                fut.set_result(response)
        send(answered, timeout_s)
        self._schedule_pump()
        return fut

    def stale(self) -> None:
        """An answer said our model ids are from another controller lifetime: list again."""
        self._set_ready(False, f"the controller at {self.address} restarted")
        self.registry = Registry()
        self._wake.set()

    # ------------------------------------------------------------------ registry

    async def lookup(self, name: str, version: str = ""):
        """The model version named, refreshing the registry once if it is not there."""
        m = self.registry.get(name, version)
        if m is None and self.ready and time.monotonic() - self._last_refresh > MISS_REFRESH_S:
            await self.refresh()
            m = self.registry.get(name, version)
        return m

    def refresh(self) -> asyncio.Future:
        """LS (and load missing `--model`s); concurrent callers share one refresh."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._do_refresh())
        return asyncio.shield(self._refresh)

    async def _list_new(self):
        """The models added since the registry was built: LS pages from the registry's next id
        (a controller lifetime only ever adds models, with growing ids), or every page when the
        lifetime (epoch) changed. Returns (failed answer or None, new models, epoch)."""
        reg = self.registry
        first, models, epoch = reg.next_id, [], None
        while True:
            r = await self._call(lambda cb, t, f=first: self.client.ls_async(cb, t, f),
                                 min(self.timeout_s, 5.0))
            if r.status != Status.SUCCESS:
                return r, [], 0
            if r.epoch != (reg.epoch if epoch is None else epoch) and (first or models):
                first, models, epoch, reg = 0, [], r.epoch, Registry()   # another lifetime: from 0
                continue
            epoch = r.epoch
            models.extend(m for m in r.models if m.model_id >= first)    # a peer may ignore `first`
            if r.next < 0:
                return None, models, epoch
            first = r.next

    async def _do_refresh(self) -> bool:
        self._last_refresh = time.monotonic()
        failed, new, epoch = await self._list_new()
        if failed is not None:
            self._set_ready(False, f"controller {self.address}: {failed.message or failed.status}")
            return False
        if epoch and epoch != self.client.model_ids.epoch:
            # a controller lifetime (epoch) of its own: our Infers name it, so an id from an
            # older lifetime is answered STALE_EPOCH, never served by another model
            self.client.model_ids.adopt(epoch)
        reg = self.registry
        if epoch != reg.epoch:
            self.registry = Registry(new, epoch)
        elif new:
            self.registry = Registry(reg.infos + new, epoch)
        missing = [(path, copies) for path, copies in self.load if model_name(path) not in self.registry.models]
        if missing:
            loads = [self._call(lambda cb, t, p=p, c=c: self.client.load_model_async(p, c, cb, t),
                                self.load_timeout_s) for p, c in missing]
            failed = [f"{p}: {r.message or r.status}" for (p, _), r in
                      zip(missing, await asyncio.gather(*loads)) if r.status != Status.SUCCESS]
            if failed:
                why = "loading " + "; ".join(failed)
                if why not in self._logged:
                    self._logged.add(why)
                    self.log(f"frontend: {why}")
                self._set_ready(False, why)
                return False
            return await self._do_refresh()
        gone = self.controller_gone() if self.controller_gone is not None else None
        if gone is not None:               # an answer from just before the loop stalled or ended
            self._set_ready(False, gone[0])
            return False
        self._set_ready(True)
        return True

    async def _refresher(self) -> None:
        while not self._closed:
            try:
                await self.refresh()
            except Exception as e:   # a bug must not end the refresher (the front end stays up)
                self._set_ready(False, f"internal error refreshing models: {e!r}")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.refresh_s if self.ready else RETRY_S)
            except asyncio.TimeoutError:
                pass
