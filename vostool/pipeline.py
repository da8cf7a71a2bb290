"""Overlapping I/O with compute: frames are decoded in one background thread and results written in
another, each behind a small bounded queue, so the model never waits for the disk (or ffmpeg) unless
I/O is the slower side.

Decoding (ffmpeg pipe reads, Pillow) and writing (zlib, ffmpeg pipe writes) spend most of their time
outside the GIL, so the threads overlap with the model's own (GIL-free) kernels. Queues are bounded:
memory stays a few frames no matter how long the video is.

Failure handling: an exception in a background thread is re-raised in the caller's thread, with its
own type and traceback; leaving a ``with`` block early (error, Ctrl-C, ``break``) stops both threads
before the block is left, so the caller can then abort its writers with nothing still writing.
"""

from __future__ import annotations

import bisect
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import torch

from .engine.aggregate import aggregate
from .engine.labels import HostLabels
from .engine.timing import carry_to_thread, stage
from .errors import VostoolError

# How often a blocked put/get wakes up to check whether the other side has stopped or failed.
_POLL_SECONDS = 0.05
READ_AHEAD = 4
WRITE_BEHIND = 8

if TYPE_CHECKING:
    from .io.frames import FrameSource
    from .tracker import FrameResult, PreparedFrame, Session, Tracker

WriteFn = Callable[[str, np.ndarray, np.ndarray], None]
ProgressFn = Callable[[int, int | None], None]  # (done, total); total None: unknown (a stream)


class _End:
    """Queue marker: the producer finished (``error`` is None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class FramePrefetcher:
    """Iterates ``frames`` in a background thread, up to ``depth`` frames ahead of the consumer.

    Use as a context manager; iterate it once. ``limit`` stops after that many frames. The source
    iterator is closed in the reader thread when it ends or the consumer stops early (closing a
    video source stops its ffmpeg process).
    """

    def __init__(self, frames: Iterable[np.ndarray], depth: int = READ_AHEAD, limit: int | None = None) -> None:
        self._frames = frames
        self._limit = limit
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=carry_to_thread(self._produce), name="vostool-reader", daemon=True)
        self._started = False

    def __enter__(self) -> FramePrefetcher:
        self._thread.start()
        self._started = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self._started:
            raise RuntimeError("use FramePrefetcher in a with block")
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    def close(self) -> None:
        """Stop the reader thread and wait for it (it closes the source)."""
        self._stop.set()
        if self._started:
            self._thread.join()

    def _produce(self) -> None:
        iterator = iter(self._frames)
        end = _End()
        try:
            count = 0
            while self._limit is None or count < self._limit:
                with stage("decode", sync=False):
                    frame = next(iterator, _End)
                if frame is _End or not self._put(frame):
                    break
                count += 1
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who re-raises it
            end = _End(error)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._put(end)

    def _put(self, item: object) -> bool:
        """Block until there is room; False when the consumer has stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False


