"""Worker memory accounting: the weights cache as pages, io/workspace pools as byte arenas.

The runtime decides placement here and hands page indices / offsets to the backend, which owns
the actual device allocations. The worker never evicts on its own: running out of pages is an
error the controller must avoid (it plans evictions).
"""
from __future__ import annotations

from ..model.backend import Region

POOL_ALIGN = 256


class PageAllocator:
    """Fixed-size pages of one GPU's weights cache. alloc/free are O(pages of the model)."""
    __slots__ = ("total", "_free")

    def __init__(self, total: int):
        self.total = total
        self._free = list(range(total - 1, -1, -1))   # pop() hands out low pages first

    @property
    def free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """`n` page indices, or None (nothing taken) if fewer than `n` are free."""
        if n > len(self._free):
            return None
        f = self._free
        return [f.pop() for _ in range(n)]

    def release(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))

    def reset(self) -> None:
        self._free = list(range(self.total - 1, -1, -1))


class Arena:
    """A byte pool handing out aligned regions, first fit; frees coalesce with neighbours.

    Few regions are live at once (the inputs/outputs of the handful of Infers in flight on one
    GPU), so a sorted list of free ranges is both simple and fast.
    """
    __slots__ = ("size", "used", "_free")

    def __init__(self, size: int):
        self.size = size
        self.used = 0
        self._free: list[list[int]] = [[0, size]] if size > 0 else []   # [offset, nbytes]

    def alloc(self, nbytes: int) -> Region | None:
        n = max(POOL_ALIGN, (nbytes + POOL_ALIGN - 1) // POOL_ALIGN * POOL_ALIGN)
        for i, rng in enumerate(self._free):
            if rng[1] >= n:
                off = rng[0]
                if rng[1] == n:
                    del self._free[i]
                else:
                    rng[0] += n
                    rng[1] -= n
                self.used += n
                return Region(off, n)
        return None

    def release(self, region: Region) -> None:
        off, n = region.offset, region.nbytes
        free = self._free
        i = 0
        while i < len(free) and free[i][0] < off:
            i += 1
        self.used -= n
        if i > 0 and free[i - 1][0] + free[i - 1][1] == off:       # merge with left
            free[i - 1][1] += n
            if i < len(free) and off + n == free[i][0]:             # and right
                free[i - 1][1] += free[i][1]
                del free[i]
        elif i < len(free) and off + n == free[i][0]:               # merge with right
            free[i][0] = off
            free[i][1] += n
        else:
            free.insert(i, [off, n])

    def reset(self) -> None:
        self.used = 0
        self._free = [[0, self.size]] if self.size > 0 else []


class GpuMemory:
    """One GPU: weights-cache pages, device io pool, workspace pool."""
    __slots__ = ("pages", "io", "workspace")

    def __init__(self, total_pages: int, io_pool_size: int, workspace_pool_size: int):
        self.pages = PageAllocator(total_pages)
        self.io = Arena(io_pool_size)
        self.workspace = Arena(workspace_pool_size)

    def reset(self) -> None:
        self.pages.reset()
        self.io.reset()
        self.workspace.reset()
