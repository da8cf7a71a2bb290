"""The memory bank: which frames are remembered, and grouping objects by the frames that hold them."""

from __future__ import annotations

from collections import defaultdict

from .protocol import MemoryEntry, MemorySchedule, MemoryView


class MemoryBank:
    """Permanent entries (pinned ones never dropped) plus an optional one-frame temporary slot.

    The schedule decides *when* to write (see :meth:`due`); the bank keeps at most
    ``schedule.max_frames`` permanent entries by dropping the oldest unpinned one, so memory stays
    bounded on long videos while the annotated frames are always kept.
    """

    def __init__(self, schedule: MemorySchedule) -> None:
        self.schedule = schedule
        self.permanent: list[MemoryEntry] = []
        self.temporary: MemoryEntry | None = None
        self.last_written: int | None = None

    def __len__(self) -> int:
        return len(self.permanent) + (self.temporary is not None)

    @property
    def entries(self) -> list[MemoryEntry]:
        """Permanent entries in insertion order, then the temporary one (as the official cores read them)."""
        return self.permanent + ([self.temporary] if self.temporary is not None else [])

    def due(self, t: int) -> str | None:
        """'permanent', 'temporary' or None: what kind of write frame ``t`` gets (unannotated frames)."""
        every = self.schedule.mem_every
        if every is not None and self.last_written is not None and t - self.last_written >= every:
            return "permanent"
        if self.schedule.include_last:
            return "temporary"
        return None

    def add(self, entry: MemoryEntry, permanent: bool) -> None:
        if not permanent:
            self.temporary = entry
            return
        self.last_written = entry.frame_index
        if not self.schedule.keep_temporary:
            self.temporary = None  # every permanent write replaces the temporary slot (STCN/SimVOS)
        if self._at_cap() and not self._drop_oldest_unpinned() and not entry.pinned:
            # No room and nothing to drop: XMem-style stores keep the frame as the temporary one.
            if self.schedule.keep_temporary:
                self.temporary = entry
            return
        self.permanent.append(entry)

    def _at_cap(self) -> bool:
        cap = self.schedule.max_frames
        return cap is not None and len(self.permanent) >= cap

    def _drop_oldest_unpinned(self) -> bool:
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

    def views(self, objects: list[int]) -> list[MemoryView]:
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
