"""Writers for results: indexed PNG masks, an overlay video, and a COCO RLE JSON of the whole video.

Every file is written under a temporary name in its final folder and renamed into place only when
complete (and, for the video, checked: ffmpeg exited cleanly and the file decodes to every frame), so
an interrupted or failed run never leaves a truncated file or clobbers an older one. Temporary names
say which process wrote them (see :mod:`vostool.io.staging`), so a later run removes those of a
process that was killed. A whole run's outputs are made atomic together by ``vostool.api``.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import imageio_ffmpeg
import numpy as np
from PIL import Image
from pycocotools import mask as mask_api

from vostool.errors import OutputError
from vostool.io.masks import RLE_VIDEO_FORMAT, read_rle_video
from vostool.io.palette import colors, normalize_palette
from vostool.io.staging import make_folders, remove_created_folders, remove_stale_temps, temp_name

__all__ = [
    "AtomicFile",
    "JsonlWriter",
    "OutputClosed",
    "OverlayWriter",
    "PaletteWriter",
    "VideoWriter",
    "RleWriter",
    "atomic_path",
    "blend_overlay",
    "encode_rle_objects",
    "frame_record",
    "read_rle_video",
    "write_text_atomic",
]

OVERLAY_SUFFIXES = frozenset({".mp4", ".mov", ".mkv"})
DEFAULT_FPS = 25.0
OVERLAY_CRF = 20  # libx264 quality (what imageio-ffmpeg's quality=6 meant): small files, clean edges


class _CommitOnSuccess:
    """Writers of one file: :meth:`finish` completes and checks it under its temporary name,
    :meth:`close` also moves it into place, :meth:`abort` discards it; ``with`` closes or aborts."""

    _file: AtomicFile
    _committed = False
    _aborted = False

    def finish(self) -> AtomicFile:
        """Complete the output under its temporary name and check it; raise OutputError if it is bad."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop writing and remove the temporary file; an existing file at the target is left alone."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish and move the file into place (nothing to do after :meth:`abort`)."""
        if self._committed or self._aborted:
            return
        file = self.finish()
        try:
            file.commit()
        except BaseException:
            self.abort()
            raise
        self._committed = True

    def __enter__(self):
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class AtomicFile:
    """A temporary path next to ``final`` that is either renamed onto ``final`` or removed."""

    def __init__(self, final: str | Path) -> None:
        self.final = Path(final)
        # Same folder, so the rename is atomic; same suffix, so tools that infer the format from the
        # name (ffmpeg) still can; hidden, so a half-written file does not look like a result; with
        # this process's id, so a later run can tell that it is stale.
        self.temp = self.final.with_name(temp_name("file", self.final.name))

    def commit(self) -> None:
        try:
            os.replace(self.temp, self.final)
        except OSError as err:
            self.discard()
            raise OutputError(f"cannot write file ({err.strerror or err})", self.final) from err

    def discard(self) -> None:
        try:
            self.temp.unlink(missing_ok=True)
        except OSError:
            pass  # nothing more can be done; the error being handled is the one to report


@contextmanager
def atomic_path(final: str | Path, *, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``final``'s folder: renamed to ``final`` on success, removed on failure.

    With ``sweep``, stale temporary files of killed vostool runs in that folder are removed first.
    """
    file = AtomicFile(final)
    if sweep:
        remove_stale_temps(file.final.parent)
    try:
        yield file.temp
    except BaseException:
        file.discard()
        raise
    file.commit()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines untranslated) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            temp.write_text(text, encoding="utf-8", newline="")
    except OSError as err:
        raise OutputError(f"cannot write file ({err.strerror or err})", path) from err


