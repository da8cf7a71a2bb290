"""How ``vostool train`` trains ``lite0-stcn``: the heads on top of the frozen, wheel-loaded backbone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vostool.models.common import fold_batchnorms
from vostool.models.lite0_stcn.network import Lite0STCNNet, propagate_sample


class Lite0STCNTrainer:
    """:class:`vostool.train.loop.Trainable` for lite0-stcn; ``weights`` None starts untrained (identity key,
    zero decoder correction: propagate-lite0's masks)."""

    def __init__(self, weights: Path | None, device: torch.device) -> None:
        from vostool.models.lite0_stcn.adapter import load_network

        self.net: Lite0STCNNet = load_network(weights).to(device)
        # Frozen: BatchNorm statistics stay ImageNet's, so the backbone runs as at inference: BatchNorms folded
        # into their convolutions and channels_last (about a third of a training step is the backbone).
        backbone = self.net.backbone.eval()
        fold_batchnorms(backbone)
        backbone.to(memory_format=torch.channels_last).requires_grad_(False)
        self.trained = self.net.heads

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> Sequence[torch.Tensor]:
        return propagate_sample(self.net, frames, masks)
