"""SimVOS (Wu et al., ICCV 2023): one ViT attends jointly over reference frames and the query frame.

Three released variants share one network class (``SimVOSNet``), whose state_dict keys are exactly
those of the official checkpoints (``../shared/spec/simvos/SPEC.md`` §2):

* ``simvos-b`` / ``simvos-l``: ViT-B/16 or ViT-L/16 with full joint attention. A reference frame is
  ``PatchConv(frame) + MaskConv(mask)``; the query frame is ``PatchConv(frame)`` alone.
* ``simvos-bs``: ViT-B/16 whose first 4 blocks run on each frame alone (within-frame attention);
  each reference is then summarised by token refinement into 384 foreground + 384 background
  prototypes, and only the remaining blocks see templates and query together.

``SimVOS`` adapts the network to the streaming engine (``vostool.engine.protocol.VOSNetwork``):
memory is the annotated frame (pinned) plus the previous frame with its own soft probabilities, and
each object gets its own token sequence; the objects are run through the ViT as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vostool.engine.protocol import MemorySchedule, MemoryView, Preprocessing
from vostool.errors import ModelError
from vostool.models.checkpoint import check_layout, expected_layout, load_checkpoint
from vostool.models.stcn import Decoder

PATCH = 16
# The checkpoint's position table covers a 24x24 grid (384x384 training crops) after a cls slot.
TABLE_GRID = 24
# Official timm-0.3.2 ViT: LayerNorm eps 1e-6 everywhere in the backbone and the pyramid.
VIT_EPS = 1e-6


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
# Backbone (timm-0.3.2 ViT block, attention through scaled_dot_product_attention)


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
        attention = torch.nan_to_num(torch.softmax(logits, dim=-1))
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


# --------------------------------------------------------------------------------------------
# Engine adapter


@dataclass
class QueryFeatures:
    """What is computed once per frame.

    ``patches``: PatchConv(frame) (1, N, C); for SimVOS-BS with the position table already added.
    ``early``: SimVOS-BS only, ``patches`` after the within-frame blocks (1, N, C).
    """

    patches: torch.Tensor
    grid: tuple[int, int]
    early: torch.Tensor | None = None


class SimVOS:
    """SimVOS as a :class:`~vostool.engine.protocol.VOSNetwork`.

    Memory values are per object: the mask embeddings MaskConv(mask) for B/L (the frame's patch
    tokens are the entry's key, shared by all objects), the 768-token template for BS.
    """

    stride = PATCH

    def __init__(self, net: SimVOSNet, name: str, device: torch.device, short_side: int | None = 480) -> None:
        self.net = net.to(device).eval()
        self.name = name
        self.device = device
        # The official DAVIS evaluation runs on 480p frames as stored, and its YouTube-VOS loader
        # resizes the short side to 480: short_side=480 is a no-op on 480p input and gives other
        # videos the token grid (about 30 x 54) the released checkpoints were evaluated at.
        self.preprocessing = Preprocessing(short_side=short_side, stride=PATCH)
        # Memory = the annotated frame (pinned) + the previous frame in the temporary slot.
        self.schedule = MemorySchedule(mem_every=None, include_last=True)
        self._positions: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def config(self) -> SimVOSConfig:
        return self.net.config

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position table for a token grid, resized once per video (every frame of a video has the
        same grid); only the latest grid is kept, so memory does not grow over many videos."""
        if grid not in self._positions:
            self._positions = {grid: self.net.position_table(grid)}
        return self._positions[grid]

    @torch.inference_mode()
    def encode_query(self, image: torch.Tensor) -> QueryFeatures:
        image = image.to(self.device)
        grid = (image.shape[-2] // PATCH, image.shape[-1] // PATCH)
        patches = self.net.patch_embed(image)
        layers = self.config.within_frame_layers
        if layers == 0:
            return QueryFeatures(patches, grid)
        patches = patches + self.positions(grid)
        return QueryFeatures(patches, grid, early=self.net.run_blocks(patches, 0, layers))

    def memory_key(self, query: QueryFeatures) -> torch.Tensor | None:
        # B/L: the frame's patch tokens, shared by every object's reference tokens.
        # BS: the per-object templates hold everything a later frame reads.
        return None if self.config.within_frame_layers else query.patches

    @torch.inference_mode()
    def encode_value(self, image: torch.Tensor, query: QueryFeatures, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(self.device)
        mask_tokens = self.net.mask_patch_embed(masks)  # (K, N, C)
        if not self.config.refines_tokens:
            return mask_tokens
        # BS reference: (patch + pos) + mask, within-frame blocks batched over the objects.
        tokens = self.net.run_blocks(query.patches + mask_tokens, 0, self.config.within_frame_layers)
        fg, bg = guidance_weights(masks, query.grid)
        return self.net.prototypes(tokens.reshape(len(masks), *query.grid, -1), fg, bg)

    def input_tokens(self, query: QueryFeatures, memory: MemoryView) -> torch.Tensor:
        """Per-object sequences [reference 0, reference 1, ..., query] entering the joint blocks."""
        count = len(memory.objects)
        if self.config.within_frame_layers:
            references = [memory.values(i) for i in range(len(memory.entries))]
            return torch.cat(references + [query.early.expand(count, -1, -1)], dim=1)
        references = [entry.key + memory.values(i) for i, entry in enumerate(memory.entries)]
        x = torch.cat(references + [query.patches.expand(count, -1, -1)], dim=1)
        return x + self.positions(query.grid).repeat(len(references) + 1, 1)

    @torch.inference_mode()
    def segment(self, query: QueryFeatures, memory: MemoryView) -> torch.Tensor:
        if not memory.entries:
            raise ValueError("SimVOS needs at least one reference frame in memory")
        x = self.input_tokens(query, memory)
        x = self.net.run_blocks(x, self.config.within_frame_layers)
        return torch.sigmoid(self.net.logits(self.net.query_map(x, query.grid)))


# --------------------------------------------------------------------------------------------
# Loading


def variant_config(variant: str) -> SimVOSConfig:
    if variant not in VARIANTS:
        raise ModelError(f"unknown SimVOS variant {variant!r} (choose from {', '.join(VARIANTS)})")
    return VARIANTS[variant]


def build_network(variant: str) -> SimVOSNet:
    """``variant``'s network with PyTorch's default initialisation."""
    return SimVOSNet(variant_config(variant))


def resize_position_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A square ``(n*n, C)`` position table resized bicubically to ``grid`` = (h, w): ``(h*w, C)``."""
    side = math.isqrt(table.shape[0])
    if grid == (side, side):
        return table
    square = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(1, 2)[0]


def rebuilt_position_table(pos_embed: torch.Tensor) -> torch.Tensor:
    """pos_embed_new as the official constructor derives it from the MAE 14x14 table: (1, 577, C)."""
    resized = resize_position_table(pos_embed[0, 1:], (TABLE_GRID, TABLE_GRID))
    return torch.cat([pos_embed[:, :1], resized[None]], dim=1)


def load_weights(net: SimVOSNet, state: Mapping[str, torch.Tensor], variant: str, path: str | Path) -> None:
    """Strictly load a released state_dict into ``net``; known-unused keys are skipped by name.

    Raises :class:`ModelError` naming missing, unexpected and mis-shaped keys.
    """
    state = dict(state)
    if "pos_embed_new" not in state and "pos_embed" in state and state["pos_embed"].dim() == 3:
        # Training never updates pos_embed, so the constructor's resize of it is an exact stand-in.
        state["pos_embed_new"] = rebuilt_position_table(state["pos_embed"].float())
    expected = expected_layout(net)
    check_layout(state, expected, variant, path, ignore=unused_keys(net.config))
    net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)


def network_from_state(
    variant: str, state: Mapping[str, torch.Tensor], path: str | Path, device: str | torch.device = "cpu"
) -> SimVOSNet:
    """``variant``'s network holding ``state`` (checked and loaded strictly, see :func:`load_weights`).

    The modules are created without initialising them (every tensor is then overwritten), which
    saves seconds and a second copy of the weights for ViT-L.
    """
    with torch.device("meta"):
        net = build_network(variant)
    net.to_empty(device=device)
    load_weights(net, state, variant, path)
    return net


def build_simvos(
    variant: str,
    weights: str | Path | None,
    device: str | torch.device = "cpu",
    *,
    short_side: int | None = 480,
) -> SimVOS:
    """SimVOS-B / -L / -BS ready for the engine, with weights from a released checkpoint file.

    ``weights`` is a file written by ``torch.save(model.state_dict())``, read with
    ``weights_only=True``; ``None`` keeps PyTorch's random initialisation (only useful for tests and
    timing). A file that is not a checkpoint of ``variant`` raises :class:`~vostool.errors.ModelError`.
    ``short_side`` sets the internal resolution (None: native size).
    """
    device = torch.device(device)
    variant_config(variant)  # an unknown name is reported before the file is read
    if weights is None:
        net = build_network(variant)
    else:
        net = network_from_state(variant, load_checkpoint(weights, map_location="cpu"), weights, device)
    return SimVOS(net, variant, device, short_side=short_side)


def checkpoint_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """The full layout of a released ``variant`` file: the network's keys plus the unused ones it carries.

    ``vostool weights verify`` checks files against this exact layout; loading (``load_weights``) is
    stricter about what it uses and skips the unused keys by name.
    """
    config = variant_config(variant)
    dim = config.embed_dim
    # B and L files carry BS's token-refinement modules too (one training class for all variants).
    with_refinement = dataclasses.replace(config, within_frame_layers=4, prototypes=384)
    with torch.device("meta"):
        layout = expected_layout(SimVOSNet(with_refinement if not config.refines_tokens else config))
    layout.update({
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 14 * 14 + 1, dim),  # MAE's 224x224 table, superseded by pos_embed_new
        "head.weight": (1000, dim),
        "head.bias": (1000,),
        "fc_norm.weight": (dim,),
        "fc_norm.bias": (dim,),
    })
    return layout
