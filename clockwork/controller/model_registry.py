"""ModelRegistry: model id -> ModelInfo for every registered instance, one entry per LoadModel.

The copies of one LoadModel have consecutive ids and the same ModelInfo but for model_id, so the
registry keeps one ModelInfo per range of ids (clockwork.id_ranges) and makes an id's own
ModelInfo on its first lookup (kept: a scheduler asks for the same few again and again).
Registering a million instances therefore costs what registering one does, and memory grows
with the instances asked for. It is a read-only Mapping for everyone who reads `models`
(admission, schedulers, telemetry), plus the few writes schedulers make (setdefault, update).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator

import msgspec

from ..id_ranges import IdRanges
from ..transport.schema import ModelInfo

_replace = msgspec.structs.replace


def _is_id(x) -> bool:
    """An int (or numpy integer): anything else is in no range (and must not reach bisect)."""
    return x.__class__ is int or hasattr(x, "__index__") and not isinstance(x, bool)


class ModelRegistry(Mapping):
    __slots__ = ("_ranges", "_made")

    def __init__(self, models: Mapping[int, ModelInfo] | None = None):
        self._ranges: IdRanges[ModelInfo] = IdRanges()   # value: the range's first ModelInfo
        self._made: dict[int, ModelInfo] = {}             # ids looked up (or set) so far
        if models:
            self.update(models)

    # ------------------------------------------------------------------ writes
    def add_copies(self, first: ModelInfo, copies: int) -> None:
        """Ids first.model_id .. + copies - 1, all described by `first`; ValueError if any
        is registered already."""
        self._ranges.add(first.model_id, copies, first)

    def add_list(self, infos: list[ModelInfo]) -> None:
        """ModelInfos one per id (an older worker's answer): runs of consecutive ids that differ
        only in model_id become one range each."""
        i = 0
        while i < len(infos):
            head = infos[i]
            j = i + 1
            while (j < len(infos) and infos[j].model_id == head.model_id + (j - i)
                   and _replace(infos[j], model_id=head.model_id) == head):
                j += 1
            self.add_copies(head, j - i)
            i = j

    def __setitem__(self, model_id: int, info: ModelInfo) -> None:
        if model_id in self._ranges:
            self._made[model_id] = info
        else:
            self._ranges.add(model_id, 1, info)

    def update(self, other: Mapping[int, ModelInfo]) -> None:
        if isinstance(other, ModelRegistry):
            for first, count, info in other._ranges.ranges():
                self._ranges.add(first, count, info)
            self._made.update(other._made)
        else:
            for model_id, info in other.items():
                self[model_id] = info

    def setdefault(self, model_id: int, info: ModelInfo) -> ModelInfo:
        have = self.get(model_id)
        if have is not None:
            return have
        self._ranges.add(model_id, 1, info)
        return info

    def copy(self) -> "ModelRegistry":
        """The same instances (a scheduler's own registry: its writes stay its own)."""
        c = ModelRegistry()
        c._ranges = self._ranges.copy()
        return c

    # ------------------------------------------------------------------ reads
    def get(self, model_id, default=None):
        m = self._made.get(model_id)
        if m is None:
            found = self._ranges.find(model_id) if _is_id(model_id) else None
            if found is None:
                return default
            first, m = found
            if first != model_id:
                m = _replace(m, model_id=model_id)
            self._made[model_id] = m
        return m

    def __getitem__(self, model_id: int) -> ModelInfo:
        m = self.get(model_id)
        if m is None:
            raise KeyError(model_id)
        return m

    def __contains__(self, model_id) -> bool:
        return _is_id(model_id) and model_id in self._ranges

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[int]:
        return self._ranges.ids()

    def ids(self, start: int = 0) -> Iterator[int]:
        """Registered ids >= start, ascending (LS pages)."""
        return self._ranges.ids(start)

    def items(self, start: int = 0) -> Iterator[tuple[int, ModelInfo]]:
        """(id, ModelInfo) of every instance with id >= start in id order, made on the fly (not
        kept) for the ids not looked up yet: a client paging through a million (LS) leaves
        nothing behind."""
        made = self._made
        for first, count, info in self._ranges.ranges(start):
            for mid in range(max(first, start), first + count):
                m = made.get(mid)
                yield mid, m if m is not None else info if mid == first else _replace(info, model_id=mid)

    def values(self) -> Iterator[ModelInfo]:
        for _, m in self.items():
            yield m

    def ranges(self) -> Iterator[tuple[int, int, ModelInfo]]:
        """(first id, copies, first's ModelInfo) per range, ascending."""
        return self._ranges.ranges()

    def total_pages(self) -> int:
        """Weights-cache pages of all instances together."""
        return sum(count * info.num_pages for _, count, info in self._ranges.ranges())
