"""Pre- and post-processing shared by every model: normalise, resize, pad; unpad, resize, argmax."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..settings import MAX_ASPECT
from .protocol import Preprocessing


@dataclass(frozen=True)
class Geometry:
    """Sizes of one video: original (H0, W0), internal (resized) and padded, plus the pad amounts."""

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]
    pad: tuple[int, int, int, int]  # left, right, top, bottom

    @classmethod
    def for_frame(cls, size: tuple[int, int], prep: Preprocessing) -> Geometry:
        resized = resized_size(size, prep.short_side)
        pad_h, pad_w = ((prep.stride - s % prep.stride) % prep.stride for s in resized)
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        return cls(size, resized, (resized[0] + pad_h, resized[1] + pad_w), pad)


def resized_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """Short side to ``short_side``, long side int(short_side * long / short) (truncated, as officially).

    The long side is capped at ``int(short_side * MAX_ASPECT)``: a very elongated frame is then scaled
    so that its long side meets the cap, and its short side comes out below ``short_side``.
    """
    h, w = size
    if short_side is None or min(h, w) == short_side:
        return h, w
    short, long = min(h, w), max(h, w)
    new_short, new_long = short_side, int(short_side * long / short)
    if long_side_capped(size, short_side):
        new_long = int(short_side * MAX_ASPECT)
        new_short = max(1, int(new_long * short / long))
    return (new_short, new_long) if h <= w else (new_long, new_short)


def long_side_capped(size: tuple[int, int], short_side: int | None) -> bool:
    """True when ``resized_size`` processes a frame of ``size`` smaller than ``short_side`` asks."""
    h, w = size
    if short_side is None or min(h, w) == short_side:
        return False
    return int(short_side * max(h, w) / min(h, w)) > int(short_side * MAX_ASPECT)


def preprocess_frame(
    frame: np.ndarray | torch.Tensor, geom: Geometry, prep: Preprocessing, device: torch.device
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised, resized, zero-padded (1, 3, Hp, Wp) float32 on ``device``.

    ``frame`` is a numpy array or a torch tensor (a tensor already on ``device`` is not copied).

    Normalise first, then resize the float tensor (``prep.resize_mode``) with *no* antialias (what the
    official code did with torchvision 0.9 / 0.12), then pad with zeros in normalised space (= the mean colour).
    """
    if isinstance(frame, torch.Tensor):
        pixels = frame
    else:  # torch cannot share a read-only array (one decoded from bytes, say): that one is copied
        pixels = torch.from_numpy(np.ascontiguousarray(frame) if frame.flags.writeable else np.array(frame))
    x = pixels.to(device).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(prep.mean, device=device).view(3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(3, 1, 1)
    x = ((x - mean) / std).unsqueeze(0)
    if geom.resized != geom.original:
        x = F.interpolate(x, size=geom.resized, mode=prep.resize_mode, align_corners=False, antialias=False)
    return F.pad(x, geom.pad)


def preprocess_masks(planes: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Per-object float planes (K, 1, H0, W0) -> legacy-nearest resize -> zero pad, like the frames."""
    if geom.resized != geom.original:
        planes = F.interpolate(planes, size=geom.resized, mode="nearest")
    return F.pad(planes, geom.pad)


def clear_padding(planes: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """(C, 1, Hp, Wp) planes with the padded border set to zero: cropped to the frame and padded again."""
    left, right, top, bottom = geom.pad
    hp, wp = geom.padded
    return F.pad(planes[:, :, top : hp - bottom, left : wp - right], geom.pad)


def unpad_and_resize(prob: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """(C, 1, Hp, Wp) probabilities -> crop the padding -> bilinear to the original size (C, H0, W0)."""
    left, right, top, bottom = geom.pad
    hp, wp = geom.padded
    prob = prob[:, :, top : hp - bottom, left : wp - right]
    if geom.resized != geom.original:
        prob = F.interpolate(prob, size=geom.original, mode="bilinear", align_corners=False)
    return prob[:, 0]
