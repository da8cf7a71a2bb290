"""What every engine adapter shares: the network on its device in eval mode, and its settings."""

from __future__ import annotations

import torch
from torch import nn

from vostool.engine.config import ModelSettings


class NetworkAdapter:
    """Base of an adapter. ``defaults``: the model's official settings (its spec's ``defaults``), used
    when no ``settings`` are given; the engine reads ``self.settings``."""

    defaults: ModelSettings

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu", settings: ModelSettings | None = None) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.settings = settings or self.defaults
