"""The streaming Python API: frames in, masks out, objects added or removed on any frame.

    >>> import vostool
    >>> tracker = vostool.load("propagate-lite0", device="cpu")        # the network, loaded once
    >>> session = tracker.session()                                   # one video's state
    >>> for result in session.track(frames, masks={0: first_labels}):
    ...     print(result.index, result.object_ids, result.labels.shape)

A :class:`Tracker` holds a built network with its settings; it is shared by any number of
:class:`Session` s, each of which owns one video's memory bank, objects and per-object state, so
videos never leak into each other (several sessions may even be stepped in turn, frame by frame).
``vostool.segment``, ``vostool eval --model`` and ``vostool bench`` all run on this API.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .engine.config import ModelSettings
from .engine.core import StepResult, VideoPropagator
from .engine.labels import HostLabels
from .engine.protocol import VOSNetwork
from .errors import VostoolError
from .io.frames import FrameSource
from .settings import RunSettings

Frame = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class PreparedFrame:
    """A frame already turned into network input on the device (:meth:`Session.prepare`)."""

    image: torch.Tensor
    size: tuple[int, int]


@dataclass
class FrameResult:
    """One segmented frame.

    ``labels``: (H, W) object ids at the frame's size (0 = background), numpy, on the host.
    ``object_ids``: the ids being tracked, in the order of ``probabilities``' channels 1..K.
    ``probabilities``: (K+1, H, W) float32 soft-aggregated probabilities on the tracker's device,
    channel 0 = background; they sum to one over the channels.
    """

    index: int
    host_labels: HostLabels  # ``labels`` on their way from the device (read ``labels``)
    object_ids: tuple[int, ...]
    probabilities: torch.Tensor

    @property
    def labels(self) -> np.ndarray:
        # The first read waits for the device's copy: a run reads it in its writer thread, so the
        # per-frame loop never waits for the GPU.
        return self.host_labels.numpy()

    @classmethod
    def from_step(cls, step: StepResult) -> FrameResult:
        return cls(step.index, step.host_labels, step.object_ids, step.probabilities)


class Tracker:
    """A network on a device, built with its settings (``network.settings``). Build it with :func:`load`."""

    def __init__(self, network: VOSNetwork, model: str, device: torch.device) -> None:
        self.network = network
        self.model = model
        self.device = device

    @property
    def settings(self) -> ModelSettings:
        """The model's defaults with the user's overrides, as the network was built with them."""
        return self.network.settings

    def session(self, num_frames: int | None = None) -> Session:
        """A new video. ``num_frames``, when known, lets the engine skip memorising the last frame."""
        return Session(self, num_frames)

    def __repr__(self) -> str:
        return f"Tracker({self.model!r}, device={str(self.device)!r}, settings={self.settings})"


class Session:
    """One video's tracking state. Frames are fed in order with :meth:`step` (or :meth:`track`).

    Masks may be added for the next frame or any later one (:meth:`add_masks`): a mask introduces its
    new ids from that frame on, and where it marks pixels it overrides the tracked objects there
    (DAVIS / YouTube-VOS semantics). :meth:`remove` stops tracking an object.
    """

    def __init__(self, tracker: Tracker, num_frames: int | None = None) -> None:
        self.tracker = tracker
        self.num_frames = num_frames
        self._propagator: VideoPropagator | None = None
        self._pending: dict[int, np.ndarray] = {}
        self._next_index = 0
        self._step_by = 1  # -1 once the session goes backward (start_reverse)

    @property
    def reversed(self) -> bool:
        """Whether this session goes backward through its video (:meth:`reverse`, :meth:`start_reverse`)."""
        return self._step_by < 0

    def start_reverse(self, start: int) -> None:
        """Go backward: the next :meth:`step` is frame ``start``, then ``start - 1``, ... down to 0.

        Only on a new session (one that has stepped no frame yet); masks for frame ``start`` or earlier
        may be added before and during the run. The length the engine is told (``num_frames``) is the
        frames left to step, ``start + 1``, unless the session was given one.
        """
        if self._propagator is not None or self._next_index != 0 or self.reversed:
            raise VostoolError("a session goes one way: start_reverse() needs a new session")
        if not isinstance(start, int) or start < 0:
            raise VostoolError(f"start must be a frame index (0 or more), got {start!r}")
        later = [t for t in self._pending if t > start]
        if later:
            raise VostoolError(f"a mask is given for frame {min(later)}, after frame {start} where going backward starts")
        self._step_by = -1
        self._next_index = start
        if self.num_frames is None:
            self.num_frames = start + 1

    def reverse(
        self, frames: Sequence[Frame] | FrameSource, masks: Mapping[int, np.ndarray] | None = None, *,
        start: int | None = None,
    ) -> Iterator[FrameResult]:
        """Segment backward, yielding the results of frames ``start``, ``start - 1``, ..., 0 (each
        ``FrameResult.index`` is the frame's index in the video).

        ``frames``: the video in its natural order: a :class:`vostool.io.frames.FrameSource` (a video
        file is decoded forward in chunks and handed out in reverse, never held whole; a folder is read
        file by file) or a sequence (list, array, tensor) of frames. ``masks``: label maps by frame index,
        as for :meth:`track`; an object is tracked from the last frame it is annotated on toward frame 0.
        ``start``: default the latest frame with a mask. Needs a new session (see :meth:`start_reverse`).
        """
        masks = dict(masks or {})
        if start is None:
            annotated = [*masks, *self._pending]
            if not annotated:
                raise VostoolError("reverse() needs a mask (or start=) to know where to begin")
            start = max(annotated)
        self.start_reverse(start)
        for frame_index, labels in sorted(masks.items()):
            self.add_masks(frame_index, labels)
        for frame in _reversed_frames(frames, start):
            yield self.step(frame)

    @property
    def next_index(self) -> int:
        """The index the next :meth:`step` gets."""
        return self._next_index

    @property
    def object_ids(self) -> tuple[int, ...]:
        """The ids tracked now (objects of masks for later frames are not among them yet)."""
        return tuple(self._propagator.object_ids) if self._propagator is not None else ()

    def add_masks(self, frame_index: int, labels: np.ndarray) -> None:
        """Objects annotated on frame ``frame_index`` (the next frame or a later one): an (H, W) integer
        label map, 0 = background. Several masks for one frame are merged (later ones win)."""
        if (frame_index - self._next_index) * self._step_by < 0:
            later = "earlier" if self.reversed else "later"
            raise VostoolError(
                f"frame {frame_index} was already segmented; masks can be added for frame {self._next_index} or {later}"
            )
        labels = _label_map(labels)
        if frame_index in self._pending:
            merged = self._pending[frame_index].copy()
            merged[labels != 0] = labels[labels != 0]
            labels = merged
        self._pending[frame_index] = labels

    def remove(self, object_id: int) -> None:
        """Stop tracking ``object_id`` from the next frame on (its memory and state are dropped)."""
        for labels in self._pending.values():
            labels[labels == object_id] = 0
        if self._propagator is not None and object_id in self._propagator.object_ids:
            self._propagator.remove_object(object_id)

    def step(self, frame: Frame | PreparedFrame) -> FrameResult:
        """Segment the next frame: an RGB uint8 (H, W, 3) numpy array or torch tensor (on any device), or
        a frame from :meth:`prepare`."""
        return FrameResult.from_step(self._step(frame))

    def prepare(self, frame: Frame) -> PreparedFrame:
        """Normalise, resize and pad ``frame`` for the network now (``vostool bench`` preloads frames
        this way to time the model alone, as papers do). Every frame of a session has one size."""
        propagator = self._propagator_for(tuple(frame.shape[:2]))
        return PreparedFrame(propagator.preprocess(frame), propagator.geometry.original)

    def track(
        self, frames: Iterable[Frame], masks: Mapping[int, np.ndarray] | None = None
    ) -> Iterator[FrameResult]:
        """Segment ``frames`` one by one, yielding each result as soon as it is ready. ``masks``: label
        maps by frame index (added with :meth:`add_masks` before the run)."""
        for frame_index, labels in sorted((masks or {}).items()):
            self.add_masks(frame_index, labels)
        if self.num_frames is None and hasattr(frames, "__len__"):
            self.num_frames = self._next_index + len(frames)
        for frame in frames:
            yield self.step(frame)

    def _step(self, frame: Frame | PreparedFrame) -> StepResult:
        size = frame.size if isinstance(frame, PreparedFrame) else tuple(frame.shape[:2])
        propagator = self._propagator_for(size)
        index = self._next_index
        if index < 0:
            raise VostoolError("going backward, frame 0 was the last frame")
        given = self._pending.pop(index, None)
        if given is not None and given.shape != size:
            raise VostoolError(
                f"the mask for frame {index} is {given.shape[0]}x{given.shape[1]} but the frames are "
                f"{size[0]}x{size[1]} (height x width)"
            )
        if isinstance(frame, PreparedFrame):
            result = propagator.step_preprocessed(frame.image, given)
        else:
            result = propagator.step(frame, given)
        self._next_index += self._step_by
        result.index = index  # the frame's index in the video (the engine counts its steps)
        return result

    def _propagator_for(self, frame_size: tuple[int, int]) -> VideoPropagator:
        """The engine of this video, started by its first frame; later frames must have the same size."""
        if self._propagator is None:
            tracker = self.tracker
            self._propagator = VideoPropagator(tracker.network, frame_size, self.num_frames, tracker.device)
        elif frame_size != self._propagator.geometry.original:
            first = self._propagator.geometry.original
            raise VostoolError(
                f"frame {self._next_index} is {frame_size[0]}x{frame_size[1]} but the video's frames are "
                f"{first[0]}x{first[1]} (height x width)"
            )
        return self._propagator


def load(
    model: str | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    weights: str | Path | None = None,
    offline: bool = False,
    size: int | None = None,
    mem_every: int | None = None,
    top_k: int | None = None,
    max_memory_frames: int | None = None,
    compile: bool = False,
    settings: RunSettings | None = None,
) -> Tracker:
    """Build ``model`` (default: the offline default model) on ``device`` once, for any number of videos.

    Settings are validated before anything is loaded (:class:`~vostool.settings.SettingsError` names
    the parameter); a checkpoint is downloaded on first use unless ``offline`` (see ``vostool weights``).
    ``compile``: ``torch.compile`` the network's encoders and decoders (the memory readout stays eager);
    they compile on the first frame of a resolution, which then takes seconds to minutes (see
    :mod:`vostool.engine.compile`). ``settings``: a :class:`~vostool.settings.RunSettings` already made
    (the CLI's), instead of the ``device`` ... ``compile`` arguments.
    """
    from .models.registry import DEFAULT_MODEL, get_spec

    run = settings or RunSettings(
        size=size, mem_every=mem_every, top_k=top_k, max_memory_frames=max_memory_frames,
        precision=precision, device=device, compile=compile,
    )
    model = model or DEFAULT_MODEL
    return build_tracker(model, get_spec(model).settings_for(run), run.device, weights, offline=offline)


def build_tracker(
    model: str, settings: ModelSettings, device: str, weights: str | Path | None = None, *, offline: bool = False
) -> Tracker:
    """A :class:`Tracker` of ``model`` built with ``settings`` (the model's defaults merged with the
    user's, :meth:`vostool.models.spec.ModelSpec.settings_for`) on ``device`` (a validated name), its
    fixed-shape parts compiled when ``settings.compile``."""
    from .api import load_network, resolve_device
    from .engine.compile import compile_network

    torch_device = resolve_device(device)
    network = load_network(model, weights, torch_device, settings, offline=offline)
    if settings.compile:
        compile_network(network)
    return Tracker(network, model, torch_device)


def _reversed_frames(frames: Sequence[Frame] | FrameSource, start: int) -> Iterator[Frame]:
    if hasattr(frames, "iter_reversed"):
        return frames.iter_reversed(start)
    if not (hasattr(frames, "__getitem__") and hasattr(frames, "__len__")):
        raise VostoolError("reverse() needs the video as a sequence of frames or a frame source (an iterator cannot be read backward)")
    if start >= len(frames):
        raise VostoolError(f"reverse() starts at frame {start} but the video has {len(frames)} frames")
    return (frames[index] for index in range(start, -1, -1))


def _label_map(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise VostoolError(f"a mask must be an (H, W) array of non-negative integer ids, got {labels.dtype} {labels.shape}")
    return labels.copy()
