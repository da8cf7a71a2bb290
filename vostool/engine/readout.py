"""Memory readout: affinity between query and memory keys, top-k softmax, weighted sum of values."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def local_topk_readout(
    mem_key: torch.Tensor,
    mem_value: torch.Tensor,
    query_key: torch.Tensor,
    *,
    top_k: int,
    radius: int,
    temperature: float,
    tile: int = 12,
) -> torch.Tensor:
    """Cosine-affinity top-k readout restricted to a (2r+1)² window around each query position.

    ``mem_key`` (T, C, h, w) and ``query_key`` (C, h, w) must be L2-normalised over C;
    ``mem_value`` is (T, V, h, w). Returns (V, h, w).

    A dense affinity over all T·h·w memory positions would not fit at 480p, so the query is cut into
    tiles; each tile is compared with the memory region it can see (tile + 2r on each axis). Positions
    outside a query's window get -inf before the top-k. Positions outside the frame are excluded through
    an extra key channel (-1e4 there, 0 inside) matched by a query channel of 1: the matmul itself pushes
    them below every real score, which costs nothing extra.
    """
    t, c, h, w = mem_key.shape
    v = mem_value.shape[1]
    device = mem_key.device
    region = tile + 2 * radius
    rows, cols = -(-h // tile), -(-w // tile)
    pad = (radius, radius + cols * tile - w, radius, radius + rows * tile - h)
    outside = torch.zeros(t, 1, h, w, device=device, dtype=mem_key.dtype)
    keys = torch.cat([F.pad(mem_key, pad), F.pad(outside, pad, value=-1e4)], dim=1) / temperature
    values = F.pad(mem_value, pad)
    query = F.pad(query_key, (0, cols * tile - w, 0, rows * tile - h))
    query = torch.cat([query, torch.full_like(query[:1], temperature)], dim=0)
    window_bias = _window_bias(tile, radius, device).repeat(1, t)  # (tile², T·region²)
    k = min(top_k, t * region * region)
    out = torch.empty(v, rows * tile, cols * tile, device=device, dtype=mem_value.dtype)
    for r in range(rows):
        band = slice(r * tile, r * tile + region)
        k_tiles = _tiles(keys[:, :, band], region, tile).reshape(cols, -1, c + 1)  # (cols, N, C+1)
        v_tiles = _tiles(values[:, :, band], region, tile).reshape(cols, -1, v)  # (cols, N, V)
        q = query[:, r * tile : (r + 1) * tile].reshape(c + 1, tile, cols, tile).permute(2, 1, 3, 0)
        scores = torch.bmm(q.reshape(cols, tile * tile, c + 1), k_tiles.transpose(1, 2))  # (cols, P, N)
        scores += window_bias
        top, idx = torch.topk(scores, k=k, dim=2)
        weights = torch.softmax(top, dim=2)  # (cols, P, k)
        picked = torch.gather(v_tiles.unsqueeze(1).expand(-1, tile * tile, -1, -1), 2,
                              idx.unsqueeze(3).expand(-1, -1, -1, v))  # (cols, P, k, V)
        read = (weights.unsqueeze(3) * picked).sum(dim=2)  # (cols, P, V)
        out[:, r * tile : (r + 1) * tile] = read.view(cols, tile, tile, v).permute(3, 1, 0, 2).reshape(
            v, tile, cols * tile
        )
    return out[:, :h, :w]


def _tiles(x: torch.Tensor, region: int, tile: int) -> torch.Tensor:
    """(T, C, region, W') band -> (cols, T, region², C): the overlapping memory region of each tile."""
    t, c = x.shape[:2]
    patches = x.unfold(3, region, tile)  # (T, C, region, cols, region)
    return patches.permute(3, 0, 2, 4, 1).reshape(patches.shape[3], t, region * region, c)


def _window_bias(tile: int, radius: int, device: torch.device) -> torch.Tensor:
    """(tile², region²): 0 where the memory position is within ``radius`` of the query, else -inf."""
    region = tile + 2 * radius
    mem = torch.arange(region, device=device)
    qry = torch.arange(tile, device=device) + radius
    near = (qry[:, None] - mem[None, :]).abs() <= radius  # (tile, region), same on both axes
    inside = (near[:, None, :, None] & near[None, :, None, :]).reshape(tile * tile, region * region)
    return torch.zeros(inside.shape, device=device).masked_fill_(~inside, float("-inf"))
