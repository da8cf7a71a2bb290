"""One process's share of a batch: one network, its videos one after another, each committed whole.

The tracker is built once and every video is a new :meth:`vostool.Tracker.session`. While a video runs,
a background thread opens the next one (a video file is decoded once to count its frames), reads its
masks and decodes its first frames, so the model does not wait between videos.

Each video is written into a hidden staging folder beside its results folder, the completion marker
last, and moved onto ``<out>/<video>`` by one rename (:func:`vostool.io.staging.commit_together`): a
crash or an interrupt leaves the old folder, if any, exactly as it was and the staging folder for the
next run to clear away. A video that fails is reported and the others go on.
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vostool import __version__
from vostool.api import read_given_masks
from vostool.batch.layouts import VideoJob
from vostool.batch.plan import MARKER, marker_for
from vostool.errors import InputError, OutputError, VostoolError
from vostool.io.frames import FrameSource, natural_key, open_frames
from vostool.io.masks import read_mask
from vostool.io.staging import commit_together, finish_despite_interrupts, temp_name
from vostool.io.writers import PaletteWriter
from vostool.pipeline import READ_AHEAD, segment_stream
from vostool.tracker import Tracker

MAX_PNG_ID = 254  # palette PNGs hold 1-254; 255 reads back as void


@dataclass
class VideoOutcome:
    """What happened to one video: ``status`` is ``done``, ``skipped`` (complete already) or ``failed``."""

    name: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    rank: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Reporter(Protocol):
    """Progress of one process (see :mod:`vostool.batch.progress`)."""

    def video_started(self, name: str, frames: int) -> None: ...
    def frame(self, done: int, total: int) -> None: ...
    def video_finished(self, outcome: VideoOutcome) -> None: ...


@dataclass
class PreparedVideo:
    """A video opened and its masks read, its first frames decoded already."""

    job: VideoJob
    source: FrameSource
    given: dict[int, np.ndarray]
    palette: bytes | None
    frames: Iterator[np.ndarray]


def run_share(
    jobs: Sequence[VideoJob], tracker: Tracker, out: Path, key: dict, *, rank: int = 0,
    allow_truncated: bool = False, reporter: Reporter | None = None, tags: dict | None = None,
) -> list[VideoOutcome]:
    """Segment ``jobs`` in order with ``tracker`` into ``out/<video>/``; one outcome per job. ``tags``: more
    entries for the markers (which rank and torchrun attempt wrote a video)."""
    outcomes = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vostool-next-video") as opener:
        upcoming: Future | None = opener.submit(prepare_video, jobs[0], allow_truncated) if jobs else None
        for index, job in enumerate(jobs):
            current, upcoming = upcoming, None
            if index + 1 < len(jobs):
                upcoming = opener.submit(prepare_video, jobs[index + 1], allow_truncated)
            start = time.perf_counter()
            try:
                outcome = _run_prepared(current, tracker, out, key, rank, reporter, tags or {})
            except Exception as err:  # noqa: BLE001 - one broken video must not stop the others
                outcome = VideoOutcome(job.name, "failed", seconds=time.perf_counter() - start, rank=rank,
                                       error=_describe(err))
            except BaseException:
                if upcoming is not None and not upcoming.cancel():
                    _close_quietly(upcoming)
                raise
            outcomes.append(outcome)
            if reporter is not None:
                reporter.video_finished(outcome)
    return outcomes


def _run_prepared(
    opened: Future, tracker: Tracker, out: Path, key: dict, rank: int, reporter: Reporter | None, tags: dict
) -> VideoOutcome:
    prepared = opened.result()  # raises what opening the video or reading its masks raised
    try:
        return run_video(prepared, tracker, out, key, rank=rank, reporter=reporter, tags=tags)
    finally:
        prepared.frames.close()  # stops its decoder even when the run failed before reading a frame


def prepare_video(job: VideoJob, allow_truncated: bool = False) -> PreparedVideo:
    """Open ``job``'s frames, read its masks and decode its first frames (run in the opener thread)."""
    source = open_frames(job.frames, allow_truncated=allow_truncated)
    if job.introductions:
        given, palette = introduced_masks(job, source)
    else:
        given, palette = read_given_masks(source, job.mask, job.masks_dir)
    _check_ids_fit_png(given, job)
    frames = iter(source)
    head = list(itertools.islice(frames, READ_AHEAD))
    return PreparedVideo(job, source, given, palette, _continued(head, frames))


