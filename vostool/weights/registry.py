"""Looking up released checkpoints by name, file name or model: a view of the model specs.

The checkpoints themselves are listed in each model's spec (``vostool/models/<model>/__init__.py``),
next to the network they belong to; this module only finds them. No publisher states file sizes or
hashes for the downloadable files, so ``size_bytes`` and ``sha256`` stay ``None`` for them: the first
verified download records its own hash (see :mod:`vostool.weights.cache`).
"""

from __future__ import annotations

from vostool.errors import ModelError
from vostool.models.registry import MODELS
from vostool.models.spec import GITHUB_RELEASE, GOOGLE_DRIVE, PIP_WHEEL, CheckpointSpec

# The weights package's name for a model spec's checkpoint.
Checkpoint = CheckpointSpec

__all__ = [
    "GITHUB_RELEASE",
    "GOOGLE_DRIVE",
    "PIP_WHEEL",
    "Checkpoint",
    "checkpoints_for",
    "default_checkpoint",
    "get_checkpoint",
    "list_checkpoints",
    "unreleased_reason",
]


def list_checkpoints() -> list[Checkpoint]:
    """Every registered checkpoint, grouped by model in registry order, defaults first within each model."""
    return [ckpt for spec in MODELS.values() for ckpt in sorted(spec.checkpoints, key=lambda c: not c.default)]


def checkpoints_for(model: str) -> list[Checkpoint]:
    """The registered checkpoints of ``model`` (empty for unknown or unreleased models)."""
    return [c for c in list_checkpoints() if c.model == model.lower()]


def default_checkpoint(model: str) -> Checkpoint | None:
    """The checkpoint ``--model MODEL`` uses without ``--weights``, or None when there is none."""
    return next((c for c in checkpoints_for(model) if c.default), None)


def unreleased_reason(model: str) -> str | None:
    """Why ``model`` has no downloadable checkpoint, for models whose authors released none."""
    spec = MODELS.get(model.lower())
    return None if spec is None else spec.unreleased


def get_checkpoint(name_or_model: str) -> Checkpoint:
    """Look a checkpoint up by registry name, file name, or model name (giving its default).

    Raises :class:`ModelError` listing the registered names when nothing matches.
    """
    key = name_or_model.strip().lower()
    for ckpt in list_checkpoints():
        if key in (ckpt.name, ckpt.filename.lower()):
            return ckpt
    default = default_checkpoint(key)
    if default is not None:
        return default
    reason = unreleased_reason(key)
    if reason is not None:
        raise ModelError(reason)
    names = ", ".join(c.name for c in list_checkpoints())
    raise ModelError(f"unknown checkpoint or model {name_or_model!r}; registered checkpoints: {names}")