def ensure_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and parents) and check that it is writable, or raise OutputError.

    Returns the folders it created, outermost first: a failed run removes them again
    (:func:`vostool.io.staging.remove_created_folders`).
    """
    if folder.exists() and not folder.is_dir():
        raise OutputError("output folder is a file", folder)
    created: list[Path] = []
    try:
        make_folders(folder, created)
    except OSError as err:
        remove_created_folders(created)
        raise OutputError(f"cannot create output folder ({err.strerror or err})", folder) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", folder)
    return created


def ensure_file_target(path: Path) -> list[Path]:
    """Check early, before any work is done, that ``path`` can be written as a file.

    Returns the parent folders it had to create (see :func:`ensure_folder`).
    """
    if path.is_dir():
        raise OutputError("output path is a folder, expected a file name", path)
    created = ensure_folder(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError("output file is not writable", path)
    return created


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    return labels


def _check_name(name: str) -> str:
    # Names are frame stems; refuse anything that would write outside the output folder.
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"invalid output name {name!r}")
    return name


class PaletteWriter:
    """Writes one indexed PNG per frame: ``<out_dir>/<name>.png``, pixel index = object id."""

    def __init__(self, out_dir: str | Path, palette: bytes | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.palette = normalize_palette(palette)
        ensure_folder(self.out_dir)
        remove_stale_temps(self.out_dir)  # once here, not once per frame

    def path_for(self, name: str) -> Path:
        return self.out_dir / f"{_check_name(name)}.png"

    def write(self, name: str, labels: np.ndarray) -> Path:
        """Write the mask of one frame and return its path. Ids above 255 raise OutputError."""
        path = self.path_for(name)
        labels = _check_labels(labels)
        max_id = int(labels.max()) if labels.size else 0
        if max_id > 255:
            raise OutputError(
                f"object id {max_id} does not fit in an indexed PNG (ids 0-255); use RLE output", path
            )
        image = Image.fromarray(labels.astype(np.uint8, copy=False))
        image.putpalette(self.palette)  # turns the greyscale image into mode P without touching indices
        save_png(path, image)
        return path


def save_png(path: Path, image: Image.Image, what: str = "mask") -> None:
    """Write ``image`` as a PNG at ``path`` through a temporary file (fast compression: outputs are
    written once per frame); OutputError naming ``what`` if it cannot be written."""
    with atomic_path(path, sweep=False) as temp:
        try:
            image.save(temp, format="PNG", compress_level=1)
        except OSError as err:
            raise OutputError(f"cannot write {what} ({err.strerror or err})", path) from err


def blend_overlay(
    frame: np.ndarray,
    labels: np.ndarray,
    palette_colors: np.ndarray,
    alpha: float = 0.5,
    contour: bool = True,
) -> np.ndarray:
    """Tint each object's pixels with its palette colour; background pixels are left as they are.

    With ``contour``, the object's outermost pixels (those with a differently labelled 4-neighbour) are
    drawn in the full colour, so touching objects stay distinguishable.
    """
    out = frame.copy()
    foreground = labels > 0
    if not foreground.any():
        return out
    # Ids above 255 reuse the non-background colours instead of indexing past the palette.
    colour_index = (labels.astype(np.int64) - 1) % 255 + 1
    tint = palette_colors[colour_index[foreground]].astype(np.float32)
    mixed = (1.0 - alpha) * frame[foreground].astype(np.float32) + alpha * tint
    out[foreground] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    if contour:
        edge = _object_edges(labels)
        out[edge] = palette_colors[colour_index[edge]]
    return out


def _object_edges(labels: np.ndarray) -> np.ndarray:
    differs = np.zeros(labels.shape, dtype=bool)
    vertical = labels[:-1] != labels[1:]
    horizontal = labels[:, :-1] != labels[:, 1:]
    differs[:-1] |= vertical
    differs[1:] |= vertical
    differs[:, :-1] |= horizontal
    differs[:, 1:] |= horizontal
    return differs & (labels > 0)


class VideoWriter(_CommitOnSuccess):
    """Streams pictures to a video file through an ffmpeg process of its own; subclasses say what a
    frame's picture is (:meth:`write`) and how it is encoded (:attr:`INPUT_PIX_FMT`, :meth:`codec_params`).

    The video is encoded into a temporary file. :meth:`finish` waits for ffmpeg, checks its exit status
    (a full disk shows only there) and that the file decodes to every frame written; :meth:`close` then
    renames it onto ``path``; :meth:`abort` (or an exception inside a ``with`` block) stops ffmpeg and
    removes the file. With :attr:`EVEN_SIZE` (yuv420p H.264), odd frame sizes are padded by one
    edge-replicated row/column.
    """

    SUFFIXES: frozenset[str] = OVERLAY_SUFFIXES
    WHAT = "video"  # for messages
    INPUT_PIX_FMT = "rgb24"
    EVEN_SIZE = True

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in self.SUFFIXES:
            raise OutputError(f"{self.WHAT} must end in {', '.join(sorted(self.SUFFIXES))}", self.path)
        self._created_folders = ensure_file_target(self.path)  # removed again if the video is not written
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.frames_written = 0
        self._file = AtomicFile(self.path)
        self._encoder: _FfmpegEncoder | None = None
        self._size: tuple[int, int] | None = None
        self._closed = False  # no more frames (finished or aborted)
        self._finished = False

    def codec_params(self) -> list[str]:
        """ffmpeg's output options: codec, pixel format, quality."""
        raise NotImplementedError

    def _encode(self, picture: np.ndarray) -> None:
        """Append one (H, W) or (H, W, C) uint8 picture, in :attr:`INPUT_PIX_FMT`."""
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")
        if self._size is None:
            self._start(picture.shape[:2])
        elif picture.shape[:2] != self._size:
            raise ValueError(f"frame size {picture.shape[:2]} differs from the first frame's {self._size}")
        if self.EVEN_SIZE:
            picture = _pad_to_even(picture)
        try:
            self._encoder.send(np.ascontiguousarray(picture))
        except BaseException:
            self.abort()
            raise
        self.frames_written += 1

    def _start(self, size: tuple[int, int]) -> None:
        self._size = size
        height, width = size
        if self.EVEN_SIZE:
            height, width = height + height % 2, width + width % 2
        output_params = self.codec_params()
        if self.path.suffix.lower() in (".mp4", ".mov"):
            output_params += ["-movflags", "+faststart"]  # playable while still downloading
        remove_stale_temps(self.path.parent)
        self._encoder = _FfmpegEncoder(
            self._file.temp, (width, height), self.fps, output_params, self.path, input_pix_fmt=self.INPUT_PIX_FMT
        )

    def finish(self) -> AtomicFile:
        """Finish encoding and check the video; raise OutputError (temporary file removed) if it is bad."""
        if self._finished:
            return self._file
        self._closed = True
        if self._encoder is None:
            raise OutputError(f"no frames were written to the {self.WHAT}", self.path)
        try:
            self._encoder.finish()  # waits for ffmpeg to flush and exit; raises on a failed exit
            self._check_decodes()
        except BaseException:
            self.abort()
            raise
        self._finished = True
        return self._file

    def _check_decodes(self) -> None:
        temp = self._file.temp
        if not temp.is_file() or temp.stat().st_size == 0:
            raise OutputError("video encoder produced no file", self.path)
        try:
            decoded, _ = imageio_ffmpeg.count_frames_and_secs(str(temp))
        except (RuntimeError, OSError) as err:
            # The error is the last line; the ones before it are ffmpeg's banner.
            reason = _ffmpeg_message(str(err).splitlines(), last=True)
            raise OutputError(f"the video written cannot be decoded ({reason})", self.path) from err
        if decoded != self.frames_written:
            raise OutputError(f"wrote {self.frames_written} frames but the video decodes to {decoded}", self.path)

    def abort(self) -> None:
        """Stop encoding and remove the partial video; an existing file at ``path`` is left alone."""
        self._closed = self._aborted = True
        if self._encoder is not None:
            self._encoder.kill()
        self._file.discard()
        remove_created_folders(self._created_folders)


