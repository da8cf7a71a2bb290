"""The small protocol every network implements to run inside the streaming engine.

The engine (``vostool.engine.core``) owns everything that is the same for every method: reading,
pre-processing, the memory bank and its policy, per-object state, soft aggregation, post-processing
and writing. A network carries its :class:`~vostool.engine.config.ModelSettings` as ``settings``
(pre-processing, memory policy and precision are the engine's to apply) and answers four questions:

* ``encode_query(image) -> Q``: features of the current frame, computed exactly once per frame. They
  are used to segment the frame and, if the frame later enters memory, reused as its memory key
  (the "cached key" of STCN; for SimVOS the patch tokens).
* ``memory_key(query) -> K``: the part of the query features that is stored when the frame enters memory.
* ``encode_value(image, query, masks, state) -> V``: what is stored per object when the frame enters
  memory. ``masks`` are the soft aggregated probabilities of the objects, ``(K, 1, H, W)``.
* ``segment(query, memory, state)``: foreground probabilities ``(K, 1, H, W)`` of the objects in
  ``memory.objects``, read from the memory entries given.

``state`` is the engine's :class:`ObjectStates`: one slot per tracked object, ``None`` when the object
appears and dropped when it is removed (the slots above it move down, as its memory rows do). A network
may read and replace the state of the objects it is given (``memory.objects`` in ``segment``, every
object ``0..K-1`` in ``encode_value``) on every frame; the engine never looks inside. This is where
recurrent per-object memory lives:

* JointFormer's compressed memory token: ``segment`` reads it and writes the decoder's update,
  ``encode_value`` reads it (None: the learned initial token) and writes it after reading the frame.
* XMem's sensory memory (a per-object hidden state the decoder updates on every frame) maps the same
  way: ``segment`` reads the hidden state (None: zeros) and writes the updated one, and
  ``encode_value`` may refresh it with the value encoder's features. Cutie's object memory likewise.
* SAM 2's per-object memory: the object pointers are state (``segment`` appends the frame's pointer,
  keeping the newest N), while its per-object mask memory is ordinary memory entries whose value rows
  follow the objects, so each object reads its own rows through :class:`MemoryView` (``rows``), and
  objects added on later frames read only the entries that hold them.

Images reaching a network are normalised, resized and padded: ``(1, 3, H, W)`` with H and W multiples
of ``settings.preprocessing.stride``. Probabilities are at the same padded size.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar, runtime_checkable

import torch

from .config import ModelSettings, Preprocessing
from .memory import MemoryEntry, MemoryView

__all__ = ["MemoryEntry", "MemoryView", "ModelSettings", "ObjectStates", "Preprocessing", "VOSNetwork"]

Q = TypeVar("Q")  # a network's query features (one frame)
K = TypeVar("K")  # its memory key
V = TypeVar("V")  # its per-object memory values
S = TypeVar("S")  # its per-object recurrent state


class ObjectStates(Generic[S]):
    """Per-object state owned by the engine: slot -> value, ``None`` until a network sets one."""

    def __init__(self, count: int = 0) -> None:
        self._values: list[S | None] = [None] * count

    def __len__(self) -> int:
        return len(self._values)

    def get(self, slot: int) -> S | None:
        return self._values[slot]

    def __setitem__(self, slot: int, value: S) -> None:
        self._values[slot] = value

    def add_object(self) -> None:
        """A new object takes the next slot, with no state yet (engine only)."""
        self._values.append(None)

    def remove_slot(self, slot: int) -> None:
        """Drop ``slot``'s state; higher slots move down by one (engine only)."""
        del self._values[slot]


@runtime_checkable
class VOSNetwork(Protocol[Q, K, V, S]):
    """A segmentation network as the engine sees it (see module docstring)."""

    settings: ModelSettings

    def encode_query(self, image: torch.Tensor) -> Q: ...

    def memory_key(self, query: Q) -> K: ...

    def encode_value(self, image: torch.Tensor, query: Q, masks: torch.Tensor, state: ObjectStates[S]) -> V: ...

    def segment(self, query: Q, memory: MemoryView[K, V], state: ObjectStates[S]) -> torch.Tensor: ...
