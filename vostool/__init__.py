"""vostool: semi-supervised video object segmentation from the command line and from Python."""

__version__ = "0.1.0"
