"""Render the built-in demo clip: two textured objects moving over a textured background.

Writes ``assets/demo.mp4`` (H.264) and ``assets/demo_mask.png`` (first-frame palette mask, ids 1 and 2),
and, with ``--truth DIR``, the ground-truth label PNGs of every frame (used by the tests). Deterministic:
the same files come out every time.

    python scripts/make_demo.py                # regenerate the committed assets
    python scripts/make_demo.py --truth out/demo-truth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from vostool.io.palette import DAVIS_PALETTE

WIDTH, HEIGHT, FRAMES, FPS = 640, 360, 36, 12
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Value noise in [0, 1]: random values on a coarse grid, bilinearly upsampled (smooth, compresses well)."""
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.random((gh, gw, 3))
    ys, xs = np.arange(shape[0]) / cell, np.arange(shape[1]) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def render(t: int, background: np.ndarray, textures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Frame t as (RGB uint8, labels uint8). Object 2 passes in front of object 1 half-way through."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = background.copy()
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    phase = t / (FRAMES - 1)
    # object 1: a disc drifting right and slightly down, textured with warm checks
    cx, cy, r = 170 + 220 * phase, 150 + 40 * np.sin(np.pi * phase), 70
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    image[disc] = textures[0][disc]
    labels[disc] = 1
    # object 2: an ellipse moving left, in front of object 1
    ex, ey = 520 - 260 * phase, 230 - 30 * phase
    ellipse = ((xx - ex) / 95) ** 2 + ((yy - ey) / 55) ** 2 <= 1
    image[ellipse] = textures[1][ellipse]
    labels[ellipse] = 2
    return (image * 255).round().astype(np.uint8), labels


def make_textures() -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(2026)
    background = 0.25 + 0.5 * smooth_noise(rng, (HEIGHT, WIDTH), 40)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    checks = ((yy // 16 + xx // 16) % 2)[..., None]
    warm = np.clip(np.array([0.85, 0.35, 0.15]) + 0.15 * checks + 0.1 * smooth_noise(rng, (HEIGHT, WIDTH), 12), 0, 1)
    stripes = (np.sin(xx / 6.0) > 0)[..., None]
    cool = np.clip(np.array([0.1, 0.45, 0.8]) + 0.15 * stripes + 0.1 * smooth_noise(rng, (HEIGHT, WIDTH), 12), 0, 1)
    return background, [warm, cool]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="folder for demo.mp4 and demo_mask.png")
    parser.add_argument("--truth", type=Path, help="also write every frame's ground-truth labels here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    background, textures = make_textures()
    writer = imageio_ffmpeg.write_frames(
        str(args.out / "demo.mp4"), (WIDTH, HEIGHT), fps=FPS, codec="libx264", quality=7,
        pix_fmt_out="yuv420p", macro_block_size=8, output_params=["-preset", "veryslow"], ffmpeg_log_level="error",
    )
    writer.send(None)
    for t in range(FRAMES):
        image, labels = render(t, background, textures)
        writer.send(np.ascontiguousarray(image))
        label_image = Image.fromarray(labels, mode="P")
        label_image.putpalette(DAVIS_PALETTE)
        if t == 0:
            label_image.save(args.out / "demo_mask.png")
        if args.truth is not None:
            args.truth.mkdir(parents=True, exist_ok=True)
            label_image.save(args.truth / f"{t:05d}.png")
    writer.close()


if __name__ == "__main__":
    main()
