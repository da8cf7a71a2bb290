"""How ``vostool train`` trains ``lite0-stcn``: the heads on top of the frozen, wheel-loaded backbone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vostool.models.lite0_stcn.network import Lite0STCNNet, propagate_sample


class Lite0STCNTrainer:
    """:class:`vostool.train.loop.Trainable` for lite0-stcn; ``weights`` None starts untrained (identity key,
    zero decoder correction: propagate-lite0's masks)."""

    def __init__(self, weights: Path | None, device: torch.device) -> None:
        from vostool.models.lite0_stcn.adapter import Lite0STCNAdapter, load_network

        # Frozen, so its BatchNorm statistics stay ImageNet's: the backbone runs exactly as the adapter sets it
        # up for inference (BatchNorms folded into their convolutions, channels_last; about a third of a
        # training step is the backbone). The loop puts the heads back in training mode.
        self.net: Lite0STCNNet = Lite0STCNAdapter(load_network(weights), device).net
        self.net.backbone.requires_grad_(False)
        self.trained = self.net.heads

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> Sequence[torch.Tensor]:
        return propagate_sample(self.net, frames, masks)
