"""The streaming engine: schedule, grouping, pre/post-processing, readout, and a full run on a synthetic clip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import paint_boxes
from vostool.engine.aggregate import aggregate
from vostool.engine.config import ModelSettings
from vostool.engine.core import VideoPropagator, propagate
from vostool.engine.memory import MemoryBank
from vostool.engine.memory import EveryNthFrame, FirstAndPrevious, WorkingMemory, Write
from vostool.engine.protocol import MemoryEntry, MemoryView, ObjectStates, Preprocessing
from vostool.engine import readout
from vostool.engine.readout import l2_affinity, local_topk_readout, topk_l2_readout, topk_softmax
from vostool.engine.transforms import Geometry, resized_size


def entry(t: int, objects=(0,), pinned=False) -> MemoryEntry:
    return MemoryEntry(t, key=t, values=torch.zeros(len(objects)), objects=tuple(objects), pinned=pinned)


def test_schedule_every_n_frames_counts_from_last_write():
    bank = MemoryBank(EveryNthFrame(every=5))
    bank.add(entry(0, pinned=True), Write.PERMANENT)
    due = [t for t in range(1, 16) if bank.due(t) is Write.PERMANENT and not bank.add(entry(t), Write.PERMANENT)]
    assert due == [5, 10, 15]


def test_include_last_keeps_one_temporary_frame_replaced_by_every_write():
    bank = MemoryBank(FirstAndPrevious())
    bank.add(entry(0, pinned=True), Write.PERMANENT)
    for t in (1, 2, 3):
        assert bank.due(t) is Write.TEMPORARY
        bank.add(entry(t), Write.TEMPORARY)
    assert [e.frame_index for e in bank.entries] == [0, 3]


def test_max_frames_keeps_pinned_and_drops_oldest():
    bank = MemoryBank(EveryNthFrame(every=1, max_frames=3))
    bank.add(entry(0, pinned=True), Write.PERMANENT)
    for t in range(1, 300):
        bank.add(entry(t), Write.PERMANENT)
        assert len(bank) <= 3
    assert [e.frame_index for e in bank.entries] == [0, 298, 299]


def test_views_group_objects_by_the_frames_that_hold_them():
    bank = MemoryBank(EveryNthFrame(every=1))
    bank.add(entry(0, objects=(0, 1), pinned=True), Write.PERMANENT)
    bank.add(entry(4, objects=(0, 1, 2), pinned=True), Write.PERMANENT)
    bank.add(entry(5, objects=(0, 1, 2)), Write.PERMANENT)
    views = {v.objects: v for v in bank.views([0, 1, 2])}
    assert set(views) == {(0, 1), (2,)}
    assert [e.frame_index for e in views[(0, 1)].entries] == [0, 4, 5]
    assert [e.frame_index for e in views[(2,)].entries] == [4, 5]
    assert views[(2,)].rows == [[2], [2]]


def test_memory_view_values_selects_rows():
    e = MemoryEntry(0, None, torch.arange(3.0), (0, 1, 2))
    assert MemoryView([e], (2, 0), [[2, 0]]).values(0).tolist() == [2.0, 0.0]


@pytest.mark.parametrize(
    "size, short, resized, padded, pad",
    [
        ((90, 120), None, (90, 120), (96, 128), (4, 4, 3, 3)),
        ((90, 130), 480, (480, 693), (480, 704), (5, 6, 0, 0)),
        ((480, 854), 480, (480, 854), (480, 864), (5, 5, 0, 0)),
        ((854, 480), 240, (427, 240), (432, 240), (0, 0, 2, 3)),
    ],
)
def test_geometry_matches_the_official_resize_and_centred_padding(size, short, resized, padded, pad):
    geom = Geometry.for_frame(size, Preprocessing(short_side=short, stride=16))
    assert (geom.resized, geom.padded, geom.pad) == (resized, padded, pad)
    assert resized_size(size, short) == resized


def test_aggregate_of_one_hot_is_near_one_hot_and_sums_to_one():
    fg = torch.zeros(2, 1, 4, 4)
    fg[0, :, :2] = 1
    fg[1, :, 3] = 1
    prob = aggregate(fg)
    assert prob.shape == (3, 1, 4, 4)
    assert torch.allclose(prob.sum(0), torch.ones(1, 4, 4))
    assert prob.argmax(0)[0].tolist() == [[1] * 4, [1] * 4, [0] * 4, [2] * 4]
    assert prob.max(0).values.min() > 1 - 1e-6


def test_topk_l2_readout_with_k_larger_than_memory_does_not_crash():
    torch.manual_seed(0)
    out = topk_l2_readout(torch.randn(8, 6), torch.randn(2, 6, 4), torch.randn(8, 5), top_k=20)
    assert out.shape == (2, 4, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("chunk_rows", [1 << 20, 3 * 20 * 16 * 7])  # one chunk; chunks of 7 positions
def test_topk_l2_readout_equals_the_dense_official_form(chunk_rows, monkeypatch):
    # values @ (top-k softmax of the L2 affinity, scattered into a zero matrix): the official readout
    monkeypatch.setattr(readout, "READOUT_CHUNK_ROWS", chunk_rows)
    torch.manual_seed(2)
    keys, query, values = torch.randn(64, 300), torch.randn(64, 50), torch.randn(3, 16, 300)
    dense = values @ topk_softmax(l2_affinity(keys, query), 20)
    gathered = topk_l2_readout(keys, values.transpose(1, 2).contiguous(), query, top_k=20)
    torch.testing.assert_close(gathered, dense, atol=1e-5, rtol=1e-5)


def test_topk_softmax_survives_huge_scores():
    # the official code overflows to NaN above ~88.7; ours subtracts the maximum
    keys = torch.full((4, 3), 30.0)
    out = topk_l2_readout(keys, torch.ones(1, 3, 2), keys[:, :2], top_k=2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("tile", [4, 8])
def test_local_readout_equals_brute_force(tile):
    torch.manual_seed(1)
    t, c, h, w, radius, k, tau = 3, 6, 11, 14, 3, 7, 0.1
    keys = F.normalize(torch.randn(t, c, h, w), dim=1)
    values = torch.rand(t, 2, h, w)
    query = F.normalize(torch.randn(c, h, w), dim=0)
    out = local_topk_readout(keys, values, query, top_k=k, radius=radius, temperature=tau, tile=tile)
    expected = torch.zeros(2, h, w)
    for y in range(h):
        for x in range(w):
            ys, xs = slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1)
            mk = keys[:, :, ys, xs].permute(0, 2, 3, 1).reshape(-1, c)
            mv = values[:, :, ys, xs].permute(0, 2, 3, 1).reshape(-1, 2)
            top, idx = (mk @ query[:, y, x] / tau).topk(k)
            expected[:, y, x] = (mv[idx] * top.softmax(0)[:, None]).sum(0)
    assert torch.allclose(out, expected, atol=1e-5)


class ColourMatcher(torch.nn.Module):
    """A tiny but real memory network for engine tests: keys are pixel colours at stride 8, values are
    the masks there, readout is the engine's L2 top-k. It tracks flat-coloured objects exactly."""

    settings = ModelSettings(Preprocessing(short_side=None, stride=8), EveryNthFrame(every=1, max_frames=4), top_k=4)

    def encode_query(self, image):
        return F.avg_pool2d(image, 8)[0] * 4

    def memory_key(self, query):
        return query

    def encode_value(self, image, query, masks, state):
        return F.avg_pool2d(masks, 8)[:, 0]

    def segment(self, query, memory, state):
        keys = torch.cat([e.key.flatten(1) for e in memory.entries], dim=1)
        values = torch.cat([memory.values(i).flatten(1) for i in range(len(memory.entries))], dim=1)
        read = topk_l2_readout(keys, values[:, :, None], query.flatten(1), self.settings.top_k)
        read = read.view(len(memory.objects), 1, *query.shape[1:])
        return F.interpolate(read, scale_factor=8, mode="nearest")


