"""Long videos: with --max-memory-frames the memory bank (and so memory use) stays at its cap.

The bank after a frame depends only on the bank before it and the schedule, so a short stream that
runs well past the cap shows the steady state of any longer one: once full, every frame replaces the
oldest unpinned entry, the size and the bytes held stay put. The official uncapped schedule on the
same network grows by one entry every 5th frame, which is what the cap is for.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.conftest import settings_for
from vostool.bench import tensor_bytes
from vostool.engine.config import ModelSettings
from vostool.engine.core import VideoPropagator
from vostool.engine.memory import EveryNthFrame
from vostool.models.stcn.adapter import STCNAdapter
from vostool.models.stcn.adapter import build as build_stcn

SIZE = (32, 48)
CAP = 4


@pytest.fixture(scope="module")
def stcn() -> STCNAdapter:
    torch.manual_seed(0)
    return build_stcn(None, "cpu")  # random weights: the memory policy, not the masks, is under test


def stream(network: STCNAdapter, settings: ModelSettings, frames: int) -> Iterator[tuple[list[int], int]]:
    """Random frames of a video whose length is not known in advance, one object annotated on frame 0;
    after every frame: the frame indices the memory bank holds, and the bytes of its tensors."""
    propagator = VideoPropagator(network, SIZE, None, "cpu", settings=settings)
    rng = np.random.default_rng(0)
    first = np.zeros(SIZE, np.uint8)
    first[8:24, 8:24] = 1
    for t in range(frames):
        propagator.step(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8), first if t == 0 else None)
        entries = propagator.bank.entries
        yield [entry.frame_index for entry in entries], tensor_bytes([(e.key, e.values) for e in entries])


def test_capped_bank_stays_at_its_cap_while_frames_keep_coming(stcn):
    capped = settings_for("stcn", short_side=None, memory=EveryNthFrame(every=1, max_frames=CAP))
    history = list(stream(stcn, capped, frames=3 * CAP))
    entry_bytes = history[0][1]  # the annotated frame alone
    assert entry_bytes > 0
    for t, (frames, held) in enumerate(history):
        if t < CAP:  # filling up: every frame is kept
            assert frames == list(range(t + 1)) and held == (t + 1) * entry_bytes, t
        else:  # full: the annotated frame stays pinned, the newest replaces the oldest of the rest
            assert frames == [0, *range(t - CAP + 2, t + 1)] and held == CAP * entry_bytes, t


def test_official_uncapped_schedule_grows_with_the_video(stcn):
    history = list(stream(stcn, settings_for("stcn", short_side=None), frames=16))  # STCN's own: every 5th frame, no cap
    entry_bytes = history[0][1]
    for t, (frames, held) in enumerate(history):
        assert frames == list(range(0, t + 1, 5)) and held == len(frames) * entry_bytes, t
    assert len(history[-1][0]) == CAP  # frames 0, 5, 10, 15: a longer video would pass the cap
