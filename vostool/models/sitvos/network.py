"""SITVOS (Lan et al., AAAI 2022): Siamese ResNet-50 backbone plus an interactive transformer.

The modules reproduce the official evaluation network (LANMNG/SITVOS, class ``STM('resnet50')``)
with the state_dict key names of a checkpoint saved by its training scripts, so such a file loads
with ``strict=True`` and no renaming. Behaviour follows ``shared/spec/sitvos/SPEC.md``, which
describes the official code (where the paper differs, the code is followed).

Shapes: frames reach the network as RGB in [0, 1], zero-padded to multiples of 16, ``(1, 3, H, W)``;
the backbone normalises them itself, so padded pixels become ``-mean/std`` as in the official code.
h = H/16, w = W/16; N is the number of objects, T the number of memory frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from vostool.engine.precision import float32_region
from vostool.models.layers import ResBlock, conv3x3, resnet_stage, resnet_stem

MODEL_WIDTH = 128  # transformer width D (the paper says 256; the code uses 128)
ATTENTION_WIDTH = 64  # query/key width of every attention block
TEMPERATURE = 8.0  # sqrt(ATTENTION_WIDTH); the queries are divided by it before the product
DECODER_WIDTH = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


class SiameseEncoder(nn.Module):
    """ResNet-50 up to layer3, shared by memory and query frames; normalises its input itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = resnet_stem(3)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res2 = resnet_stage(Bottleneck, 64, 64, blocks=3, stride=1)
        self.res3 = resnet_stage(Bottleneck, 256, 128, blocks=4, stride=2)
        self.res4 = resnet_stage(Bottleneck, 512, 256, blocks=6, stride=2)
        # Real buffers: they are checkpoint entries (and the synthetic parity weights overwrite them).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B,3,H,W)`` in [0,1] -> (r4, r3, r2): 1024, 512, 256 channels at 1/16, 1/8, 1/4."""
        x = (frame - self.mean) / self.std
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        r2 = self.res2(x)
        r3 = self.res3(r2)
        r4 = self.res4(r3)
        return r4, r3, r2


