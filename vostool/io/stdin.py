"""A video read once from standard input (``vostool segment -``), decoded by ffmpeg as it arrives.

The stream's length is unknown until it ends, so there is no frame count, no truncation check (nothing
declares how long a pipe is) and no way back: it is iterated once, forward. Frames are decoded as
their bytes come in, so the first results are out long before a live or slow input ends.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import imageio_ffmpeg
import numpy as np

from vostool.errors import InputError

STDIN = "-"
# How the input is named in messages and summaries.
STDIN_NAME = "<stdin>"
_CHUNK = 1 << 16
_OUTPUT_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: rawvideo\b.*?, (\d+)x(\d+)")
_INPUT_FPS = re.compile(r"Stream #\d+:\d+.*?: Video: .*?(\d+(?:\.\d+)?) (?:fps|tbr)\b")


def is_stdin(path: object) -> bool:
    """Whether ``path`` is the ``-`` that names standard input."""
    return str(path) == STDIN


class StdinFrames:
    """RGB uint8 frames of a video piped in (any container ffmpeg reads from a pipe: Matroska, WebM,
    MPEG-TS, NUT, or an MP4 whose index comes first), one (H, W, 3) array per decoded frame.

    Opening starts ffmpeg and waits for the stream's header (size and frame rate), so a size mismatch
    with the mask is found before any frame is segmented. Iterate it once; :meth:`close` stops ffmpeg
    (iteration does when it ends or is abandoned).

    Attributes: ``path`` (``<stdin>``), ``size`` (H, W), ``fps`` (None when the stream gives none),
    ``frame_count`` (always None: unknown), ``declared_frames`` (None).
    """

    frame_count = None
    declared_frames = None

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.path = Path(STDIN_NAME)
        stream = stream if stream is not None else sys.stdin.buffer
        if _is_terminal(stream):
            raise InputError("reading a video from standard input, but it is a terminal: pipe a video in", STDIN_NAME)
        self._process, self._pump = _start_decoder(stream)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._header_done = threading.Event()
        self._header: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, name="vostool-stdin-stderr", daemon=True)
        self._reader.start()
        self._used = False
        try:
            self.size, self.fps = self._wait_for_header()
        except BaseException:
            self.close()
            raise

    def name_of(self, index: int) -> str:
        """Frames are named by number, like a video file's: "00000", "00001", ..."""
        return f"{index:05d}"

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used:
            raise InputError("standard input can be read only once", STDIN_NAME)
        self._used = True
        height, width = self.size
        frame_bytes = height * width * 3
        try:
            while True:
                raw = _read_exactly(self._process.stdout, frame_bytes)
                if raw is None:
                    break
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            self._process.wait()
            self._reader.join()
            if self._process.returncode != 0:
                raise InputError(f"cannot decode the video ({self._last_line()})", STDIN_NAME)
        finally:
            self.close()

    def close(self) -> None:
        """Stop ffmpeg (nothing more is read from standard input)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdout, self._process.stdin):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def _read_stderr(self) -> None:
        for raw in iter(self._process.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            if not self._header_done.is_set():
                self._header.append(line)
                if _OUTPUT_STREAM.search(line):
                    self._header_done.set()
        self._header_done.set()  # ffmpeg ended (or failed) before a header: the waiter looks at why
        self._process.stderr.close()

    def _wait_for_header(self) -> tuple[tuple[int, int], float | None]:
        # Polled, so that Ctrl-C stays responsive while a slow producer has not sent a header yet.
        while not self._header_done.wait(0.1):
            pass
        text = "\n".join(self._header)
        size = _OUTPUT_STREAM.search(text)
        if size is None:
            self._process.wait()
            self._reader.join()
            raise InputError(f"not a video ffmpeg can decode ({self._last_line()})", STDIN_NAME)
        fps = _INPUT_FPS.search(text.split("Output #0")[0])
        width, height = int(size.group(1)), int(size.group(2))
        return (height, width), (float(fps.group(1)) or None) if fps else None

    def _last_line(self) -> str:
        lines = [line.strip() for line in self._stderr if line.strip()]
        return lines[-1] if lines else f"ffmpeg exit status {self._process.returncode}"

    def __repr__(self) -> str:
        return f"StdinFrames(size={self.size}, fps={self.fps})"


def _is_terminal(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _start_decoder(stream: BinaryIO) -> tuple[subprocess.Popen, threading.Thread | None]:
    """ffmpeg decoding ``stream`` to raw RGB on its stdout: reading the file descriptor itself when there
    is one (the usual pipe), else fed by a thread (a file-like object without one)."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats",
        # Slice threads only: frame threads hold back one decoded frame per thread, a delay a live
        # stream would see before its first result.
        "-thread_type", "slice", "-i", "pipe:0",
        "-map", "0:v:0", "-fps_mode", "passthrough", "-flush_packets", "1",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    descriptor = _file_descriptor(stream)
    try:
        process = subprocess.Popen(
            command, stdin=descriptor if descriptor is not None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except OSError as err:
        raise InputError(f"cannot start the video decoder ffmpeg ({err.strerror or err})", STDIN) from err
    if descriptor is not None:
        return process, None
    pump = threading.Thread(target=_pump, args=(stream, process.stdin), name="vostool-stdin-pump", daemon=True)
    pump.start()
    return process, pump


def _file_descriptor(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError):
        return None  # io.UnsupportedOperation is an OSError and a ValueError


def _pump(source: BinaryIO, sink: BinaryIO) -> None:
    try:
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
            sink.flush()
    except (OSError, ValueError):
        pass  # ffmpeg stopped reading (it failed or was stopped): it reports why
    finally:
        try:
            sink.close()
        except OSError:
            pass


def _read_exactly(pipe: BinaryIO, count: int) -> bytearray | None:
    """``count`` bytes from ``pipe``, or None at its end (a partial last frame is dropped, as ffmpeg
    only writes whole frames unless it was stopped)."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    filled = 0
    while filled < count:
        read = pipe.readinto(view[filled:])
        if not read:
            return None
        filled += read
    return buffer
