"""STCN (Cheng, Tai, Tang, NeurIPS 2021): the evaluation network.

The modules reproduce the official evaluation network (hkchengrex/STCN, ``model/eval_network.py``)
with the released checkpoint's exact state_dict key names, so a downloaded ``stcn.pth`` loads with
``strict=True`` and no renaming. The behaviour follows ``shared/spec/stcn/SPEC.md``; the order of
floating-point operations follows the official code where it affects CPU parity.

Shapes: the input frame is ``(1, 3, H, W)``, normalised and padded to multiples of 16; h = H/16,
w = W/16. K is the number of objects.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from vostool.models.layers import Decoder, FeatureFusion, conv3x3, others_masks, resnet_stage, resnet_stem

KEY_DIM = 64
VALUE_DIM = 512


# --------------------------------------------------------------------------------------------
# Key encoder: torchvision ResNet-50 truncated after layer3, its first stage named "res2".
# --------------------------------------------------------------------------------------------


class KeyEncoder(nn.Module):
    """ResNet-50 up to layer3: returns (f16, f8, f4) with 1024, 512 and 256 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = resnet_stem(3)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res2 = resnet_stage(Bottleneck, 64, 64, blocks=3, stride=1)
        self.layer2 = resnet_stage(Bottleneck, 256, 128, blocks=4, stride=2)
        self.layer3 = resnet_stage(Bottleneck, 512, 256, blocks=6, stride=2)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(frame))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class KeyProjection(nn.Module):
    """3x3 conv 1024 -> 64 with no activation; nested so the key is ``key_proj.key_proj``."""

    def __init__(self, in_ch: int = 1024, key_dim: int = KEY_DIM) -> None:
        super().__init__()
        self.key_proj = conv3x3(in_ch, key_dim)

    def forward(self, f16: torch.Tensor) -> torch.Tensor:
        return self.key_proj(f16)


# --------------------------------------------------------------------------------------------
# Value encoder: ResNet-18 variant with 5 input channels and a bias on every conv, plus fusion.
# --------------------------------------------------------------------------------------------


class BiasedBasicBlock(nn.Module):
    """ResNet basic block whose convolutions (and projection shortcut) carry a bias."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _basic_stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BiasedBasicBlock(in_ch, out_ch, stride), BiasedBasicBlock(out_ch, out_ch))


class ValueEncoder(nn.Module):
    """Encodes [RGB, mask, others] (5 channels) plus the frame's f16 into a 512-ch value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(5, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _basic_stage(64, 64, stride=1)
        self.layer2 = _basic_stage(64, 128, stride=2)
        self.layer3 = _basic_stage(128, 256, stride=2)
        # The mask features (256 ch) fused with the key encoder's raw f16 (1024 ch) into the value.
        self.fuser = FeatureFusion(256 + 1024, VALUE_DIM)

    def forward(
        self, image: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([image, masks, others], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, f16)


# --------------------------------------------------------------------------------------------
# The evaluation network
# --------------------------------------------------------------------------------------------


class STCNNet(nn.Module):
    """STCN's evaluation network; ``state_dict()`` keys equal those of the released checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.key_encoder = KeyEncoder()
        self.value_encoder = ValueEncoder()
        self.key_proj = KeyProjection()
        self.key_comp = conv3x3(1024, VALUE_DIM)
        self.decoder = Decoder(1024)

    def encode_key(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(1,3,H,W)`` -> (k16, f16_thin, f16, f8, f4), as the official ``encode_key``."""
        # contiguous: the adapter may run the key encoder channels_last; the rest stays NCHW
        f16, f8, f4 = (f.contiguous() for f in self.key_encoder(frame))
        return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

    def encode_value(self, frame: torch.Tensor, kf16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Values of K objects ``(K, 512, 1, h, w)`` from the frame, its f16 and masks ``(K,1,H,W)``.

        The singleton time axis matches the official return value.
        """
        k = masks.shape[0]
        frame = frame.expand(k, -1, -1, -1)
        # kf16 stays batch 1: the fusion convolves the frame's share of its input once for all objects.
        value = self.value_encoder(frame, kf16, masks, others_masks(masks))
        return value.unsqueeze(2)

    def decode_logits(
        self, readout: torch.Tensor, qv16: torch.Tensor, qf8: torch.Tensor, qf4: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(K,1,H,W)`` from the readout ``(K,512,h,w)`` and the query's f16_thin, f8, f4."""
        # The query's own half of the decoder input (batch 1) is convolved once for all K objects.
        return self.decoder([readout, qv16], qf8, qf4)

    def decode(
        self, readout: torch.Tensor, qv16: torch.Tensor, qf8: torch.Tensor, qf4: torch.Tensor
    ) -> torch.Tensor:
        """Foreground probabilities ``(K,1,H,W)``: sigmoid of :meth:`decode_logits`, in float32 (under
        autocast bf16 would round every probability above ~0.998 to 1, tying confident objects)."""
        return torch.sigmoid(self.decode_logits(readout, qv16, qf8, qf4).float())
