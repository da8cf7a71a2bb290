"""Inference-only rewrites of the networks (BatchNorm folding, ...): what they may assume, checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import vostool.models.common as common
from tests.conftest import settings_for
from tests.helpers import gradient_frames
from vostool.models.registry import get_spec
from vostool.tracker import Tracker

fold_batchnorms = common.fold_batchnorms  # the real one, kept before any test switches it off

# The models whose networks hold BatchNorms (the ViT models hold none).
WITH_BATCHNORM = ("stcn", "sitvos", "propagate-lite0")


def _unfolded_network(model: str, monkeypatch):
    """``model`` built on random (or bundled) weights with folding switched off."""
    monkeypatch.setattr(common, "fold_batchnorms", lambda net: 0)
    return get_spec(model).build(None, torch.device("cpu"), settings_for(model, short_side=64))


def _two_boxes() -> np.ndarray:
    labels = np.zeros((48, 64), np.uint8)
    labels[4:20, 4:24] = 1
    labels[26:44, 30:60] = 2
    return labels


def _probabilities(network, model: str, count: int = 3) -> list[torch.Tensor]:
    """Each frame's probabilities over a short clip with two boxes annotated on frame 0."""
    frames = gradient_frames(count, 48, 64)
    session = Tracker(network, model, torch.device("cpu")).session(count)
    session.add_masks(0, _two_boxes())
    return [session.step(frame).probabilities for frame in frames]


@pytest.mark.parametrize("model", WITH_BATCHNORM)
def test_every_batchnorm_is_fed_directly_by_the_conv_it_is_folded_into(model, monkeypatch) -> None:
    network = _unfolded_network(model, monkeypatch)
    pairs = common.batchnorm_producers(network.net)
    batchnorms = [m for m in network.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(pairs) == len(batchnorms) > 0  # every BatchNorm has a producer
    outputs: dict[int, list[torch.Tensor]] = {}
    inputs: dict[int, list[torch.Tensor]] = {}
    handles = []
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        handles.append(conv.register_forward_hook(lambda m, i, o: outputs.setdefault(id(m), []).append(o)))
        handles.append(bn.register_forward_hook(lambda m, i, o: inputs.setdefault(id(m), []).append(i[0])))
    try:
        _probabilities(network, model)
    finally:
        for handle in handles:
            handle.remove()
    assert inputs, "no BatchNorm ran"
    for parent, conv_name, bn_name in pairs:
        # (lite0's classifier head, never run for features, is the one pair with neither call)
        fed = inputs.get(id(getattr(parent, bn_name)), [])
        produced = outputs.get(id(getattr(parent, conv_name)), [])
        assert len(fed) == len(produced) and all(a is b for a, b in zip(fed, produced)), (conv_name, bn_name)


@pytest.mark.parametrize("model", WITH_BATCHNORM)
def test_folded_network_gives_the_unfolded_probabilities(model, monkeypatch) -> None:
    network = _unfolded_network(model, monkeypatch)
    before = _probabilities(network, model)
    assert fold_batchnorms(network.net) > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in network.net.modules())
    after = _probabilities(network, model)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-4)
