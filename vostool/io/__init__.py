"""Inputs and outputs: frame sources, mask readers, and atomic writers for masks, overlays and RLE."""

from vostool.io.frames import FolderFrames, FrameSource, VideoFrames, natural_key, open_frames
from vostool.io.masks import LabelMap, read_mask, read_masks_dir, read_rle_video
from vostool.io.palette import DAVIS_PALETTE, colors, normalize_palette
from vostool.io.writers import (
    AtomicFile,
    OverlayWriter,
    PaletteWriter,
    RleWriter,
    atomic_path,
    blend_overlay,
    encode_rle_objects,
)

__all__ = [
    "DAVIS_PALETTE",
    "AtomicFile",
    "FolderFrames",
    "FrameSource",
    "LabelMap",
    "OverlayWriter",
    "PaletteWriter",
    "RleWriter",
    "VideoFrames",
    "atomic_path",
    "blend_overlay",
    "colors",
    "encode_rle_objects",
    "natural_key",
    "normalize_palette",
    "open_frames",
    "read_mask",
    "read_masks_dir",
    "read_rle_video",
]
