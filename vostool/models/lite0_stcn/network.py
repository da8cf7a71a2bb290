"""The network of ``lite0-stcn``: STCN's design on a frozen EfficientNet-Lite0, with small trained heads.

* backbone: ImageNet EfficientNet-Lite0 from the pip wheel, frozen; its stride-2, -4, -8 and -16 blocks
  are tapped (16, 24, 40 and 112 channels).
* key: a 1x1 projection of the stride-8 features and the stride-16 ones upsampled to stride 8, L2-normalised.
  It starts as the identity, so an untrained network reads its memory exactly like ``propagate-lite0``.
* value: per object, the mask folded into its 8x8 cells (pixel-unshuffle: thin parts survive the stride-8
  grid) and the frame's features, through a 1x1 convolution and a residual block; the cell's mean mask is
  prepended as channel 0, so channel 0 of a readout is ``propagate-lite0``'s propagated mask.
* decoder: readout and query features at stride 8, upsampled with the stride-4 and stride-2 features as
  skips, to a logit at stride 2. It predicts a correction to the logit of readout channel 0: its last
  convolution starts at zero, so training starts from ``propagate-lite0``'s output. The correction is gated to
  the propagated object's surroundings, so each object is decoded only in its own crop (the same result as
  decoding the whole frame, at the cost of the object's area).

Only ``heads`` is trained and stored in a checkpoint; the backbone always comes from the wheel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vostool.engine.aggregate import aggregate_logits
from vostool.engine.readout import dense_local_topk_readout
from vostool.models.layers import ResBlock, conv_of_concat
from vostool.models.lite0_stcn import TOP_K, WINDOW_RADIUS
from vostool.models.propagate_lite0.efficientnet_lite import EfficientNetLite

FEATURE_STRIDE = 8
KEY_DIM = 40 + 112  # stride-8 and stride-16 Lite0 channels
LEARNED_VALUE_DIM = 64
VALUE_DIM = 1 + LEARNED_VALUE_DIM  # channel 0: the cell's mean mask
_HIDDEN = 64
_PROB_EPS = 1e-4  # readout probabilities are clamped to [eps, 1 - eps] before their logit
_GATE_CELLS = 2  # the decoder's correction reaches this many stride-8 cells beyond the propagated mask
_GATE_LEVEL = 0.1  # ... counting cells where it is at least this probability
# How far the decoder's receptive field reaches, in stride-8 cells rounded up: 38 pixels (the residual block's two
# 3x3 convolutions and an upsampling at stride 8: 16 + 8; a 3x3 and an upsampling at stride 4: 4 + 4; two 3x3 and
# the last upsampling at stride 2: 2 + 2 + 2).
_DECODER_REACH_CELLS = 5


@dataclass(frozen=True)
class Lite0Features:
    """The frozen backbone's maps of one frame (batch 1) or of a batch of training frames."""

    f2: torch.Tensor  # (B, 16, H/2, W/2)
    f4: torch.Tensor  # (B, 24, H/4, W/4)
    f8: torch.Tensor  # (B, 152, H/8, W/8): stride-8 block and stride-16 block upsampled, concatenated


class Lite0Backbone(nn.Module):
    """The frozen Lite0 (``lite0`` holds the wheel's state_dict) and the maps the heads read."""

    def __init__(self) -> None:
        super().__init__()
        self.lite0 = EfficientNetLite()
        self.taps = tuple(self.lite0.last_block_at_stride(s) for s in (2, 4, 8, 16))

    def forward(self, image: torch.Tensor) -> Lite0Features:
        f2, f4, f8, f16 = self.lite0.features(image, self.taps)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        # contiguous: the adapter may run the backbone channels_last
        return Lite0Features(f2.contiguous(), f4.contiguous(), torch.cat([f8, f16], dim=1).contiguous())


class KeyProjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(KEY_DIM, KEY_DIM, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(KEY_DIM)[:, :, None, None])
            self.proj.bias.zero_()

    def forward(self, f8: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(f8), dim=1)


class ValueEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(FEATURE_STRIDE**2 + KEY_DIM, _HIDDEN, 1)
        self.block = ResBlock(_HIDDEN, LEARNED_VALUE_DIM)

    def forward(self, masks: torch.Tensor, f8: torch.Tensor) -> torch.Tensor:
        """``masks`` (K, 1, H, W) soft, ``f8`` (1 or K, 152, h, w) -> values (K, VALUE_DIM, h, w)."""
        cells = F.pixel_unshuffle(masks, FEATURE_STRIDE)  # (K, 64, h, w)
        x = self.block(F.relu(conv_of_concat(self.fuse, [cells, f8])))
        return torch.cat([cells.mean(dim=1, keepdim=True), x], dim=1)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse8 = nn.Conv2d(VALUE_DIM + KEY_DIM, _HIDDEN, 1)
        self.block8 = ResBlock(_HIDDEN, _HIDDEN)
        self.fuse4 = nn.Conv2d(_HIDDEN + 24, 32, 1)
        self.conv4 = nn.Conv2d(32, 32, 3, padding=1)
        self.fuse2 = nn.Conv2d(32 + 16, 16, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, readout: torch.Tensor, feats: Lite0Features) -> torch.Tensor:
        """``readout`` (K, VALUE_DIM, h, w) -> foreground logits (K, 1, H, W)."""
        prior = F.interpolate(readout[:, :1], scale_factor=FEATURE_STRIDE, mode="bilinear", align_corners=False)
        logits = torch.logit(prior.clamp(_PROB_EPS, 1 - _PROB_EPS))
        near_cells = _near_cells(readout[:, :1])
        gate = (F.interpolate(near_cells, scale_factor=FEATURE_STRIDE, mode="bilinear", align_corners=False)
                / _GATE_LEVEL).clamp(0, 1)
        if torch.compiler.is_compiling():  # one graph per resolution (--compile): decode the whole frame
            return logits + self.correction(readout, feats) * gate
        correction = torch.zeros_like(logits)
        for k in range(readout.shape[0]):  # each object's own crop: the convolutions cost what its area costs
            box = _box_to_decode(near_cells[k])
            if box is None:  # nothing is near this object's propagated mask: its correction is gated off
                continue
            own = min(k, feats.f8.shape[0] - 1)  # the frame's features are shared (batch 1) or per object
            crop = Lite0Features(*(f[_crop(box, FEATURE_STRIDE // scale, own)] for f, scale in
                                   ((feats.f2, 2), (feats.f4, 4), (feats.f8, 8))))
            correction[_crop(box, FEATURE_STRIDE, k)] = self.correction(readout[_crop(box, 1, k)], crop)
        return logits + correction * gate

    def correction(self, readout: torch.Tensor, feats: Lite0Features) -> torch.Tensor:
        """The decoder proper: readout and features of a frame (or a crop of one) -> logit corrections."""
        x = self.block8(F.relu(conv_of_concat(self.fuse8, [readout, feats.f8])))
        x = _up(x)
        x = F.relu(self.conv4(F.relu(conv_of_concat(self.fuse4, [x, feats.f4]))))
        x = _up(x)
        x = F.relu(self.conv2(F.relu(conv_of_concat(self.fuse2, [x, feats.f2]))))
        return _up(self.out(x))


def _near_cells(prior: torch.Tensor) -> torch.Tensor:
    """Per stride-8 cell: the most any cell within ``_GATE_CELLS`` has of the propagated mask, where that is
    at least the readout's clamp ``_PROB_EPS`` (0 elsewhere: the readout's softmax leaves traces of the object
    everywhere in reach, which would open the gate a little everywhere). Upsampled and scaled by
    ``_GATE_LEVEL``, it gates the correction: 1 where that is at least ``_GATE_LEVEL``, fading to 0 below, so
    the decoder refines the propagated object and does not start objects elsewhere (trained without the gate,
    it drew every salient thing: a passer-by, a scooter)."""
    near = F.max_pool2d(prior, 2 * _GATE_CELLS + 1, stride=1, padding=_GATE_CELLS)
    return near * (near >= _PROB_EPS)


def _box_to_decode(near_cells: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The cells (top, bottom, left, right; end exclusive) of one object's map (1, h, w) that the decoder must
    see so that its correction is exact wherever the gate is open; None where the gate is shut everywhere.

    The gate opens at most one cell beyond the cells it is non-zero at (bilinear upsampling), and a
    correction depends on the inputs within ``_DECODER_REACH_CELLS`` of it, so the box adds both margins;
    outside it the gate is zero. Cropping at cell boundaries keeps every layer's grid aligned."""
    rows = near_cells.amax(dim=(0, 2)) > 0
    if not bool(rows.any()):
        return None
    columns = near_cells.amax(dim=(0, 1)) > 0
    margin = 1 + _DECODER_REACH_CELLS
    h, w = near_cells.shape[-2:]
    top, bottom = _span(rows, margin, h)
    left, right = _span(columns, margin, w)
    return top, bottom, left, right


def _span(occupied: torch.Tensor, margin: int, size: int) -> tuple[int, int]:
    index = occupied.nonzero()[:, 0]
    return max(int(index[0]) - margin, 0), min(int(index[-1]) + 1 + margin, size)


def _crop(box: tuple[int, int, int, int], factor: int, batch_index: int) -> tuple[slice, ...]:
    """The index of the cells ``box`` (top, bottom, left, right) in batch entry ``batch_index`` of a map
    ``factor`` times finer than the cell grid, batch and channel axes kept."""
    top, bottom, left, right = (side * factor for side in box)
    return slice(batch_index, batch_index + 1), slice(None), slice(top, bottom), slice(left, right)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Lite0STCNHeads(nn.Module):
    """Everything ``lite0-stcn`` trains (about 0.25 M parameters): its checkpoint is this state_dict."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.key = KeyProjection()
        self.value = ValueEncoder()
        self.decoder = Decoder()
        # The readout's softmax temperature, learned in log space (propagate-lite0's tuned 0.1 at start).
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.detach().exp())


class Lite0STCNNet(nn.Module):
    """Frozen backbone + trained heads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Lite0Backbone()
        self.heads = Lite0STCNHeads()


def propagate_sample(net: Lite0STCNNet, frames: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """Training forward pass, as STCN trains: frame 0's mask is given, frame 1 is predicted from it, then
    frame 2 from frames 0 and 1 (frame 1 through the network's own soft prediction, gradient kept).

    ``frames`` (B, T, 3, S, S), ``masks`` (B, T, 1, S, S) -> the two-class (background, object) log-odds
    of frames 1..T-1, each (B, 2, S, S), aggregated the way the engine aggregates at inference.
    """
    batch, count = frames.shape[:2]
    with torch.no_grad():
        feats = net.backbone(frames.flatten(0, 1))
    heads = net.heads
    keys = heads.key(feats.f8).unflatten(0, (batch, count))
    per_frame = [Lite0Features(*(f.unflatten(0, (batch, count))[:, t] for f in (feats.f2, feats.f4, feats.f8)))
                 for t in range(count)]
    values = [heads.value(masks[:, 0], per_frame[0].f8)]
    outputs = []
    for t in range(1, count):
        read = dense_local_topk_readout(
            keys[:, :t], torch.stack(values, dim=1), keys[:, t], top_k=TOP_K, radius=WINDOW_RADIUS,
            temperature=heads.log_temperature.exp(),
        )
        foreground = torch.sigmoid(heads.decoder(read, per_frame[t]))  # (B, 1, S, S)
        logits = aggregate_logits(foreground[None])[:, :, 0].transpose(0, 1)  # (B, 2, S, S)
        outputs.append(logits)
        if t + 1 < count:
            values.append(heads.value(torch.softmax(logits, dim=1)[:, 1:], per_frame[t].f8))
    return outputs