class BackgroundWriter:
    """Calls ``write(*args)`` in order in one background thread, up to ``depth`` calls behind.

    One thread, not a pool: the overlay video and the RLE file need frames in order, and on small
    machines the compute threads want the other cores. A write that fails stops the thread; the next
    :meth:`submit` or :meth:`close` re-raises the error in the caller's thread. Leaving the ``with``
    block through an exception drops what is still queued and waits for the thread.
    """

    def __init__(self, write: Callable[..., None], depth: int = WRITE_BEHIND) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=carry_to_thread(self._consume), name="vostool-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()

    def submit(self, *args: object) -> None:
        """Queue one write (blocks while the queue is full); raises a previous write's error."""
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(args, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for every queued write; raise the first write error, if any."""
        self._put_end()
        self._thread.join()
        self._raise_if_failed()

    def cancel(self) -> None:
        """Drop queued writes and wait for the one in progress to finish."""
        self._cancelled.set()
        self._put_end()
        self._thread.join()

    def _put_end(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(_End(), timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _consume(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _End) or self._cancelled.is_set():
                return
            try:
                with stage("write", sync=False):
                    self._write(*item)
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = error
                return


@dataclass
class FrameOutput:
    """One segmented frame as the writers get it.

    ``probabilities``: (K+1, H, W) float32 on the host (channel 0 = background, then ``object_ids``),
    only when a writer asked for them (copying them off the device costs time).
    """

    index: int
    name: str
    frame: np.ndarray
    host_labels: HostLabels
    object_ids: tuple[int, ...]
    probabilities: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """The label ids (the first read, in the writer thread, waits for the device's copy)."""
        return self.host_labels.numpy()


OutputFn = Callable[[FrameOutput], None]
Names = Sequence[str] | Callable[[int], str]


def segment_stream(
    session: Session,
    frames: Iterable[np.ndarray],
    names: Sequence[str],
    given: Mapping[int, np.ndarray],
    write: WriteFn,
    *,
    limit: int | None = None,
    progress: ProgressFn | None = None,
) -> int:
    """Decode ``frames`` ahead, segment each in ``session``, ``write(name, frame, labels)`` behind.

    ``given``: label maps by frame index, added to the session as their frames come.

    Returns the number of frames segmented. Every write has finished (or been dropped, on error)
    when this returns or raises.
    """
    return stream_outputs(
        session, frames, names, given, lambda out: write(out.name, out.frame, out.labels), limit=limit,
        progress=progress,
    )


def stream_outputs(
    session: Session | None,
    frames: Iterable[np.ndarray],
    names: Names,
    given: Mapping[int, np.ndarray],
    write: OutputFn,
    *,
    limit: int | None = None,
    progress: ProgressFn | None = None,
    probabilities: bool = False,
    merge: Callable[[int, FrameResult | None], FrameParts] | None = None,
    counted: tuple[int, int | None] | None = None,
) -> int:
    """:func:`segment_stream` with every result handed to ``write`` as a :class:`FrameOutput`.

    ``names``: the frames' output stems, or a function of the frame index for a stream of unknown
    length (then ``progress`` gets ``None`` as its total). ``probabilities``: include them, on the host.
    ``merge(t, result)``: the frame's (labels, object ids, probabilities) from this pass's result and
    another's (the backward pass of :func:`propagate_video`); ``session`` None: no forward pass, all
    from ``merge``. ``counted``: (frames done before, total) for ``progress``, when this is a second pass.
    """
    total = _total(names, limit)
    done, progress_total = counted or (0, total)
    name_of = names if callable(names) else names.__getitem__
    count = 0
    source = _prepared(session, frames) if session is not None else ((frame, None) for frame in frames)
    with FramePrefetcher(source, limit=total) as reader, BackgroundWriter(write) as writer:
        for t, (frame, prepared) in enumerate(reader):
            result = None
            if session is not None:
                if t in given:
                    session.add_masks(t, given[t])
                result = session.step(frame if prepared is None else prepared)
            if merge is not None:
                labels, object_ids, probs = merge(t, result)
                labels = HostLabels.ready(labels)
            else:
                labels, object_ids, probs = result.host_labels, result.object_ids, result.probabilities
            host = probs.cpu().numpy() if probabilities else None
            writer.submit(FrameOutput(t, name_of(t), frame, labels, object_ids, host))
            count = t + 1
            if progress is not None:
                progress(done + count, progress_total)
    return count


def _prepared(session: Session, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, PreparedFrame | None]]:
    """Each frame with its network input, made here, i.e. in the reader thread that iterates this: the
    next frame is normalised, resized and copied to the device while the model computes the current one.
    A frame whose size differs from the first is passed on unprepared, so that the session's own
    check reports it with its index."""
    size = None
    for frame in frames:
        size = size or frame.shape[:2]
        yield frame, (session.prepare(frame) if frame.shape[:2] == size else None)


def _total(names: Names, limit: int | None) -> int | None:
    if callable(names):
        return limit
    return len(names) if limit is None else min(limit, len(names))


# ------------------------------------------------------------------------------------ directions

FORWARD, BACKWARD, BOTH = "forward", "backward", "both"
DIRECTIONS = (FORWARD, BACKWARD, BOTH)
DIRECTION_RULE = (
    "forward: each object from the first frame it is annotated on to the end (DAVIS semantics); backward: "
    "from the last frame it is annotated on back to the start; both: every frame takes each object from its "
    "nearest annotation, forward from an earlier one or backward from a later one (a tie goes forward), so "
    "before its first annotation it comes backward, after its last forward"
)
FrameParts = tuple[np.ndarray, tuple[int, ...], "torch.Tensor"]  # labels, object ids, (K+1, H, W) probabilities


class DirectionPlan:
    """Which pass gives each object's result on each frame (the rule is :data:`DIRECTION_RULE`).

    ``given``: the label maps by frame index; an object's annotations are the frames whose map holds it.
    """

    def __init__(self, direction: str, given: Mapping[int, np.ndarray]) -> None:
        if direction not in DIRECTIONS:
            from .settings import SettingsError

            raise SettingsError("direction", direction, f"choose {', '.join(DIRECTIONS[:-1])} or {DIRECTIONS[-1]}")
        self.direction = direction
        self.annotations: dict[int, list[int]] = {}  # object id -> the frames it is annotated on, ascending
        for t, labels in sorted(given.items()):
            for object_id in np.unique(labels):
                if object_id != 0:
                    self.annotations.setdefault(int(object_id), []).append(t)
        # Spans (first frame, annotated frame) that some object takes from the backward pass.
        self.spans = [span for frames in self.annotations.values() for span in self._backward_spans(frames)]

    def _backward_spans(self, frames: list[int]) -> list[tuple[int, int]]:
        if self.direction == FORWARD:
            return []
        if self.direction == BACKWARD:
            return [(0, frames[-1])]
        spans = [(0, frames[0])] if frames[0] > 0 else []
        for earlier, later in zip(frames, frames[1:]):
            first = (earlier + later) // 2 + 1  # nearer to ``later`` from here on
            if first < later:
                spans.append((first, later))
        return spans

    @property
    def steps_forward(self) -> bool:
        """Whether the forward pass runs (not for ``backward``)."""
        return self.direction != BACKWARD

    @property
    def backward_range(self) -> tuple[int, int] | None:
        """(first frame of the backward pass, its last) — it goes from the later down to the earlier —
        or None when no frame needs it."""
        if not self.spans:
            return None
        return max(anchor for _, anchor in self.spans), min(first for first, _ in self.spans)

    def source(self, t: int, object_id: int) -> str | None:
        """FORWARD, BACKWARD, or None where the object is not propagated to frame ``t``."""
        frames = self.annotations[object_id]
        after = bisect.bisect_right(frames, t)
        previous = frames[after - 1] if after else None
        following = t if previous == t else frames[after] if after < len(frames) else None
        if self.direction == FORWARD:
            return FORWARD if previous is not None else None
        if self.direction == BACKWARD:
            return BACKWARD if following is not None else None
        if previous is None:
            return BACKWARD
        return FORWARD if following is None or t - previous <= following - t else BACKWARD

    def sources(self, t: int) -> dict[int, str]:
        """The objects propagated to frame ``t``, and from where."""
        found = {object_id: self.source(t, object_id) for object_id in self.annotations}
        return {object_id: where for object_id, where in found.items() if where is not None}


class BackwardResults:
    """The backward pass's results, on disk in ``folder`` until the forward sweep reaches their frames
    (it writes the outputs in frame order): the labels and the probabilities in 8 bits, compressed.
    Each is removed as it is read, so the folder holds the frames still to come."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def quantized(self, result: FrameResult) -> tuple[int, np.ndarray, tuple[int, ...], np.ndarray]:
        """What :meth:`put` stores (taken in the model's thread; off the device)."""
        levels = torch.round(result.probabilities * 255).clamp_(0, 255).to(torch.uint8).cpu().numpy()
        return result.index, result.labels, result.object_ids, levels

    def put(self, index: int, labels: np.ndarray, object_ids: tuple[int, ...], levels: np.ndarray) -> None:
        np.savez_compressed(self.folder / f"{index}.npz", labels=labels, ids=np.array(object_ids, np.int64), levels=levels)

    def take(self, index: int) -> tuple[np.ndarray, tuple[int, ...], np.ndarray] | None:
        """(labels, object ids, probabilities as float32 0-1) of frame ``index``, or None if not stored."""
        path = self.folder / f"{index}.npz"
        if not path.exists():
            return None
        with np.load(path) as stored:
            labels, ids, levels = stored["labels"], tuple(int(i) for i in stored["ids"]), stored["levels"]
        path.unlink()
        return labels, ids, levels.astype(np.float32) / 255.0


def propagate_video(
    tracker: Tracker,
    source: FrameSource,
    given: Mapping[int, np.ndarray],
    write: OutputFn,
    *,
    direction: str = FORWARD,
    probabilities: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[int, tuple[int, ...]]:
    """Segment ``source`` in ``direction`` (:data:`DIRECTION_RULE`) and ``write`` every frame in order.

    With a backward part, the backward pass runs first: ``source.iter_reversed`` from the latest frame
    that needs it (an annotation) down to the earliest, its results kept on disk (a temporary folder);
    then one forward sweep (the forward pass, or only decoding for ``backward``) takes each frame's
    objects from the pass the rule names and writes the frame. Memory stays that of one pass.

    Returns the number of frames and the ids tracked.
    """
    plan = DirectionPlan(direction, given)
    names = source.name_of if source.frame_count is None else source.names
    if plan.backward_range is None:
        session = tracker.session(num_frames=source.frame_count)
        count = stream_outputs(session, source, names, given, write, progress=progress, probabilities=probabilities)
        return count, session.object_ids
    if source.frame_count is None:
        raise VostoolError(f"--direction {direction} goes back through the video, which standard input cannot")
    start, stop = plan.backward_range
    total = (start - stop + 1) + source.frame_count
    with tempfile.TemporaryDirectory(prefix="vostool-backward-") as folder:
        stored = BackwardResults(Path(folder))
        done = _backward_pass(tracker, source, given, plan, stored, progress, total)
        session = tracker.session(num_frames=source.frame_count) if plan.steps_forward else None
        merge = _Merge(plan, stored, tracker.device, _label_dtype(given), source.size)
        count = stream_outputs(
            session, source, names, given, write, progress=progress, probabilities=probabilities, merge=merge,
            counted=(done, total),
        )
    return count, tuple(sorted(plan.annotations))


def _backward_pass(
    tracker: Tracker, source: FrameSource, given: Mapping[int, np.ndarray], plan: DirectionPlan,
    stored: BackwardResults, progress: ProgressFn | None, total: int,
) -> int:
    start, stop = plan.backward_range
    session = tracker.session(num_frames=start - stop + 1)
    session.start_reverse(start)
    count = 0
    with FramePrefetcher(source.iter_reversed(start, stop)) as reader, BackgroundWriter(stored.put) as writer:
        for frame in reader:
            t = session.next_index
            if t in given:
                session.add_masks(t, given[t])
            result = session.step(frame)
            if any(where == BACKWARD for where in plan.sources(t).values()):
                writer.submit(*stored.quantized(result))
            count += 1
            if progress is not None:
                progress(count, total)
    return count


def _label_dtype(given: Mapping[int, np.ndarray]) -> np.dtype:
    return np.result_type(*[labels.dtype for labels in given.values()]) if given else np.dtype(np.uint8)


class _Merge:
    """A frame's labels, ids and probabilities from the two passes, each object from the pass the plan
    names for it. Where objects come from both, their foreground probabilities are soft-aggregated
    again (as the engine does per frame) and the labels are the argmax of that."""

    def __init__(
        self, plan: DirectionPlan, stored: BackwardResults, device: torch.device, dtype: np.dtype, size: tuple[int, int]
    ) -> None:
        self.plan, self.stored, self.device, self.dtype, self.size = plan, stored, device, dtype, size

    def __call__(self, t: int, forward: FrameResult | None) -> FrameParts:
        sources = self.plan.sources(t)
        backward = self.stored.take(t)  # always taken, so nothing stays on disk
        if BACKWARD not in sources.values():
            return self._forward(t, forward)
        labels, ids, probs = backward
        backward_probs = torch.from_numpy(probs).to(self.device)
        if FORWARD not in sources.values():
            return labels, ids, backward_probs
        planes, order = [], []
        for object_id, where in sources.items():
            result_ids, result_probs = (forward.object_ids, forward.probabilities) if where == FORWARD else (ids, backward_probs)
            planes.append(result_probs[result_ids.index(object_id) + 1])
            order.append(object_id)
        merged = aggregate(torch.stack(planes).float())
        lut = np.array([0, *order], dtype=np.result_type(labels.dtype, forward.labels.dtype))
        return lut[merged.argmax(dim=0).cpu().numpy()], tuple(order), merged

    def _forward(self, t: int, forward: FrameResult | None) -> FrameParts:
        if forward is not None:
            return forward.labels, forward.object_ids, forward.probabilities
        return self._empty()

    def _empty(self) -> FrameParts:
        """No object reaches this frame (``backward``, after every object's last annotation)."""
        return np.zeros(self.size, self.dtype), (), torch.ones(1, *self.size, device=self.device)
