"""Training samples for ``vostool train``: annotated clips found on disk, and STCN-style triplets drawn from them.

A clip is a folder of frames with masks for some of them (every frame in DAVIS, a few in a user's own
annotation). A sample is three frames of one object:

* from a video: three annotated frames in order (randomly reversed), at most ``max_skip`` apart, all
  cropped, scaled and flipped alike, each then jittered by a small affine warp and colour change;
* synthetic, from one annotated frame (STCN's static-image stage): three strong random affine warps of
  the same frame, so the network learns to follow an object that moves and deforms;
* synthetic shapes (:mod:`vostool.train.shapes`, off unless ``shapes_fraction`` is set): textured
  shapes crossing each other, over real or synthetic backgrounds.

Frame 0 carries its mask into the network; frames 1 and 2 are predicted, the way STCN trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from vostool.errors import InputError
from vostool.io.frames import FolderFrames, natural_key, read_rgb
from vostool.io.masks import mask_files_dir, read_mask
from vostool.train.shapes import ShapeSequences, randint, uniform

SAMPLE_FRAMES = 3
MIN_REFERENCE_PIXELS = 100  # a crop that leaves less of the object in frame 0 is drawn again
_CROP_TRIES = 5


@dataclass(frozen=True)
class TrainClip:
    """One annotated clip: its frame files in order and the frames that have a mask (index -> file)."""

    name: str
    frames: tuple[Path, ...]
    masks: dict[int, Path]

    @property
    def annotated(self) -> list[int]:
        return sorted(self.masks)


def find_clips(data: str | Path, masks: str | Path | None = None) -> list[TrainClip]:
    """The clips to train on.

    * ``masks`` given: ``data`` is one folder of frames and ``masks`` the folder of its masks, named
      like the frames they belong to (as ``vostool segment --masks``), for any number of frames;
    * otherwise ``data`` is a DAVIS-layout root: ``JPEGImages[/480p]/<clip>/`` frames and
      ``Annotations[/480p]/<clip>/`` masks; clips without masks are skipped.
    Raises InputError naming the folder when nothing can be trained on.
    """
    data = Path(data)
    if not data.is_dir():
        raise InputError("no such folder" if not data.exists() else "training data must be a folder", data)
    if masks is not None:
        return [_clip(data.name, data, Path(masks))]
    images, annotations = _davis_folders(data)
    clips = []
    for folder in sorted((p for p in images.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        if (annotations / folder.name).is_dir():
            clips.append(_clip(folder.name, folder, annotations / folder.name))
    if not clips:
        raise InputError(f"no clip in {images} has a mask folder in {annotations}", data)
    return clips


def _davis_folders(root: Path) -> tuple[Path, Path]:
    for images, labels in ((root / "JPEGImages" / "480p", root / "Annotations" / "480p"),
                           (root / "JPEGImages", root / "Annotations")):
        if images.is_dir() and labels.is_dir():
            return images, labels
    raise InputError("not a DAVIS-layout folder (JPEGImages/ and Annotations/, optionally with 480p/); "
                     "for one clip pass its frame folder and --masks", root)


def _clip(name: str, frames: Path, masks: Path) -> TrainClip:
    files = tuple(FolderFrames(frames).files)
    return TrainClip(name, files, mask_files_dir(masks, [file.stem for file in files]))


@dataclass(frozen=True)
class SamplerSettings:
    size: int = 320  # square crop side, a multiple of 16
    max_skip: int = 10  # most frames between consecutive sampled frames
    static_fraction: float = 0.25  # share of synthetic sequences made from single frames
    distractor_fraction: float = 0.5  # share of samples with another clip's object pasted in, as background
    shapes_fraction: float = 0.0  # share of synthetic moving-shape sequences


class TripletSampler:
    """Draws training samples (see module docstring) from ``clips``, reproducibly from ``generator``."""

    def __init__(self, clips: list[TrainClip], settings: SamplerSettings, generator: torch.Generator) -> None:
        self.clips = clips
        self.settings = settings
        self.generator = generator
        size = settings.size
        self.video_crop = _crop(size, min_scale=0.36)
        self.video_jitter = _jitter(degrees=5, shear=5, scale=(0.95, 1.05))
        self.static_crop = _crop(size, min_scale=0.5)
        self.static_jitter = _jitter(degrees=20, shear=10, scale=(0.9, 1.1), translate=(0.1, 0.1))
        self.shapes = ShapeSequences(size, SAMPLE_FRAMES, generator, self._real_image)

    def _randint(self, high: int) -> int:
        return randint(self.generator, high)

    def _chance(self, fraction: float) -> bool:
        return uniform(self.generator) < fraction

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frames (3, 3, S, S) float in [-1, 1], masks (3, 1, S, S) float 0/1)`` of one object."""
        # No draw at all when shapes are off: the samples stay those of runs made before they existed.
        if self.settings.shapes_fraction and self._chance(self.settings.shapes_fraction):
            frames, stacked = self.shapes.sample()
            return frames.div_(127.5).sub_(1.0), stacked.float()
        clip = self.clips[self._randint(len(self.clips))]
        annotated = clip.annotated
        static = len(annotated) < SAMPLE_FRAMES or self._chance(self.settings.static_fraction)
        if static:
            index = annotated[self._randint(len(annotated))]
            images, labels = [_read_frame(clip.frames[index])], [_read_labels(clip.masks[index])]
        else:
            indices = self._ordered_frames(annotated)
            images = [_read_frame(clip.frames[i]) for i in indices]
            labels = [_read_labels(clip.masks[i]) for i in indices]
        object_id = self._pick_object(labels[0])
        masks = [tv_tensors.Mask(torch.from_numpy((lab == object_id).astype(np.uint8))[None]) for lab in labels]
        for _ in range(_CROP_TRIES):
            frames, out_masks = self._augment(images, masks, static)
            if out_masks[0].sum() >= MIN_REFERENCE_PIXELS:
                break
        frames, stacked = torch.stack(frames), torch.stack(out_masks).bool()
        if self._chance(self.settings.distractor_fraction):
            self._paste_distractor(frames, stacked)
        return frames.float().div_(127.5).sub_(1.0), stacked.float()  # frames in Lite0's [-1, 1]

    def _real_image(self, size: int) -> torch.Tensor:
        """A random crop of a random frame of the clips, (3, size, size) uint8."""
        clip = self.clips[self._randint(len(self.clips))]
        image = _read_frame(clip.frames[self._randint(len(clip.frames))])
        return v2.functional.resized_crop(image, *v2.RandomResizedCrop.get_params(image, (0.2, 1.0), (0.75, 1.33)),
                                          [size, size], antialias=True)

    def _paste_distractor(self, frames: torch.Tensor, masks: torch.Tensor) -> None:
        """Paste an object of a random annotated frame over the sample, moving a little from frame to
        frame, as background: the network learns not to grow onto other objects (copy-paste augmentation;
        the pasted object hides the target where they overlap)."""
        clip = self.clips[self._randint(len(self.clips))]
        index = clip.annotated[self._randint(len(clip.annotated))]
        labels = _read_labels(clip.masks[index])
        shape = torch.from_numpy(labels == self._pick_object(labels))
        if shape.sum() < MIN_REFERENCE_PIXELS:
            return
        ys, xs = torch.nonzero(shape, as_tuple=True)
        box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        patch, shape = _read_frame(clip.frames[index])[:, box[0], box[1]], shape[box]
        size = frames.shape[-1]
        scale = size * (0.2 + 0.4 * uniform(self.generator)) / max(shape.shape)
        h, w = max(1, int(shape.shape[0] * scale)), max(1, int(shape.shape[1] * scale))
        patch = F.interpolate(patch[None].float(), size=(h, w), mode="bilinear", antialias=True)[0]
        shape = F.interpolate(shape[None, None].float(), size=(h, w), mode="nearest")[0, 0].bool()
        y, x = self._randint(size + h) - h, self._randint(size + w) - w
        for t in range(frames.shape[0]):
            if t:
                y, x = y + self._randint(17) - 8, x + self._randint(17) - 8
            _paste(frames[t], masks[t, 0], patch.to(frames.dtype), shape, y, x)

    def _ordered_frames(self, annotated: list[int]) -> list[int]:
        """Three annotated frames, increasing, each at most max_skip after the previous; maybe reversed."""
        first = self._randint(len(annotated) - SAMPLE_FRAMES + 1)
        chosen = [first]
        for remaining in (1, 0):
            low = chosen[-1] + 1
            high = min(len(annotated) - 1 - remaining, _last_within(annotated, chosen[-1], self.settings.max_skip))
            chosen.append(low + self._randint(max(high - low + 1, 1)))
        frames = [annotated[i] for i in chosen]
        return frames[::-1] if self._randint(2) else frames

    def _pick_object(self, labels: np.ndarray) -> int:
        ids = [int(v) for v in np.unique(labels) if v != 0]
        return ids[self._randint(len(ids))] if ids else 1

    def _augment(self, images: list[torch.Tensor], masks: list[tv_tensors.Mask], static: bool):
        crop, jitter = (self.static_crop, self.static_jitter) if static else (self.video_crop, self.video_jitter)
        if static:
            cropped = crop(images[0], masks[0])
            pairs = [jitter(*cropped) for _ in range(SAMPLE_FRAMES)]
        else:
            cropped = crop(*images, *masks)  # one crop for the whole sequence
            pairs = [jitter(cropped[i], cropped[i + len(images)]) for i in range(len(images))]
        return [image for image, _ in pairs], [mask for _, mask in pairs]


