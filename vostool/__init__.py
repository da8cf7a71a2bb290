"""vostool: semi-supervised video object segmentation from the command line and from Python.

    >>> import vostool
    >>> vostool.segment("clip.mp4", "first_mask.png", out_dir="masks/", overlay="overlay.mp4")
"""

__version__ = "0.1.0"

from .api import SegmentSummary, segment  # noqa: E402

__all__ = ["SegmentSummary", "segment", "__version__"]
