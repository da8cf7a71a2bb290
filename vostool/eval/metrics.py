"""Per-frame region (J) and boundary (F) scores and the DAVIS per-object statistics.

The formulas follow the official DAVIS 2017 evaluator (davisvideochallenge/davis2017-evaluation)
in float64, in the same order of operations, so the numbers agree to the last bits:

- J = |pred ∩ gt| / |pred ∪ gt|, and 1 when both masks are empty.
- F = 2PR / (P + R) over 1-pixel boundary maps, a boundary pixel being matched when it lies
  within ``ceil(0.008 * image diagonal)`` pixels (disk dilation) of the other boundary.
  P = 1 when the prediction has no boundary, R = 1 when the ground truth has none; F = 0 when
  P + R = 0.
- Mean, Recall (fraction of frames scoring > 0.5) and Decay (mean of the first quarter of the
  frames minus mean of the last quarter; quarter limits ``round(linspace(1, n, 5)) - 1``,
  neighbouring quarters share their limit frame).

Known difference, on purpose: the official tool stores the quarter limits as ``uint8``, so for
more than 256 evaluated frames they wrap around and its Decay is wrong (often NaN). Here the
limits are plain integers and the Decay is correct for any length; for 256 frames or fewer both
agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vostool.eval.morphology import boundary_map, dilate_disk

BOUNDARY_THRESHOLD = 0.008
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def boundary_radius(height: int, width: int, threshold: float = BOUNDARY_THRESHOLD) -> int:
    """Boundary tolerance in pixels: ``ceil(threshold * image diagonal)`` (8 px at 854x480).

    ``sqrt(h*h + w*w)`` of integers is exactly the official ``np.linalg.norm(shape)``.
    """
    return math.ceil(threshold * math.sqrt(height * height + width * width))


def count_per_frame(masks: np.ndarray) -> np.ndarray:
    """Set pixels of each frame of a boolean stack ``(T, H, W)`` as int64.

    One ``np.count_nonzero`` per frame: much faster than a boolean sum over two axes.
    """
    return np.fromiter((np.count_nonzero(frame) for frame in masks), dtype=np.int64, count=len(masks))


def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame J of boolean stacks ``(T, H, W)``; 1.0 where both masks are empty."""
    intersection = count_per_frame(gt & pred)
    union = count_per_frame(gt | pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = intersection / union
    scores[union == 0] = 1.0
    return scores


def occupied_window(masks: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """Smallest rows/columns window holding every set pixel of ``(T, H, W)`` masks, grown by
    ``margin`` pixels on each side within the image; None when no pixel is set."""
    rows = np.flatnonzero(masks.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(masks.any(axis=(0, 1)))
    height, width = masks.shape[-2:]
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, width)),
    )


def boundary_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> np.ndarray:
    """Per-frame boundary F-measure of boolean stacks ``(T, H, W)``.

    The stacks may be a crop of the frames provided the crop keeps one empty row/column of
    margin wherever it does not reach the image border (see :func:`frame_scores`): the boundary
    rule only looks one pixel east/south, and treats the image's last row/column specially.
    The dilations are further cropped to the window holding every boundary pixel of both masks:
    matches only concern boundary pixels, so the crop changes no count.
    """
    pred_boundary = boundary_map(pred)
    gt_boundary = boundary_map(gt)
    n_pred = count_per_frame(pred_boundary)
    n_gt = count_per_frame(gt_boundary)
    pred_matched = np.zeros_like(n_pred)
    gt_matched = np.zeros_like(n_gt)
    window = occupied_window(pred_boundary | gt_boundary)
    if window is not None:
        pred_boundary = pred_boundary[:, window[0], window[1]]
        gt_boundary = gt_boundary[:, window[0], window[1]]
        pred_matched = count_per_frame(pred_boundary & dilate_disk(gt_boundary, radius))
        gt_matched = count_per_frame(gt_boundary & dilate_disk(pred_boundary, radius))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, pred_matched / n_pred, 1.0)
        recall = np.where(n_gt > 0, gt_matched / n_gt, 1.0)
        total = precision + recall
        scores = np.where(total > 0, 2 * precision * recall / total, 0.0)
    return scores


def frame_scores(gt: np.ndarray, pred: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (J, F) of one object, boolean full-frame stacks ``(T, H, W)``.

    Work is restricted to the window around both masks with one pixel of margin: J only counts
    pixels inside it, and the margin keeps the boundary map identical to the full frame's.
    """
    window = occupied_window(gt | pred, margin=1)
    if window is None:
        ones = np.ones(len(gt))
        return ones, ones.copy()
    gt, pred = gt[:, window[0], window[1]], pred[:, window[0], window[1]]
    return jaccard(gt, pred), boundary_f(gt, pred, radius)


def decay_limits(n_frames: int) -> np.ndarray:
    """The ``DECAY_BINS + 1`` quarter limits (frame indices) for ``n_frames`` evaluated frames.

    Same float expression as the official tool (the ``+ 1e-10`` makes ``np.round`` round halves
    up), but kept as int64: the official ``uint8`` cast wraps beyond 255.
    """
    return (np.round(np.linspace(1, n_frames, DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)


@dataclass(frozen=True)
class FrameStatistics:
    """Mean, recall and decay of one object's per-frame scores."""

    mean: float
    recall: float
    decay: float


def summarise(per_frame: np.ndarray) -> FrameStatistics:
    """DAVIS statistics of one object's per-frame scores.

    NaN-aware means as in the official tool; the scores computed here never contain NaN.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no evaluated frames to summarise")
    limits = decay_limits(values.size)
    first_bin = values[limits[0] : limits[1] + 1]
    last_bin = values[limits[DECAY_BINS - 1] : limits[DECAY_BINS] + 1]
    return FrameStatistics(
        mean=float(np.nanmean(values)),
        recall=float(np.nanmean(values > RECALL_THRESHOLD)),
        decay=float(np.nanmean(first_bin) - np.nanmean(last_bin)),
    )
