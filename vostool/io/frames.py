"""Frame sources: a video file or a folder of images, streamed one RGB frame at a time.

A video is decoded through the ffmpeg binary shipped with ``imageio-ffmpeg``; a folder is read with
Pillow, one file per step. Neither path ever holds the whole sequence in memory, so a long video costs
no more RAM than one frame.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from vostool.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class FrameSource(ABC):
    """An ordered sequence of RGB uint8 frames of one size, which can be iterated any number of times.

    Attributes:
        path: the video file or the frame folder.
        names: one output stem per frame (file stems for a folder, "00000", "00001", ... for a video).
        fps: frames per second of a video; None for a folder.
        size: (H, W) of the frames.
    """

    path: Path
    names: list[str]
    fps: float | None
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.names)

    @abstractmethod
    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield each frame as a writable (H, W, 3) uint8 RGB array, decoding one frame per step."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, size={self.size})"


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that orders embedded numbers by value, so "f2.png" comes before "f10.png"."""
    parts = re.split(r"(\d+)", name.lower())
    # Tag each part so numbers and text never get compared with each other.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in parts if part]


def open_frames(path: str | Path) -> FrameSource:
    """Open a video file (.mp4/.mov/.mkv/.avi/.webm) or a folder of .jpg/.jpeg/.png frames.

    Raises InputError (naming the file) when the path is missing, is not a supported kind of input,
    or cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        return FolderFrames(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFrames(path)
    supported = ", ".join(sorted(VIDEO_SUFFIXES))
    raise InputError(
        f"unsupported input {path.suffix or '(no extension)'}: give a video ({supported}) "
        "or a folder of .jpg/.png frames",
        path,
    )


class FolderFrames(FrameSource):
    """The .jpg/.jpeg/.png files of a folder in natural order; other files are ignored."""

    def __init__(self, folder: Path) -> None:
        self.path = folder
        self.fps = None
        self.files = _image_files(folder)
        self.names = [file.stem for file in self.files]
        self._check_names_unique()
        self.size = _header_size(self.files[0])
        # Reading every header up front is cheap (Pillow does not decode pixels here) and turns a
        # mismatched or broken frame into an error before any model time is spent on the sequence.
        for file in self.files[1:]:
            self._check_size(file, _header_size(file))

    def __iter__(self) -> Iterator[np.ndarray]:
        for file in self.files:
            frame = _read_rgb(file)
            self._check_size(file, frame.shape[:2])
            yield frame

    def _check_size(self, file: Path, size: tuple[int, int]) -> None:
        if tuple(size) != self.size:
            raise InputError(
                f"frame is {size[0]}x{size[1]} but the first frame ({self.files[0].name}) is "
                f"{self.size[0]}x{self.size[1]} (height x width); all frames must have one size",
                file,
            )

    def _check_names_unique(self) -> None:
        # "a.jpg" and "a.png" would both be written to "a.png".
        seen: dict[str, Path] = {}
        for file in self.files:
            if file.stem in seen:
                raise InputError(f"two frames share the name {file.stem!r} ({seen[file.stem].name})", file)
            seen[file.stem] = file


def _image_files(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise InputError(f"cannot list folder ({err.strerror or err})", folder) from err
    files = [
        entry
        for entry in entries
        if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".") and entry.is_file()
    ]
    if not files:
        raise InputError("folder contains no .jpg/.jpeg/.png frames", folder)
    return sorted(files, key=lambda file: natural_key(file.name))


def _header_size(file: Path) -> tuple[int, int]:
    try:
        with Image.open(file) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"cannot read image ({err})", file) from err
    return height, width


def _read_rgb(file: Path) -> np.ndarray:
    """Decode one image to RGB; greyscale, RGBA and palette images are converted."""
    try:
        with Image.open(file) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"cannot read image ({err})", file) from err


class VideoFrames(FrameSource):
    """A video file decoded by ffmpeg; frames are named "00000", "00001", ..."""

    def __init__(self, path: Path) -> None:
        self.path = path
        meta = _probe(path)
        width, height = meta["size"]
        self.size = (int(height), int(width))
        fps = float(meta.get("fps") or 0)
        self.fps = fps if fps > 0 else None
        count = _count_frames(path)
        digits = max(5, len(str(count - 1)))
        self.names = [f"{index:0{digits}d}" for index in range(count)]

    def __iter__(self) -> Iterator[np.ndarray]:
        height, width = self.size
        # Passthrough: one output frame per decoded frame, as in the count. ffmpeg's default for a raw
        # pipe is constant frame rate, which duplicates or drops frames of variable-frame-rate video
        # (common from phones) and would pair frames with the wrong names.
        reader = imageio_ffmpeg.read_frames(
            str(self.path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"]
        )
        try:
            next(reader)  # metadata, already known from _probe
            count = 0
            for raw in reader:
                if count == len(self):
                    # The exact count came from a full decode; a decoder that would emit more frames
                    # must not desynchronise frames from names.
                    break
                yield np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(height, width, 3)
                count += 1
        except (OSError, RuntimeError) as err:
            raise InputError(f"cannot decode video ({_last_line(err)})", self.path) from err
        finally:
            reader.close()  # stops the ffmpeg process even when the consumer stops early
        if count < len(self):
            raise InputError(f"video ended after {count} of {len(self)} frames", self.path)


def _probe(path: Path) -> dict:
    """Read the stream header (size, fps) by starting ffmpeg and stopping it before any frame."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    # imageio-ffmpeg raises assorted types (IOError, RuntimeError, parsing errors) for input it
    # cannot handle; all of them mean the same thing to the user.
    except Exception as err:  # noqa: BLE001
        raise InputError(f"not a video ffmpeg can decode ({_last_line(err)})", path) from err
    finally:
        reader.close()
    if not meta.get("size"):
        raise InputError("not a video ffmpeg can decode (no video stream)", path)
    return meta


def _count_frames(path: Path) -> int:
    try:
        count, _seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError) as err:
        raise InputError(f"cannot decode video ({_last_line(err)})", path) from err
    if not count:
        raise InputError("video contains no frames", path)
    return int(count)


def _last_line(err: BaseException) -> str:
    """The most telling line of an ffmpeg error: its last non-empty line, so messages stay one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("===")]
    return lines[-1] if lines else type(err).__name__
