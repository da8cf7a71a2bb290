"""The streaming loop shared by every model.

Per frame: pre-process -> encode the query once -> read memory and decode (per group of objects that
share memory frames) -> merge given masks -> soft aggregation -> maybe write the frame to memory,
reusing its query features as the key -> unpad, resize, argmax -> labels with the user's ids.

Only the current frame and the memory bank live on the device; nothing grows with video length
unless the memory policy keeps every memory frame (official STCN behaviour; cap it with ``max_frames``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .aggregate import aggregate
from .config import ModelSettings
from .labels import HostLabels
from .memory import MemoryBank, MemoryEntry, Write
from .precision import autocast, tf32_matmul
from .protocol import ObjectStates, VOSNetwork
from .timing import stage
from .transforms import Geometry, clear_padding, preprocess_frame, preprocess_masks, unpad_and_resize

@dataclass
class StepResult:
    """One segmented frame: labels at the original size with the user's ids, and the probabilities."""

    index: int
    host_labels: HostLabels  # (H0, W0) ids, dtype of the given masks' ids; may still be on their way
    prob_padded: torch.Tensor  # (K+1, 1, Hp, Wp) aggregated probabilities at the padded size
    object_ids: tuple[int, ...]  # id of channel 1..K
    probabilities: torch.Tensor  # (K+1, H0, W0) the same at the original size; channel 0 = background

    @property
    def labels(self) -> np.ndarray:
        """The label ids on the host (waits for the device's copy the first time)."""
        return self.host_labels.numpy()


