"""Frame sources: a video file or a folder of images, streamed one RGB frame at a time.

A video is decoded through the ffmpeg binary shipped with ``imageio-ffmpeg``; a folder is read with
Pillow, one file per step. Neither path ever holds the whole sequence in memory, so a long video costs
no more RAM than one frame.
"""

from __future__ import annotations

import re
import struct
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
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
        declared_frames: the frame count a video's container declares (see VideoFrames); None for a
            folder and where a video declares none.
    """

    path: Path
    names: list[str]
    fps: float | None
    size: tuple[int, int]
    declared_frames: int | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def frame_count(self) -> int | None:
        """The number of frames (None for a stream of unknown length, :class:`vostool.io.stdin.StdinFrames`)."""
        return len(self.names)

    def name_of(self, index: int) -> str:
        """The output stem of frame ``index``."""
        return self.names[index]

    def iter_reversed(self, start: int | None = None, stop: int = 0) -> Iterator[np.ndarray]:
        """Frames ``start`` (default: the last), ``start - 1``, ..., ``stop``, without holding the video."""
        raise NotImplementedError

    def _reversed_range(self, start: int | None, stop: int) -> range:
        start = len(self) - 1 if start is None else start
        if not 0 <= stop <= start < len(self):
            raise ValueError(f"cannot read frames {start} down to {stop} of {len(self)}")
        return range(start, stop - 1, -1)

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


def open_frames(path: str | Path, *, allow_truncated: bool = False) -> FrameSource:
    """Open a video file (.mp4/.mov/.mkv/.avi/.webm) or a folder of .jpg/.jpeg/.png frames.

    Raises InputError (naming the file) when the path is missing, is not a supported kind of input,
    or cannot be decoded, and when a video is truncated: decoding ends before the frame count its
    container declares ("decoded N of M frames"). ``allow_truncated=True`` accepts such a video with
    the frames that decode (see :class:`VideoFrames`); it does not apply to frame folders.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        return FolderFrames(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFrames(path, allow_truncated=allow_truncated)
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
            frame = read_rgb(file)
            self._check_size(file, frame.shape[:2])
            yield frame

    def iter_reversed(self, start: int | None = None, stop: int = 0) -> Iterator[np.ndarray]:
        """Frames ``start`` down to ``stop``, each file read when its turn comes."""
        for index in self._reversed_range(start, stop):
            frame = read_rgb(self.files[index])
            self._check_size(self.files[index], frame.shape[:2])
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


def read_rgb(file: Path) -> np.ndarray:
    """Decode one image to RGB; greyscale, RGBA and palette images are converted."""
    try:
        with Image.open(file) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"cannot read image ({err})", file) from err


