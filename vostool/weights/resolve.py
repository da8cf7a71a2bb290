"""Which weights file a command uses: ``--weights`` if given, else the model's default checkpoint.

This is the one function ``segment``, ``eval`` and ``bench`` call. The default checkpoint comes from
the cache when it is there (checked against its recorded hash), is downloaded on first use, and is
never downloaded in offline mode (``--offline`` or ``VOSTOOL_OFFLINE=1``).
"""

from __future__ import annotations

from pathlib import Path

from vostool.errors import InputError, ModelError
from vostool.weights.downloads import download
from vostool.weights.registry import default_checkpoint, unreleased_reason
from vostool.weights.verify import LayoutProvider


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
    # download() returns a cached (or bundled) copy after checking it, and is where offline is decided.
    return download(ckpt, offline=offline, progress=progress, layout_of=layout_of)
