"""What the engine adapters of memory-readout networks (STCN, JointFormer) share: the network on its
device in eval mode, and the three settings a user may change: pre-processing, memory schedule, top-k."""

from __future__ import annotations

import torch
from torch import nn

from vostool.engine.protocol import MemorySchedule, Preprocessing


class TopKAdapter:
    """Base of an adapter; subclasses give their official defaults as class attributes."""

    default_preprocessing: Preprocessing
    default_schedule: MemorySchedule
    default_top_k: int

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.preprocessing = self.default_preprocessing
        self.schedule = self.default_schedule
        self.top_k = self.default_top_k