class MaskEncoder(nn.Module):
    """ResNet-18 up to layer3 on one probability map per object: ``(N,1,H,W)`` -> ``(N,256,h,w)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1_m, self.bn1 = resnet_stem(1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res2 = resnet_stage(BasicBlock, 64, 64, blocks=2, stride=1)
        self.res3 = resnet_stage(BasicBlock, 64, 128, blocks=2, stride=2)
        self.res4 = resnet_stage(BasicBlock, 128, 256, blocks=2, stride=2)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1_m(masks))))
        return self.res4(self.res3(self.res2(x)))


# --------------------------------------------------------------------------------------------
# Interactive transformer
# --------------------------------------------------------------------------------------------


def _attention_weights(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    # Official order: the queries are scaled before the product (it changes the rounding). The
    # affinity and its softmax are float32 under autocast too.
    with float32_region(queries):
        return torch.softmax((queries.float() / TEMPERATURE) @ keys.float().transpose(-2, -1), dim=-1)


class SelfAttention(nn.Module):
    """Single-head self-attention with a value projection, residual and LayerNorm (eps 1e-6)."""

    def __init__(self) -> None:
        super().__init__()
        self.w_q = nn.Linear(MODEL_WIDTH, ATTENTION_WIDTH, bias=False)
        self.w_k = nn.Linear(MODEL_WIDTH, ATTENTION_WIDTH, bias=False)
        self.w_v = nn.Linear(MODEL_WIDTH, MODEL_WIDTH, bias=False)
        self.layer_norm = nn.LayerNorm(MODEL_WIDTH, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = _attention_weights(self.w_q(tokens), self.w_k(tokens))
        return self.layer_norm(weights @ self.w_v(tokens) + tokens)


class CrossAttention(nn.Module):
    """Single-head cross-attention that reads ``values`` raw: the official code has no value projection."""

    def __init__(self) -> None:
        super().__init__()
        self.w_q = nn.Linear(MODEL_WIDTH, ATTENTION_WIDTH, bias=False)
        self.w_k = nn.Linear(MODEL_WIDTH, ATTENTION_WIDTH, bias=False)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return _attention_weights(self.w_q(queries), self.w_k(keys)) @ values


class InteractiveTransformer(nn.Module):
    """The official ``Memory`` module: self-attention on both sides, feature interaction, readout.

    The memory keys and the query key are the same for every object (the backbone rows are copies),
    so everything that depends only on them runs once with batch 1 and broadcasts over the objects.
    """

    def __init__(self) -> None:
        super().__init__()
        self.self_atten_T = SelfAttention()  # noqa: N815 - checkpoint key name
        self.self_atten_C = SelfAttention()  # noqa: N815 - checkpoint key name
        self.cross_atten1 = CrossAttention()
        self.cross_atten2 = CrossAttention()
        self.cross_atten3 = CrossAttention()
        # One LayerNorm (default eps 1e-5) shared by the three cross-attention residuals.
        self.layer_norm = nn.LayerNorm(MODEL_WIDTH)
        self.projector = nn.Conv2d(2 * MODEL_WIDTH, 512, kernel_size=1)

    def interact(self, memory: torch.Tensor, masked_memory: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Tokens in, tokens out: memory keys ``(1,T·h·w,D)``, keys ⊙ mask embeddings ``(N,T·h·w,D)``,
        query key ``(1,h·w,D)`` -> per-object query tokens ``(N,h·w,D)``."""
        memory = self.self_atten_T(memory)
        query = self.self_atten_C(query)
        memory_out = self.layer_norm(self.cross_atten1(memory, query, query) + memory)
        query_out = self.layer_norm(self.cross_atten2(query, memory, masked_memory) + query)
        return self.layer_norm(self.cross_atten3(query_out, memory_out, memory_out) + query_out)

    def forward(self, mem_keys: torch.Tensor, mem_values: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
        """``(1,D,T,h,w)`` keys, ``(N,D,T,h,w)`` mask embeddings, ``(1,D,h,w)`` query key -> ``(N,512,h,w)``."""
        n = mem_values.shape[0]
        _, d, h, w = query_key.shape
        out = self.interact(_tokens(mem_keys), _tokens(mem_keys * mem_values), _tokens(query_key))
        out = out.transpose(1, 2).reshape(n, d, h, w)
        return self.projector(torch.cat([out, query_key.expand(n, -1, -1, -1)], dim=1))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """Channel-first ``(B,D,...)`` -> tokens ``(B, positions, D)``, positions in memory order t, y, x."""
    return x.flatten(start_dim=2).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


class Refine(nn.Module):
    """STM refinement: residual-refined skip feature plus the x2 upsampled coarser prediction."""

    def __init__(self, skip_ch: int) -> None:
        super().__init__()
        self.convFS = conv3x3(skip_ch, DECODER_WIDTH)  # noqa: N815 - checkpoint key name
        self.ResFS = ResBlock(DECODER_WIDTH, DECODER_WIDTH)  # noqa: N815 - checkpoint key name
        self.ResMM = ResBlock(DECODER_WIDTH, DECODER_WIDTH)  # noqa: N815 - checkpoint key name

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        # `skip` has batch 1 and broadcasts over the objects of `coarse`.
        x = self.ResFS(self.convFS(skip))
        x = x + F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self.ResMM(x)


class SITVOSDecoder(nn.Module):
    """1/16 transformer output + query r3, r2 -> two-class logits ``(N,2,H,W)`` at the padded size."""

    def __init__(self) -> None:
        super().__init__()
        self.convFM = conv3x3(512, DECODER_WIDTH)  # noqa: N815 - checkpoint key name
        self.ResMM = ResBlock(DECODER_WIDTH, DECODER_WIDTH)  # noqa: N815 - checkpoint key name
        self.RF3 = Refine(512)
        self.RF2 = Refine(256)
        self.pred2 = conv3x3(DECODER_WIDTH, 2)

    def forward(self, feature: torch.Tensor, r3: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        x = self.ResMM(self.convFM(feature))
        x = self.RF2(r2, self.RF3(r3, x))
        x = self.pred2(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# The evaluation network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SITVOSQuery:
    """Backbone features of one padded frame (batch 1), computed once and reused when it is memorised."""

    r4: torch.Tensor  # (1, 1024, h, w)
    r3: torch.Tensor  # (1, 512, 2h, 2w)
    r2: torch.Tensor  # (1, 256, 4h, 4w)


class SITVOSNet(nn.Module):
    """SITVOS's evaluation network; ``state_dict()`` keys equal those of the official ``STM`` class."""

    def __init__(self) -> None:
        super().__init__()
        self.Encoder = SiameseEncoder()  # noqa: N815 - checkpoint key name
        self.Encoder_mask = MaskEncoder()  # noqa: N815 - checkpoint key name
        self.W_K = conv3x3(1024, MODEL_WIDTH)  # noqa: N815 - memory-frame key embedding
        self.W_Q = conv3x3(1024, MODEL_WIDTH)  # noqa: N815 - query-frame key embedding
        self.W_mask = conv3x3(256, MODEL_WIDTH)  # noqa: N815 - mask embedding
        self.Memory = InteractiveTransformer()  # noqa: N815 - checkpoint key name
        self.Decoder = SITVOSDecoder()  # noqa: N815 - checkpoint key name

    def encode_frame(self, frame: torch.Tensor) -> SITVOSQuery:
        """Backbone features of a padded ``(1,3,H,W)`` frame in [0, 1]."""
        return SITVOSQuery(*self.Encoder(frame))

    def memory_key(self, r4: torch.Tensor) -> torch.Tensor:
        return self.W_K(r4)

    def mask_embedding(self, masks: torch.Tensor) -> torch.Tensor:
        """``(N,1,H,W)`` object probabilities -> ``(N,128,h,w)`` memory values."""
        return self.W_mask(self.Encoder_mask(masks))

    def decode_logits(self, query: SITVOSQuery, mem_keys: torch.Tensor, mem_values: torch.Tensor) -> torch.Tensor:
        """Two-class logits ``(N,2,H,W)`` from keys ``(1,128,T,h,w)`` and values ``(N,128,T,h,w)``."""
        feature = self.Memory(mem_keys, mem_values, self.W_Q(query.r4))
        return self.Decoder(feature, query.r3, query.r2)

    def foreground(self, query: SITVOSQuery, mem_keys: torch.Tensor, mem_values: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities ``(N,1,H,W)``: the two-class softmax, as the official aggregation."""
        return torch.softmax(self.decode_logits(query, mem_keys, mem_values).float(), dim=1)[:, 1:]
