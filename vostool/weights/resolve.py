"""Which weights file a command uses: ``--weights`` if given, else the model's default checkpoint.

This is the one function ``segment``, ``eval`` and ``bench`` call. The default checkpoint comes from
the cache when it is there (checked against its recorded hash), is downloaded on first use, and is
never downloaded in offline mode (``--offline`` or ``VOSTOOL_OFFLINE=1``).
"""

from __future__ import annotations

import os
from pathlib import Path

from vostool.errors import InputError, ModelError
from vostool.weights.cache import cache_file, cached_path
from vostool.weights.downloads import checked_cache_file, download
from vostool.weights.registry import Checkpoint, default_checkpoint, unreleased_reason
from vostool.weights.verify import LayoutProvider

OFFLINE_ENV = "VOSTOOL_OFFLINE"
_TRUE = {"1", "true", "yes", "on"}


def offline_requested(flag: bool = False) -> bool:
    """True when the ``--offline`` flag is set or ``VOSTOOL_OFFLINE`` is 1/true/yes/on."""
    return flag or os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def resolve_weights(
    model: str,
    weights: str | Path | None,
    *,
    offline: bool,
    progress: bool = True,
    layout_of: LayoutProvider | None = None,
) -> Path | None:
    """The weights file ``--model MODEL`` runs with.

    ``weights`` (``--weights PATH``) always wins. Otherwise the model's default checkpoint is taken
    from the cache or downloaded (unless offline). Returns None only for a model the weights registry
    does not know (the model registry decides whether that name is valid). Raises
    :class:`ModelError` when no weights can be had, saying how to get them.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InputError("weights file not found", path)
        return path
    reason = unreleased_reason(model)
    if reason is not None:
        raise ModelError(f"{model}: {reason}")
    ckpt = default_checkpoint(model)
    if ckpt is None:
        return None
    if ckpt.bundled or cached_path(ckpt) is not None:
        return checked_cache_file(ckpt, layout_of=layout_of)
    if offline_requested(offline):
        raise ModelError(offline_message(ckpt))
    return download(ckpt, progress=progress, layout_of=layout_of)


def offline_message(ckpt: Checkpoint) -> str:
    """Why an uncached checkpoint cannot be used offline, and the two ways to get it."""
    return (
        f"{ckpt.model}: the {ckpt.name} checkpoint is not in the cache ({cache_file(ckpt)}) and "
        f"offline mode is on (--offline or {OFFLINE_ENV}=1); run `vostool weights download "
        f"{ckpt.name}` while online, or download {ckpt.urls[0]} and pass it with --weights PATH"
    )
