"""vostool: semi-supervised video object segmentation from the command line and from Python.

    >>> import vostool
    >>> vostool.segment("clip.mp4", "first_mask.png", out_dir="masks/", overlay="overlay.mp4")
"""

__version__ = "0.1.0"

from .errors import VostoolError, VostoolWarning
from .settings import RunSettings, SettingsError

__all__ = [
    "FrameResult", "RunSettings", "SegmentSummary", "Session", "SettingsError", "Tracker", "VostoolError",
    "VostoolWarning", "load", "segment", "__version__",
]


def __getattr__(name: str):
    # Lazy: `import vostool` (and the CLI's start-up) should not pay for importing torch.
    if name in ("segment", "SegmentSummary"):
        from . import api

        return getattr(api, name)
    if name in ("load", "Tracker", "Session", "FrameResult"):
        from . import tracker

        return getattr(tracker, name)
    raise AttributeError(f"module 'vostool' has no attribute {name!r}")
