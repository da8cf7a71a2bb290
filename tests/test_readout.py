"""The windowed top-k readout of ``propagate-lite0`` against a dense reference.

The reference builds the full masked affinity (every query position against every memory position of
every frame, -inf outside the (2r+1)² window) in float64 and takes the top-k of each column: no tiles,
strips, groups or padding, nothing shared with the implementation.

A float32 implementation can only be held to the reference where the top-k set is decided by more
than float32 rounding: at a query whose k-th and (k+1)-th best scores are within ``NEAR_TIE`` of each
other, either candidate is a correct pick and the result may differ by up to one top-k weight times
the difference of their values. Those queries (about one in a hundred with random features) are
counted and checked separately; the exact-tie test covers what tie-breaking must not change.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vostool.engine import readout
from vostool.engine.readout import local_topk_readout

TOLERANCE = 1e-5  # on probabilities, the bound
NEAR_TIE = 1e-4  # in score units (q·k / temperature): well above float32 rounding of a 152-term dot product


def dense_reference(keys, values, query, *, top_k, radius, temperature):
    """(V, h, w) readout and the (h, w) gap between each query's k-th and (k+1)-th scores, in float64."""
    t, c, h, w = keys.shape
    keys, values, query = keys.double(), values.double(), query.double()
    mem = keys.permute(1, 0, 2, 3).reshape(c, -1)  # (C, T*h*w)
    affinity = query.reshape(c, -1).T @ mem / temperature  # (h*w, T*h*w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    affinity = affinity.masked_fill(~near.repeat(1, t), float("-inf"))
    k = min(top_k, affinity.shape[1])  # a window with fewer positions also yields -inf, weighted 0
    ranked, idx = affinity.topk(min(k + 1, affinity.shape[1]), dim=1)
    weights = ranked[:, :k].softmax(dim=1)
    picked = values.permute(1, 0, 2, 3).reshape(values.shape[1], -1)[:, idx[:, :k]]  # (V, h*w, k)
    out = (picked * weights).sum(-1).reshape(-1, h, w)
    gap = torch.full((h * w,), float("inf"), dtype=torch.float64)
    if ranked.shape[1] > k:  # no gap where the k-th is already outside the window: all of it is read
        decided = torch.isfinite(ranked[:, k - 1])
        gap[decided] = ranked[decided, k - 1] - ranked[decided, k]
    return out, gap.reshape(h, w)


def random_inputs(t, c, h, w, v, seed):
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(t, c, h, w, generator=gen), dim=1)
    values = torch.rand(t, v, h, w, generator=gen)
    query = F.normalize(torch.randn(c, h, w, generator=gen), dim=0)
    return keys, values, query


def assert_matches_reference(out, keys, values, query, **settings):
    expected, gap = dense_reference(keys, values, query, **settings)
    assert out.shape == expected.shape and out.dtype == torch.float32
    clear = gap >= NEAR_TIE  # (h, w): the top-k set is decided by more than rounding
    assert clear.float().mean() >= 0.97, f"too many near-ties to judge: {int((~clear).sum())}"
    error = (out.double() - expected).abs()
    assert error[:, clear].max() <= TOLERANCE
    # at a near-tie the candidate read instead of the k-th has the smallest of k weights: at most 1/k
    assert error.max() <= 1.0 / settings["top_k"] + TOLERANCE


SHAPES = [
    # T, C, h, w, V, radius, top_k, tile
    pytest.param(1, 16, 13, 19, 1, 3, 7, 8, id="T1-borders"),
    pytest.param(2, 24, 17, 23, 2, 4, 20, 8, id="T2-h,w-not-tile-multiples"),
    pytest.param(16, 32, 15, 21, 1, 5, 20, 8, id="T16"),
    pytest.param(16, 152, 14, 30, 3, 12, 20, 8, id="T16-default-model-settings"),
    pytest.param(2, 8, 5, 6, 1, 12, 20, 8, id="frame-smaller-than-window"),
    pytest.param(3, 8, 9, 11, 2, 0, 20, 4, id="radius0-k-above-window"),
    pytest.param(2, 8, 9, 11, 1, 2, 100, 3, id="k-above-window"),
    pytest.param(4, 12, 12, 17, 1, 3, 9, 1, id="tile1"),
    pytest.param(4, 12, 12, 17, 1, 3, 9, 20, id="tile-wider-than-frame"),
]


@pytest.mark.parametrize("t, c, h, w, v, radius, top_k, tile", SHAPES)
def test_local_readout_matches_dense_reference(t, c, h, w, v, radius, top_k, tile):
    keys, values, query = random_inputs(t, c, h, w, v, seed=t * 1000 + h * 10 + w)
    settings = dict(top_k=top_k, radius=radius, temperature=0.1)
    out = local_topk_readout(keys, values, query, tile=tile, **settings)
    assert_matches_reference(out, keys, values, query, **settings)


