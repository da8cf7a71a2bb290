"""Layers that more than one model uses, in one place instead of borrowed from another model's file.

* convolutional pieces: ``conv3x3``, torchvision ResNet stems and stages, the normalisation-free
  ``ResBlock``, CBAM and STCN's ``FeatureFusion`` (STCN's value encoder, JointFormer's decoder);
* STCN's mask decoder (also SimVOS's) and its ``UpsampleBlock`` (also JointFormer's);
* the timm-0.3.2 ViT block (SimVOS, JointFormer) and the bicubic resize of a position table;
* ``others_masks``, the "other objects" input of the value encoders of STCN and JointFormer.

Module and attribute names are those of the official checkpoints' keys, so they must not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # importing torchvision takes over a second; only the ResNet models need it, and pass the block
    from torchvision.models.resnet import BasicBlock, Bottleneck

# Official timm-0.3.2 ViT: LayerNorm eps 1e-6 everywhere in the backbone (and in SimVOS's pyramid).
VIT_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Convolutional pieces


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def resnet_stem(in_ch: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The 7x7 stride-2 convolution and its BatchNorm that open every torchvision ResNet."""
    return nn.Conv2d(in_ch, 64, kernel_size=7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)


def resnet_stage(
    block: type[Bottleneck] | type[BasicBlock], in_ch: int, width: int, blocks: int, stride: int
) -> nn.Sequential:
    """A torchvision ResNet stage: stride in block 0, projection shortcut there when the shape changes."""
    out_ch = width * block.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    layers = [block(in_ch, width, stride, downsample)]
    layers += [block(out_ch, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def conv_of_concat(conv: nn.Conv2d, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``conv(torch.cat(parts, dim=1))`` for parts whose batch sizes differ (batch 1 broadcasts).

    Each part meets only its own slice of the kernel's input channels and the results are summed,
    so a part shared by K objects (the query's own features) is convolved once instead of K times.
    Equal to the concatenated convolution up to float rounding (the sum over input channels is
    split into one partial sum per part).
    """
    out, start = None, 0
    for part in parts:
        weight = conv.weight[:, start : start + part.shape[1]]
        y = F.conv2d(part, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        out, start = (y if out is None else out + y), start + part.shape[1]
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def shares_batch(parts: Sequence[torch.Tensor]) -> bool:
    """Whether ``parts`` mix per-object tensors with tensors of batch 1 shared by all objects."""
    return len({part.shape[0] for part in parts}) > 1


class ResBlock(nn.Module):
    """Pre-activation residual block without normalisation; 3x3 conv shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.downsample = conv3x3(in_ch, out_ch) if in_ch != out_ch else None
        self.conv1 = conv3x3(in_ch, out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + r

    def forward_concat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``forward(torch.cat(parts, dim=1))``, convolving a shared batch-1 part once (see
        :func:`conv_of_concat`; ReLU commutes with the concatenation). Plain ``forward`` when all
        parts have one batch size, so single-object results do not change at all."""
        if not shares_batch(parts):
            return self.forward(torch.cat(list(parts), dim=1))
        r = self.conv2(F.relu(conv_of_concat(self.conv1, [F.relu(part) for part in parts])))
        if self.downsample is None:
            batch = max(part.shape[0] for part in parts)
            shortcut = torch.cat([part.expand(batch, -1, -1, -1) for part in parts], dim=1)
        else:
            shortcut = conv_of_concat(self.downsample, parts)
        return shortcut + r


class ChannelGate(nn.Module):
    """CBAM channel attention: shared MLP over the average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        # Index layout (Flatten, Linear, ReLU, Linear) fixes the checkpoint keys mlp.1 / mlp.3.
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        attention = self.mlp(F.avg_pool2d(x, size, stride=size))
        attention = attention + self.mlp(F.max_pool2d(x, size, stride=size))
        return x * torch.sigmoid(attention)[:, :, None, None]


class _SpatialConv(nn.Module):
    """Holds the 7x7 conv under the name ``conv`` (key ``SpatialGate.spatial.conv``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention from [max, mean] over channels, 7x7 conv, no BN or ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels)  # noqa: N815 - checkpoint key name
        self.SpatialGate = SpatialGate()  # noqa: N815 - checkpoint key name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusion(nn.Module):
    """STCN's fusion of two feature maps (concatenated on channels) into ``out_ch`` channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block1 = ResBlock(in_ch, out_ch)
        self.attention = CBAM(out_ch)
        self.block2 = ResBlock(out_ch, out_ch)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """``f16`` may have batch 1 for all objects of ``x``: it is then convolved once."""
        x = self.block1.forward_concat([x, f16])
        return self.block2(x + self.attention(x))


# --------------------------------------------------------------------------------------------
# STCN's mask decoder


class UpsampleBlock(nn.Module):
    """Skip conv on the finer feature plus the x2 bilinear upsample of the coarser one."""

    def __init__(self, skip_ch: int, up_ch: int, out_ch: int) -> None:
        super().__init__()
        self.skip_conv = conv3x3(skip_ch, up_ch)
        self.out_conv = ResBlock(up_ch, out_ch)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        # `skip` has batch 1 and broadcasts over the K objects of `up`, as in the official code.
        x = self.skip_conv(skip)
        x = x + F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class Decoder(nn.Module):
    """STCN's mask decoder (``in_ch`` 1024), also SimVOS's (its ViT width): 1/16 -> 1/8 -> 1/4 -> one logit map."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.compress = ResBlock(in_ch, 512)
        self.up_16_8 = UpsampleBlock(512, 512, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = conv3x3(256, 1)

    def forward(self, f16: torch.Tensor | Sequence[torch.Tensor], f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, 1, H, W)`` at the padded input resolution. ``f16`` may be given as the parts
        of its channel concatenation, a part of batch 1 shared by the K objects (convolved once)."""
        x = self.compress(f16) if isinstance(f16, torch.Tensor) else self.compress.forward_concat(f16)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def others_masks(masks: torch.Tensor) -> torch.Tensor:
    """For each object, the sum of the other objects' masks (zeros when there is one object)."""
    k = masks.shape[0]
    if k == 1:
        return torch.zeros_like(masks)
    # Summing the selected rows (rather than total - own) keeps the official rounding.
    return torch.cat(
        [masks[[j for j in range(k) if j != i]].sum(dim=0, keepdim=True) for i in range(k)], dim=0
    )


# --------------------------------------------------------------------------------------------
# ViT (timm-0.3.2 block, attention through scaled_dot_product_attention)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # Default scale head_dim^-0.5, as timm; fused flash / memory-efficient kernels apply on GPU.
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_EPS)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resize_position_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A square ``(n*n, C)`` position table resized bicubically to ``grid`` = (h, w): ``(h*w, C)``."""
    side = math.isqrt(table.shape[0])
    if grid == (side, side):
        return table
    square = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(1, 2)[0]
