"""Memory readout: affinity between query and memory keys, top-k softmax, weighted sum of values."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch

from .precision import float32_region


# l2_affinity and topk_softmax are the official dense form, step by step: the parity tests check them
# against the official affinity, and topk_l2_readout (what the engine runs) is tested equal to
# ``values @ topk_softmax(l2_affinity(...))``.


def l2_affinity(mem_key: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """STCN's affinity: negative squared L2 distance without the query-norm term, / sqrt(C).

    ``mem_key`` is ``(C, N)``, ``query_key`` ``(C, P)``; the result is ``(N, P)``. The query norm
    cancels in the softmax over memory, so it is left out, exactly as the official code does; the
    order of operations (2ab - a², then the scale) is kept for bit-exact parity. Always float32, also
    under autocast: in bf16 the two terms are large and nearly cancel.
    """
    with float32_region(mem_key):
        mem_key, query_key = mem_key.float(), query_key.float()
        a_sq = mem_key.pow(2).sum(0).unsqueeze(1)
        ab = mem_key.transpose(0, 1) @ query_key
        return (2 * ab - a_sq) / math.sqrt(mem_key.shape[0])


def topk_softmax(affinity: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest scores of every column, softmax them, zero the rest.

    Unlike the official code we subtract the column maximum before exponentiating (it overflows to
    NaN when a score exceeds ~88.7); the result is identical wherever the official one is finite.
    ``top_k`` is clamped to the number of memory positions (the official code crashes there).
    Float32 whatever the type of ``affinity``.
    """
    with float32_region(affinity):
        affinity = affinity.float()
        k = min(top_k, affinity.shape[0])
        values, indices = torch.topk(affinity, k=k, dim=0)
        weights = torch.softmax(values, dim=0)
        return torch.zeros_like(affinity).scatter_(0, indices, weights)


# Floats held at once by the chunked top-k readout: the affinity scores of a chunk of query positions
# (bounded however long the memory grows, instead of one memory x query matrix) and the value rows
# gathered for it (kept small enough to stay in cache).
READOUT_CHUNK_SCORES = 1 << 24
READOUT_CHUNK_ROWS = 1 << 20


def topk_l2_readout(
    mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, top_k: int
) -> torch.Tensor:
    """STCN's readout: ``mem_key`` ``(C, N)``, ``mem_value`` ``(K, N, Cv)`` (one row of each object's
    value per memory position), ``query_key`` ``(C, P)``; returns ``(K, Cv, P)``.

    The numbers of ``values @ topk_softmax(l2_affinity(mem_key, query_key), top_k)`` (``values`` =
    ``mem_value`` as ``(K, Cv, N)``), up to float rounding, without the dense matrices: the affinity is
    built for a chunk of query positions at a time (at most :data:`READOUT_CHUNK_SCORES` floats),
    one row per query position so the top-k runs along contiguous memory, and each query position's
    ``top_k`` weights multiply the value rows *gathered* at their memory positions. The readout then
    costs ``K·Cv·top_k·P`` multiply-adds instead of ``K·Cv·N·P``, and N grows with the video.
    """
    with float32_region(mem_key):  # float32 also under autocast (see l2_affinity); no-op casts in fp32
        return _chunked_topk_readout(mem_key.float(), mem_value, query_key.float(), top_k)


