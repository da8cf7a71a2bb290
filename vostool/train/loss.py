"""STCN's bootstrapped cross-entropy: plain at first, then only the hardest pixels count."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bootstrapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Mean cross-entropy of the ``top_fraction`` highest-loss pixels of each sample.

    ``logits`` (B, C, H, W), ``target`` (B, H, W) class indices. ``top_fraction`` 1.0 is plain CE.
    """
    pixels = F.cross_entropy(logits, target, reduction="none").flatten(1)
    if top_fraction >= 1.0:
        return pixels.mean()
    kept = max(1, int(pixels.shape[1] * top_fraction))
    return pixels.topk(kept, dim=1, sorted=False).values.mean()


def hard_pixel_fraction(step: int, total: int, final: float = 0.15) -> float:
    """STCN's schedule, in fractions of the run: all pixels for the first 20 %, then the kept share falls
    linearly to ``final`` at 70 % and stays there."""
    start, end = 0.2 * total, 0.7 * total
    if step < start:
        return 1.0
    if step >= end:
        return final
    return 1.0 - (1.0 - final) * (step - start) / (end - start)