def moving_squares(n: int, size=(48, 64)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A red square (id 7) moving right by 8 pixels, back to the start every 3rd frame, and a resting green
    bar (id 3), on grey."""
    background = np.full((*size, 3), 40, np.uint8)
    clip = [
        paint_boxes(background, [(np.s_[8:24, 8 + 8 * (t % 3) : 24 + 8 * (t % 3)], (250, 20, 20), 7),
                                 (np.s_[32:40, 40:56], (20, 250, 20), 3)])
        for t in range(n)
    ]
    return [frame for frame, _ in clip], [labels for _, labels in clip]


def test_engine_tracks_objects_and_keeps_their_ids():
    frames, truth = moving_squares(6)
    results = list(propagate(ColourMatcher(), frames, {0: truth[0]}, num_frames=6))
    assert [r.index for r in results] == list(range(6))
    assert results[0].object_ids == (3, 7)
    for r, expected in zip(results, truth):
        assert r.labels.dtype == np.uint8
        np.testing.assert_array_equal(r.labels, expected)


def test_engine_introduces_objects_from_later_masks_and_outputs_background_before():
    frames, truth = moving_squares(6)
    only_red = np.where(truth[2] == 7, 7, 0).astype(np.uint8)
    green_at_4 = np.where(truth[4] == 3, 3, 0).astype(np.uint8)
    results = list(propagate(ColourMatcher(), frames, {2: only_red, 4: green_at_4}, num_frames=6))
    assert not results[0].labels.any() and not results[1].labels.any()
    assert set(np.unique(results[3].labels)) == {0, 7}
    for r in results[4:]:
        np.testing.assert_array_equal(r.labels, truth[r.index])


def test_memory_cap_holds_on_a_long_clip():
    frames, truth = moving_squares(40, size=(16, 16))
    net = ColourMatcher()
    net.settings = dataclasses.replace(net.settings, memory=EveryNthFrame(every=1, max_frames=3))
    prop = VideoPropagator(net, (16, 16), 40, "cpu")
    for t, frame in enumerate(frames):
        prop.step(frame, truth[0] if t == 0 else None)
        assert len(prop.bank) <= 3
    assert prop.bank.entries[0].frame_index == 0  # the annotated frame stays pinned


class PaddingRecorder(ColourMatcher):
    """Predicts 0.5 everywhere (the padding included) and records the masks it is asked to memorise."""

    def __init__(self, zero_padded: bool) -> None:
        super().__init__()
        prep = Preprocessing(short_side=None, stride=8, zero_padded_memory_masks=zero_padded)
        self.settings = dataclasses.replace(self.settings, preprocessing=prep)
        self.memorised: list[torch.Tensor] = []

    def encode_value(self, image, query, masks, state):
        self.memorised.append(masks.clone())
        return super().encode_value(image, query, masks, state)

    def segment(self, query, memory, state):
        return torch.full((len(memory.objects), 1, *(8 * s for s in query.shape[1:])), 0.5)


@pytest.mark.parametrize("zero_padded", [True, False])
def test_memory_masks_are_zero_in_the_padding_when_the_network_asks(zero_padded):
    frames, truth = moving_squares(3, size=(44, 60))  # padded to 48 x 64: 2 pixels on every side
    network = PaddingRecorder(zero_padded)
    list(propagate(network, frames, {0: truth[0]}, num_frames=3))
    predicted = network.memorised[1]  # frame 1: a prediction, not the given mask
    inside = predicted[:, :, 2:-2, 2:-2]
    assert torch.all(inside > 0)
    border = predicted.clone()
    border[:, :, 2:-2, 2:-2] = 0
    assert (torch.count_nonzero(border) == 0) == zero_padded


def test_mem_every_turns_first_and_previous_into_every_nth_frame_with_the_previous_frame():
    assert FirstAndPrevious().with_overrides(None, None) == FirstAndPrevious()
    assert FirstAndPrevious().with_overrides(3, 7) == EveryNthFrame(every=3, keep_previous=True, max_frames=7)
    assert EveryNthFrame(every=5).with_overrides(None, 2) == EveryNthFrame(every=5, max_frames=2)
    assert WorkingMemory(every=5, max_frames=1).with_overrides(2, None) == WorkingMemory(every=2, max_frames=1)


def test_every_nth_frame_keep_previous_fills_the_slot_between_memory_frames():
    bank = MemoryBank(EveryNthFrame(every=3, keep_previous=True))
    bank.add(entry(0, pinned=True), Write.PERMANENT)
    writes = []
    for t in range(1, 7):
        writes.append(bank.due(t))
        bank.add(entry(t), writes[-1])
    assert writes == [Write.TEMPORARY, Write.TEMPORARY, Write.PERMANENT, Write.TEMPORARY, Write.TEMPORARY, Write.PERMANENT]
    assert [e.frame_index for e in bank.entries] == [0, 3, 6]  # a memory frame replaces the previous one


class StateCounter(ColourMatcher):
    """Counts, per object, the frames it was segmented on, in the engine's per-object state."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int | None]] = []

    def segment(self, query, memory, state):
        for slot in memory.objects:
            state[slot] = (state.get(slot) or 0) + 1
        self.seen.append([state.get(slot) for slot in range(len(state))])
        return super().segment(query, memory, state)


def test_object_state_starts_empty_and_is_dropped_with_its_object():
    frames, truth = moving_squares(6)
    net = StateCounter()
    prop = VideoPropagator(net, truth[0].shape, 6, "cpu")
    only_red = np.where(truth[0] == 7, 7, 0).astype(np.uint8)
    green = np.where(truth[2] == 3, 3, 0).astype(np.uint8)
    for t, frame in enumerate(frames[:4]):
        prop.step(frame, {0: only_red, 2: green}.get(t))
        if t == 3:
            prop.remove_object(7)
        if t == 2:
            assert prop.states.get(1) is None  # green appeared on frame 2: no state yet
    # Frame 3 reads two views (red's frames 0-2, green's frame 2), one segment call each.
    assert net.seen == [[1], [2, None], [3, None], [3, 1]]
    assert len(prop.states) == 1 and prop.states.get(0) == 1  # red's state went, green's moved to slot 0
    prop.step(frames[4])
    assert net.seen[-1] == [2]


def test_object_states_slots():
    states = ObjectStates(2)
    states[1] = "b"
    states.add_object()
    states.remove_slot(0)
    assert [states.get(i) for i in range(len(states))] == ["b", None]