def _chunked_topk_readout(
    mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, top_k: int
) -> torch.Tensor:
    n, p = mem_key.shape[1], query_key.shape[1]
    objects, _, channels = mem_value.shape
    k = min(top_k, n)
    a_sq = mem_key.pow(2).sum(0)
    scale = math.sqrt(mem_key.shape[0])
    chunk = max(1, min(READOUT_CHUNK_SCORES // n, READOUT_CHUNK_ROWS // (objects * k * channels)))
    out = mem_key.new_empty(objects, channels, p)
    for start in range(0, p, chunk):
        query = query_key[:, start : start + chunk]
        c = query.shape[1]
        # (2ab - a²) / sqrt(C) as one fused multiply-add pass (l2_affinity's value, rounded once less)
        affinity = torch.addmm(a_sq, query.transpose(0, 1), mem_key, beta=-1 / scale, alpha=2 / scale)
        scores, indices = torch.topk(affinity, k=k, dim=1)
        weights = torch.softmax(scores, dim=1)  # (c, k)
        rows = mem_value.index_select(1, indices.flatten()).view(objects * c, k, channels).float()
        read = torch.bmm(weights.repeat(objects, 1).unsqueeze(1), rows)  # (K*c, 1, Cv)
        out[:, :, start : start + c] = read.view(objects, c, channels).transpose(1, 2)
    return out


def local_topk_readout(
    mem_key: torch.Tensor | Sequence[torch.Tensor],
    mem_value: torch.Tensor | Sequence[torch.Tensor],
    query_key: torch.Tensor,
    *,
    top_k: int,
    radius: int,
    temperature: float,
    tile: int = 8,
) -> torch.Tensor:
    """Cosine-affinity top-k readout restricted to a (2r+1)² window around each query position.

    ``mem_key`` is (T, C, h, w) or T tensors (C, h, w), ``query_key`` (C, h, w), all L2-normalised
    over C; ``mem_value`` is (T, V, h, w) or T tensors (V, h, w). Returns (V, h, w): for every query
    position, the softmax over the ``top_k`` largest ``q·k / temperature`` among the memory positions
    of all T frames within ``radius`` rows and columns of it (positions outside the frame take no
    part), applied to their values. ``tile`` is the width of the query strips the work is cut into;
    it changes the speed only. Passing the frames as a sequence saves stacking them. On the CPU the
    scratch tensors (a copy of the memory keys and score buffers of up to about 1.6 × PASS_BYTES)
    are kept per thread between calls.

    No dense affinity is built. The query is cut into strips ``tile`` columns wide. Within a strip,
    each key row is one matrix product between the 2r+1 query rows that can see it and the
    ``tile + 2r`` key columns around the strip in all T frames, so the only wasted scores are the
    strip's x margins. The top-k then runs in two exact stages over each query's own window: short
    runs of rows of one key column form groups; the ``top_k`` groups with the largest maxima are
    kept, and the top-k over their members is the top-k over the whole window (a member of the
    top-k whose group was dropped would be beaten by the maxima of ``top_k`` other groups).
    Several strips go through each step together while their scores fit in ``PASS_BYTES``: fewer,
    larger operations, which matters when intra-op threads have to be woken for each one.
    """
    frames = list(mem_key)
    if not frames:
        raise ValueError("local_topk_readout needs at least one memory frame")
    if any(key.shape != query_key.shape for key in frames):
        raise ValueError(f"memory keys must each be shaped like the query key {tuple(query_key.shape)}")
    grid = _StripGrid(*query_key.shape, frames=len(frames), radius=radius, tile=tile, device=query_key.device)
    keys = _channels_last_keys(frames, grid)
    queries = _query_strips(query_key / temperature, grid)  # (cols, hp, tile, C)
    values = _padded_values(mem_value, grid)  # (V, T * hp * wp)
    scores = _score_buffer(grid, query_key)
    out = values.new_empty(values.shape[0], grid.h, grid.cols * tile)
    for first in range(0, grid.cols, grid.per_pass):
        strips = range(first, min(first + grid.per_pass, grid.cols))
        _score_strips(scores, keys, queries, strips, grid)
        weights, positions = _window_top_k(scores[: len(strips)], grid, top_k)
        positions += first * tile
        picked = values[:, positions.flatten()].view(values.shape[0], *positions.shape)  # (V, queries, k)
        read = (picked * weights).sum(dim=2).view(-1, len(strips), grid.h, tile)
        out[:, :, first * tile : strips.stop * tile] = read.permute(0, 2, 1, 3).flatten(2)
    return out[:, :, : grid.w]


def dense_local_topk_readout(
    mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, *, top_k: int, radius: int,
    temperature: float | torch.Tensor,
) -> torch.Tensor:
    """:func:`local_topk_readout` for a batch, picking from a dense masked affinity, and differentiable
    (training reads memory through it; its gradient reaches keys, query, temperature and values).

    ``mem_key`` (B, T, C, h, w), ``mem_value`` (B, T, V, h, w), ``query_key`` (B, C, h, w) -> (B, V, h, w).
    Scratch grows with (T h w) x (h w), which is fine for training crops, not for whole videos.
    """
    batch, frames, channels, h, w = mem_key.shape
    value_dim = mem_value.shape[2]
    cells = h * w
    # keys, values and queries as rows, in (B, T, h, w) order: what the picking below indexes
    key_rows = mem_key.permute(0, 1, 3, 4, 2).reshape(batch, frames * cells, channels)
    value_rows = mem_value.permute(0, 1, 3, 4, 2).reshape(batch * frames * cells, value_dim)
    query_rows = query_key.permute(0, 2, 3, 1).reshape(batch, cells, channels)
    # Which keys each query picks needs no gradient (dividing by the positive temperature keeps the order);
    # only the picked scores do, so they are recomputed from the picked keys with autograd on. The backward
    # pass then touches top_k keys per query instead of the dense (T hw) x hw affinity, most of a training step.
    with torch.no_grad():
        rows = torch.arange(h, device=mem_key.device).repeat_interleave(w)
        cols = torch.arange(w, device=mem_key.device).repeat(h)
        outside = ((rows[:, None] - rows[None]).abs() > radius) | ((cols[:, None] - cols[None]).abs() > radius)
        # query-major, so that top-k runs along contiguous memory
        affinity = torch.einsum("bmc,bnc->bmn", query_rows, key_rows).view(batch, cells, frames, cells)
        indices = affinity.masked_fill_(outside[:, None], float("-inf")).view(batch, cells, frames * cells).topk(
            top_k, dim=-1).indices  # (B, hw, k)
    # Per query, its top_k keys and values: one index_select over the rows of all batches picks them, and
    # the scores and the weighted sum are small per-query products (much faster than gathers along a
    # strided dimension, forwards and backwards).
    rows_of_batch = torch.arange(batch, device=indices.device).view(batch, 1, 1) * (frames * cells)
    picks = (indices + rows_of_batch).reshape(-1)  # (B hw k,)
    picked_keys = key_rows.reshape(-1, channels).index_select(0, picks).view(-1, top_k, channels)
    scores = torch.einsum("nkc,nc->nk", picked_keys, query_rows.reshape(-1, channels))
    weights = torch.softmax(scores / temperature, dim=1)
    picked_values = value_rows.index_select(0, picks).view(-1, top_k, value_dim)
    read = torch.einsum("nkv,nk->nv", picked_values, weights).view(batch, cells, value_dim)
    return read.transpose(1, 2).reshape(batch, value_dim, h, w)


PASS_BYTES = 64 << 20  # float32 score buffer of the strips that go through each step together


class _StripGrid:
    """Sizes and index arithmetic of the strip decomposition (see ``local_topk_readout``), in feature cells.

    The score buffer of a pass is (strips, hp, span, tile, T, band): ``[s, r + y_key, u, px, t, x]``
    is the score of query (row y_key - r + u, column px of strip s) against key (frame t, row y_key,
    band column x, which is key column ``col * tile - r + x``). Its r rows at each end stand for the
    key rows outside the frame and hold -inf, like the band columns outside the frame. Query (y, px)
    meets key row y - r + i at buffer row y + i, block row 2r - i: a diagonal of the buffer.

    Index tensors are per query of a pass (strip, y, px), flattened, and per window group (run c,
    frame t, window column dx), flattened in the order the group maxima are laid out.
    """

    def __init__(
        self, c: int, h: int, w: int, *, frames: int, radius: int, tile: int, device: torch.device
    ) -> None:
        self.c, self.h, self.w, self.frames, self.radius, self.tile = c, h, w, frames, radius, tile
        self.cols = -(-w // tile)
        self.span = 2 * radius + 1  # window rows (and columns)
        self.band = tile + 2 * radius  # key columns a strip can see
        self.hp = h + 2 * radius  # padded rows
        self.wp = self.cols * tile + 2 * radius  # padded columns of the values
        # the rows of one window column are grouped in runs of `run` (a divisor of span near its root)
        self.run = max(d for d in range(1, math.isqrt(self.span) + 1) if self.span % d == 0)
        self.runs = self.span // self.run
        # buffer strides: strip column, query row in block, key row, strip
        self.s_query = frames * self.band
        self.s_row = tile * self.s_query
        self.s_key = self.span * self.s_row
        self.s_strip = self.hp * self.s_key
        self.diagonal = self.s_key - self.s_row  # one key row down, one query row up: the same query
        self.per_pass = max(1, min(self.cols, PASS_BYTES // (4 * self.s_strip)))

        def index(*sizes: int) -> list[torch.Tensor]:
            grids = torch.meshgrid(*(torch.arange(n, device=device) for n in sizes), indexing="ij")
            return [g.flatten() for g in grids]

        strip, y, px = index(self.per_pass, h, tile)
        # each query's window in the buffer, and the padded memory position of its window's top-left cell
        start = strip * self.s_strip + 2 * radius * self.s_row + y * self.s_key + px * (self.s_query + 1)
        self.window_start = start[:, None]
        self.query_position = (y * self.wp + strip * tile + px)[:, None]
        run, frame, dx = index(self.runs, frames, self.span)
        self.group_offset = run * self.run * self.diagonal + frame * self.band + dx  # from window_start
        self.group_position = (frame * self.hp + run * self.run) * self.wp + dx  # from query_position
        member = torch.arange(self.run, device=device)
        self.member_offset, self.member_position = member * self.diagonal, member * self.wp

    def key_slack(self) -> tuple[int, int]:
        """Elements before and after the channels-last keys that the first and last bands reach past them."""
        return self.radius * self.c, (self.cols * self.tile + self.radius - self.w) * self.c


def _channels_last_keys(frames: list[torch.Tensor], grid: _StripGrid) -> torch.Tensor:
    """T keys (C, h, w) -> flat channels-last (T * h * w * C), with slack before and after.

    A strip's key band is read as rows of ``band`` keys at stride w: near the left and right edges
    these run into the neighbouring row (or frame, or the slack). Whatever they read only reaches
    band columns outside the frame, whose scores are overwritten with -inf, so no padded copy of
    the keys is needed and the slack is left as it is.
    """
    size = grid.frames * grid.h * grid.w * grid.c
    before, after = grid.key_slack()
    out = _reusable("keys", before + size + after, frames[0])
    inside = out[before : before + size].view(grid.frames, grid.h, grid.w, grid.c)
    for frame, key in enumerate(frames):
        inside[frame].copy_(key.permute(1, 2, 0))
    return out


def _query_strips(query: torch.Tensor, grid: _StripGrid) -> torch.Tensor:
    """(C, h, w) -> (cols, hp, tile, C): strip j holds query columns j*tile.., r zero rows above and below."""
    r, c = grid.radius, grid.c
    padded = query.new_zeros(grid.hp, grid.cols * grid.tile, c)
    padded[r : r + grid.h, : grid.w] = query.permute(1, 2, 0)
    return padded.view(grid.hp, grid.cols, grid.tile, c).transpose(0, 1).contiguous()


def _padded_values(value: torch.Tensor | Sequence[torch.Tensor], grid: _StripGrid) -> torch.Tensor:
    """(T, V, h, w) -> (V, T * hp * wp), zero outside the frame (r cells on each side, more on the right)."""
    value = value if isinstance(value, torch.Tensor) else torch.stack(list(value))
    r = grid.radius
    out = value.new_zeros(value.shape[1], value.shape[0], grid.hp, grid.wp)
    out[:, :, r : r + grid.h, r : r + grid.w] = value.transpose(0, 1)
    return out.view(value.shape[1], -1)


_workspace = threading.local()


def _reusable(name: str, size: int, like: torch.Tensor) -> torch.Tensor:
    """A flat scratch tensor of ``size`` elements; on the CPU the same one per thread and name each call.

    The readout's scratch tensors are tens of MB at 480p: fresh ones cost a page fault per 4 KiB on
    every call (the allocator hands such sizes back to the system), together about a tenth of the
    readout. Kept ones are simply overwritten. Elsewhere the device allocator already caches.
    """
    if like.device.type != "cpu":
        return like.new_empty(size)
    kept = getattr(_workspace, name, None)
    if kept is None or kept.numel() < size or kept.dtype != like.dtype:
        # A normal tensor even when called in inference mode: an inference tensor could not be written
        # by a later call made outside it (and a normal one may be written inside it).
        with torch.inference_mode(False):
            kept = torch.empty(size, dtype=like.dtype, device=like.device)
        setattr(_workspace, name, kept)
    return kept[:size]


def _score_buffer(grid: _StripGrid, like: torch.Tensor) -> torch.Tensor:
    """The score buffer of a pass (see ``_StripGrid``), border rows set to -inf."""
    shape = (grid.per_pass, grid.hp, grid.span, grid.tile, grid.frames, grid.band)
    buffer = _reusable("scores", grid.per_pass * grid.s_strip, like).view(shape)
    r = grid.radius
    buffer[:, :r] = float("-inf")
    buffer[:, r + grid.h :] = float("-inf")
    return buffer


def _score_strips(
    scores: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor, strips: range, grid: _StripGrid
) -> None:
    """Fill the score buffer for ``strips``: per strip one batched product, for each key row, of the 2r+1
    query rows around it (an overlapping strided view) with that row's key band in all frames (the bands
    of the pass are copied together)."""
    h, c, r, tile, band = grid.h, grid.c, grid.radius, grid.tile, grid.band
    start = keys.storage_offset() + grid.key_slack()[0] + (strips.start * tile - r) * c
    strides = (tile * c, grid.w * c, h * grid.w * c, c, 1)  # strip, key row, frame, band column, channel
    strided = keys.as_strided((len(strips), h, grid.frames, band, c), strides, start)
    bands = _reusable("bands", strided.numel(), keys).view(strided.shape).copy_(strided)
    for s, col in enumerate(strips):
        query = queries[col]
        block = query.as_strided((h, grid.span * tile, c), (tile * c, c, 1), query.storage_offset())
        rows = bands[s].view(h, -1, c).transpose(1, 2)
        torch.bmm(block, rows, out=scores[s, r : r + h].view(h, grid.span * tile, -1))
        left, right = max(0, r - col * tile), grid.w + r - col * tile  # band columns inside the frame
        if left > 0:
            scores[s, r : r + h, ..., :left] = float("-inf")
        if right < band:
            scores[s, r : r + h, ..., right:] = float("-inf")


def _window_group_maxima(scores: torch.Tensor, grid: _StripGrid) -> torch.Tensor:
    """(queries, runs * T * span): per query of the pass, the maximum of each run of rows of each window
    column.

    Reduced in the buffer's own order first (whole block rows), into (strips, h, runs, tile, T, band);
    then each query's own window columns are picked out.
    """
    n = scores.shape[0]
    runs = scores.as_strided(
        (n, grid.h, grid.runs, grid.run, grid.tile, grid.frames, grid.band),
        (grid.s_strip, grid.s_key, grid.run * grid.diagonal, grid.diagonal, grid.s_query, grid.band, 1),
        scores.storage_offset() + 2 * grid.radius * grid.s_row,
    )
    maxima = _reusable("group_max", n * grid.h * grid.runs * grid.s_row, scores)
    maxima = maxima.view(runs.shape[:3] + runs.shape[4:])
    torch.amax(runs, dim=3, out=maxima)
    s, y, c, px, t, _ = maxima.stride()
    own_shape = (n, grid.h, grid.tile, grid.runs, grid.frames, grid.span)
    own = maxima.as_strided(own_shape, (s, y, px + 1, c, t, 1))
    return own.reshape(n * grid.h * grid.tile, -1)


def _window_top_k(scores: torch.Tensor, grid: _StripGrid, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax weights (queries, k) of each query's top-k window scores, and the flat padded memory
    position of each, counting strip columns from the first strip of the pass."""
    groups = _window_group_maxima(scores, grid)
    queries = groups.shape[0]
    _, group = torch.topk(groups, k=min(top_k, groups.shape[1]), dim=1)
    first = grid.window_start[:queries] + grid.group_offset[group]
    members = scores.reshape(-1)[(first[..., None] + grid.member_offset).flatten(1)]  # (queries, k * run)
    top, pos = torch.topk(members, k=min(top_k, members.shape[1]), dim=1)
    member_position = (grid.group_position[group][..., None] + grid.member_position).flatten(1)
    return torch.softmax(top, dim=1), member_position.gather(1, pos) + grid.query_position[:queries]
