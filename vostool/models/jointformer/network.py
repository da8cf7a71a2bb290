"""JointFormer (Zhang et al., TPAMI 2025, arXiv 2308.13505): joint feature extraction, matching and a
compressed-memory token in one ConvMAE backbone.

``JointFormerNet`` holds every weight under the name it has in the released checkpoints
(``../shared/spec/jointformer/SPEC.md`` §1), so a downloaded file loads with ``strict=True``. Its
methods are the steps of the official inference (SPEC §4-§8):

* ``memorise``: a reference frame with its masks through the 11 joint blocks; the inputs of every
  block are cached (reference tokens never attend to the current frame, so they can be), and the
  object's memory token reads the frame and becomes its new compressed memory.
* ``readout``: the current frame through the same blocks, attending jointly to itself and the top-k
  cached reference tokens of every memory frame.
* ``enhance`` (``blocks5``), ``decode`` and ``update_memory_token`` (``blocks4``, from the decoder
  tokens).

``JointFormerAdapter`` (``adapter.py``) runs the network in the streaming engine. Shapes: frames
``(1, 3, H, W)`` padded to multiples of 16, token grid h = H/16, w = W/16, K objects as the batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vostool.engine.precision import float32_region
from vostool.models.layers import (
    VIT_EPS,
    Block,
    FeatureFusion,
    UpsampleBlock,
    conv3x3,
    others_masks,
    resize_position_table,
)

DIM = 768
HEADS = 12
JOINT_DEPTH = 11
# The checkpoint's position table covers a 24x24 grid after the memory-token slot.
TABLE_GRID = 24
# ConvMAE's convolutional stages normalise with PyTorch's default LayerNorm eps.
CONV_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# ConvMAE backbone pieces


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) map (ConvMAE permutes around nn.LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvPatchEmbed(nn.Module):
    """Strided convolution, channel LayerNorm, GELU (ConvMAE ``PatchEmbed``)."""

    def __init__(self, in_ch: int, out_ch: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size=patch, stride=patch)
        self.norm = ChannelLayerNorm(out_ch, eps=CONV_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.proj(x)))


class ConvMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, 4 * dim, kernel_size=1)
        self.fc2 = nn.Conv2d(4 * dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """ConvMAE ``CBlock``: a depthwise 5x5 "attention" between two 1x1 convs, then a conv MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, eps=CONV_EPS)
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1)
        self.attn = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm2 = ChannelLayerNorm(dim, eps=CONV_EPS)
        self.mlp = ConvMlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


def split_heads(x: torch.Tensor, block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of ``block`` for normalised tokens ``x`` (B, N, C), each (B, heads, N, C/heads)."""
    b, n, c = x.shape
    qkv = block.attn.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    return x.transpose(1, 2).flatten(2)


def token_reading_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """One block over [token; frame tokens] (B, 1+N, C) where the frame tokens attend only to
    themselves and the leading memory token attends to everything (SPEC §4, "memorise" mode)."""
    q, k, v = split_heads(block.norm1(x), block)
    frame = F.scaled_dot_product_attention(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:])
    token = F.scaled_dot_product_attention(q[:, :, :1], k, v)
    x = x + block.attn.proj(merge_heads(torch.cat([token, frame], dim=2)))
    return x + block.mlp(block.norm2(x))


def topk_joint_block(block: Block, u: torch.Tensor, memory: torch.Tensor, top_k: int) -> torch.Tensor:
    """One readout block (SPEC §5): the current tokens ``u`` (K, N, C) attend to themselves and to
    the ``top_k`` best of the cached reference tokens ``memory`` (K, M, C) under one softmax."""
    q, k_self, v_self = split_heads(block.norm1(u), block)
    _, k_mem, v_mem = split_heads(block.norm1(memory), block)
    scale = q.shape[-1] ** -0.5
    with float32_region(q):  # the affinity, its top-k and the softmax in float32 under autocast too
        q = q.float()
        logits_self = (q @ k_self.float().transpose(-2, -1)) * scale
        logits_mem = (q @ k_mem.float().transpose(-2, -1)) * scale
        # The official code fails when top_k exceeds the reference tokens; keeping them all is the limit.
        kept, index = logits_mem.topk(min(top_k, logits_mem.shape[-1]), dim=-1)
        # Dropped reference tokens get -inf, i.e. weight exactly 0 after the joint softmax.
        logits_mem = torch.full_like(logits_mem, float("-inf")).scatter_(-1, index, kept)
        weights = torch.softmax(torch.cat([logits_self, logits_mem], dim=-1), dim=-1)
    out = weights @ torch.cat([v_self, v_mem], dim=2)
    u = u + block.attn.proj(merge_heads(out))
    return u + block.mlp(block.norm2(u))


def sigmoid_enhance_block(block: Block, token: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``blocks5`` on the current tokens ``e`` (K, N, C) with the memory token (K, 1, C) (SPEC §6).

    Each current token receives the memory token's value gated by a *sigmoid* of its q.k; the
    token's own slot does not affect the current tokens, so it is not computed.
    """
    q_e, _, _ = split_heads(block.norm1(e), block)
    _, k_c, v_c = split_heads(block.norm1(token), block)
    gate = torch.sigmoid((q_e @ k_c.transpose(-2, -1)) * q_e.shape[-1] ** -0.5)
    e = e + block.attn.proj(merge_heads(gate * v_c))
    return e + block.mlp(block.norm2(e))


# --------------------------------------------------------------------------------------------
# The network


@dataclass
class FrameFeatures:
    """The stages before the joint blocks: f4, f8 and the stride-16 tokens (1, N, C) with positions."""

    f4: torch.Tensor
    f8: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]