class VideoFrames(FrameSource):
    """A video file decoded by ffmpeg; frames are named "00000", "00001", ...

    The frame count comes from a full decode when the video is opened, and is checked against the count
    the container declares (``declared_frames``): counted from an MP4/MOV sample table (edit lists
    applied, as ffmpeg applies them), or estimated from a Matroska/WebM video duration times the frame
    rate (then compared in time, with a frame and a half of slack, which holds for variable frame rates
    too). A decode that falls short raises InputError ("decoded N of M frames") unless
    ``allow_truncated``, which keeps the frames that decode. AVI and fragmented MP4 declare nothing
    that survives a cut, so the check does not apply to them.

    Attributes:
        declared_frames: the frame count the container declares (an estimate where it only gives a
            duration); None when it declares nothing usable. With ``allow_truncated``, fewer frames
            than that (``len``) may be used: those that decode, numbered in the order they decode.
    """

    def __init__(self, path: Path, allow_truncated: bool = False) -> None:
        self.path = path
        meta = _probe(path)
        width, height = meta["size"]
        self.size = (int(height), int(width))
        fps = float(meta.get("fps") or 0)
        self.fps = fps if fps > 0 else None
        decode = _decode_all(path)
        declared = _declared_frames(path, decode.header, self.fps)
        self.declared_frames = declared.frames if declared else None
        count = _checked_count(path, decode, declared, self.fps, allow_truncated)
        digits = max(5, len(str(count - 1)))
        self.names = [f"{index:0{digits}d}" for index in range(count)]
        self._times: np.ndarray | None = None

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
            # The file changed or became unreadable since it was opened.
            raise InputError(f"video ended early: decoded {count} of {len(self)} frames", self.path)


    def iter_reversed(
        self, start: int | None = None, stop: int = 0, *, chunk_frames: int | None = None
    ) -> Iterator[np.ndarray]:
        """Frames ``start`` down to ``stop``. ffmpeg cannot decode backward, so the video is decoded
        forward in chunks of ``chunk_frames`` (default: as many as fit in :data:`REVERSE_CHUNK_BYTES`),
        each handed out in reverse before the chunk before it is decoded: at most one chunk is held.

        Each chunk is found by a frame-accurate seek: ffmpeg seeks to the keyframe before it and
        decodes up to it, dropping every frame presented before the chunk's first; the seek time is
        half-way between that frame's presentation time and its predecessor's (from one scan of the
        video, :meth:`frame_times`), so rounding, B-frame reordering and variable frame rates cannot
        move it by a frame.
        """
        indices = self._reversed_range(start, stop)
        chunk = chunk_frames or max(1, min(MAX_REVERSE_CHUNK, REVERSE_CHUNK_BYTES // (self.size[0] * self.size[1] * 3)))
        end = indices.start + 1
        while end > stop:
            begin = max(stop, end - chunk)
            frames = self._decode_range(begin, end)
            while frames:
                yield frames.pop()  # handed out and forgotten, last first
            end = begin

    def frame_times(self) -> np.ndarray:
        """Each frame's presentation time in seconds from the start of the video (one decode, then cached)."""
        if self._times is None:
            self._times = _scan_frame_times(self.path, len(self))
        return self._times

    def _decode_range(self, begin: int, end: int) -> list[np.ndarray]:
        height, width = self.size
        if begin == 0:
            seek = []  # from the start: no seek, and no scan of the frame times
        else:
            times = self.frame_times()
            seek = ["-ss", f"{(times[begin - 1] + times[begin]) / 2:.6f}"]
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", *seek, "-i", str(self.path),
            "-map", "0:v:0", "-fps_mode", "passthrough", "-frames:v", str(end - begin),
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ]  # fmt: skip
        try:
            run = subprocess.run(command, capture_output=True, check=False)
        except OSError as err:
            raise InputError(f"cannot decode video ({err.strerror or err})", self.path) from err
        frame_bytes = height * width * 3
        count = len(run.stdout) // frame_bytes
        if run.returncode != 0 or count != end - begin:
            reason = _last_line(run.stderr.decode(errors="replace")) if run.returncode else f"got {count}"
            raise InputError(f"cannot decode frames {begin}-{end - 1} ({reason})", self.path)
        data = memoryview(run.stdout)
        return [
            np.frombuffer(bytearray(data[i * frame_bytes : (i + 1) * frame_bytes]), np.uint8).reshape(height, width, 3)
            for i in range(count)
        ]


# Backward reading holds one chunk of decoded frames: this many bytes at most (and this many frames).
REVERSE_CHUNK_BYTES = 64 * 2**20
MAX_REVERSE_CHUNK = 64
_PTS_TIME = re.compile(r"\bn:\s*(\d+)\s+pts:\s*-?\d+\s+pts_time:\s*(-?[\d.]+)")


def _scan_frame_times(path: Path, count: int) -> np.ndarray:
    """The presentation time of every frame as ffmpeg presents them (passthrough, as __iter__ decodes)."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0",
        "-fps_mode", "passthrough", "-vf", "showinfo=checksum=0", "-f", "null", "-",
    ]  # fmt: skip
    times = np.full(count, np.nan)
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as err:
        raise InputError(f"cannot decode video ({err.strerror or err})", path) from err
    with process:
        for raw in process.stderr:  # one line per frame, parsed as it comes: nothing grows but the array
            match = _PTS_TIME.search(raw.decode(errors="replace"))
            if match and int(match.group(1)) < count:
                times[int(match.group(1))] = float(match.group(2))
    if process.returncode != 0 or np.isnan(times).any() or (np.diff(times) <= 0).any():
        raise InputError("cannot find the frames' presentation times to read the video backward", path)
    return times


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


# --------------------------------------------------------------------------- counting and truncation


@dataclass
class _DecodeRun:
    """What one full decode of the first video stream reported on stderr."""

    frames: int
    seconds: float | None  # presentation time decoded, from ffmpeg's final "time=" report
    header: str  # ffmpeg's description of the input (streams, durations, metadata)
    failed: bool  # ffmpeg exited with an error
    last_line: str


@dataclass
class _Declared:
    """The frame count a container declares: counted from a sample table, or estimated from a duration."""

    frames: int
    slack: int = 0  # frames a complete decode may fall short of a counted ``frames``
    seconds: float | None = None  # the declared duration of an estimate; estimates are compared in time


_TIME_REPORT = re.compile(r"time=\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def _decode_all(path: Path) -> _DecodeRun:
    """Decode every frame of the first video stream (one per decoded frame, as __iter__ yields them)."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path),
        "-map", "0:v:0", "-fps_mode", "passthrough", "-vf", "null", "-f", "null", "-",
    ]  # fmt: skip
    try:
        run = subprocess.run(command, capture_output=True, check=False)
    except OSError as err:
        raise InputError(f"cannot decode video ({err.strerror or err})", path) from err
    text = run.stderr.decode(errors="replace")
    # Progress reports ("frame=  10 ... time=00:00:01.00 ...") end in a carriage return; the last is final.
    reports = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip().startswith("frame=")]
    final = reports[-1] if reports else ""
    frames = int(final.split("=", 1)[1].split()[0]) if final else 0
    time = _TIME_REPORT.search(final)
    header = text.split("Stream mapping:")[0]
    seconds = _seconds(*time.groups()) if time else None
    return _DecodeRun(frames, seconds, header, run.returncode != 0, _last_line(text))


