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

A sharded controller (`cw frontend A,B,...`, the shards' client addresses in shard order) is
driven through a ShardedClient (clockwork.client.shards): each Infer goes to its model's shard,
`--model` loads go to the shards in turn. Listing, epochs and lost connections are per shard
(each shard lists, restarts and drops on its own); the registry merges every shard's models
(their ids name their shard). Ready only when every shard answered its LS: a shard that does
not makes the whole front end not ready, naming it, since a front end that is ready while some
of its models cannot be reached answers 503 to requests a load balancer sent it for them.
"""
from __future__ import annotations

import asyncio
import time

import zmq

from ..client.api import Client
from ..client.shards import ShardedClient, make_client
from ..limits import SHARD_ID_BITS
from ..status import Status
from .registry import Registry, model_name

TICK_S = 0.05
RETRY_S = 0.5             # LS again this soon while not ready
MISS_REFRESH_S = 0.2      # a lookup miss refreshes the registry at most this often
CLOSE_S = 2.0             # close() waits at most this long for the link's own tasks to end


class ControllerLink:
    """Owns one Client (a ShardedClient for a sharded controller); every method runs on the
    event loop's thread."""

    def __init__(self, address: str, *, timeout_s: float = 30.0, refresh_s: float = 2.0,
                 load: list[tuple[str, int]] = (), load_timeout_s: float = 600.0, log=print,
                 ctx: zmq.Context | None = None, controller_gone=None):
        """ctx and controller_gone: for a controller in this process (in_process.py), its
        ZeroMQ context (an inproc:// address needs it) and `controller_gone()`: None while its
        loop runs, else (why, ended: it will never answer again), checked every tick: the inproc link reports no disconnection, so a controller loop
        that stopped or stalls is noticed through this instead."""
        self.client = make_client(address, timeout_s=timeout_s, connect_timeout_s=0, log=log, ctx=ctx)
        # one Client per shard (one in all for an unsharded controller): what each listed
        self.connections: list[Client] = (self.client.shards if isinstance(self.client, ShardedClient)
                                          else [self.client])
        self._listed = [Registry() for _ in self.connections]
        self._shard_disconnects = [0] * len(self.connections)
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

    def _name(self, k: int) -> str:
        """Connection k, for messages: the controller, or shard k of a sharded one."""
        c = self.connections[k]
        return f"shard {k} at {c.address}" if len(self.connections) > 1 else f"the controller at {c.address}"

    def _shard(self, model_id: int) -> int:
        """The index of the connection that serves model_id (as ShardedClient routes it)."""
        k = model_id >> SHARD_ID_BITS
        return k if 0 <= k < len(self.connections) else 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._watch()
        self._tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self._refresher())]

    def _watch(self) -> None:
        """Watch the client's sockets (again if they changed, e.g. after a reconnect): a
        request socket wakes the lean pump, a connection monitor the full one."""
        fds = [(s.getsockopt(zmq.FD), i == 0) for c in self.connections for i, s in enumerate(c.sockets)]
        if fds == self._fds:
            return
        for fd, _ in self._fds:
            self._loop.remove_reader(fd)
        for fd, requests in fds:
            self._loop.add_reader(fd, self._pump if requests else self._pump_all)
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
        for fd, _ in self._fds:
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
            self._lost()

    def _lost(self) -> None:
        """Some connection dropped: whoever answers there next lists from scratch."""
        lost = []
        for k, c in enumerate(self.connections):
            if c.disconnects != self._shard_disconnects[k]:
                self._shard_disconnects[k] = c.disconnects
                self._listed[k] = Registry()
                lost.append(self._name(k))
        self._merge()
        self._set_ready(False, f"connection to {', '.join(lost)} lost")
        self._wake.set()

    def _merge(self) -> None:
        """The registry the servers read: every connection's models (ids name their shard)."""
        listed = self._listed
        self.registry = listed[0] if len(listed) == 1 else Registry([m for r in listed for m in r.infos])

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

    def stale(self, model_id: int = 0) -> None:
        """An answer for model_id said our ids are from another lifetime of its controller
        (shard): list that one again."""
        k = self._shard(model_id)
        self._set_ready(False, f"{self._name(k)} restarted")
        self._listed[k] = Registry()
        self._merge()
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

    async def _list_new(self, k: int):
        """The models connection k added since it was listed: LS pages from its last listing's
        next id (a controller lifetime only ever adds models, with growing ids), or every page
        when the lifetime (epoch) changed. Returns (failed answer or None, new models, epoch)."""
        reg = self._listed[k]
        client = self.connections[k]
        first, models, epoch = reg.next_id, [], None
        while True:
            r = await self._call(lambda cb, t, f=first: client.ls_async(cb, t, f),
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
        answers = await asyncio.gather(*(self._list_new(k) for k in range(len(self.connections))))
        problems = []
        changed = False
        for k, (failed, new, epoch) in enumerate(answers):
            if failed is not None:
                problems.append(f"{self._name(k)}: {failed.message or failed.status}")
                continue
            wrong = self._misplaced(k, new)
            if wrong:
                problems.append(wrong)
                continue
            client = self.connections[k]
            if epoch and epoch != client.model_ids.epoch:
                # a controller lifetime (epoch) of its own: our Infers name it, so an id from an
                # older lifetime is answered STALE_EPOCH, never served by another model
                client.model_ids.adopt(epoch)
            reg = self._listed[k]
            if epoch != reg.epoch or new:
                self._listed[k] = Registry(new if epoch != reg.epoch else reg.infos + new, epoch)
                changed = True
        if changed:
            self._merge()
        if problems:
            self._set_ready(False, "; ".join(problems))
            return False
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

    def _misplaced(self, k: int, models) -> str | None:
        """Why connection k's models cannot be served through it: ids of another shard (the
        addresses were not given in shard order, so Infers would go to the wrong shard)."""
        if len(self.connections) == 1:
            return None
        for m in models:
            if m.model_id >> SHARD_ID_BITS != k:
                return (f"{self._name(k)} has model ids of shard {m.model_id >> SHARD_ID_BITS}: give the "
                        "shards' addresses in shard order (their ports ascending)")
        return None

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
