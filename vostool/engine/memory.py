"""The memory bank and its policies: which frames are remembered, and grouping objects by the frames
that hold them.

A policy (:class:`EveryNthFrame`, :class:`FirstAndPrevious`, :class:`WorkingMemory`) decides *when*
a frame is written (:meth:`MemoryPolicy.due`) and how a permanent entry is admitted
(:meth:`MemoryPolicy.admit`); the bank keeps the mechanics: entries, pinning, making room, views and
dropping an object's rows. Frames with given masks are always written, pinned, and never dropped.

Importing this module does not import torch (model specs name their policy without it).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

K = TypeVar("K")  # a network's memory key
V = TypeVar("V")  # a network's per-object memory values (first axis = object)


class Write(Enum):
    """What kind of write a frame gets."""

    NONE = "none"
    PERMANENT = "permanent"  # a memory frame (subject to the policy's cap)
    TEMPORARY = "temporary"  # the one-frame "previous frame" slot, replaced by the next such write


@dataclass
class MemoryEntry(Generic[K, V]):
    """One frame in memory: its cached key and one value row per object it holds."""

    frame_index: int
    key: K
    values: V  # model-specific, first axis = object (rows follow `objects`)
    objects: tuple[int, ...]  # object slots (engine-wide indices) of the value rows
    pinned: bool = False


@dataclass
class MemoryView(Generic[K, V]):
    """What ``segment`` reads: the entries that hold every object in ``objects``.

    ``rows[i]`` gives, for entry i, the row indices of ``objects`` in that entry's values, so
    ``entry.values[rows[i]]`` are the values of exactly these objects in this order.
    """

    entries: list[MemoryEntry[K, V]]
    objects: tuple[int, ...]
    rows: list[list[int]] = field(default_factory=list)

    def values(self, i: int) -> V:
        v = self.entries[i].values
        r = self.rows[i]
        if r == list(range(len(self.entries[i].objects))):
            return v
        return v[r]


class MemoryPolicy:
    """Base of the memory policies: when a frame is written and how a memory frame is admitted.

    ``max_frames``: cap on permanent entries (None: unbounded); pinned entries stay, the oldest
    unpinned ones are dropped to make room.
    """

    max_frames: int | None = None

    def due(self, t: int, last_written: int | None) -> Write:
        """The write frame ``t`` (without given masks) gets; ``last_written``: the last memory frame."""
        raise NotImplementedError

    def admit(self, bank: MemoryBank, entry: MemoryEntry) -> None:
        """Store the memory frame ``entry`` (pinned when it has given masks) in ``bank``."""
        raise NotImplementedError

    def with_overrides(self, mem_every: int | None, max_frames: int | None) -> MemoryPolicy:
        """This policy with a user's ``mem_every`` / ``max_frames`` (None keeps the policy's own)."""
        raise NotImplementedError


def _append_replacing_previous(bank: MemoryBank, entry: MemoryEntry) -> None:
    """STCN/SimVOS admission: a memory frame replaces the temporary slot; with no room and nothing
    to drop, an unpinned frame is discarded."""
    bank.temporary = None
    if bank.make_room() or entry.pinned:
        bank.permanent.append(entry)


@dataclass(frozen=True)
class EveryNthFrame(MemoryPolicy):
    """The official STCN store: frame t is written when ``t - last_written >= every``.

    ``keep_previous``: the most recent other frame is kept in a one-frame temporary slot that every
    write replaces (SITVOS's previous frame). ``max_frames``: see :class:`MemoryPolicy`.
    """

    every: int = 5
    keep_previous: bool = False
    max_frames: int | None = None

    def due(self, t: int, last_written: int | None) -> Write:
        if last_written is not None and t - last_written >= self.every:
            return Write.PERMANENT
        return Write.TEMPORARY if self.keep_previous else Write.NONE

    def admit(self, bank: MemoryBank, entry: MemoryEntry) -> None:
        _append_replacing_previous(bank, entry)

    def with_overrides(self, mem_every: int | None, max_frames: int | None) -> EveryNthFrame:
        return dataclasses.replace(
            self,
            every=self.every if mem_every is None else mem_every,
            max_frames=self.max_frames if max_frames is None else max_frames,
        )


@dataclass(frozen=True)
class FirstAndPrevious(MemoryPolicy):
    """SimVOS's store: the annotated frames (pinned) plus the previous frame, no periodic writes.

    A ``mem_every`` override adds periodic memory frames: :class:`EveryNthFrame` with the previous
    frame kept. ``max_frames`` alone changes nothing (every permanent entry is pinned) and is kept for
    that conversion.
    """

    max_frames: int | None = None

    def due(self, t: int, last_written: int | None) -> Write:
        return Write.TEMPORARY

    def admit(self, bank: MemoryBank, entry: MemoryEntry) -> None:
        _append_replacing_previous(bank, entry)

    def with_overrides(self, mem_every: int | None, max_frames: int | None) -> MemoryPolicy:
        max_frames = self.max_frames if max_frames is None else max_frames
        if mem_every is None:
            return dataclasses.replace(self, max_frames=max_frames)
        return EveryNthFrame(mem_every, keep_previous=True, max_frames=max_frames)


@dataclass(frozen=True)
class WorkingMemory(MemoryPolicy):
    """The XMem-style store of JointFormer: every ``every``-th frame is a memory frame, every other
    frame goes to the temporary slot.

    Two quirks of the official store: a memory frame leaves the temporary slot as it is (it may then
    hold a frame older than the newest memory frame), and a memory frame that finds ``max_frames``
    reached with nothing droppable (every entry pinned) goes to the temporary slot instead of being
    discarded.
    """

    every: int = 5
    max_frames: int | None = None

    def due(self, t: int, last_written: int | None) -> Write:
        if last_written is not None and t - last_written >= self.every:
            return Write.PERMANENT
        return Write.TEMPORARY

    def admit(self, bank: MemoryBank, entry: MemoryEntry) -> None:
        if bank.make_room() or entry.pinned:
            bank.permanent.append(entry)
        else:
            bank.temporary = entry

    def with_overrides(self, mem_every: int | None, max_frames: int | None) -> WorkingMemory:
        return dataclasses.replace(
            self,
            every=self.every if mem_every is None else mem_every,
            max_frames=self.max_frames if max_frames is None else max_frames,
        )


class MemoryBank(Generic[K, V]):
    """Permanent entries (pinned ones never dropped) plus an optional one-frame temporary slot.

    The policy decides *when* to write (see :meth:`due`) and how a memory frame is admitted; the bank
    keeps at most ``policy.max_frames`` permanent entries by dropping the oldest unpinned one (see
    :meth:`make_room`), so memory stays bounded on long videos while the annotated frames are kept.
    """

    def __init__(self, policy: MemoryPolicy) -> None:
        self.policy = policy
        self.permanent: list[MemoryEntry[K, V]] = []
        self.temporary: MemoryEntry[K, V] | None = None
        self.last_written: int | None = None

    def __len__(self) -> int:
        return len(self.permanent) + (self.temporary is not None)

    @property
    def entries(self) -> list[MemoryEntry[K, V]]:
        """Permanent entries in insertion order, then the temporary one (as the official cores read them)."""
        return self.permanent + ([self.temporary] if self.temporary is not None else [])

    def due(self, t: int) -> Write:
        """The write frame ``t`` gets when it has no given masks."""
        return self.policy.due(t, self.last_written)

    def add(self, entry: MemoryEntry[K, V], write: Write) -> None:
        if write is Write.NONE:
            return
        if write is Write.TEMPORARY:
            self.temporary = entry
            return
        self.last_written = entry.frame_index
        self.policy.admit(self, entry)

    def make_room(self) -> bool:
        """True when a permanent entry fits, after dropping the oldest unpinned one if at the cap."""
        cap = self.policy.max_frames
        if cap is None or len(self.permanent) < cap:
            return True
        oldest_unpinned = next((i for i, e in enumerate(self.permanent) if not e.pinned), None)
        if oldest_unpinned is None:
            return False
        del self.permanent[oldest_unpinned]
        return True

    def remove_slot(self, slot: int) -> None:
        """Forget object ``slot`` everywhere: its value rows go, higher slots move down by one, and an
        entry that held nothing else is dropped."""
        self.permanent = [e for e in self.permanent if _without_slot(e, slot)]
        if self.temporary is not None and not _without_slot(self.temporary, slot):
            self.temporary = None

    def views(self, objects: list[int]) -> list[MemoryView[K, V]]:
        """Split ``objects`` into groups that are held by the same entries, one view per group.

        Objects introduced at the same frame share every entry, so in the usual case (all objects in
        the first frame) this is a single view over the whole memory.
        """
        entries = self.entries
        by_entries: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for obj in objects:
            holding = tuple(i for i, e in enumerate(entries) if obj in e.objects)
            if holding:
                by_entries[holding].append(obj)
        views = []
        for holding, group in by_entries.items():
            chosen = [entries[i] for i in holding]
            rows = [[e.objects.index(obj) for obj in group] for e in chosen]
            views.append(MemoryView(entries=chosen, objects=tuple(group), rows=rows))
        return views


def _without_slot(entry: MemoryEntry, slot: int) -> bool:
    """Drop ``slot``'s value row from ``entry`` in place; False when the entry then holds no object."""
    rows = [row for row, obj in enumerate(entry.objects) if obj != slot]
    if not rows:
        return False
    if len(rows) != len(entry.objects):
        entry.values = entry.values[rows]
    entry.objects = tuple(obj - (obj > slot) for obj in entry.objects if obj != slot)
    return True
