"""Soft aggregation of per-object foreground probabilities (STM / STCN ``aggregate``)."""

from __future__ import annotations

import torch

_EPS = 1e-7


def aggregate(fg: torch.Tensor) -> torch.Tensor:
    """Turn K independent foreground maps ``(K, ...)`` into K+1 channels that sum to one.

    The soft-max over the object axis of :func:`aggregate_logits`; channel 0 is the background.
    """
    return torch.softmax(aggregate_logits(fg), dim=0)


def aggregate_logits(fg: torch.Tensor) -> torch.Tensor:
    """The log-odds ``(K+1, ...)`` that :func:`aggregate` soft-maxes (what STM-style models return).

    Background is the product of (1 - p_i); every channel is clamped to [1e-7, 1 - 1e-7] and mapped
    to log-odds. The order of operations follows the official code so that results are bit-identical
    on CPU.
    """
    bg = torch.prod(1 - fg, dim=0, keepdim=True)
    q = torch.cat([bg, fg], dim=0).clamp(_EPS, 1 - _EPS)
    return torch.log(q / (1 - q))
