"""STCN's engine adapter, checkpoint loading and the registry's builder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vostool.engine.config import ModelSettings
from vostool.engine.protocol import MemoryView, ObjectStates
from vostool.engine.readout import topk_l2_readout
from vostool.engine.timing import stage
from vostool.models.checkpoint import expected_layout, load_checkpoint, load_exact_state, pad_input_channel
from vostool.models.common import NetworkAdapter
from vostool.models.stcn import SPEC
from vostool.models.stcn.network import VALUE_DIM, STCNNet

_STAGE0_CONV1 = "value_encoder.conv1.weight"


@dataclass(frozen=True)
class STCNQuery:
    """Everything computed once per frame by the key encoder."""

    k16: torch.Tensor  # (1, 64, h, w): the key, reused as memory key
    f16_thin: torch.Tensor  # (1, 512, h, w): the query's own feature for the decoder
    f16: torch.Tensor  # (1, 1024, h, w): raw layer3 feature, input of the value encoder
    f8: torch.Tensor  # (1, 512, 2h, 2w)
    f4: torch.Tensor  # (1, 256, 4h, 4w)


class STCNAdapter(NetworkAdapter):
    """:class:`~vostool.engine.protocol.VOSNetwork` for STCN.

    Memory keys are k16 ``(1, 64, h, w)``; memory values are ``(K, 512, h, w)`` per entry (the
    official time axis is dropped, the engine stores one frame per entry). Defaults: the spec's (the
    official generic-video script).
    """

    defaults = SPEC.defaults
    channels_last = ("key_encoder",)  # ResNet-50: 1.10-1.15x on CPU at 480p; the decoder gains nothing

    @torch.no_grad()
    def encode_query(self, image: torch.Tensor) -> STCNQuery:
        return STCNQuery(*self.net.encode_key(image.to(self.device)))

    def memory_key(self, query: STCNQuery) -> torch.Tensor:
        return query.k16

    @torch.no_grad()
    def encode_value(
        self, image: torch.Tensor, query: STCNQuery, masks: torch.Tensor, state: ObjectStates[None]
    ) -> torch.Tensor:
        # The cached f16 is reused: the key encoder runs once per frame, as in the official core.
        value = self.net.encode_value(image.to(self.device), query.f16, masks.to(self.device))
        return value.squeeze(2)

    @torch.no_grad()
    def segment(
        self, query: STCNQuery, memory: MemoryView[torch.Tensor, torch.Tensor], state: ObjectStates[None]
    ) -> torch.Tensor:
        """Foreground probabilities ``(K, 1, H, W)`` of ``memory.objects``."""
        mem_key, mem_value = _concat_memory(memory)
        _, _, h, w = query.k16.shape
        with stage("memory_readout"):
            readout = topk_l2_readout(mem_key, mem_value, query.k16[0].flatten(start_dim=1), self.settings.top_k)
        readout = readout.view(readout.shape[0], VALUE_DIM, h, w)
        with stage("decoding"):
            return self.net.decode(readout, query.f16_thin, query.f8, query.f4)


def _concat_memory(memory: MemoryView) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory keys ``(64, N)`` and value rows ``(K, N, 512)``, frame-major then row-major positions."""
    if not memory.entries:
        raise ValueError("STCN cannot segment a frame with an empty memory")
    keys = [entry.key.flatten(start_dim=2)[0] for entry in memory.entries]
    values = [memory.values(i).flatten(start_dim=2).transpose(1, 2) for i in range(len(memory.entries))]
    return torch.cat(keys, dim=1), torch.cat(values, dim=1)


# --------------------------------------------------------------------------------------------
# Loading


def pad_stage0_conv1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give a stage-0 (single-object) checkpoint's 4-channel value conv1 a zero 5th channel.

    This is the only change the official eval scripts make before their strict load.
    """
    return pad_input_channel(state, _STAGE0_CONV1, channels=5)


def load_stcn_state(net: STCNNet, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Check ``state`` against the network's own layout, then load it strictly into ``net``."""
    load_exact_state(net, pad_stage0_conv1(state), "STCN", path)


def build(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> STCNAdapter:
    """STCN ready for the engine, with weights from a released checkpoint file.

    ``weights=None`` keeps PyTorch's random initialisation: only useful for tests and timing.
    A file that is not an STCN checkpoint raises :class:`~vostool.errors.ModelError`.
    """
    net = STCNNet()
    if weights is not None:
        load_stcn_state(net, load_checkpoint(weights, map_location="cpu"), weights)
    return STCNAdapter(net, device, settings)


def checkpoint_layout() -> dict[str, tuple[int, ...]]:
    """The state_dict layout (name -> shape) of an STCN checkpoint, computed without allocating."""
    with torch.device("meta"):
        return expected_layout(STCNNet())