class VideoPropagator:
    """Segments one video frame by frame. Create one per video; call :meth:`step` in frame order.

    Pre-processing, memory policy and precision come from ``network.settings``; ``settings`` replaces
    them for engine-level measurements (``vostool bench`` runs its memory-growth clips smaller). The
    network's own readout (top-k) is not affected by it.
    """

    def __init__(
        self,
        network: VOSNetwork,
        frame_size: tuple[int, int],
        num_frames: int | None,
        device: torch.device | str = "cpu",
        *,
        settings: ModelSettings | None = None,
    ) -> None:
        self.network = network
        self.device = torch.device(device)
        settings = settings or network.settings
        self.prep = settings.preprocessing
        self.geometry = Geometry.for_frame(frame_size, self.prep)
        self.bank = MemoryBank(settings.memory)
        self.states = ObjectStates()  # slot -> the network's per-object state
        self.num_frames = num_frames
        self.object_ids: list[int] = []  # slot -> user id
        self.label_dtype = np.uint8
        self.precision = settings.precision  # see vostool.engine.precision
        self.t = 0

    def step(self, frame: np.ndarray | torch.Tensor, given: np.ndarray | None = None) -> StepResult:
        """Segment the next frame. ``given``: a label map (H0, W0) of objects annotated on this frame."""
        return self.step_preprocessed(self.preprocess(frame), given)

    def remove_object(self, object_id: int) -> None:
        """Stop tracking ``object_id``: its slot, its memory rows and its state are dropped; the other
        objects keep theirs (their slots above it move down by one)."""
        if object_id not in self.object_ids:
            raise KeyError(object_id)
        slot = self.object_ids.index(object_id)
        del self.object_ids[slot]
        self.bank.remove_slot(slot)
        self.states.remove_slot(slot)

    @torch.inference_mode()
    def preprocess(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The network's input for an RGB uint8 ``frame`` (H0, W0, 3), numpy or torch (on any device).

        ``vostool bench`` preloads frames this way to time the model alone, as papers do.
        """
        with stage("preprocess"):
            return preprocess_frame(frame, self.geometry, self.prep, self.device)

    @torch.inference_mode()
    def step_preprocessed(self, image: torch.Tensor, given: np.ndarray | None = None) -> StepResult:
        """:meth:`step` for a frame already turned into network input by :meth:`preprocess`."""
        with tf32_matmul(self.precision, self.device):
            return self._step(image, given)

    def _step(self, image: torch.Tensor, given: np.ndarray | None) -> StepResult:
        t, self.t = self.t, self.t + 1
        is_last = self.num_frames is not None and t == self.num_frames - 1
        self._register_objects(given)
        if not self.object_ids:  # nothing to track yet (objects appear later)
            return self._empty_result(t)
        with autocast(self.precision, self.device):
            with stage("key_encoding"):
                query = self.network.encode_query(image)
            with stage("segment"):
                fg = self._read_memory(query)
        with stage("aggregation"):
            fg = fg.float()
            if given is not None:
                fg = self._merge_given(fg, given)
            prob = aggregate(fg)
        if not is_last:
            with stage("memory_write"):
                self._maybe_memorize(t, image, query, prob, annotated=given is not None)
        with stage("postprocess"):
            probabilities = unpad_and_resize(prob, self.geometry)
            labels = self._labels(probabilities)
        return StepResult(t, labels, prob, tuple(self.object_ids), probabilities)

    def _register_objects(self, given: np.ndarray | None) -> None:
        """New ids of a given mask get the next object slots; known ids keep theirs."""
        if given is None:
            return
        if given.dtype != np.uint8:
            self.label_dtype = given.dtype
        for obj_id in (int(i) for i in np.unique(given) if i != 0):
            if obj_id not in self.object_ids:
                self.object_ids.append(obj_id)
                self.states.add_object()

    def _read_memory(self, query) -> torch.Tensor:
        hp, wp = self.geometry.padded
        fg = torch.zeros(len(self.object_ids), 1, hp, wp, device=self.device)
        for view in self.bank.views(list(range(len(self.object_ids)))):
            fg[list(view.objects)] = self.network.segment(query, view, self.states).to(fg.dtype)
        return fg

    def _merge_given(self, fg: torch.Tensor, given: np.ndarray) -> torch.Tensor:
        """Given objects take their masks; every other object is cleared where a given mask is set."""
        ids = [int(i) for i in np.unique(given) if i != 0]
        planes = torch.stack([torch.from_numpy(given == i) for i in ids]).to(self.device).float()
        planes = preprocess_masks(planes.unsqueeze(1), self.geometry)
        covered = (planes > 0.5).any(dim=0, keepdim=True)
        fg = fg.masked_fill(covered, 0.0)
        for plane, obj_id in zip(planes, ids):
            fg[self.object_ids.index(obj_id)] = plane
        return fg

    def _maybe_memorize(self, t: int, image, query, prob: torch.Tensor, annotated: bool) -> None:
        write = Write.PERMANENT if annotated else self.bank.due(t)
        if write is Write.NONE:
            return
        masks = prob[1:]
        if self.prep.zero_padded_memory_masks:
            masks = clear_padding(masks, self.geometry)
        with autocast(self.precision, self.device):
            values = self.network.encode_value(image, query, masks, self.states)
            key = self.network.memory_key(query)
        entry = MemoryEntry(t, key, values, tuple(range(len(self.object_ids))), pinned=annotated)
        self.bank.add(entry, write)

    def _labels(self, probabilities: torch.Tensor) -> HostLabels:
        # Channel indices narrowed on the device: the copy to the host moves 1 byte per pixel, not 8.
        narrow = torch.uint8 if probabilities.shape[0] <= 256 else torch.int32
        lut = np.array([0, *self.object_ids], dtype=self.label_dtype)
        return HostLabels(probabilities.argmax(dim=0).to(narrow), lut)

    def _empty_result(self, t: int) -> StepResult:
        hp, wp = self.geometry.padded
        prob = torch.ones(1, 1, hp, wp, device=self.device)
        background = torch.ones(1, *self.geometry.original, device=self.device)
        return StepResult(t, HostLabels.ready(np.zeros(self.geometry.original, self.label_dtype)), prob, (), background)


def propagate(
    network: VOSNetwork,
    frames: Iterable[np.ndarray],
    masks: Mapping[int, np.ndarray],
    *,
    num_frames: int | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[StepResult]:
    """Segment a stream of RGB frames given label maps for some frames (at least one).

    ``masks[t]`` introduces the objects of frame t (DAVIS / YouTube-VOS semantics). ``num_frames``
    lets the engine skip writing the last frame to memory; without it every due frame is written.
    The network's own settings (``network.settings``) apply.
    """
    propagator: VideoPropagator | None = None
    for t, frame in enumerate(frames):
        if propagator is None:
            propagator = VideoPropagator(network, frame.shape[:2], num_frames, device)
        yield propagator.step(frame, masks.get(t))
