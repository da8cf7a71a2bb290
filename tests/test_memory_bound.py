"""Long videos: with --max-memory-frames the memory bank (and so memory use) stays at its cap."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import settings_for
from vostool.engine.core import VideoPropagator
from vostool.engine.memory import EveryNthFrame
from vostool.models.stcn.adapter import build as build_stcn


def test_stcn_memory_bank_stays_at_its_cap_over_300_frames():
    torch.manual_seed(0)
    settings = settings_for("stcn", short_side=None, memory=EveryNthFrame(every=1, max_frames=4))
    network = build_stcn(None, "cpu", settings)  # random weights: the memory policy, not the masks, is under test
    propagator = VideoPropagator(network, (32, 48), 300, "cpu")
    rng = np.random.default_rng(0)
    first = np.zeros((32, 48), np.uint8)
    first[8:24, 8:24] = 1
    sizes = []
    for t in range(300):
        frame = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
        propagator.step(frame, first if t == 0 else None)
        sizes.append(len(propagator.bank))
    assert max(sizes) == 4 and sizes[-1] == 4
    assert propagator.bank.entries[0].frame_index == 0  # the annotated frame is pinned
    assert [e.frame_index for e in propagator.bank.entries[1:]] == [296, 297, 298]
