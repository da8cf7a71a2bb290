"""What vostool knows about a model before building it: the torch-free :class:`ModelSpec`.

Each model package (``vostool/models/stcn/`` ...) describes itself in its ``__init__.py`` with a
``ModelSpec``: name, one-line summary, paper, official default settings, released checkpoints, and where
its builder and checkpoint layout live. Those two are ``"module:attribute"`` strings imported only when called, so listing models
and checkpoints (``vostool --help``, ``vostool weights list``) never imports torch or a network.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vostool.engine.config import ModelSettings, Preprocessing
from vostool.engine.memory import EveryNthFrame

if TYPE_CHECKING:
    import torch

    from vostool.engine.protocol import VOSNetwork
    from vostool.settings import RunSettings

GOOGLE_DRIVE = "Google Drive"
GITHUB_RELEASE = "GitHub release"
PIP_WHEEL = "pip wheel"

Layout = dict[str, tuple[int, ...]]
# What a spec that states no defaults gets: ImageNet normalisation, short side 480, every 5th frame.
GENERIC_DEFAULTS = ModelSettings(preprocessing=Preprocessing(), memory=EveryNthFrame())


@dataclass(frozen=True)
class CheckpointSpec:
    """One released weights file of one model."""

    name: str
    """Registry name, used by ``vostool weights download NAME``."""
    filename: str
    """File name in the cache (the publisher's name where one is given)."""
    source: str
    """Where the file comes from: Google Drive, GitHub release or pip wheel."""
    licence: str
    description: str
    urls: tuple[str, ...] = ()
    """Download locations, tried in order (mirrors). Empty for files shipped in a package."""
    sha256: str | None = None
    """Published (or otherwise certain) sha256; a file with another hash is rejected."""
    size_bytes: int | None = None
    """Exact size when it is known; a file of another size is rejected."""
    headline: tuple[tuple[str, float], ...] = ()
    """The paper's or README's headline numbers for this file: (benchmark and metric, value)."""
    default: bool = False
    """Whether ``--model <model>`` uses this file when no ``--weights`` is given."""
    locate: Callable[[], str] | None = field(default=None, compare=False, repr=False)
    """For files shipped inside an installed package: returns the file's path (no download)."""
    model: str = ""
    """The ``--model`` name this file is a checkpoint of; filled in by the :class:`ModelSpec` holding it."""

    @property
    def bundled(self) -> bool:
        """True for files that come with an installed package instead of being downloaded."""
        return self.locate is not None

    @property
    def approx_size_bytes(self) -> int:
        """The float32 payload of the model's layout: an estimate shown to users, never used to verify."""
        from vostool.models.registry import get_spec

        return get_spec(self.model).approx_size_bytes()


@dataclass(frozen=True)
class ModelSpec:
    """One model as the registry lists it; :meth:`build` and :meth:`layout` import its code lazily."""

    name: str
    """The ``--model`` name."""
    summary: str
    """One line: what the method does."""
    paper: str
    """Method and venue, e.g. ``"STCN (NeurIPS 2021)"``."""
    builder: str
    """``"module:function"`` of ``build(weights: Path | None, device, settings: ModelSettings) -> VOSNetwork``."""
    layout_fn: str
    """``"module:function"`` returning the exact state-dict layout (name -> shape) of a checkpoint."""
    defaults: ModelSettings = GENERIC_DEFAULTS
    """The official settings: pre-processing, memory policy, top-k (user overrides are merged in)."""
    checkpoints: tuple[CheckpointSpec, ...] = ()
    unreleased: str | None = None
    """Why the authors' checkpoint cannot be downloaded, for methods that released none."""
    needs_checkpoint: bool = True
    """False when the default weights ship with the installation (no download, works offline)."""
    trainer: str | None = None
    """``"module:callable"`` of ``trainer(weights: Path | None, device) -> Trainable`` for models
    ``vostool train`` can train (see :mod:`vostool.train.loop`); None for the others."""

    def __post_init__(self) -> None:
        owned = tuple(dataclasses.replace(ckpt, model=self.name) for ckpt in self.checkpoints)
        object.__setattr__(self, "checkpoints", owned)
        defaults = [ckpt.name for ckpt in owned if ckpt.default]
        if len(defaults) > 1:
            raise ValueError(f"model {self.name} has several default checkpoints: {', '.join(defaults)}")

    @property
    def default_checkpoint(self) -> CheckpointSpec | None:
        """The file ``--model NAME`` uses without ``--weights`` (None: random init or unreleased)."""
        return next((ckpt for ckpt in self.checkpoints if ckpt.default), None)

    def build(self, weights: Path | None, device: torch.device, settings: ModelSettings | None = None) -> VOSNetwork:
        """The network on ``device`` with ``weights`` (a checkpoint path already resolved, or None) and
        ``settings`` (None: :attr:`defaults`; see :meth:`settings_for`)."""
        return pkgutil.resolve_name(self.builder)(weights, device, settings or self.defaults)

    def settings_for(self, run: RunSettings) -> ModelSettings:
        """:attr:`defaults` with the user's overrides; SettingsError names a parameter that does not apply."""
        return self.defaults.merged(run, self.name)

    def layout(self) -> Layout:
        """The exact layout (name -> shape) a checkpoint of this model has."""
        return pkgutil.resolve_name(self.layout_fn)()

    def approx_size_bytes(self) -> int:
        """Float32 bytes of :meth:`layout`: what a checkpoint file weighs, give or take its metadata."""
        return _float32_bytes(self.layout_fn)


@functools.cache
def _float32_bytes(layout_fn: str) -> int:
    # Cached: `weights list` asks once per checkpoint, and a layout builds the network on the meta device.
    layout = pkgutil.resolve_name(layout_fn)()
    return 4 * sum(math.prod(shape) for shape in layout.values())