def introduced_masks(job: VideoJob, source: FrameSource) -> tuple[dict[int, np.ndarray], bytes | None]:
    """Label maps by frame index in which each object appears only on its first frame.

    An introduction ``(id, mask)`` keeps only that id's pixels of ``mask``; ``(0, mask)`` keeps the ids
    of ``mask`` not introduced by an earlier mask. Other pixels stay 0, so the objects tracked already
    are left to the tracker there (ground truth of later frames, as LVOS ships it, is never fed in).
    """
    frame_index = {name: index for index, name in enumerate(source.names)}
    by_frame: dict[int, np.ndarray] = {}
    introduced: set[int] = set()
    palette = None
    read = _cached(lambda path: read_mask(path, source.size, allow_empty=True))
    for object_id, path in sorted(job.introductions, key=lambda item: (natural_key(item[1].stem), item[0])):
        index = frame_index.get(path.stem)
        if index is None:
            raise InputError(f"mask matches no frame of video {job.name}", path)
        label_map = read(path)
        labels = label_map.labels
        if object_id:
            keep = labels == object_id
            if not keep.any():
                raise InputError(f"object {object_id} is not in the mask of the frame where it first appears", path)
        else:
            keep = (labels != 0) & ~np.isin(labels, list(introduced))
        layer = by_frame.setdefault(index, np.zeros(source.size, labels.dtype))
        layer[keep] = labels[keep]
        introduced.update(int(i) for i in np.unique(labels[keep]))
        palette = palette or label_map.palette
    by_frame = {index: labels for index, labels in by_frame.items() if labels.any()}
    if not by_frame:
        raise InputError(f"video {job.name}: its masks hold no object", job.introductions[0][1])
    return by_frame, palette


def run_video(
    prepared: PreparedVideo, tracker: Tracker, out: Path, key: dict, *, rank: int = 0,
    reporter: Reporter | None = None, tags: dict | None = None,
) -> VideoOutcome:
    """Segment one prepared video and commit its folder with its marker; raises on any failure."""
    job, source = prepared.job, prepared.source
    final = out / job.name
    staging = out / temp_name("stage", job.name)
    start = time.perf_counter()
    try:
        staging.mkdir(parents=True)
        writer = PaletteWriter(staging, prepared.palette)
        wanted = None if job.write is None else set(job.write)

        def write(name: str, frame: np.ndarray, labels: np.ndarray) -> None:
            if wanted is None or name in wanted:
                writer.write(name, labels)

        if reporter is not None:
            reporter.video_started(job.name, len(source))
        session = tracker.session(num_frames=len(source))
        frames = segment_stream(session, prepared.frames, source.names, prepared.given, write,
                                progress=reporter.frame if reporter is not None else None)
        files = {e.name: e.stat().st_size for e in os.scandir(staging) if e.name.endswith(".png")}
        if wanted is not None and len(files) != len(wanted):
            missing = sorted(wanted - {Path(name).stem for name in files}, key=natural_key)
            raise InputError(f"video {job.name}: listed frame {missing[0]} was not among its frames", job.frames)
        seconds = time.perf_counter() - start
        extra = {"device": str(tracker.device), "seconds": round(seconds, 3), "vostool": __version__, **(tags or {})}
        _write_marker(staging / MARKER, marker_for(job, key, frames, files, extra))
        commit_together([_Staged(staging, final)])
    except BaseException:
        finish_despite_interrupts([lambda: _remove_tree(staging)])
        raise
    return VideoOutcome(job.name, "done", frames, seconds, rank)


@dataclass
class _Staged:
    temp: Path
    final: Path


def _write_marker(path: Path, marker: dict) -> None:
    import json

    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(marker, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename that publishes it
    except OSError as err:
        raise OutputError(f"cannot write the completion marker ({err.strerror or err})", path) from err


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _continued(head: list[np.ndarray], rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The decoded first frames, then the rest; closing it closes the source (stops its ffmpeg)."""
    try:
        yield from head
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def _close_quietly(future: Future) -> None:
    """Close a prepared video that will not run (its decoder may hold an ffmpeg process)."""
    try:
        prepared = future.result()
    except BaseException:  # noqa: BLE001 - it is being dropped; its error does not matter now
        return
    prepared.frames.close()


def _check_ids_fit_png(given: dict[int, np.ndarray], job: VideoJob) -> None:
    for labels in given.values():
        max_id = int(labels.max()) if labels.size else 0
        if max_id > MAX_PNG_ID:
            raise OutputError(f"video {job.name}: object id {max_id} does not fit in the palette PNGs (ids 1-254)")


def _cached(read: Callable[[Path], object]) -> Callable[[Path], object]:
    cache: dict[Path, object] = {}

    def lookup(path: Path):
        if path not in cache:
            cache[path] = read(path)
        return cache[path]

    return lookup


def _describe(err: BaseException) -> str:
    """One line for the summary: a user error's own message, else the exception and where it was raised."""
    if isinstance(err, VostoolError):
        return str(err)
    where = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    place = f" ({Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return f"{type(err).__name__}: {err}{place}"
