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

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from .engine.timing import carry_to_thread, stage

# How often a blocked put/get wakes up to check whether the other side has stopped or failed.
_POLL_SECONDS = 0.05
READ_AHEAD = 4
WRITE_BEHIND = 8

if TYPE_CHECKING:
    from .tracker import Session

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
    labels: np.ndarray
    object_ids: tuple[int, ...]
    probabilities: np.ndarray | None = None


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
    session: Session,
    frames: Iterable[np.ndarray],
    names: Names,
    given: Mapping[int, np.ndarray],
    write: OutputFn,
    *,
    limit: int | None = None,
    progress: ProgressFn | None = None,
    probabilities: bool = False,
) -> int:
    """:func:`segment_stream` with every result handed to ``write`` as a :class:`FrameOutput`.

    ``names``: the frames' output stems, or a function of the frame index for a stream of unknown
    length (then ``progress`` gets ``None`` as its total). ``probabilities``: include them, on the host.
    """
    total = _total(names, limit)
    name_of = names if callable(names) else names.__getitem__
    count = 0
    with FramePrefetcher(frames, limit=total) as reader, BackgroundWriter(write) as writer:
        for t, frame in enumerate(reader):
            if t in given:
                session.add_masks(t, given[t])
            result = session.step(frame)
            host = result.probabilities.cpu().numpy() if probabilities else None
            writer.submit(FrameOutput(t, name_of(t), frame, result.labels, result.object_ids, host))
            count = t + 1
            if progress is not None:
                progress(count, total)
    return count


def _total(names: Names, limit: int | None) -> int | None:
    if callable(names):
        return limit
    return len(names) if limit is None else min(limit, len(names))
