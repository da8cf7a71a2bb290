"""Released checkpoints (listed in the model specs): lookup, the cache, downloads and verification.

``resolve_weights`` is what commands call; the rest serves ``vostool weights list|download|path|verify|blend``
and library users who manage weights themselves.
"""

from vostool.weights.blend import blend_checkpoints
from vostool.weights.cache import (
    HOME_ENV,
    cache_dir,
    cache_file,
    cached_path,
    hash_record_path,
    read_recorded_sha256,
    sha256_file,
    weights_dir,
)
from vostool.weights.downloads import (
    OFFLINE_ENV,
    DownloadError,
    checked_cache_file,
    direct_download_url,
    download,
    fetch,
    offline_message,
    offline_requested,
)
from vostool.weights.registry import (
    GITHUB_RELEASE,
    GOOGLE_DRIVE,
    PIP_WHEEL,
    Checkpoint,
    checkpoints_for,
    default_checkpoint,
    get_checkpoint,
    list_checkpoints,
    unreleased_reason,
)
from vostool.weights.resolve import resolve_weights
from vostool.weights.verify import (
    LayoutProvider,
    VerifyResult,
    checkpoint_for_file,
    default_layout_of,
    load_verified,
    verify,
)

__all__ = [
    "GITHUB_RELEASE",
    "GOOGLE_DRIVE",
    "HOME_ENV",
    "OFFLINE_ENV",
    "PIP_WHEEL",
    "Checkpoint",
    "DownloadError",
    "LayoutProvider",
    "VerifyResult",
    "blend_checkpoints",
    "cache_dir",
    "cache_file",
    "cached_path",
    "checked_cache_file",
    "checkpoint_for_file",
    "checkpoints_for",
    "default_checkpoint",
    "default_layout_of",
    "direct_download_url",
    "download",
    "fetch",
    "get_checkpoint",
    "hash_record_path",
    "list_checkpoints",
    "load_verified",
    "offline_message",
    "offline_requested",
    "read_recorded_sha256",
    "resolve_weights",
    "sha256_file",
    "unreleased_reason",
    "verify",
    "weights_dir",
]
