"""A model's settings as the engine and the adapter read them: :class:`ModelSettings`.

A model package gives its official defaults as one ``ModelSettings`` (its spec's ``defaults``); a
user's overrides (:class:`~vostool.settings.RunSettings`, already validated) are merged into them once,
with :meth:`ModelSettings.merged`, and the result is handed to the adapter when it is built. The engine
takes pre-processing, memory policy and precision from ``network.settings``; the adapter reads top-k.

Importing this module does not import torch (model specs are listed without it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..settings import NATIVE_SIZE, SettingsError
from .memory import MemoryPolicy

if TYPE_CHECKING:
    from ..settings import RunSettings


@dataclass(frozen=True)
class Preprocessing:
    """How frames are turned into network input. One instance per model family."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Internal short side in pixels, or None for native size. Resizing happens on the normalised
    # float tensor (`resize_mode`, align_corners=False, no antialias), as the official STCN/SimVOS
    # (bicubic) and JointFormer (bilinear) code does; the long side is int(size * long / short).
    # A frame whose short side already equals `short_side` is left untouched.
    short_side: int | None = 480
    stride: int = 16  # pad H and W up to a multiple of this, centred, zeros in normalised space
    resize_mode: str = "bicubic"
    # True for official loops that crop a prediction to the frame and pad it again with zeros before
    # memorising it (STM-style, SITVOS): the masks encode_value sees are then zero in the padding.
    # False keeps the network's own prediction there (STCN and SimVOS work at the padded size).
    zero_padded_memory_masks: bool = False


@dataclass(frozen=True)
class ModelSettings:
    """Everything that configures one built network: pre-processing, memory policy, top-k, precision.

    ``top_k``: how many memory positions each query position reads, or None for a model without a
    top-k readout. ``precision``: "fp32", "tf32" (TF32 products on CUDA) or "fp16"/"bf16" (autocast on
    the device), see :mod:`vostool.engine.precision`.
    """

    preprocessing: Preprocessing
    memory: MemoryPolicy
    top_k: int | None = None
    precision: str = "fp32"
    compile: bool = False  # torch.compile the fixed-shape parts when the network is built

    def merged(self, run: RunSettings, model: str) -> ModelSettings:
        """These defaults with the user's overrides ``run`` (validated already) applied once.

        ``size=-1`` (native) becomes ``short_side=None``. Raises :class:`SettingsError` (``top_k``)
        when ``model`` has no top-k readout to set.
        """
        if run.top_k is not None and self.top_k is None:
            raise SettingsError("top_k", run.top_k, f"model {model} has no top-k memory readout")
        preprocessing = self.preprocessing
        if run.size is not None:
            short_side = None if run.size == NATIVE_SIZE else run.size
            preprocessing = dataclasses.replace(preprocessing, short_side=short_side)
        return dataclasses.replace(
            self,
            preprocessing=preprocessing,
            memory=self.memory.with_overrides(run.mem_every, run.max_memory_frames),
            top_k=self.top_k if run.top_k is None else run.top_k,
            precision=run.precision,
            compile=run.compile,
        )
