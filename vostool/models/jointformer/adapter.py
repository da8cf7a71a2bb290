"""JointFormer's engine adapter, checkpoint loading and the registry's builder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from vostool.engine.config import ModelSettings
from vostool.engine.protocol import MemoryView, ObjectStates
from vostool.engine.timing import stage
from vostool.models.checkpoint import expected_layout, load_checkpoint, load_exact_state, pad_input_channel
from vostool.models.common import NetworkAdapter
from vostool.models.jointformer import SPEC
from vostool.models.jointformer.network import FrameFeatures, JointFormerNet, Reference

STRIDE = 16
MEMORY_INPUT = "convmae.patch_embed1_memory.proj.weight"


# --------------------------------------------------------------------------------------------
# Engine adapter


@dataclass
class JointFormerQuery:
    """The current frame before the joint blocks."""

    frame: FrameFeatures


class JointFormerAdapter(NetworkAdapter):
    """JointFormer as a :class:`~vostool.engine.protocol.VOSNetwork`.

    Memory values are :class:`Reference` s (per object: cached block inputs, and the memory token
    after that frame as the official memory stores it). Each object's compressed memory token
    ``(1, C)`` is recurrent and lives in the engine's per-object state: ``segment`` reads it and
    writes back its update from the decoder tokens, and ``encode_value`` lets it read the frame being
    memorised (an object without state starts from the learned initial token) and stores the result.
    """

    defaults = SPEC.defaults

    def __init__(
        self, net: JointFormerNet, device: str | torch.device = "cpu", settings: ModelSettings | None = None
    ) -> None:
        super().__init__(net, device, settings)
        self._positions: dict[tuple[int, int], torch.Tensor] = {}

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position table for a token grid, resized once per video (only the latest grid is kept)."""
        if grid not in self._positions:
            self._positions = {grid: self.net.convmae.position_table(grid)}
        return self._positions[grid]

    @torch.inference_mode()
    def encode_query(self, image: torch.Tensor) -> JointFormerQuery:
        image = image.to(self.device)
        grid = (image.shape[-2] // STRIDE, image.shape[-1] // STRIDE)
        return JointFormerQuery(self.net.current_frame(image, self.positions(grid)))

    def memory_key(self, query: JointFormerQuery) -> None:
        # Everything a later frame reads is per object (the frame is encoded together with its masks).
        return None

    @torch.inference_mode()
    def encode_value(
        self, image: torch.Tensor, query: JointFormerQuery, masks: torch.Tensor, state: ObjectStates[torch.Tensor]
    ) -> Reference:
        # Objects without a token yet (new ones) start from the learned initial token.
        initial = self.net.convmae.cls_token[0]
        tokens = torch.stack([_or_initial(state.get(slot), initial) for slot in range(len(masks))])
        positions = self.positions(query.frame.grid)
        reference = self.net.memorise(image.to(self.device), masks.to(self.device), tokens, positions)
        for slot, token in enumerate(reference.memory_tokens):
            state[slot] = token
        return reference

    @torch.inference_mode()
    def segment(
        self,
        query: JointFormerQuery,
        memory: MemoryView[None, Reference],
        state: ObjectStates[torch.Tensor],
    ) -> torch.Tensor:
        """Foreground probabilities (K, 1, H, W) of ``memory.objects``."""
        if not memory.entries:
            raise ValueError("JointFormer cannot segment a frame with an empty memory")
        references = [memory.values(i) for i in range(len(memory.entries))]
        tokens = torch.stack([state.get(slot) for slot in memory.objects])
        positions = self.positions(query.frame.grid)
        frame = query.frame
        with stage("memory_readout"):
            f16 = self.net.readout(frame, references, self.settings.top_k)
            enhanced = self.net.enhance(f16, tokens, positions)
        with stage("decoding"):
            logits, fusion = self.net.decoder(f16, enhanced, frame.f8, frame.f4)
            updated = self.net.update_memory_token(fusion, tokens, positions)
        for slot, token in zip(memory.objects, updated):
            state[slot] = token
        return torch.sigmoid(logits.float())  # float32 under autocast too (see STCNNet.decode)


def _or_initial(token: torch.Tensor | None, initial: torch.Tensor) -> torch.Tensor:
    return initial if token is None else token


# --------------------------------------------------------------------------------------------
# Loading


def network_for(state: Mapping[str, torch.Tensor]) -> JointFormerNet:
    """An uninitialised network with the block depths a checkpoint holds (official loader rule)."""

    def depth(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    update_depth = depth("convmae.blocks4.") or 2
    enhance_depth = depth("convmae.blocks5.") or 1
    with torch.device("meta"):
        return JointFormerNet(update_depth=update_depth, enhance_depth=enhance_depth)


def load_jointformer_state(state: Mapping[str, torch.Tensor], path: str | Path, device: torch.device) -> JointFormerNet:
    """Check ``state`` against the network's layout and load it strictly.

    The single-object stage-0 file (``jointformer_s0.pth``) has a 4-channel memory stem; it gets a
    zero 5th channel, so the "other objects" mask it never saw has no effect (the official loader
    appends a random slice instead, which makes s0 non-deterministic).
    """
    state = pad_input_channel(dict(state), MEMORY_INPUT, channels=5)
    net = network_for(state).to_empty(device=device)
    load_exact_state(net, state, "JointFormer", path)
    return net


def build(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> JointFormerAdapter:
    """JointFormer ready for the engine, with weights from a released checkpoint file.

    ``weights=None`` keeps PyTorch's random initialisation (tests and timing only). A file that is
    not a JointFormer checkpoint raises :class:`~vostool.errors.ModelError`. ``settings=None``: the
    spec's defaults, the official DAVIS settings (SPEC §9).
    """
    device = torch.device(device)
    if weights is None:
        net = JointFormerNet()
    else:
        net = load_jointformer_state(load_checkpoint(weights, map_location="cpu"), weights, device)
    return JointFormerAdapter(net, device, settings)


def checkpoint_layout(single_object: bool = False) -> dict[str, tuple[int, ...]]:
    """The exact layout of a released file; ``single_object`` for ``jointformer_s0.pth`` (4-channel stem)."""
    with torch.device("meta"):
        net = JointFormerNet(memory_channels=4 if single_object else 5)
    return expected_layout(net)
