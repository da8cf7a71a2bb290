"""The network of ``propagate-lite0``: frozen EfficientNet-Lite0 features as propagation keys.

The key of a frame is the Lite0 features of the last stride-8 block (40 ch) and of the last stride-16
block (112 ch, upsampled to stride 8), concatenated and L2-normalised over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vostool.models.propagate_lite0.efficientnet_lite import EfficientNetLite

FEATURE_STRIDE = 8


class PropagateLite0Net(nn.Module):
    """ImageNet EfficientNet-Lite0 (its ``backbone`` holds the wheel's state_dict) and the key it gives."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientNetLite()
        self.taps = (self.backbone.last_block_at_stride(8), self.backbone.last_block_at_stride(16))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` -> key ``(C, H/8, W/8)``, L2-normalised over C."""
        f8, f16 = self.backbone.features(image, self.taps)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        # contiguous: the adapter may run the backbone channels_last; the readout wants (C, h, w) rows
        return F.normalize(torch.cat([f8, f16], dim=1).float(), dim=1)[0].contiguous()
