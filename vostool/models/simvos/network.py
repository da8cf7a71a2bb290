"""SimVOS (Wu et al., ICCV 2023): one ViT attends jointly over reference frames and the query frame.

Three released variants share one network class (``SimVOSNet``), whose state_dict keys are exactly
those of the official checkpoints (``../shared/spec/simvos/SPEC.md`` §2):

* ``simvos-b`` / ``simvos-l``: ViT-B/16 or ViT-L/16 with full joint attention. A reference frame is
  ``PatchConv(frame) + MaskConv(mask)``; the query frame is ``PatchConv(frame)`` alone.
* ``simvos-bs``: ViT-B/16 whose first 4 blocks run on each frame alone (within-frame attention);
  each reference is then summarised by token refinement into 384 foreground + 384 background
  prototypes, and only the remaining blocks see templates and query together.

``SimVOSAdapter`` (``adapter.py``) runs the network in the streaming engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vostool.errors import ModelError
from vostool.models.layers import VIT_EPS, Block, Decoder, resize_position_table

PATCH = 16
# The checkpoint's position table covers a 24x24 grid (384x384 training crops) after a cls slot.
TABLE_GRID = 24


@dataclass(frozen=True)
class SimVOSConfig:
    """Shape of one variant (SPEC §1)."""

    embed_dim: int
    depth: int
    heads: int
    # Blocks run on each frame alone before the joint part (0: joint attention from the start).
    within_frame_layers: int = 0
    # Prototypes per token-refinement module (None: no token refinement).
    prototypes: int | None = None

    @property
    def refines_tokens(self) -> bool:
        return self.prototypes is not None


VARIANTS: dict[str, SimVOSConfig] = {
    "simvos-b": SimVOSConfig(embed_dim=768, depth=12, heads=12),
    "simvos-l": SimVOSConfig(embed_dim=1024, depth=24, heads=16),
    "simvos-bs": SimVOSConfig(embed_dim=768, depth=12, heads=12, within_frame_layers=4, prototypes=384),
}

# Keys every released file carries but inference never reads: timm's classifier leftovers and the
# MAE 14x14 position table (superseded by pos_embed_new). B and L also carry the token-refinement
# modules that only SimVOS-BS uses (all variants share one training class).
_UNUSED_KEYS = ("cls_token", "pos_embed", "head.*", "fc_norm.*")
_REFINEMENT_KEYS = ("tlearner.*", "tlearner_back.*")


def unused_keys(config: SimVOSConfig) -> tuple[str, ...]:
    """Key patterns of a released checkpoint that ``config``'s network does not use."""
    return _UNUSED_KEYS if config.refines_tokens else _UNUSED_KEYS + _REFINEMENT_KEYS


# --------------------------------------------------------------------------------------------
# Backbone pieces (the ViT block is in vostool.models.layers)


