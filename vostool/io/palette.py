"""The DAVIS / PASCAL VOC colour map used for indexed mask PNGs and overlays."""

from __future__ import annotations

import numpy as np

PALETTE_BYTES = 256 * 3


def _voc_palette() -> bytes:
    """Build the PASCAL VOC colour map: the bits of each index are spread over R, G and B.

    Bit 0 of the index feeds red, bit 1 green, bit 2 blue, filling each channel from its most
    significant bit downwards; the next three bits fill the next lower bit of each channel, and so on.
    Index 1 is therefore (128, 0, 0), index 2 (0, 128, 0), index 3 (128, 128, 0).
    """
    table = bytearray()
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        table += bytes((red, green, blue))
    return bytes(table)


DAVIS_PALETTE: bytes = _voc_palette()


def normalize_palette(palette: bytes | bytearray | list[int] | None) -> bytes:
    """Return a 768-byte RGB palette: DAVIS_PALETTE for None, shorter palettes padded with black."""
    if palette is None:
        return DAVIS_PALETTE
    data = bytes(palette)
    if len(data) > PALETTE_BYTES or len(data) % 3:
        raise ValueError(f"a palette is up to 256 RGB triplets, got {len(data)} bytes")
    return data + bytes(PALETTE_BYTES - len(data))


def colors(palette: bytes | bytearray | list[int] | None = None) -> np.ndarray:
    """The palette as a (256, 3) uint8 array, row k being the colour of object id k."""
    return np.frombuffer(normalize_palette(palette), dtype=np.uint8).reshape(256, 3).copy()
