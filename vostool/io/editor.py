"""Outputs for video editors and compositors: a matte, a cut-out with alpha, soft probability maps.

- Matte: white where the selected objects are, black elsewhere. An H.264 video (yuv420p, full range
  flagged, so white is 255) or a folder of 8-bit grayscale PNGs.
- Cut-out: the frames with the matte as alpha (straight, not premultiplied). VP9 with alpha in WebM
  (``yuva420p``), ProRes 4444 with alpha in QuickTime (``yuva444p10le``), or a folder of RGBA PNGs.
- Soft: per object, its probability (the soft aggregation's, at the frame's size, before the argmax) as
  8-bit PNGs ``<folder>/<object id>/<frame>.png``, for matting and feathered composites.

Videos go through imageio-ffmpeg's ffmpeg and are checked like the overlay (:class:`VideoWriter`);
PNGs are written into the staging folders of :mod:`vostool.io.outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from vostool.errors import OutputError
from vostool.io.staging import FolderLayout
from vostool.io.writers import OVERLAY_SUFFIXES, VideoWriter, _check_labels, _check_name, check_frame, ensure_folder, save_png

MATTE_SUFFIXES = OVERLAY_SUFFIXES  # H.264
CUTOUT_SUFFIXES = frozenset({".webm", ".mov"})  # the containers whose codecs here carry alpha
MATTE_CRF = 12  # mattes are mostly flat: a low CRF keeps the edges clean at little cost
CUTOUT_VP9_CRF = 20
MATTE_FOLDER = FolderLayout(frozenset({".png"}), noun="matte")
CUTOUT_FOLDER = FolderLayout(frozenset({".png"}), noun="cut-out")
SOFT_FOLDER = FolderLayout(frozenset({".png"}), depth=1, noun="probability map")


def matte(labels: np.ndarray, objects: Iterable[int] | None = None) -> np.ndarray:
    """(H, W) uint8: 255 where ``labels`` is one of ``objects`` (None: any object), else 0."""
    labels = _check_labels(labels)
    selected = labels > 0 if objects is None else np.isin(labels, list(objects))
    return selected.astype(np.uint8) * np.uint8(255)


def rgba(frame: np.ndarray, labels: np.ndarray, objects: Iterable[int] | None = None) -> np.ndarray:
    """(H, W, 4) uint8: ``frame`` with the matte of ``objects`` as its alpha."""
    frame, labels = check_frame(frame, labels)
    return np.concatenate([frame, matte(labels, objects)[..., None]], axis=-1)


def is_video_path(path: str | Path, suffixes: frozenset[str]) -> bool:
    """A file output when it has one of ``suffixes`` (and is not an existing folder); else a folder."""
    path = Path(path)
    return path.suffix.lower() in suffixes and not path.is_dir()


class MatteVideoWriter(VideoWriter):
    """A grayscale matte as H.264 (yuv420p, flagged full range: white is 255, black 0)."""

    SUFFIXES = MATTE_SUFFIXES
    WHAT = "matte video"
    INPUT_PIX_FMT = "gray"

    def __init__(self, path: str | Path, fps: float | None, objects: Iterable[int] | None = None) -> None:
        super().__init__(path, fps)
        self.objects = None if objects is None else tuple(objects)

    def codec_params(self) -> list[str]:
        return ["-vcodec", "libx264", "-pix_fmt", "yuv420p", "-color_range", "pc", "-crf", str(MATTE_CRF),
                "-preset", "veryfast"]  # fmt: skip

    def write(self, labels: np.ndarray) -> None:
        self._encode(matte(labels, self.objects))


class CutoutVideoWriter(VideoWriter):
    """The frames with the objects' matte as alpha: ``.webm`` VP9 ``yuva420p``, ``.mov`` ProRes 4444
    ``yuva444p10le``. Both codecs take any frame size, so nothing is padded."""

    SUFFIXES = CUTOUT_SUFFIXES
    WHAT = "cut-out video"
    INPUT_PIX_FMT = "rgba"
    EVEN_SIZE = False

    def __init__(self, path: str | Path, fps: float | None, objects: Iterable[int] | None = None) -> None:
        super().__init__(path, fps)
        self.objects = None if objects is None else tuple(objects)

    def codec_params(self) -> list[str]:
        if self.path.suffix.lower() == ".webm":
            return ["-vcodec", "libvpx-vp9", "-pix_fmt", "yuva420p", "-b:v", "0", "-crf", str(CUTOUT_VP9_CRF),
                    "-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]  # fmt: skip
        return ["-vcodec", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le", "-vendor", "apl0"]

    def write(self, frame: np.ndarray, labels: np.ndarray) -> None:
        self._encode(rgba(frame, labels, self.objects))


class _PngFolderWriter:
    """One PNG per frame in ``folder`` (a staging folder; created if missing)."""

    def __init__(self, folder: str | Path, objects: Iterable[int] | None = None) -> None:
        self.folder = Path(folder)
        self.objects = None if objects is None else tuple(objects)
        ensure_folder(self.folder)

    def path_for(self, name: str, subfolder: str | None = None) -> Path:
        folder = self.folder if subfolder is None else self.folder / subfolder
        return folder / f"{_check_name(name)}.png"


class MatteFolderWriter(_PngFolderWriter):
    """The matte as 8-bit grayscale PNGs ``<folder>/<frame>.png``."""

    def write(self, name: str, labels: np.ndarray) -> None:
        save_png(self.path_for(name), Image.fromarray(matte(labels, self.objects), mode="L"), "matte")


class CutoutFolderWriter(_PngFolderWriter):
    """The frames with alpha as RGBA PNGs ``<folder>/<frame>.png``."""

    def write(self, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        save_png(self.path_for(name), Image.fromarray(rgba(frame, labels, self.objects), mode="RGBA"), "cut-out")


class SoftWriter(_PngFolderWriter):
    """Per object, its probability as an 8-bit PNG ``<folder>/<id>/<frame>.png`` (0-255 for 0-1).

    ``objects``: the ids to write, every one for every frame (an object not tracked yet on a frame, as
    it is annotated later, has probability 0 there), so each folder is a complete image sequence.
    """

    def __init__(self, folder: str | Path, objects: Iterable[int]) -> None:
        super().__init__(folder, objects)
        if not self.objects:
            raise OutputError("no object to write probabilities of", self.folder)
        for object_id in self.objects:
            ensure_folder(self.folder / str(object_id))

    def write(self, name: str, object_ids: tuple[int, ...], probabilities: np.ndarray) -> None:
        """``probabilities``: (K+1, H, W) with channel 0 the background and 1..K ``object_ids``."""
        channels = {object_id: k + 1 for k, object_id in enumerate(object_ids)}
        size = probabilities.shape[1:]
        for object_id in self.objects:
            channel = channels.get(object_id)
            plane = probabilities[channel] if channel is not None else np.zeros(size, np.float32)
            levels = np.clip(np.rint(plane * 255.0), 0, 255).astype(np.uint8)
            save_png(self.path_for(name, str(object_id)), Image.fromarray(levels, mode="L"), "probability map")