class PatchEmbed(nn.Module):
    """16x16 stride-16 convolution, flattened row-major to (B, h*w, C)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis at every pixel (ViTDet's Norm2d)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=VIT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# SimVOS-BS token refinement


class TokenRefiner(nn.Module):
    """Mask-guided pooling of a frame's tokens into ``prototypes`` tokens (SPEC §4 step 3)."""

    def __init__(self, dim: int, prototypes: int) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(dim + 1)
        self.patch_to_cluster_atten = nn.Sequential(
            nn.Conv2d(dim + 1, dim // 4, kernel_size=3, padding=1, bias=False), nn.GELU()
        )
        self.patch_to_cluster_linear = nn.Linear(dim // 4, prototypes)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w, C), weight (B, 1, h, w) -> prototypes (B, prototypes, C)."""
        b, h, w, c = tokens.shape
        z = self.input_norm(torch.cat([tokens, weight.permute(0, 2, 3, 1)], dim=-1))
        z = self.patch_to_cluster_atten(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        logits = self.patch_to_cluster_linear(z.reshape(b, h * w, -1)).transpose(1, 2)
        # Exact-zero suppression: tokens with weight 0 never contribute. A prototype whose weights
        # are all zero gets a NaN softmax row, which becomes a zero row (its output = norm bias).
        logits = logits.masked_fill(weight.flatten(2) == 0, float("-inf"))
        attention = torch.nan_to_num(torch.softmax(logits.float(), dim=-1))  # float32 under autocast too
        return self.norm(attention @ tokens.reshape(b, h * w, c))


# --------------------------------------------------------------------------------------------
# The network


class SimVOSNet(nn.Module):
    """All SimVOS weights under their checkpoint names, plus the building blocks of one forward pass."""

    def __init__(self, config: SimVOSConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.register_buffer("pos_embed_new", torch.zeros(1, 1 + TABLE_GRID * TABLE_GRID, dim))
        self.patch_embed = PatchEmbed(3, dim)
        self.mask_patch_embed = PatchEmbed(1, dim)
        self.blocks = nn.ModuleList(Block(dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=VIT_EPS)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            ChannelNorm(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, 256, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, 512, kernel_size=2, stride=2))
        self.stcn_decoder = Decoder(dim)  # the STCN decoder, C -> 512 compress
        if config.refines_tokens:
            self.tlearner = TokenRefiner(dim, config.prototypes)
            self.tlearner_back = TokenRefiner(dim, config.prototypes)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The checkpoint's 24x24 table resized to ``grid`` = (h, w): (h*w, C)."""
        return resize_position_table(self.pos_embed_new[0, 1:], grid)

    def run_blocks(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            x = block(x)
        return x

    def query_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Final LayerNorm over the whole sequence, keep the last h*w (query) tokens: m16 (B, C, h, w)."""
        x = self.norm(tokens)[:, -grid[0] * grid[1] :]
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def pyramid(self, m16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ViTDet-style (m8, m4) from m16 by transposed convolutions."""
        return self.fpn2(m16), self.fpn1(m16)

    def logits(self, m16: torch.Tensor) -> torch.Tensor:
        """m16 (B, C, h, w) -> mask logits (B, 1, 16h, 16w)."""
        m8, m4 = self.pyramid(m16)
        return self.stcn_decoder(m16, m8, m4)

    def prototypes(self, tokens: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        """SimVOS-BS template: 384 foreground then 384 background prototypes, (B, 768, C)."""
        return torch.cat([self.tlearner(tokens, fg), self.tlearner_back(tokens, bg)], dim=1)


def guidance_weights(masks: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object token weights for token refinement (SPEC §4 step 2), each (K, 1, h, w).

    ``masks`` (K, 1, H, W) are all objects of the frame. Background is 1 only where every mask is
    exactly 0 (the official exact test, kept: with soft masks it makes `hard` pick an object at
    nearly every token). Channels are bilinearly downsampled; the arg-max channel (first wins) is
    the token's hard label.
    """
    stacked = masks.permute(1, 0, 2, 3)  # (1, K, H, W)
    background = torch.ones_like(stacked[:, :1]) - stacked.sum(dim=1, keepdim=True)
    background[background != 1] = 0
    channels = torch.cat([background, stacked], dim=1)
    props = F.interpolate(channels, size=grid, mode="bilinear", align_corners=False)
    hard = torch.zeros_like(props).scatter_(1, torch.max(props, dim=1, keepdim=True)[1], 1.0)[:, 1:]
    objects = props[:, 1:]
    fg = (objects * hard).permute(1, 0, 2, 3)
    bg = ((1 - objects) * (1 - hard)).permute(1, 0, 2, 3)
    return fg, bg


def variant_config(variant: str) -> SimVOSConfig:
    if variant not in VARIANTS:
        raise ModelError(f"unknown SimVOS variant {variant!r} (choose from {', '.join(VARIANTS)})")
    return VARIANTS[variant]


def build_network(variant: str) -> SimVOSNet:
    """``variant``'s network with PyTorch's default initialisation."""
    return SimVOSNet(variant_config(variant))