def _checked_count(
    path: Path, decode: _DecodeRun, declared: _Declared | None, fps: float | None, allow_truncated: bool
) -> int:
    """The number of frames to use, or InputError when the video is undecodable or truncated."""
    truncated = declared is not None and _is_truncated(decode, declared, fps)
    if truncated and not allow_truncated:
        about = "about " if declared.seconds is not None else ""
        raise InputError(
            f"video is truncated or corrupt: decoded {decode.frames} of {about}{declared.frames} frames", path
        )
    # ffmpeg fails on a broken packet; what decoded before it is what allow_truncated asks for.
    if decode.failed and not (allow_truncated and decode.frames):
        raise InputError(f"cannot decode video ({decode.last_line})", path)
    if not decode.frames:
        raise InputError("video contains no frames", path)
    return decode.frames


def _is_truncated(decode: _DecodeRun, declared: _Declared, fps: float | None) -> bool:
    if declared.seconds is None:
        return decode.frames < declared.frames - declared.slack
    # An estimate (duration x fps) is compared in time, which also holds for variable frame rates:
    # the decode must reach the declared duration, less a frame and a half of rounding.
    if fps is None:
        return False
    if decode.seconds is None:
        return decode.frames == 0
    return decode.seconds < declared.seconds - 1.5 / fps - 0.01


def _declared_frames(path: Path, header: str, fps: float | None) -> _Declared | None:
    """The frame count the container of ``path`` declares, or None when it gives none to trust."""
    try:
        counted = _mp4_presented_samples(path)
    except (OSError, ValueError, struct.error):
        counted = None  # a corrupt or unusual MP4 layout: no count to trust
    if counted is not None:
        return counted
    seconds = _matroska_video_duration(header)
    if seconds is None or fps is None:
        return None
    return _Declared(round(seconds * fps), seconds=seconds)


def _seconds(hours: str, minutes: str, seconds: str) -> float:
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