def _paste(frame: torch.Tensor, mask: torch.Tensor, patch: torch.Tensor, shape: torch.Tensor, y: int, x: int) -> None:
    """Paste ``patch`` where ``shape`` is set, top-left at (y, x) (clipped to the frame); clear ``mask`` there."""
    size_y, size_x = frame.shape[-2:]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + shape.shape[0], size_y), min(x + shape.shape[1], size_x)
    if bottom <= top or right <= left:
        return
    cut = shape[top - y : bottom - y, left - x : right - x]
    region = frame[:, top:bottom, left:right]
    region[:, cut] = patch[:, top - y : bottom - y, left - x : right - x][:, cut]
    mask[top:bottom, left:right][cut] = False


def _last_within(annotated: list[int], position: int, max_skip: int) -> int:
    """The last position in ``annotated`` whose frame is at most ``max_skip`` after ``annotated[position]``."""
    limit = annotated[position] + max_skip
    last = position
    while last + 1 < len(annotated) and annotated[last + 1] <= limit:
        last += 1
    return last


def _crop(size: int, min_scale: float) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop((size, size), scale=(min_scale, 1.0), ratio=(0.75, 1.33), antialias=True),
        v2.RandomHorizontalFlip(),
    ])


def _jitter(degrees: float, shear: float, scale: tuple[float, float],
            translate: tuple[float, float] | None = None) -> v2.Compose:
    return v2.Compose([
        v2.RandomAffine(degrees=degrees, translate=translate, scale=scale, shear=shear),
        v2.ColorJitter(brightness=0.1, contrast=0.05, saturation=0.05),
    ])


def _read_frame(path: Path) -> tv_tensors.Image:
    return tv_tensors.Image(torch.from_numpy(read_rgb(path)).permute(2, 0, 1))


def _read_labels(path: Path) -> np.ndarray:
    return read_mask(path, allow_empty=True).labels
