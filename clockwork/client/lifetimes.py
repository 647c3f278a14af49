"""Model ids across controller lifetimes, as one Client sees them.

A controller numbers model instances from 0 in each lifetime (its epoch), so after a restart an
id the caller still holds may name another tenant's model. The Client records every model it
loads here; when it meets a new epoch it loads them again, and this table maps the ids the
caller holds (handles) to the new controller's ids. Until the first restart, handles are the
controller's ids: no table, nothing looked up per request.
"""
from __future__ import annotations


class Registration:
    """One LoadModel done through the Client: what to load again after a restart."""
    __slots__ = ("path", "copies", "handle")

    def __init__(self, path: str, copies: int, handle: int):
        self.path = path
        self.copies = copies
        self.handle = handle          # first of `copies` consecutive handles


class ModelIds:
    def __init__(self):
        self.epoch = 0                # the controller lifetime the current ids belong to (0: none yet)
        self.old_epoch = 0            # the one before: requests naming unknown handles carry it
        self.registrations: list[Registration] = []
        self.route: dict[int, int] | None = None     # handle -> current id; None: identity
        self.handles: dict[int, int] = {}            # current id -> handle (when route is set)

    def adopt(self, epoch: int) -> None:
        """A new lifetime with nothing to carry over: its ids are used as they are."""
        self.old_epoch, self.epoch = self.epoch, epoch
        self.route = None
        self.handles = {}

    def register(self, path: str, copies: int, first_id: int) -> int:
        """Record a load answered in the current epoch; returns the caller's first handle."""
        handle = self.handle_block(first_id, copies)
        self.registrations.append(Registration(path, copies, handle))
        return handle

    def handle_block(self, first_id: int, n: int) -> int:
        """Handles for the current ids first_id..first_id+n-1: the ids themselves unless one of
        them is already a handle of another model, else a fresh block above every handle."""
        route = self.route
        if route is None:
            return first_id
        if first_id in self.handles:          # already known (an ls answer names it again)
            return self.handles[first_id]
        if any(first_id + i in route for i in range(n)):
            handle = max(route) + 1
        else:
            handle = first_id
        for i in range(n):
            route[handle + i] = first_id + i
            self.handles[first_id + i] = handle + i
        return handle

    def switch(self, epoch: int, new_first: dict[Registration, int]) -> None:
        """Re-registration done: registrations in `new_first` now live at those ids; handles of
        anything else (not loaded again, or ids learnt from ls) are stale from now on."""
        route: dict[int, int] = {}
        handles: dict[int, int] = {}
        for reg, first in new_first.items():
            for i in range(reg.copies):
                route[reg.handle + i] = first + i
                handles[first + i] = reg.handle + i
        self.registrations = list(new_first)
        self.old_epoch, self.epoch = self.epoch, epoch
        self.route, self.handles = route, handles
