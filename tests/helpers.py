"""Builders the test modules share: synthetic frames, palette PNGs, tiny DAVIS folders, the stored parity
cases, CLI error checks.

Inputs are written with PIL and numpy only, never with vostool's own writers, so that a bug there cannot
hide itself in a round trip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from typer.testing import Result
from PIL import Image

from tests.conftest import DAVIS_MINI, SPEC, require
from vostool.io.palette import DAVIS_PALETTE

# ------------------------------------------------------------------------------------------ frames


def gradient_frames(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Smooth, distinct frames: a lossy codec keeps them close to the original."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        red = (xs * 255 // max(width - 1, 1) + 7 * t) % 256
        green = ys * 255 // max(height - 1, 1)
        blue = np.full_like(xs, 40 + 15 * t)
        frames.append(np.stack([red, green, blue], axis=-1).astype(np.uint8))
    return frames


def paint_boxes(
    background: np.ndarray, boxes: Iterable[tuple[tuple[slice, slice], tuple[int, int, int], int]]
) -> tuple[np.ndarray, np.ndarray]:
    """One frame of a synthetic clip and its label map: each ``(region, colour, object_id)`` box fills
    ``region`` with ``colour`` in a copy of ``background`` and with ``object_id`` in the labels (uint8),
    later boxes over earlier ones."""
    frame = background.copy()
    labels = np.zeros(background.shape[:2], np.uint8)
    for region, colour, object_id in boxes:
        frame[region] = colour
        labels[region] = object_id
    return frame, labels


def write_frames(
    folder: Path, frames: Iterable[np.ndarray], names: Sequence[str] | None = None, suffix: str = ".png", **save
) -> list[Path]:
    """Save ``frames`` (HxWx3 uint8) as images in ``folder`` (created), named ``00000``, ``00001``, ...
    unless ``names`` are given. ``save`` goes to PIL, e.g. ``quality=95`` for JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        path = folder / f"{names[index] if names is not None else f'{index:05d}'}{suffix}"
        Image.fromarray(frame).save(path, **save)
        paths.append(path)
    return paths


def encode_frames(frames_dir: Path, video: Path, framerate: int, *options: str) -> Path:
    """Encode the ``%05d.png`` frames of ``frames_dir`` into ``video`` with the bundled ffmpeg and
    ``options`` (codec, GOP, ...), independently of vostool's writers."""
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-framerate", str(framerate),
         "-i", str(frames_dir / "%05d.png"), *options, str(video)],
        check=True,
    )  # fmt: skip
    return video


# ------------------------------------------------------------------------------------------ masks


def save_palette_png(path: Path, labels: np.ndarray, palette: bytes | Sequence[int] = DAVIS_PALETTE) -> Path:
    """An indexed (mode "P") PNG whose pixel values are ``labels``; the DAVIS palette unless told."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette)
    image.save(path)
    return path


def read_label_pngs(folder: Path) -> np.ndarray:
    """The label PNGs of ``folder`` in name order, stacked to (T, H, W)."""
    return np.stack([np.array(Image.open(path)) for path in sorted(folder.glob("*.png"))])


def leftover_temp_files(folder: Path) -> list[str]:
    """Names of vostool's temporary files (``.tmp-*``) anywhere under ``folder``: a finished or failed
    write must leave none."""
    return sorted(path.name for path in folder.rglob(".tmp-*"))


# ------------------------------------------------------------------------------------------ DAVIS


def write_davis_listing(root: Path, sequences: Iterable[str], subset: str = "val") -> Path:
    """``ImageSets/2017/<subset>.txt`` naming ``sequences``, one a line."""
    listing = root / "ImageSets" / "2017" / f"{subset}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{name}\n" for name in sequences))
    return listing


def write_davis(
    root: Path,
    annotations: dict[str, Sequence[np.ndarray]],
    images: dict[str, Sequence[np.ndarray]] | None = None,
    subset: str = "val",
    palette: bytes | Sequence[int] = DAVIS_PALETTE,
) -> Path:
    """A DAVIS 2017 layout under ``root``: per sequence the label stack as ``Annotations/480p`` palette
    PNGs, optionally the frames as ``JPEGImages/480p`` JPEGs (quality 95), and the subset listing."""
    for name, stack in annotations.items():
        for t, labels in enumerate(stack):
            save_palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels, palette)
    for name, frames in (images or {}).items():
        write_frames(root / "JPEGImages" / "480p" / name, frames, suffix=".jpg", quality=95)
    write_davis_listing(root, annotations, subset)
    return root


def davis_mini_with_one_sequence(root: Path, sequence: str) -> Path:
    """A DAVIS root at ``root`` that sees davis-mini's frames and annotations (linked) and lists only
    ``sequence``: its frame folder is returned (the test is skipped where davis-mini is absent)."""
    frames = require(DAVIS_MINI / "JPEGImages" / "480p" / sequence)
    for kind in ("JPEGImages", "Annotations"):
        (root / kind).mkdir(parents=True)
        (root / kind / "480p").symlink_to(DAVIS_MINI / kind / "480p", target_is_directory=True)
    write_davis_listing(root, [sequence])
    return frames


# ------------------------------------------------------------------------------------------ parity cases


def spec_case(model: str, name: str, tensors: bool = True) -> dict:
    """The arrays of ``../shared/spec/<model>/<name>.npz`` (the test is skipped where it is absent): as
    tensors, leaving out text entries such as ``settings_json``, or with ``tensors=False`` all of them as
    numpy arrays."""
    with np.load(require(SPEC / model / f"{name}.npz")) as data:
        if not tensors:
            return {key: data[key] for key in data.files}
        return {key: torch.from_numpy(data[key]) for key in data.files if data[key].dtype.kind != "U"}


# ------------------------------------------------------------------------------------------ CLI


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """A CLI run that failed the documented way: exit code 2, one line holding every fragment, no traceback.
    Returns that output."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output
