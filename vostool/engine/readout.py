"""Memory readout: affinity between query and memory keys, top-k softmax, weighted sum of values."""

from __future__ import annotations

import math

import torch


def l2_affinity(mem_key: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """STCN's affinity: negative squared L2 distance without the query-norm term, / sqrt(C).

    ``mem_key`` is ``(C, N)``, ``query_key`` ``(C, P)``; the result is ``(N, P)``. The query norm
    cancels in the softmax over memory, so it is left out, exactly as the official code does; the
    order of operations (2ab - a², then the scale) is kept for bit-exact parity.
    """
    a_sq = mem_key.pow(2).sum(0).unsqueeze(1)
    ab = mem_key.transpose(0, 1) @ query_key
    return (2 * ab - a_sq) / math.sqrt(mem_key.shape[0])


def topk_softmax(affinity: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest scores of every column, softmax them, zero the rest.

    Unlike the official code we subtract the column maximum before exponentiating (it overflows to
    NaN when a score exceeds ~88.7); the result is identical wherever the official one is finite.
    ``top_k`` is clamped to the number of memory positions (the official code crashes there).
    """
    k = min(top_k, affinity.shape[0])
    values, indices = torch.topk(affinity, k=k, dim=0)
    weights = torch.softmax(values, dim=0)
    return torch.zeros_like(affinity).scatter_(0, indices, weights)


def topk_l2_readout(
    mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, top_k: int
) -> torch.Tensor:
    """Read ``mem_value`` ``(K, Cv, N)`` at the query positions: returns ``(K, Cv, P)``."""
    weights = topk_softmax(l2_affinity(mem_key, query_key), top_k)
    return mem_value @ weights
