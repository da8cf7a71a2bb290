"""Verifying a weights file: its sha256 against every reference there is, and its exact layout.

The layout check is the one that matters most (no official hash exists for most files), so it is
never skipped: the file is read with ``weights_only=True`` (no pickled code can run) and its keys and
shapes must equal the network's. Where the expected layout comes from is a parameter, a
:data:`LayoutProvider`, so this package does not import the model modules itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vostool.errors import InputError, ModelError, UnknownModelError
from vostool.weights.cache import cache_file, is_sha256, read_recorded_sha256, sha256_file
from vostool.weights.registry import Checkpoint, list_checkpoints

LayoutProvider = Callable[[str], Mapping[str, tuple[int, ...]]]
"""Returns the exact state-dict layout (key -> shape) that a model's checkpoint must have, and raises
:class:`UnknownModelError` for a model vostool cannot build: that is what makes a model "available"."""


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` checked and found; a file that fails any check raises instead."""

    path: Path
    model: str
    checkpoint: str | None
    """Registry name when the file is a registered checkpoint's cached or bundled copy."""
    sha256: str
    size_bytes: int
    num_tensors: int
    num_values: int
    hash_matches: tuple[str, ...]
    """The references the hash matched: "given", "registry" and/or "recorded" (empty: none existed)."""


def default_layout_of(model: str) -> Mapping[str, tuple[int, ...]]:
    """The layout provider used when none is passed: ``vostool.models.registry.layout_of``."""
    try:
        from vostool.models.registry import layout_of
    except ImportError as exc:
        # A wiring bug, not a user error: say exactly what is missing.
        raise RuntimeError(
            "vostool.models.registry.layout_of(model) is missing; it must return the exact "
            "state-dict layout (key -> shape) of a model's checkpoint"
        ) from exc
    return layout_of(model)


def verify(
    path: str | Path,
    model: str | None = None,
    expected_sha256: str | None = None,
    layout_of: LayoutProvider | None = None,
    *,
    checkpoint: Checkpoint | None = None,
) -> VerifyResult:
    """Check that ``path`` is an intact checkpoint of ``model``; raise :class:`ModelError` if not.

    Checks, in order: the size and sha256 the registry states (if any), the ``expected_sha256`` the
    user gave, the sha256 recorded beside the file, and the exact key/shape layout of ``model``.
    ``model`` may be left out for a registered checkpoint's cached copy; ``checkpoint`` tells which
    registry entry the file is a copy of when its path does not say (a download in progress).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("weights file not found", path)
    checkpoint = checkpoint or checkpoint_for_file(path)
    model = _model_to_check(path, model, checkpoint)
    digest, matches = check_hashes(path, expected_sha256, checkpoint)
    state = load_verified(path, model, layout_of or default_layout_of)
    return VerifyResult(
        path=path,
        model=model,
        checkpoint=None if checkpoint is None else checkpoint.name,
        sha256=digest,
        size_bytes=path.stat().st_size,
        num_tensors=len(state),
        num_values=sum(tensor.numel() for tensor in state.values()),
        hash_matches=matches,
    )


def checkpoint_for_file(path: str | Path) -> Checkpoint | None:
    """The registered checkpoint whose cached (or bundled) copy is ``path``, if any."""
    target = Path(path).resolve()
    for ckpt in list_checkpoints():
        try:
            if cache_file(ckpt).resolve() == target:
                return ckpt
        except ModelError:  # a bundled file whose package is not installed
            continue
    return None


def check_hashes(
    path: Path, expected_sha256: str | None, checkpoint: Checkpoint | None
) -> tuple[str, tuple[str, ...]]:
    """Hash ``path`` and compare with every reference; return the digest and the references matched."""
    references: list[tuple[str, str]] = []
    if expected_sha256 is not None:
        given = expected_sha256.strip().lower()
        if not is_sha256(given):
            raise InputError(f"{expected_sha256!r} is not a sha256 (64 hex digits)")
        references.append(("given", given))
    if checkpoint is not None:
        _check_size(path, checkpoint)
        if checkpoint.sha256 is not None:
            references.append(("registry", checkpoint.sha256))
    recorded = read_recorded_sha256(path)
    if recorded is not None:
        references.append(("recorded", recorded))
    digest = sha256_file(path)
    for kind, reference in references:
        if digest != reference:
            raise ModelError(_hash_mismatch_message(kind, reference, digest, checkpoint), path)
    return digest, tuple(kind for kind, _ in references)


def _hash_mismatch_message(kind: str, reference: str, digest: str, ckpt: Checkpoint | None) -> str:
    what = {
        "given": "the sha256 you gave",
        "registry": "the published sha256",
        "recorded": "the sha256 recorded when it was first verified (the file changed since)",
    }[kind]
    fix = f"; run `vostool weights download {ckpt.name} --force`" if ckpt and not ckpt.bundled else ""
    return f"sha256 {digest} does not match {what}, {reference}{fix}"


def _check_size(path: Path, ckpt: Checkpoint) -> None:
    size = path.stat().st_size
    if ckpt.size_bytes is not None and size != ckpt.size_bytes:
        raise ModelError(f"is {size} bytes, but {ckpt.name} is {ckpt.size_bytes} bytes", path)


def _model_to_check(path: Path, model: str | None, checkpoint: Checkpoint | None) -> str:
    if model is None:
        if checkpoint is None:
            raise ModelError("cannot tell which model this file belongs to; name the model", path)
        model = checkpoint.model
    return model


def load_verified(path: Path, model: str, layout_of: LayoutProvider) -> dict:
    """The state_dict in ``path``, after checking that it has ``model``'s exact layout (ModelError if not)."""
    # Imported here: the models package is heavier than the registry and not needed for listing.
    from vostool.models.checkpoint import check_layout, load_checkpoint

    expected = layout_for(model, layout_of)
    state = load_checkpoint(path)
    check_layout(state, expected, model, path)
    return state


def layout_for(model: str, layout_of: LayoutProvider) -> Mapping[str, tuple[int, ...]]:
    """``layout_of(model)``, with a clear error for a registered method whose network vostool lacks."""
    try:
        return layout_of(model)
    except UnknownModelError:
        if any(c.model == model for c in list_checkpoints()):
            raise ModelError(
                f"vostool has no {model} network yet: its checkpoints are registered but cannot be "
                "checked or used"
            ) from None
        raise
