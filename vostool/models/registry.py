"""The models vostool can run, by name: one place that knows how to build each of them.

A model is listed here only once it is finished (network, checkpoint loading and parity tests).
Adding a model means adding one entry; IO, engine and CLI do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnknownModelError

if TYPE_CHECKING:  # torch is imported only when a model is built, so `vostool --help` starts fast
    import torch

    from ..engine.protocol import VOSNetwork

Builder = Callable[[Path | None, "torch.device"], "VOSNetwork"]
Layout = Callable[[], dict[str, tuple[int, ...]]]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    summary: str
    build: Builder
    # The exact state-dict layout (name -> shape) of this model's checkpoint files.
    layout: Layout
    # True when the model needs a released checkpoint (downloaded by vostool.weights); False when its
    # weights ship with the installation (the offline default).
    needs_checkpoint: bool


def _propagate_lite0(weights: Path | None, device: torch.device) -> VOSNetwork:
    from .propagate import build_propagate_lite0

    return build_propagate_lite0(weights, device)


def _propagate_lite0_layout() -> dict[str, tuple[int, ...]]:
    from .checkpoint import expected_layout
    from .efficientnet_lite import EfficientNetLite

    import torch

    with torch.device("meta"):  # shapes only, no memory
        return expected_layout(EfficientNetLite())


def _stcn(weights: Path | None, device: torch.device) -> VOSNetwork:
    from .stcn import build_stcn

    return build_stcn(weights, device)


def _stcn_layout() -> dict[str, tuple[int, ...]]:
    from .checkpoint import expected_layout
    from .stcn import STCN

    import torch

    with torch.device("meta"):
        return expected_layout(STCN())


def _sitvos(weights: Path | None, device: torch.device) -> VOSNetwork:
    from .sitvos import build_sitvos

    return build_sitvos(weights, device)


def _sitvos_layout() -> dict[str, tuple[int, ...]]:
    from .sitvos import checkpoint_layout

    return checkpoint_layout()


def _simvos(variant: str) -> tuple[Builder, Layout]:
    def build(weights: Path | None, device: torch.device) -> VOSNetwork:
        from .simvos import build_simvos

        return build_simvos(variant, weights, device)

    def layout() -> dict[str, tuple[int, ...]]:
        from .simvos import checkpoint_layout

        return checkpoint_layout(variant)

    return build, layout


def _jointformer(weights: Path | None, device: torch.device) -> VOSNetwork:
    from .jointformer import build_jointformer

    return build_jointformer(weights, device)


def _jointformer_layout() -> dict[str, tuple[int, ...]]:
    from .jointformer import checkpoint_layout

    return checkpoint_layout()


DEFAULT_MODEL = "propagate-lite0"

MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        ModelInfo(
            "propagate-lite0",
            "training-free label propagation on ImageNet EfficientNet-Lite0 features (offline default)",
            _propagate_lite0,
            _propagate_lite0_layout,
            needs_checkpoint=False,
        ),
        ModelInfo(
            "stcn",
            "STCN (NeurIPS 2021): space-time correspondence, L2 affinity, top-k memory readout",
            _stcn,
            _stcn_layout,
            needs_checkpoint=True,
        ),
        ModelInfo(
            "sitvos",
            "SITVOS (AAAI 2022): Siamese ResNet-50 + interactive transformer; no released weights (--weights)",
            _sitvos,
            _sitvos_layout,
            needs_checkpoint=True,
        ),
        ModelInfo("simvos-b", "SimVOS-B (CVPR 2023): one ViT-B for joint feature extraction and matching",
                  *_simvos("simvos-b"), needs_checkpoint=True),
        ModelInfo("simvos-l", "SimVOS-L (CVPR 2023): as SimVOS-B with a ViT-L",
                  *_simvos("simvos-l"), needs_checkpoint=True),
        ModelInfo("simvos-bs", "SimVOS-BS (CVPR 2023): ViT-B, within-frame attention + token refinement (faster)",
                  *_simvos("simvos-bs"), needs_checkpoint=True),
        ModelInfo(
            "jointformer",
            "JointFormer (TPAMI 2025): one ConvMAE for features, matching and a compressed-memory token",
            _jointformer,
            _jointformer_layout,
            needs_checkpoint=True,
        ),
    ]
}


def model_names() -> list[str]:
    return list(MODELS)


def get_model_info(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model '{name}' (available: {', '.join(MODELS)})") from None


def build_model(name: str, weights: Path | None, device: torch.device) -> VOSNetwork:
    """Build ``name`` on ``device`` with ``weights`` (a checkpoint path, already resolved)."""
    return get_model_info(name).build(weights, device)


def layout_of(model: str) -> dict[str, tuple[int, ...]]:
    """The checkpoint layout ``model`` loads (used by ``vostool weights verify`` and downloads)."""
    return get_model_info(model).layout()
