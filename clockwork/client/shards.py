"""The client of a sharded controller (`cw controller --shards K`): one Client per shard.

Shard k issues model ids from [k << SHARD_ID_BITS, (k + 1) << SHARD_ID_BITS), so an id names
its shard, and each Infer goes straight to its model's shard over that shard's connection:
routing costs a shift per request, and the shards never talk to each other. The addresses are
given in shard order (the client ports PORT, PORT+1, ... that `cw controller --shards` prints);
a LoadModel answered with ids of another shard than the address's says so.

- LoadModel goes to one shard, round-robin over the shards in the order given (the first load
  to shard 0, the next to shard 1, ...): a model's copies stay on one shard, and the shards
  get loads in turn. A workload that loads K models (or K blocks of copies) spreads them evenly.
- Ls asks every shard and returns their models together, ordered by id.
- Everything per connection stays per connection, in that shard's own Client: request
  batching, timeouts, connection loss (CONNECTION_LOST), epochs, and loading models again
  after that shard's controller restarts. Each shard's Client numbers requests with ids of its
  own residue modulo K, so request ids are unique across shards too.

poll() waits on every shard's sockets at once and then reads each; a blocking call on one shard
(load_model, infer) drives this poll(), so the other shards' answers are read meanwhile.
`make_client(address)` gives a ShardedClient for "A,B,..." and a plain Client for one address.
"""
from __future__ import annotations

import itertools
import time

import zmq

from ..limits import SHARD_ID_BITS
from ..transport.schema import LoadModelResponse, ModelInfo
from ..transport.sockets import wait as wait_ready
from .api import Callback, Client, ClientError, Future


def make_client(address: str, **kw):
    """A Client for "HOST:PORT", a ShardedClient for "HOST:PORT,HOST:PORT,..." (shard order)."""
    addresses = [a for a in address.split(",") if a]
    if len(addresses) > 1:
        return ShardedClient(addresses, **kw)
    return Client(addresses[0] if addresses else address, **kw)


class ShardedClient:
    """Connections to the K shards of one sharded controller; the interface of a Client.
    Not thread-safe: use it from one thread."""

    def __init__(self, addresses: list[str], ctx: zmq.Context | None = None, **kw):
        """addresses: the shards' client addresses in shard order. kw: as for Client."""
        if not addresses:
            raise ValueError("a sharded controller needs at least one address")
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.Context()        # one I/O thread for all the connections
        n = len(addresses)
        self.shards: list[Client] = []
        try:
            for k, address in enumerate(addresses):
                self.shards.append(Client(address, ctx=self._ctx, request_ids=itertools.count(k + 1, n), **kw))
        except BaseException:
            self.close()
            raise
        for c in self.shards:
            c.drive = self.poll
        self.address = ",".join(c.address for c in self.shards)
        self.spin_s = self.shards[0].spin_s
        self._next_load = 0

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        for c in self.shards:
            c.close()
        self.shards = []
        if self._own_ctx:
            self._ctx.term()
            self._own_ctx = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self) -> None:
        """Wait until every shard accepts our connection (ControllerUnreachable otherwise)."""
        for c in self.shards:
            c.connect()

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.shards)

    @property
    def outstanding(self) -> int:
        return sum(c.outstanding for c in self.shards)

    @property
    def disconnects(self) -> int:
        """Connection losses seen, all shards together (each Client counts its own)."""
        return sum(c.disconnects for c in self.shards)

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [s for c in self.shards for s in c.sockets]

    def shard_of(self, model_id: int) -> Client:
        """The connection to the shard that owns `model_id` (shard 0 for an id of no shard:
        it answers that the model does not exist)."""
        k = model_id >> SHARD_ID_BITS
        return self.shards[k] if 0 <= k < len(self.shards) else self.shards[0]

    # ------------------------------------------------------------------ requests

    def infer_async(self, model_id: int, callback: Callback, *args, **kw) -> int:
        """Client.infer_async on the model's shard; returns the request id."""
        k = model_id >> SHARD_ID_BITS
        shards = self.shards
        return (shards[k] if 0 <= k < len(shards) else shards[0]).infer_async(model_id, callback, *args, **kw)

    def infer_future(self, model_id: int, **kw) -> Future:
        return self.shard_of(model_id).infer_future(model_id, **kw)

    def infer(self, model_id: int, *args, **kw):
        return self.shard_of(model_id).infer(model_id, *args, **kw)

    def _load_shard(self) -> int:
        """The shard the next LoadModel goes to (round-robin)."""
        k = self._next_load % len(self.shards)
        self._next_load += 1
        return k

    def load_model(self, path: str, copies: int = 1, timeout_s: float | None = None
                   ) -> tuple[int, int, LoadModelResponse]:
        """Client.load_model on the next shard in turn (round-robin)."""
        k = self._load_shard()
        first, n, r = self.shards[k].load_model(path, copies, timeout_s)
        if first >> SHARD_ID_BITS != k:
            raise ClientError(f"{self.shards[k].address} answered with model ids of shard {first >> SHARD_ID_BITS}, "
                              f"not {k}: give the shards' addresses in shard order (their ports ascending)")
        return first, n, r

    def load_model_async(self, path: str, copies: int, callback: Callback, timeout_s: float | None = None) -> int:
        """Client.load_model_async on the next shard in turn (the same turn as load_model's)."""
        return self.shards[self._load_shard()].load_model_async(path, copies, callback, timeout_s)

    def ls(self, timeout_s: float | None = None) -> list[ModelInfo]:
        """Every shard's models, ordered by id."""
        models = [m for c in self.shards for m in c.ls(timeout_s)]
        models.sort(key=lambda m: m.model_id)
        return models

    # ------------------------------------------------------------------ the event loop

    def poll(self, timeout_s: float | None = 0.0, max_messages: int = 10_000, monitor: bool = True) -> int:
        """Client.poll over every shard: wait up to timeout_s for a message on any of them
        (None: until one comes or a request expires), then read each. Returns the callbacks run."""
        shards = self.shards
        if timeout_s != 0:
            wait = timeout_s
            now = time.perf_counter()            # the clock of Client.next_deadline
            for c in shards:
                c.send_held()
                nxt = c.next_deadline()
                if nxt is not None:
                    left = max(0.0, nxt - now)
                    wait = left if wait is None else min(wait, left)
            ready = wait_ready(self.sockets, wait, self.spin_s)
            # the wait asked every monitor before sleeping: read those with events only (each
            # ask is two system calls), as Client.poll does
            n = 0
            for c in shards:
                n += c.poll(0, max_messages, monitor and c.sockets[-1] in ready)   # [-1]: its monitor
            return n
        n = 0
        for c in shards:
            n += c.poll(0, max_messages, monitor)
        return n

    def drain(self, timeout_s: float) -> int:
        """Poll until nothing is outstanding or timeout_s passed; returns how many remain."""
        clock = time.perf_counter
        end = clock() + timeout_s
        while self.outstanding:
            left = end - clock()
            if left <= 0:
                break
            self.poll(min(left, 0.05))
        return self.outstanding

    def abandon(self) -> list[int]:
        return [rid for c in self.shards for rid in c.abandon()]

    def fail_outstanding(self, message: str) -> int:
        return sum(c.fail_outstanding(message) for c in self.shards)
