"""STCN (Cheng, Tai, Tang, NeurIPS 2021): the evaluation network and its engine adapter.

The modules reproduce the official evaluation network (hkchengrex/STCN, ``model/eval_network.py``)
with the released checkpoint's exact state_dict key names, so a downloaded ``stcn.pth`` loads with
``strict=True`` and no renaming. The behaviour follows ``shared/spec/stcn/SPEC.md``; the order of
floating-point operations follows the official code where it affects CPU parity.

Shapes: the input frame is ``(1, 3, H, W)``, normalised and padded to multiples of 16; h = H/16,
w = W/16. K is the number of objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vostool.engine.protocol import MemorySchedule, MemoryView, Preprocessing
from vostool.engine.readout import topk_l2_readout
from vostool.engine.timing import stage
from vostool.models.adapter import TopKAdapter
from vostool.models.checkpoint import load_checkpoint, load_exact_state, pad_input_channel

KEY_DIM = 64
VALUE_DIM = 512
TOP_K = 20
MEM_EVERY = 5
SHORT_SIDE = 480
STRIDE = 16
_STAGE0_CONV1 = "value_encoder.conv1.weight"


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


# --------------------------------------------------------------------------------------------
# Key encoder: torchvision ResNet-50 truncated after layer3, its first stage named "res2".
# --------------------------------------------------------------------------------------------


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
    """Fuses the mask features with the key encoder's raw f16 (1024 ch) into the 512-ch value."""

    def __init__(self, in_ch: int = 256 + 1024, out_ch: int = VALUE_DIM) -> None:
        super().__init__()
        self.block1 = ResBlock(in_ch, out_ch)
        self.attention = CBAM(out_ch)
        self.block2 = ResBlock(out_ch, out_ch)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, f16], dim=1))
        return self.block2(x + self.attention(x))


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
        self.fuser = FeatureFusion()

    def forward(
        self, image: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([image, masks, others], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, f16)


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


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
    """STCN's mask decoder, also SimVOS's (``in_ch`` = its ViT width): 1/16 -> 1/8 -> 1/4 -> one logit map."""

    def __init__(self, in_ch: int = 1024) -> None:
        super().__init__()
        self.compress = ResBlock(in_ch, 512)
        self.up_16_8 = UpsampleBlock(512, 512, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = conv3x3(256, 1)

    def forward(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, 1, H, W)`` at the padded input resolution."""
        x = self.compress(f16)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# The evaluation network
# --------------------------------------------------------------------------------------------


def others_masks(masks: torch.Tensor) -> torch.Tensor:
    """For each object, the sum of the other objects' masks (zeros when there is one object)."""
    k = masks.shape[0]
    if k == 1:
        return torch.zeros_like(masks)
    # Summing the selected rows (rather than total - own) keeps the official rounding.
    return torch.cat(
        [masks[[j for j in range(k) if j != i]].sum(dim=0, keepdim=True) for i in range(k)], dim=0
    )


class STCN(nn.Module):
    """STCN's evaluation network; ``state_dict()`` keys equal those of the released checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.key_encoder = KeyEncoder()
        self.value_encoder = ValueEncoder()
        self.key_proj = KeyProjection()
        self.key_comp = conv3x3(1024, VALUE_DIM)
        self.decoder = Decoder()

    def encode_key(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(1,3,H,W)`` -> (k16, f16_thin, f16, f8, f4), as the official ``encode_key``."""
        f16, f8, f4 = self.key_encoder(frame)
        return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

    def encode_value(self, frame: torch.Tensor, kf16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Values of K objects ``(K, 512, 1, h, w)`` from the frame, its f16 and masks ``(K,1,H,W)``.

        The singleton time axis matches the official return value.
        """
        k = masks.shape[0]
        frame = frame.expand(k, -1, -1, -1)
        value = self.value_encoder(frame, kf16.expand(k, -1, -1, -1), masks, others_masks(masks))
        return value.unsqueeze(2)

    def decode_logits(
        self, readout: torch.Tensor, qv16: torch.Tensor, qf8: torch.Tensor, qf4: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(K,1,H,W)`` from the readout ``(K,512,h,w)`` and the query's f16_thin, f8, f4."""
        qv16 = qv16.expand(readout.shape[0], -1, -1, -1)
        return self.decoder(torch.cat([readout, qv16], dim=1), qf8, qf4)

    def decode(
        self, readout: torch.Tensor, qv16: torch.Tensor, qf8: torch.Tensor, qf4: torch.Tensor
    ) -> torch.Tensor:
        """Foreground probabilities ``(K,1,H,W)``: sigmoid of :meth:`decode_logits`."""
        return torch.sigmoid(self.decode_logits(readout, qv16, qf8, qf4))


# --------------------------------------------------------------------------------------------
# Engine adapter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class STCNQuery:
    """Everything computed once per frame by the key encoder."""

    k16: torch.Tensor  # (1, 64, h, w): the key, reused as memory key
    f16_thin: torch.Tensor  # (1, 512, h, w): the query's own feature for the decoder
    f16: torch.Tensor  # (1, 1024, h, w): raw layer3 feature, input of the value encoder
    f8: torch.Tensor  # (1, 512, 2h, 2w)
    f4: torch.Tensor  # (1, 256, 4h, 4w)


class STCNNetwork(TopKAdapter):
    """:class:`~vostool.engine.protocol.VOSNetwork` for STCN.

    Memory keys are k16 ``(1, 64, h, w)``; memory values are ``(K, 512, h, w)`` per entry (the
    official time axis is dropped, the engine stores one frame per entry). Defaults are those of the
    official generic-video script: short side 480, memory every 5th frame, no last-frame memory,
    top-k 20. DAVIS evaluation uses native resolution (``short_side=None``).
    """

    default_preprocessing = Preprocessing(short_side=SHORT_SIDE, stride=STRIDE)
    default_schedule = MemorySchedule(mem_every=MEM_EVERY, include_last=False, max_frames=None)
    default_top_k = TOP_K

    @torch.no_grad()
    def encode_query(self, image: torch.Tensor) -> STCNQuery:
        return STCNQuery(*self.net.encode_key(image.to(self.device)))

    def memory_key(self, query: STCNQuery) -> torch.Tensor:
        return query.k16

    @torch.no_grad()
    def encode_value(self, image: torch.Tensor, query: STCNQuery, masks: torch.Tensor) -> torch.Tensor:
        # The cached f16 is reused: the key encoder runs once per frame, as in the official core.
        value = self.net.encode_value(image.to(self.device), query.f16, masks.to(self.device))
        return value.squeeze(2)

    @torch.no_grad()
    def segment(self, query: STCNQuery, memory: MemoryView) -> torch.Tensor:
        """Foreground probabilities ``(K, 1, H, W)`` of ``memory.objects``."""
        mem_key, mem_value = _concat_memory(memory)
        _, _, h, w = query.k16.shape
        with stage("memory_readout"):
            readout = topk_l2_readout(mem_key, mem_value, query.k16[0].flatten(start_dim=1), self.top_k)
        readout = readout.view(readout.shape[0], VALUE_DIM, h, w)
        with stage("decoding"):
            return self.net.decode(readout, query.f16_thin, query.f8, query.f4)


def _concat_memory(memory: MemoryView) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory keys ``(64, N)`` and values ``(K, 512, N)``, frame-major then row-major positions."""
    if not memory.entries:
        raise ValueError("STCN cannot segment a frame with an empty memory")
    keys = [entry.key.flatten(start_dim=2)[0] for entry in memory.entries]
    values = [memory.values(i).flatten(start_dim=2) for i in range(len(memory.entries))]
    return torch.cat(keys, dim=1), torch.cat(values, dim=2)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def pad_stage0_conv1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give a stage-0 (single-object) checkpoint's 4-channel value conv1 a zero 5th channel.

    This is the only change the official eval scripts make before their strict load.
    """
    return pad_input_channel(state, _STAGE0_CONV1, channels=5)


def load_stcn_state(net: STCN, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Check ``state`` against the network's own layout, then load it strictly into ``net``."""
    load_exact_state(net, pad_stage0_conv1(state), "STCN", path)


def build_stcn(
    weights: str | Path | None,
    device: str | torch.device = "cpu",
    *,
    preprocessing: Preprocessing | None = None,
    schedule: MemorySchedule | None = None,
    top_k: int = TOP_K,
) -> STCNNetwork:
    """STCN ready for the engine, with weights from a released checkpoint file.

    ``weights=None`` keeps PyTorch's random initialisation: only useful for tests and timing.
    A file that is not an STCN checkpoint raises :class:`~vostool.errors.ModelError`.
    """
    net = STCN()
    if weights is not None:
        load_stcn_state(net, load_checkpoint(weights, map_location="cpu"), weights)
    return STCNNetwork(net, device, preprocessing=preprocessing, schedule=schedule, top_k=top_k)
