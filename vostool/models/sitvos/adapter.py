"""SITVOS's engine adapter, checkpoint loading and the registry's builder."""

from __future__ import annotations

from pathlib import Path

import torch

from vostool.engine.config import ModelSettings
from vostool.engine.protocol import MemoryView, ObjectStates
from vostool.engine.timing import stage
from vostool.models.checkpoint import expected_layout, load_checkpoint, load_exact_state
from vostool.models.common import NetworkAdapter
from vostool.models.sitvos import SPEC
from vostool.models.sitvos.network import SITVOSNet, SITVOSQuery

# --------------------------------------------------------------------------------------------
# Engine adapter
# --------------------------------------------------------------------------------------------


class SITVOSAdapter(NetworkAdapter):
    """:class:`~vostool.engine.protocol.VOSNetwork` for SITVOS (official DAVIS ``Run_video`` procedure).

    Memory keys are ``W_K(r4)`` ``(1,128,h,w)``, values the per-object mask embeddings ``(N,128,h,w)``.
    Defaults are those of the released script: native resolution, the annotated frame plus every
    12th frame kept, and the previous frame (with its soft probabilities) always in memory.

    The official loop soft-maxes over K = 11 channels, the unused ones sitting at log-odds -16.1; the
    engine soft-maxes over the N+1 channels in use, which moves probabilities by about 1e-6 (well inside
    the parity tolerances) and never a label. Objects introduced after frame 0 (which the official DAVIS
    loop cannot do) are handled by the engine's per-object memory views.
    """

    defaults = SPEC.defaults

    @torch.no_grad()
    def encode_query(self, image: torch.Tensor) -> SITVOSQuery:
        return self.net.encode_frame(image.to(self.device))

    @torch.no_grad()
    def memory_key(self, query: SITVOSQuery) -> torch.Tensor:
        return self.net.memory_key(query.r4)

    @torch.no_grad()
    def encode_value(
        self, image: torch.Tensor, query: SITVOSQuery, masks: torch.Tensor, state: ObjectStates[None]
    ) -> torch.Tensor:
        # The frame's own r4 gives the key (memory_key); the value depends on the masks alone.
        return self.net.mask_embedding(masks.to(self.device))

    @torch.no_grad()
    def segment(
        self, query: SITVOSQuery, memory: MemoryView[torch.Tensor, torch.Tensor], state: ObjectStates[None]
    ) -> torch.Tensor:
        """Foreground probabilities ``(N, 1, H, W)`` of ``memory.objects``."""
        if not memory.entries:
            raise ValueError("SITVOS cannot segment a frame with an empty memory")
        # Time axis in entry order: permanent frames oldest first, then the previous frame.
        mem_keys = torch.stack([entry.key for entry in memory.entries], dim=2)
        mem_values = torch.stack([memory.values(i) for i in range(len(memory.entries))], dim=2)
        with stage("decoding"):
            return self.net.foreground(query, mem_keys, mem_values)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def build(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> SITVOSAdapter:
    """SITVOS ready for the engine, with weights from a checkpoint file (``model.state_dict()``).

    ``weights=None`` keeps PyTorch's random initialisation: only useful for tests and timing.
    A file that is not a SITVOS checkpoint raises :class:`~vostool.errors.ModelError`.
    """
    net = SITVOSNet()
    if weights is not None:
        load_exact_state(net, load_checkpoint(weights, map_location="cpu"), "SITVOS", weights)
    return SITVOSAdapter(net, device, settings)


def checkpoint_layout() -> dict[str, tuple[int, ...]]:
    """The state_dict layout (name -> shape) of a SITVOS checkpoint, computed without allocating."""
    with torch.device("meta"):
        return expected_layout(SITVOSNet())
