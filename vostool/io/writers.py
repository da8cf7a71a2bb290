"""Writers for results: indexed PNG masks, an overlay video, and a COCO RLE JSON of the whole video.

Every file is written under a temporary name in its final folder and renamed into place only when
complete, so an interrupted or failed run never leaves a truncated file or clobbers an older one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import imageio_ffmpeg
import numpy as np
from PIL import Image
from pycocotools import mask as mask_api

from vostool.errors import OutputError
from vostool.io.masks import RLE_VIDEO_FORMAT, read_rle_video
from vostool.io.palette import colors, normalize_palette

__all__ = [
    "AtomicFile",
    "OverlayWriter",
    "PaletteWriter",
    "RleWriter",
    "atomic_path",
    "blend_overlay",
    "encode_rle_objects",
    "read_rle_video",
    "write_text_atomic",
]

OVERLAY_SUFFIXES = frozenset({".mp4", ".mov", ".mkv"})
DEFAULT_FPS = 25.0


class _CommitOnSuccess:
    """``with`` support for writers with ``close()`` (commit) and ``abort()`` (discard)."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

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
        # name (ffmpeg) still can; hidden, so a half-written file does not look like a result.
        self.temp = self.final.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{self.final.name}")

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
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``final``'s folder: renamed to ``final`` on success, removed on failure."""
    file = AtomicFile(final)
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


def ensure_folder(folder: Path) -> None:
    """Create ``folder`` (and parents) and check that it is writable, or raise OutputError."""
    if folder.exists() and not folder.is_dir():
        raise OutputError("output folder is a file", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder ({err.strerror or err})", folder) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", folder)


def ensure_file_target(path: Path) -> None:
    """Check early, before any work is done, that ``path`` can be written as a file."""
    if path.is_dir():
        raise OutputError("output path is a folder, expected a file name", path)
    ensure_folder(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError("output file is not writable", path)


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
        with atomic_path(path) as temp:
            try:
                image.save(temp, format="PNG", compress_level=1)
            except OSError as err:
                raise OutputError(f"cannot write mask ({err.strerror or err})", path) from err
        return path


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


class OverlayWriter(_CommitOnSuccess):
    """Streams frames with their masks blended in to an H.264 video (yuv420p, playable everywhere).

    The video is encoded into a temporary file, renamed onto ``path`` by :meth:`close`; :meth:`abort`
    (or an exception inside a ``with`` block) removes it. Odd frame sizes are padded by one
    edge-replicated row/column, because yuv420p needs even dimensions.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | None,
        palette: bytes | None = None,
        alpha: float = 0.5,
        contour: bool = True,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in OVERLAY_SUFFIXES:
            raise OutputError(f"overlay video must end in {', '.join(sorted(OVERLAY_SUFFIXES))}", self.path)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        ensure_file_target(self.path)
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.colors = colors(palette)
        self.alpha = alpha
        self.contour = contour
        self.frames_written = 0
        self._file = AtomicFile(self.path)
        self._encoder = None
        self._size: tuple[int, int] | None = None
        self._closed = False

    def write(self, frame_rgb: np.ndarray, labels: np.ndarray) -> None:
        """Blend ``labels`` over ``frame_rgb`` ((H, W, 3) uint8) and append it to the video."""
        if self._closed:
            raise ValueError("OverlayWriter is closed")
        frame_rgb = np.asarray(frame_rgb)
        labels = _check_labels(labels)
        if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
            raise ValueError(f"frame must be (H, W, 3) uint8, got {frame_rgb.dtype} {frame_rgb.shape}")
        if labels.shape != frame_rgb.shape[:2]:
            raise ValueError(f"labels {labels.shape} do not match frame {frame_rgb.shape[:2]}")
        if self._size is None:
            self._start(frame_rgb.shape[:2])
        elif frame_rgb.shape[:2] != self._size:
            raise ValueError(f"frame size {frame_rgb.shape[:2]} differs from the first frame's {self._size}")
        picture = _pad_to_even(blend_overlay(frame_rgb, labels, self.colors, self.alpha, self.contour))
        try:
            self._encoder.send(np.ascontiguousarray(picture))
        except OSError as err:
            self.abort()
            raise OutputError(f"video encoder failed ({_first_line(err)})", self.path) from err
        self.frames_written += 1

    def _start(self, size: tuple[int, int]) -> None:
        self._size = size
        height, width = size
        output_params = ["-preset", "veryfast"]
        if self.path.suffix.lower() in (".mp4", ".mov"):
            output_params += ["-movflags", "+faststart"]  # playable while still downloading
        self._encoder = imageio_ffmpeg.write_frames(
            str(self._file.temp),
            (width + width % 2, height + height % 2),
            fps=self.fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=6,
            macro_block_size=2,  # the frames are padded to even sizes, so ffmpeg never rescales
            ffmpeg_log_level="error",
            output_params=output_params,
        )
        self._encoder.send(None)

    def close(self) -> None:
        """Finish encoding and move the video into place. Raises OutputError if nothing was written."""
        if self._closed:
            return
        self._closed = True
        if self._encoder is None:
            raise OutputError("no frames were written to the overlay video", self.path)
        self._encoder.close()  # waits for ffmpeg to flush and exit
        if not self._file.temp.is_file() or self._file.temp.stat().st_size == 0:
            self._file.discard()
            raise OutputError("video encoder produced no file", self.path)
        self._file.commit()

    def abort(self) -> None:
        """Stop encoding and remove the partial video; an existing file at ``path`` is left alone."""
        if self._closed:
            return
        self._closed = True
        if self._encoder is not None:
            self._encoder.close()
        self._file.discard()


def _pad_to_even(picture: np.ndarray) -> np.ndarray:
    height, width = picture.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return picture
    return np.pad(picture, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


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
        ensure_file_target(self.path)
        self.frames: list[dict] = []
        self._closed = False

    def write(self, name: str, labels: np.ndarray) -> None:
        if self._closed:
            raise ValueError("RleWriter is closed")
        labels = _check_labels(labels)
        objects = encode_rle_objects(labels)
        self.frames.append({"name": str(name), "size": list(labels.shape), "objects": objects})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        document = {"format": RLE_VIDEO_FORMAT, "frames": self.frames}
        with atomic_path(self.path) as temp:
            try:
                with open(temp, "w", encoding="utf-8") as handle:
                    json.dump(document, handle, separators=(",", ":"))
            except OSError as err:
                raise OutputError(f"cannot write RLE file ({err.strerror or err})", self.path) from err

    def abort(self) -> None:
        self._closed = True
        self.frames = []