class ConvMAE(nn.Module):
    """ConvMAE-Base with JointFormer's two stems and extra blocks (checkpoint prefix ``convmae.``)."""

    def __init__(self, memory_channels: int = 5, update_depth: int = 2, enhance_depth: int = 1) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + TABLE_GRID * TABLE_GRID, DIM))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.patch_embed1_query = ConvPatchEmbed(3, 256, 4)
        self.patch_embed1_memory = ConvPatchEmbed(memory_channels, 256, 4)
        self.patch_embed2 = ConvPatchEmbed(256, 384, 2)
        self.patch_embed3 = ConvPatchEmbed(384, DIM, 2)
        self.patch_embed4 = nn.Linear(DIM, DIM)
        self.blocks1 = nn.ModuleList(ConvBlock(256) for _ in range(2))
        self.blocks2 = nn.ModuleList(ConvBlock(384) for _ in range(2))
        self.blocks3 = nn.ModuleList(Block(DIM, HEADS) for _ in range(JOINT_DEPTH))
        self.patch_embed4_block4 = nn.Linear(DIM, DIM)
        self.blocks4 = nn.ModuleList(Block(DIM, HEADS) for _ in range(update_depth))
        self.patch_embed4_block5 = nn.Linear(DIM, DIM)
        self.blocks5 = nn.ModuleList(Block(DIM, HEADS) for _ in range(enhance_depth))
        self.norm = nn.LayerNorm(DIM, eps=VIT_EPS)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The 24x24 table resized to ``grid`` = (h, w): (h*w, C)."""
        return resize_position_table(self.pos_embed[0, 1:], grid)

    def token_position(self) -> torch.Tensor:
        """Position of the memory-token slot, (1, 1, C)."""
        return self.pos_embed[:, :1]

    def stem(self, stem: ConvPatchEmbed, x: torch.Tensor, positions: torch.Tensor) -> FrameFeatures:
        """Convolutional stages and the token projection shared by current and reference frames."""
        x = stem(x)
        for block in self.blocks1:
            x = block(x)
        f4 = x
        x = self.patch_embed2(x)
        for block in self.blocks2:
            x = block(x)
        f8 = x
        x = self.patch_embed3(x)
        grid = (x.shape[-2], x.shape[-1])
        tokens = self.patch_embed4(x.flatten(2).transpose(1, 2)) + positions
        return FrameFeatures(f4, f8, tokens, grid)


class JointFormerDecoder(nn.Module):
    """XMem-style decoder on [f16, enhanced f16], plus the fusion into "decoder tokens" (SPEC §7)."""

    def __init__(self) -> None:
        super().__init__()
        self.fuser_16 = FeatureFusion(2 * DIM, 384)
        self.up_16_8 = UpsampleBlock(384, 384, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = conv3x3(256, 1)
        self.fuser_all = DecoderTokenFusion()

    def forward(
        self, f16: torch.Tensor, enhanced: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (K, 1, H, W) at the padded size and decoder tokens (K, 768, h, w)."""
        g16 = self.fuser_16(f16, enhanced)
        g8 = self.up_16_8(f8, g16)
        g4 = self.up_8_4(f4, g8)
        logits4 = self.pred(F.relu(g4))
        fusion = self.fuser_all(g16, g8, torch.cat([g4, logits4], dim=1))
        return F.interpolate(logits4, scale_factor=4, mode="bilinear", align_corners=False), fusion


