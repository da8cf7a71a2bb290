"""Soft aggregation of per-object foreground probabilities (STM / STCN ``aggregate``)."""

from __future__ import annotations

import torch

_EPS = 1e-7


def aggregate(fg: torch.Tensor) -> torch.Tensor:
    """Turn K independent foreground maps ``(K, ...)`` into K+1 channels that sum to one.

    Background is the product of (1 - p_i); every channel is clamped to [1e-7, 1 - 1e-7], mapped to
    log-odds and soft-maxed over the object axis. Channel 0 of the result is the background.
    The order of operations follows the official code so that results are bit-identical on CPU.
    """
    bg = torch.prod(1 - fg, dim=0, keepdim=True)
    q = torch.cat([bg, fg], dim=0).clamp(_EPS, 1 - _EPS)
    return torch.softmax(torch.log(q / (1 - q)), dim=0)