@pytest.mark.parametrize("tile", [1, 5, 8, 12, 40])
def test_tile_changes_nothing(tile):
    keys, values, query = random_inputs(5, 20, 16, 27, 2, seed=7)
    settings = dict(top_k=20, radius=6, temperature=0.1)
    reference = local_topk_readout(keys, values, query, tile=8, **settings)
    out = local_topk_readout(keys, values, query, tile=tile, **settings)
    assert torch.allclose(out, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("strips_per_pass", [1, 2, 3])
def test_strips_taken_in_several_passes_give_the_same_result(monkeypatch, strips_per_pass):
    keys, values, query = random_inputs(3, 16, 13, 37, 2, seed=9)  # 5 strips of 8: the last pass is short
    settings = dict(top_k=15, radius=4, temperature=0.1)
    one_pass = local_topk_readout(keys, values, query, **settings)
    def grid():
        return readout._StripGrid(*query.shape, frames=3, radius=4, tile=8, device=query.device)

    assert grid().per_pass == grid().cols == 5
    monkeypatch.setattr(readout, "PASS_BYTES", strips_per_pass * 4 * grid().s_strip)
    assert grid().per_pass == strips_per_pass
    assert torch.equal(local_topk_readout(keys, values, query, **settings), one_pass)


def test_exact_ties_are_harmless_when_tied_candidates_agree():
    # the same frame twice (same keys, same values): every score is tied with its twin, so the top-k
    # of the window is ambiguous everywhere, but any choice among twins reads the same values
    keys, values, query = random_inputs(2, 16, 12, 14, 2, seed=3)
    keys, values = torch.cat([keys, keys]), torch.cat([values, values])
    settings = dict(top_k=9, radius=3, temperature=0.1)  # odd k: one pair is always split
    expected, _ = dense_reference(keys, values, query, **settings)
    out = local_topk_readout(keys, values, query, **settings)
    assert (out.double() - expected).abs().max() <= TOLERANCE


def test_sequence_of_frames_equals_stacked_tensor_and_accepts_views():
    keys, values, query = random_inputs(4, 16, 11, 13, 2, seed=5)
    settings = dict(top_k=12, radius=4, temperature=0.1)
    stacked = local_topk_readout(keys, values, query, **settings)
    # frames as separate, non-contiguous tensors (channels-last storage)
    key_list = [k.permute(1, 2, 0).contiguous().permute(2, 0, 1) for k in keys]
    value_list = list(values)
    assert not key_list[0].is_contiguous()
    assert torch.equal(local_topk_readout(key_list, value_list, query, **settings), stacked)


def test_results_do_not_depend_on_earlier_calls_or_scratch_contents():
    # the scratch tensors are reused between calls: stale or garbage contents must never be read
    big = random_inputs(6, 24, 20, 31, 1, seed=11)
    small = random_inputs(2, 24, 7, 9, 3, seed=12)
    settings = dict(top_k=20, radius=5, temperature=0.1)
    first_big = local_topk_readout(*big, **settings)
    first_small = local_topk_readout(*small, **settings)
    for name in ("keys", "scores", "bands"):
        readout._reusable(name, 4_000_000, big[0]).fill_(float("nan"))
    assert torch.equal(local_topk_readout(*small, **settings), first_small)
    assert torch.equal(local_topk_readout(*big, **settings), first_big)


def test_no_memory_frame_or_mismatched_key_is_refused():
    keys, values, query = random_inputs(2, 8, 6, 7, 1, seed=1)
    settings = dict(top_k=5, radius=2, temperature=0.1)
    with pytest.raises(ValueError, match="at least one memory frame"):
        local_topk_readout([], [], query, **settings)
    with pytest.raises(ValueError, match="shaped like the query key"):
        local_topk_readout(keys[:, :, :5], values[:, :, :5], query, **settings)


def test_scratch_kept_from_inference_mode_serves_calls_outside_it():
    readout._workspace.__dict__.clear()  # the first call below allocates the scratch, in inference mode
    torch.manual_seed(0)
    keys = F.normalize(torch.randn(2, 6, 9, 10), dim=1)
    values = torch.rand(2, 2, 9, 10)
    query = F.normalize(torch.randn(6, 9, 10), dim=0)
    with torch.inference_mode():
        inside = local_topk_readout(keys, values, query, top_k=5, radius=2, temperature=0.1)
    outside = local_topk_readout(keys, values, query, top_k=5, radius=2, temperature=0.1)
    with torch.inference_mode():
        again = local_topk_readout(keys, values, query, top_k=5, radius=2, temperature=0.1)
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    torch.testing.assert_close(again, outside, rtol=0, atol=0)
