"""SimVOS's engine adapter, checkpoint loading and the registry's builders of the three variants."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from vostool.engine.config import ModelSettings
from vostool.engine.protocol import MemoryView, ObjectStates
from vostool.models.checkpoint import check_layout, expected_layout, load_checkpoint
from vostool.models.common import NetworkAdapter
from vostool.models.layers import resize_position_table
from vostool.models.simvos import DEFAULTS
from vostool.models.simvos.network import (
    PATCH,
    TABLE_GRID,
    SimVOSConfig,
    SimVOSNet,
    build_network,
    guidance_weights,
    unused_keys,
    variant_config,
)


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


class SimVOSAdapter(NetworkAdapter):
    """SimVOS as a :class:`~vostool.engine.protocol.VOSNetwork`.

    Memory is the annotated frame (pinned) plus the previous frame with its own soft probabilities;
    each object gets its own token sequence, and the objects run through the ViT as one batch. Memory
    values are per object: the mask embeddings MaskConv(mask) for B/L (the frame's patch tokens are the
    entry's key, shared by all objects), the 768-token template for BS.
    """

    defaults = DEFAULTS

    def __init__(
        self, net: SimVOSNet, device: str | torch.device = "cpu", settings: ModelSettings | None = None
    ) -> None:
        super().__init__(net, device, settings)
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
    def encode_value(
        self, image: torch.Tensor, query: QueryFeatures, masks: torch.Tensor, state: ObjectStates[None]
    ) -> torch.Tensor:
        masks = masks.to(self.device)
        mask_tokens = self.net.mask_patch_embed(masks)  # (K, N, C)
        if not self.config.refines_tokens:
            return mask_tokens
        # BS reference: (patch + pos) + mask, within-frame blocks batched over the objects.
        tokens = self.net.run_blocks(query.patches + mask_tokens, 0, self.config.within_frame_layers)
        fg, bg = guidance_weights(masks, query.grid)
        return self.net.prototypes(tokens.reshape(len(masks), *query.grid, -1), fg, bg)

    def input_tokens(self, query: QueryFeatures, memory: MemoryView[torch.Tensor | None, torch.Tensor]) -> torch.Tensor:
        """Per-object sequences [reference 0, reference 1, ..., query] entering the joint blocks."""
        count = len(memory.objects)
        if self.config.within_frame_layers:
            references = [memory.values(i) for i in range(len(memory.entries))]
            return torch.cat(references + [query.early.expand(count, -1, -1)], dim=1)
        references = [entry.key + memory.values(i) for i, entry in enumerate(memory.entries)]
        x = torch.cat(references + [query.patches.expand(count, -1, -1)], dim=1)
        return x + self.positions(query.grid).repeat(len(references) + 1, 1)

    @torch.inference_mode()
    def segment(
        self,
        query: QueryFeatures,
        memory: MemoryView[torch.Tensor | None, torch.Tensor],
        state: ObjectStates[None],
    ) -> torch.Tensor:
        if not memory.entries:
            raise ValueError("SimVOS needs at least one reference frame in memory")
        x = self.input_tokens(query, memory)
        x = self.net.run_blocks(x, self.config.within_frame_layers)
        # Float32 sigmoid under autocast (see STCNNet.decode).
        return torch.sigmoid(self.net.logits(self.net.query_map(x, query.grid)).float())


# --------------------------------------------------------------------------------------------
# Loading


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
    settings: ModelSettings | None = None,
) -> SimVOSAdapter:
    """SimVOS-B / -L / -BS ready for the engine, with weights from a released checkpoint file.

    ``weights`` is a file written by ``torch.save(model.state_dict())``, read with
    ``weights_only=True``; ``None`` keeps PyTorch's random initialisation (only useful for tests and
    timing). A file that is not a checkpoint of ``variant`` raises :class:`~vostool.errors.ModelError`.
    ``settings``: None for the official defaults (:data:`vostool.models.simvos.DEFAULTS`).
    """
    device = torch.device(device)
    variant_config(variant)  # an unknown name is reported before the file is read
    if weights is None:
        net = build_network(variant)
    else:
        net = network_from_state(variant, load_checkpoint(weights, map_location="cpu"), weights, device)
    return SimVOSAdapter(net, device, settings)


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


# --------------------------------------------------------------------------------------------
# The registry's builders and layouts: one per variant, each with the signature of every model's.


def build_simvos_b(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> SimVOSAdapter:
    return build_simvos("simvos-b", weights, device, settings)


def build_simvos_l(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> SimVOSAdapter:
    return build_simvos("simvos-l", weights, device, settings)


def build_simvos_bs(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> SimVOSAdapter:
    return build_simvos("simvos-bs", weights, device, settings)


def layout_simvos_b() -> dict[str, tuple[int, ...]]:
    return checkpoint_layout("simvos-b")


def layout_simvos_l() -> dict[str, tuple[int, ...]]:
    return checkpoint_layout("simvos-l")


def layout_simvos_bs() -> dict[str, tuple[int, ...]]:
    return checkpoint_layout("simvos-bs")
