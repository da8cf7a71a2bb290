"""The small protocol every network implements to run inside the streaming engine.

The engine (``vostool.engine.core``) owns everything that is the same for every method: reading,
pre-processing, the memory bank and its schedule, soft aggregation, post-processing and writing.
A network only answers four questions:

* ``encode_query(image)``: features of the current frame, computed exactly once per frame. They are
  used to segment the frame and, if the frame later enters memory, reused as its memory key
  (the "cached key" of STCN; for SimVOS the patch tokens).
* ``memory_key(query)``: the part of the query features that is stored when the frame enters memory.
* ``encode_value(image, query, masks)``: what is stored per object when the frame enters memory.
  ``masks`` are the soft aggregated probabilities of the objects, ``(K, 1, H, W)``.
* ``segment(query, memory)``: foreground probabilities ``(K, 1, H, W)`` of the objects in
  ``memory.objects``, read from the memory entries given.

Images reaching a network are normalised, resized and padded: ``(1, 3, H, W)`` with H and W multiples
of ``network.stride``. Probabilities are at the same padded size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Preprocessing:
    """How frames are turned into network input. One instance per model family."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Internal short side in pixels, or None for native size. Resizing happens on the normalised
    # float tensor (`resize_mode`, align_corners=False, no antialias), as the official STCN/SimVOS
    # (bicubic) and JointFormer (bilinear) code does; the long side is int(size * long / short).
    # A frame whose short side already equals `short_side` is left untouched.
    short_side: int | None = 480
    stride: int = 16  # pad H and W up to a multiple of this, centred, zeros in normalised space
    resize_mode: str = "bicubic"
    # True for official loops that crop a prediction to the frame and pad it again with zeros before
    # memorising it (STM-style, SITVOS): the masks encode_value sees are then zero in the padding.
    # False keeps the network's own prediction there (STCN and SimVOS work at the padded size).
    zero_padded_memory_masks: bool = False


@dataclass(frozen=True)
class MemorySchedule:
    """Which frames enter memory.

    ``mem_every``: a frame t is written when ``t - last_written >= mem_every`` (None: never, apart from
    frames with given masks, which are always written and pinned). ``include_last``: the most recent
    frame is kept in a one-frame temporary slot that every write replaces (SimVOS's "previous frame").
    ``max_frames``: cap on permanent entries; pinned entries stay, the oldest unpinned ones are dropped.
    The last frame of a video is never written (nothing reads it).

    ``keep_temporary``: the XMem-style store (JointFormer). A permanent write leaves the temporary
    slot as it is (it may then hold a frame older than the newest permanent one), and a due frame
    that finds ``max_frames`` reached with nothing droppable (every entry pinned) goes to the
    temporary slot instead of being discarded.
    """

    mem_every: int | None = 5
    include_last: bool = False
    max_frames: int | None = None
    keep_temporary: bool = False


@dataclass
class MemoryEntry:
    """One frame in memory: its cached key and one value row per object it holds."""

    frame_index: int
    key: Any
    values: Any  # model-specific, first axis = object (rows follow `objects`)
    objects: tuple[int, ...]  # object slots (engine-wide indices) of the value rows
    pinned: bool = False


@dataclass
class MemoryView:
    """What ``segment`` reads: the entries that hold every object in ``objects``.

    ``rows[i]`` gives, for entry i, the row indices of ``objects`` in that entry's values, so
    ``entry.values[rows[i]]`` are the values of exactly these objects in this order.
    """

    entries: list[MemoryEntry]
    objects: tuple[int, ...]
    rows: list[list[int]] = field(default_factory=list)

    def values(self, i: int) -> Any:
        v = self.entries[i].values
        r = self.rows[i]
        if r == list(range(len(self.entries[i].objects))):
            return v
        return v[r]


@runtime_checkable
class VOSNetwork(Protocol):
    """A segmentation network as the engine sees it (see module docstring)."""

    preprocessing: Preprocessing
    schedule: MemorySchedule

    def encode_query(self, image: torch.Tensor) -> Any: ...

    def memory_key(self, query: Any) -> Any: ...

    def encode_value(self, image: torch.Tensor, query: Any, masks: torch.Tensor) -> Any: ...

    def segment(self, query: Any, memory: MemoryView) -> torch.Tensor: ...
