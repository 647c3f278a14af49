"""IdRanges: disjoint ranges of consecutive ids, each with one shared value.

The copies of one LoadModel get consecutive ids and are alike, so the worker runtime and the
controller keep one entry per range (the copies' shared part) instead of one per id: setting up
a million instances then costs what setting up one does. Lookups bisect the ranges' starts.
"""
from __future__ import annotations

import bisect
from typing import Generic, Iterator, TypeVar

V = TypeVar("V")


class IdRanges(Generic[V]):
    __slots__ = ("_firsts", "_ends", "_values", "size")

    def __init__(self):
        self._firsts: list[int] = []     # range starts, ascending
        self._ends: list[int] = []       # range ends (exclusive), same order
        self._values: list[V] = []
        self.size = 0                    # ids in all ranges

    def add(self, first: int, count: int, value: V) -> None:
        """Ids first..first+count-1 get `value`; ValueError if any is taken already."""
        if count < 1 or first < 0:
            raise ValueError(f"bad id range {first} + {count}")
        taken = self.overlap(first, count)
        if taken is not None:
            raise ValueError(f"id {taken} already exists")
        i = bisect.bisect_right(self._firsts, first)
        self._firsts.insert(i, first)
        self._ends.insert(i, first + count)
        self._values.insert(i, value)
        self.size += count

    def find(self, id: int) -> tuple[int, V] | None:
        """(first id of its range, the range's value), or None if no range holds `id`."""
        i = bisect.bisect_right(self._firsts, id) - 1
        if i >= 0 and id < self._ends[i]:
            return self._firsts[i], self._values[i]
        return None

    def overlap(self, first: int, count: int) -> int | None:
        """The lowest id of first..first+count-1 already in a range, or None."""
        i = bisect.bisect_right(self._firsts, first)
        if i and self._ends[i - 1] > first:
            return first
        if i < len(self._firsts) and self._firsts[i] < first + count:
            return self._firsts[i]
        return None

    def __contains__(self, id: int) -> bool:
        return self.find(id) is not None

    def __len__(self) -> int:
        return self.size

    def ranges(self, start: int = 0) -> Iterator[tuple[int, int, V]]:
        """(first, count, value) per range holding ids >= start, ascending."""
        i = max(0, bisect.bisect_right(self._firsts, start) - 1) if start else 0
        for j in range(i, len(self._firsts)):
            yield self._firsts[j], self._ends[j] - self._firsts[j], self._values[j]

    def ids(self, start: int = 0) -> Iterator[int]:
        """Every id >= start, ascending."""
        for f, n, _ in self.ranges(start):
            yield from range(max(f, start), f + n)

    def values(self) -> list[V]:
        return list(self._values)

    def clear(self) -> None:
        self._firsts.clear()
        self._ends.clear()
        self._values.clear()
        self.size = 0

    def copy(self) -> "IdRanges[V]":
        c: IdRanges[V] = IdRanges()
        c._firsts, c._ends, c._values, c.size = list(self._firsts), list(self._ends), list(self._values), self.size
        return c