class DecoderTokenFusion(nn.Module):
    """The decoder's three scales brought to stride 16 and concatenated (768 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.g16_conv = nn.Conv2d(384, 256, kernel_size=1)
        self.g8_conv = nn.Conv2d(256, 256, kernel_size=1)
        self.g4_conv = nn.Conv2d(257, 256, kernel_size=1)

    def forward(self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor) -> torch.Tensor:
        g8 = F.interpolate(g8, scale_factor=0.5, mode="area")
        g4 = F.interpolate(g4, scale_factor=0.25, mode="area")
        return torch.cat([self.g16_conv(g16), self.g8_conv(g8), self.g4_conv(g4)], dim=1)


@dataclass
class Reference:
    """A memorised frame for K objects: the inputs of the 11 joint blocks (11, K, N, C), and the
    objects' memory tokens after reading this frame (K, 1, C)."""

    block_inputs: torch.Tensor
    memory_tokens: torch.Tensor

    def __getitem__(self, rows: list[int]) -> Reference:
        return Reference(self.block_inputs[:, rows], self.memory_tokens[rows])


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, C) row-major tokens -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


class JointFormerNet(nn.Module):
    """All JointFormer weights under their checkpoint names, and the steps of one inference pass."""

    def __init__(self, memory_channels: int = 5, update_depth: int = 2, enhance_depth: int = 1) -> None:
        super().__init__()
        self.convmae = ConvMAE(memory_channels, update_depth, enhance_depth)
        self.decoder = JointFormerDecoder()

    def current_frame(self, image: torch.Tensor, positions: torch.Tensor) -> FrameFeatures:
        return self.convmae.stem(self.convmae.patch_embed1_query, image, positions)

    def memorise(
        self, image: torch.Tensor, masks: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor
    ) -> Reference:
        """SPEC §4 for K objects: ``masks`` (K, 1, H, W) soft probabilities, ``tokens`` (K, 1, C)."""
        net = self.convmae
        x = torch.cat([image.expand(len(masks), -1, -1, -1), masks, others_masks(masks)], dim=1)
        frame = net.stem(net.patch_embed1_memory, x, positions).tokens
        # Memory tokens get their slot's position but no patch_embed4 (official quirk).
        x = torch.cat([tokens + net.token_position(), frame], dim=1)
        block_inputs = []
        for block in net.blocks3:
            block_inputs.append(x[:, 1:])
            x = token_reading_block(block, x)
        return Reference(torch.stack(block_inputs), net.norm(x[:, :1]))

    def readout(self, frame: FrameFeatures, references: list[Reference], top_k: int) -> torch.Tensor:
        """SPEC §5: f16 (K, C, h, w) of the current frame read against K objects' references."""
        count = references[0].memory_tokens.shape[0]
        u = frame.tokens.expand(count, -1, -1)
        for i, block in enumerate(self.convmae.blocks3):
            memory = torch.cat([ref.block_inputs[i] for ref in references], dim=1)
            u = topk_joint_block(block, u, memory, top_k)
        return tokens_to_map(self.convmae.norm(u), frame.grid)

    def enhance(self, f16: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """SPEC §6: the current f16 (K, C, h, w) enhanced by the memory tokens (K, 1, C)."""
        net = self.convmae
        grid = (f16.shape[-2], f16.shape[-1])
        e = net.patch_embed4_block5(f16.flatten(2).transpose(1, 2)) + positions
        token = net.patch_embed4_block5(tokens) + net.token_position()
        for block in net.blocks5:
            e = sigmoid_enhance_block(block, token, e)
        return tokens_to_map(net.norm(e), grid)

    def update_memory_token(
        self, fusion: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """SPEC §8: the memory tokens (K, 1, C) read the decoder tokens (K, C, h, w) with ``blocks4``."""
        net = self.convmae
        d = net.patch_embed4_block4(fusion.flatten(2).transpose(1, 2)) + positions
        x = torch.cat([net.patch_embed4_block4(tokens) + net.token_position(), d], dim=1)
        for block in net.blocks4:
            x = token_reading_block(block, x)
        return net.norm(x[:, :1])