def check_frame(frame: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W, 3) uint8 RGB frame and its (H, W) labels of the same size, or ValueError."""
    frame = np.asarray(frame)
    labels = _check_labels(labels)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    if labels.shape != frame.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match frame {frame.shape[:2]}")
    return frame, labels


class OverlayWriter(VideoWriter):
    """Streams frames with their masks blended in to an H.264 video (yuv420p, playable everywhere)."""

    WHAT = "overlay video"

    def __init__(
        self,
        path: str | Path,
        fps: float | None,
        palette: bytes | None = None,
        alpha: float = 0.5,
        contour: bool = True,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(path, fps)
        self.colors = colors(palette)
        self.alpha = alpha
        self.contour = contour

    def codec_params(self) -> list[str]:
        return ["-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(OVERLAY_CRF), "-preset", "veryfast"]

    def write(self, frame_rgb: np.ndarray, labels: np.ndarray) -> None:
        """Blend ``labels`` over ``frame_rgb`` ((H, W, 3) uint8) and append it to the video."""
        if self._closed:
            raise ValueError("OverlayWriter is closed")
        frame_rgb, labels = check_frame(frame_rgb, labels)
        self._encode(blend_overlay(frame_rgb, labels, self.colors, self.alpha, self.contour))


class _FfmpegEncoder:
    """One ffmpeg process encoding raw frames (``input_pix_fmt``) from its stdin into ``temp``.

    Driven directly rather than through imageio-ffmpeg's ``write_frames``, whose generator ignores
    ffmpeg's exit status and lets its stderr through to the terminal: here the exit status is checked
    and stderr is kept (last lines) to explain a failure in one line. ffmpeg runs in its own process
    group, so Ctrl-C reaches only vostool, which then stops it (:meth:`kill`).
    """

    def __init__(
        self, temp: Path, size: tuple[int, int], fps: float, output_params: list[str], target: Path,
        *, input_pix_fmt: str = "rgb24",
    ) -> None:
        self.target = target  # for messages
        width, height = size
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y",
            "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}", "-pix_fmt", input_pix_fmt,
            "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
            "-v", "error", *output_params, str(temp),
        ]
        if os.name == "posix":
            isolate = {"start_new_session": True}
        else:
            isolate = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **isolate
            )
        except OSError as err:
            raise OutputError(f"cannot start the video encoder ffmpeg ({err.strerror or err})", target) from err
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        # Drained continuously: a full stderr pipe would block ffmpeg while vostool blocks on its stdin.
        self._reader = threading.Thread(target=self._read_stderr, name="vostool-ffmpeg-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in iter(self.process.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", "replace"))

    def send(self, picture: np.ndarray) -> None:
        try:
            self.process.stdin.write(memoryview(picture).cast("B"))
        except (OSError, ValueError) as err:  # BrokenPipeError: ffmpeg has exited (a full disk, ...)
            self._wait_briefly()
            raise self._failure(f"{err.strerror or err}" if isinstance(err, OSError) else str(err)) from err

    def finish(self) -> None:
        """Close ffmpeg's input and wait for it to write the file; OutputError if it did not exit cleanly."""
        try:
            self.process.stdin.close()
        except OSError:
            pass  # it exited early; its exit status and stderr say why
        self.process.wait()
        self._reader.join()
        self.process.stderr.close()
        if self.process.returncode != 0:
            raise self._failure(f"ffmpeg exit status {self.process.returncode}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        try:
            self.process.stdin.close()
        except OSError:
            pass
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            self.process.stderr.close()

    def _wait_briefly(self) -> None:
        try:
            self.process.wait(timeout=10)
            self._reader.join(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _failure(self, fallback: str) -> OutputError:
        return OutputError(f"video encoder failed ({_ffmpeg_message(list(self._stderr)) or fallback})", self.target)


_FFMPEG_TAG = re.compile(r"^\[[^\]]*\]\s*")  # "[out#0/mp4 @ 0x55d0c2f3e040] " before ffmpeg's messages


def _ffmpeg_message(lines: list[str], *, last: bool = False) -> str:
    """The first (or last) line of ffmpeg's output without its "[component @ address]" tag ("" if none)."""
    for line in reversed(lines) if last else lines:
        line = _FFMPEG_TAG.sub("", line.strip())
        if line:
            return line
    return ""


def _pad_to_even(picture: np.ndarray) -> np.ndarray:
    height, width = picture.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return picture
    return np.pad(picture, ((0, height % 2), (0, width % 2)) + ((0, 0),) * (picture.ndim - 2), mode="edge")


def encode_rle_objects(labels: np.ndarray) -> list[dict]:
    """One COCO RLE per object id present, ascending: ``{"id", "size": [H, W], "counts": str}``."""
    labels = _check_labels(labels)
    height, width = labels.shape
    objects = []
    for object_id in np.unique(labels):
        if object_id == 0:
            continue
        binary = np.asfortranarray(labels == object_id, dtype=np.uint8)
        rle = mask_api.encode(binary)
        counts = rle["counts"].decode("ascii")
        objects.append({"id": int(object_id), "size": [height, width], "counts": counts})
    return objects


class RleWriter(_CommitOnSuccess):
    """Collects every frame's objects as COCO RLE and writes one JSON file on :meth:`close`.

    Layout: ``{"format": "vostool-rle-v1", "frames": [{"name", "size": [H, W], "objects":
    [{"id", "size": [H, W], "counts"}]}]}``. Read it back with :func:`read_rle_video`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._created_folders = ensure_file_target(self.path)  # removed again if the file is not written
        self.frames: list[dict] = []
        self._file = AtomicFile(self.path)
        self._closed = False
        self._finished = False

    def write(self, name: str, labels: np.ndarray) -> None:
        if self._closed:
            raise ValueError("RleWriter is closed")
        labels = _check_labels(labels)
        objects = encode_rle_objects(labels)
        self.frames.append({"name": str(name), "size": list(labels.shape), "objects": objects})

    def finish(self) -> AtomicFile:
        """Write the JSON under its temporary name."""
        if self._finished:
            return self._file
        self._closed = True
        document = {"format": RLE_VIDEO_FORMAT, "frames": self.frames}
        remove_stale_temps(self.path.parent)
        try:
            with open(self._file.temp, "w", encoding="utf-8") as handle:
                json.dump(document, handle, separators=(",", ":"))
        except BaseException as err:
            self.abort()
            if isinstance(err, OSError):
                raise OutputError(f"cannot write RLE file ({err.strerror or err})", self.path) from err
            raise
        self._finished = True
        return self._file

    def abort(self) -> None:
        self._closed = self._aborted = True
        self.frames = []
        self._file.discard()
        remove_created_folders(self._created_folders)


# ------------------------------------------------------------------------------------- JSON lines

STDOUT = "-"


class OutputClosed(Exception):
    """The reader of a streamed output (standard output, a FIFO) closed it: a pipeline such as
    ``vostool segment - --rle - | head -1`` has all it wants. Not an error of the run; the CLI exits 0."""


def frame_record(index: int, name: str, labels: np.ndarray, object_ids: tuple[int, ...] | None = None) -> dict:
    """One frame as a JSON line: ``{"index", "name", "size": [H, W], "objects": [{"id", "size", "counts",
    "area", "bbox": [x, y, w, h]}]}``; the objects are ``object_ids`` (those tracked, absent ones with
    area 0) or, without them, the ids present."""
    labels = _check_labels(labels)
    height, width = labels.shape
    ids = object_ids if object_ids is not None else [int(i) for i in np.unique(labels) if i != 0]
    objects = []
    for object_id in ids:
        rle = mask_api.encode(np.asfortranarray(labels == object_id, dtype=np.uint8))
        x, y, w, h = (int(v) for v in mask_api.toBbox(rle))
        counts = rle["counts"].decode("ascii")
        objects.append({"id": int(object_id), "size": [height, width], "counts": counts,
                        "area": int(mask_api.area(rle)), "bbox": [x, y, w, h]})
    return {"index": int(index), "name": str(name), "size": [height, width], "objects": objects}


def is_stream_target(path: str | Path) -> bool:
    """Whether an output path is written live rather than through a temporary file: ``-`` (standard
    output), a FIFO or a character device (``/dev/stdout``, ``/dev/fd/3``)."""
    if str(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


class JsonlWriter(_CommitOnSuccess):
    """One JSON line per frame (:func:`frame_record`), flushed as soon as the frame is done.

    ``-`` writes to standard output, a FIFO or character device is written directly: both live, for a
    reader downstream. A regular file is written (and flushed line by line) under a temporary name and
    moved into place with the run's other outputs, so a failed run leaves no partial file. A reader
    that closes a stream early raises :class:`OutputClosed`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.live = is_stream_target(path)
        self._created_folders = [] if self.live else ensure_file_target(self.path)
        self._file = AtomicFile(self.path)
        self._handle = None
        self._finished = False

    def write(self, index: int, name: str, labels: np.ndarray, object_ids: tuple[int, ...] | None = None) -> None:
        line = json.dumps(frame_record(index, name, labels, object_ids), separators=(",", ":")) + "\n"
        try:
            handle = self._open()
            handle.write(line)
            handle.flush()
        except OSError as err:
            raise self._failure(err) from err

    def _failure(self, err: OSError) -> Exception:
        if isinstance(err, BrokenPipeError) or (self.live and err.errno == errno.ECONNRESET):
            return OutputClosed(f"{self._shown()} was closed by its reader")
        return OutputError(f"cannot write file ({err.strerror or err})", self.path)

    def _open(self):
        if self._handle is None:
            if str(self.path) == STDOUT:
                self._handle = sys.stdout
            else:
                if not self.live:
                    remove_stale_temps(self.path.parent)
                self._handle = open(self.path if self.live else self._file.temp, "w", encoding="utf-8")
        return self._handle

    def _shown(self) -> str:
        return "standard output" if str(self.path) == STDOUT else str(self.path)

    def finish(self) -> AtomicFile | None:
        """Close the file; None for a live stream (nothing to move into place)."""
        if not self._finished:
            try:
                self._open()  # a run of no frames still writes its (empty) file
                self._close_handle()
            except BaseException as err:
                self.abort()
                if isinstance(err, OSError):
                    raise self._failure(err) from err
                raise
            self._finished = True
        return None if self.live else self._file

    def close(self) -> None:
        if self.live:
            self.finish()
        else:
            super().close()

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is sys.stdout:
            handle.flush()
        elif handle is not None:
            handle.close()

    def abort(self) -> None:
        self._aborted = True
        try:
            self._close_handle()
        except OSError:
            pass
        if not self.live:
            self._file.discard()
            remove_created_folders(self._created_folders)