_STREAM_LINE = re.compile(r"^(\s*)Stream #0:\d+\S*: (\w+):")
_DURATION_TAG = re.compile(r"^\s*DURATION(?:-\w+)?\s*:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", re.IGNORECASE)
_CONTAINER_DURATION = re.compile(r"^\s*Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def _matroska_video_duration(header: str) -> float | None:
    """The first video stream's duration in a Matroska/WebM file, as ffmpeg's input description gives it.

    Matroska muxers store it per stream (the DURATION tag), written when the file is finalised, so a
    file cut short afterwards still declares it. Failing that, the segment duration is used when the
    video is the file's only stream (with more streams it is the longest one's). Other containers are
    not read: ffmpeg fills in a duration estimated from the file size and bit rate where they have
    none, which says nothing about truncation.
    """
    lines = header.splitlines()
    if not any(line.startswith("Input #0, matroska") for line in lines):
        return None
    streams = [(index, match) for index, line in enumerate(lines) if (match := _STREAM_LINE.match(line))]
    videos = [(index, match) for index, match in streams if match.group(2) == "Video"]
    if not videos:
        return None
    index, match = videos[0]
    indent = len(match.group(1))
    for line in lines[index + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break  # end of this stream's block
        if tag := _DURATION_TAG.match(line):
            return _seconds(*tag.groups())
    if len(streams) != 1:
        return None
    segment = [found for line in lines if (found := _CONTAINER_DURATION.match(line))]
    return _seconds(*segment[0].groups()) if segment else None


# ------------------------------------------------------------------------------- MP4 sample table


def _mp4_presented_samples(path: Path) -> _Declared | None:
    """The number of frames of the first video track of an MP4/MOV file that a player presents.

    That is the track's sample count, less the samples its edit list cuts (trimmed clips keep the whole
    first group of pictures and hide its start with an edit, which ffmpeg honours). None when the file
    is not an MP4/MOV or its moov box lists no samples (fragmented MP4).
    """
    moov = _read_moov(path)
    if moov is None:
        return None
    movie_timescale = _timescale(_child(moov, b"mvhd"))
    for trak in _children(moov, b"trak"):
        mdia = _child(trak, b"mdia")
        if mdia is None or (hdlr := _child(mdia, b"hdlr")) is None or hdlr[8:12] != b"vide":
            continue
        stbl = _child(_child(mdia, b"minf") or b"", b"stbl")
        if stbl is None:
            return None
        count = _sample_count(stbl)
        if not count:
            return None
        edts = _child(trak, b"edts")
        elst = _child(edts, b"elst") if edts is not None else None
        if elst is None:
            return _Declared(count)
        media_timescale = _timescale(_child(mdia, b"mdhd"))
        presented = _samples_in_edits(stbl, count, _edits(elst), movie_timescale, media_timescale)
        # Counting an edited track follows ffmpeg's rule (a frame shows when it starts inside an edit);
        # where edits cut frames, allow for a frame of disagreement at an edit's boundary.
        return None if presented is None else _Declared(presented, slack=int(presented != count))
    return None


def _read_moov(path: Path) -> bytes | None:
    """The payload of the top-level moov box, found by skipping from box header to box header."""
    with open(path, "rb") as handle:
        first = handle.read(8)
        if len(first) < 8 or first[4:8] not in (b"ftyp", b"moov", b"wide", b"free", b"mdat", b"skip"):
            return None
        handle.seek(0)
        while header := handle.read(8):
            if len(header) < 8:
                return None
            size, kind = struct.unpack(">I4s", header)
            header_size = 8
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0]
                header_size = 16
            if kind == b"moov":
                if size == 0 or size > 512 * 1024 * 1024:
                    return None
                payload = handle.read(size - header_size)
                return payload if len(payload) == size - header_size else None
            if size < header_size:
                return None  # size 0 (box runs to the end of the file) or a corrupt header
            handle.seek(size - header_size, 1)
    return None


def _children(payload: bytes, kind: bytes) -> Iterator[bytes]:
    """The payloads of the boxes of type ``kind`` directly inside ``payload``."""
    position = 0
    while position + 8 <= len(payload):
        size, found = struct.unpack_from(">I4s", payload, position)
        header_size = 8
        if size == 1:
            size = struct.unpack_from(">Q", payload, position + 8)[0]
            header_size = 16
        elif size == 0:
            size = len(payload) - position
        if size < header_size or position + size > len(payload):
            raise ValueError("corrupt MP4 box")
        if found == kind:
            yield payload[position + header_size : position + size]
        position += size


def _child(payload: bytes | None, kind: bytes) -> bytes | None:
    return next(_children(payload, kind), None) if payload is not None else None


def _timescale(box: bytes | None) -> int:
    """The timescale of an mvhd or mdhd box (version 0: 32-bit times, version 1: 64-bit)."""
    if box is None:
        raise ValueError("MP4 without mvhd/mdhd")
    offset = 20 if box[0] == 1 else 12
    timescale = struct.unpack_from(">I", box, offset)[0]
    if not timescale:
        raise ValueError("MP4 timescale 0")
    return timescale


def _sample_count(stbl: bytes) -> int | None:
    if (stsz := _child(stbl, b"stsz")) is not None:
        sample_size, count = struct.unpack_from(">II", stsz, 4)
        if not sample_size and len(stsz) < 12 + 4 * count:
            raise ValueError("stsz lists fewer sizes than samples")  # as ffmpeg, distrust the count
        return count
    if (stz2 := _child(stbl, b"stz2")) is not None:
        return struct.unpack_from(">I", stz2, 8)[0]
    return None


def _edits(elst: bytes) -> list[tuple[int, int, float]]:
    """(segment duration in movie units, media start time or -1 for an empty edit, rate) per edit."""
    version = elst[0]
    entry_count = struct.unpack_from(">I", elst, 4)[0]
    layout, step = (">QqI", 20) if version == 1 else (">IiI", 12)
    edits = []
    for number in range(entry_count):
        duration, media_time, rate = struct.unpack_from(layout, elst, 8 + number * step)
        edits.append((duration, media_time, rate / 65536))
    return edits


def _run_table(box: bytes | None, signed: bool, samples: int) -> np.ndarray | None:
    """Expand an stts/ctts table of (count, value) entries to one value per sample, for ``samples`` at most."""
    if box is None:
        return None
    entry_count = struct.unpack_from(">I", box, 4)[0]
    entries = np.frombuffer(box, dtype=">u4", count=2 * entry_count, offset=8).reshape(-1, 2)
    values = entries[:, 1].astype(np.int32 if signed else np.uint32).astype(np.int64)
    # Clip the run lengths to the sample count, so a corrupt count cannot expand to gigabytes.
    counts = np.minimum(entries[:, 0].astype(np.int64), samples)
    ends = np.cumsum(counts)
    used = min(int(np.searchsorted(ends, samples)) + 1, len(counts))
    counts = counts[:used].copy()
    if used:
        counts[-1] -= max(int(ends[used - 1]) - samples, 0)
    return np.repeat(values[:used], counts)


def _samples_in_edits(
    stbl: bytes, count: int, edits: list[tuple[int, int, float]], movie_timescale: int, media_timescale: int
) -> int | None:
    """How many samples start (in presentation time) inside the track's non-empty edits."""
    if any(media_time >= 0 and rate != 1 for _duration, media_time, rate in edits):
        return None  # slow or fast motion edits: ffmpeg's handling is not a plain count
    deltas = _run_table(_child(stbl, b"stts"), signed=False, samples=count)
    if deltas is None:
        return None
    decode_times = np.concatenate([[0], np.cumsum(deltas)])[:count]
    offsets = _run_table(_child(stbl, b"ctts"), signed=True, samples=count)
    starts = decode_times.copy()
    if offsets is not None:
        usable = min(len(offsets), len(starts))
        starts[:usable] += offsets[:usable]
    presented = 0
    for duration, media_time, _rate in edits:
        if media_time < 0:
            continue  # an empty edit: a pause before the track starts, no samples
        # A duration of 0 (some muxers of fragmented files) means the rest of the media.
        end = media_time + duration * media_timescale / movie_timescale if duration else np.inf
        presented += int(np.count_nonzero((starts >= media_time) & (starts < end)))
    return presented


def _last_line(err: BaseException | str) -> str:
    """The most telling line of an ffmpeg error: its last non-empty line, so messages stay one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("===")]
    return lines[-1] if lines else "no message" if isinstance(err, str) else type(err).__name__
