"""Render one frame of each editor output (``--matte``, ``--cutout``, ``--soft``) of the demo clip into
docs/editor/, as small PNGs for the README.

    python scripts/make_editor_examples.py [--frame 10] [--size 240] [--width 320]

It runs ``vostool segment`` on assets/demo.mp4 with a matte MP4, a VP9 cut-out with alpha and soft maps,
then decodes frame ``--frame`` of each output back (the WebM through libvpx-vp9, which keeps the alpha)
and saves it scaled to ``--width`` pixels: the input frame, the matte, the cut-out (RGBA) and object 1's
probability map.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import vostool  # noqa: E402


def decoded_frame(video: Path, index: int, pix_fmt: str, channels: int, size: tuple[int, int], decoder: str | None = None) -> np.ndarray:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *(["-c:v", decoder] if decoder else []), "-i", str(video),
               "-vf", f"select=eq(n\\,{index})", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    height, width = size
    return np.frombuffer(raw, np.uint8).reshape(height, width, channels)


def save_small(array: np.ndarray, mode: str, path: Path, width: int) -> None:
    image = Image.fromarray(array.squeeze(), mode=mode)
    height = round(image.height * width / image.width)
    image.resize((width, height), Image.LANCZOS).save(path, optimize=True)
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=10)
    parser.add_argument("--size", type=int, default=240, help="internal short side for the model")
    parser.add_argument("--width", type=int, default=320, help="width of the PNGs written")
    args = parser.parse_args()
    docs = REPO / "docs" / "editor"
    docs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        summary = vostool.segment(
            REPO / "assets" / "demo.mp4", REPO / "assets" / "demo_mask.png", device="cpu", size=args.size,
            matte=work / "matte.mp4", cutout=work / "cutout.webm", soft=work / "soft",
        )
        size = summary.size
        frame = decoded_frame(REPO / "assets" / "demo.mp4", args.frame, "rgb24", 3, size)
        matte = decoded_frame(work / "matte.mp4", args.frame, "gray", 1, size)
        cutout = decoded_frame(work / "cutout.webm", args.frame, "rgba", 4, size, decoder="libvpx-vp9")
        soft = np.array(Image.open(work / "soft" / "1" / f"{args.frame:05d}.png"))
        save_small(frame, "RGB", docs / "frame.png", args.width)
        save_small(matte, "L", docs / "matte.png", args.width)
        save_small(cutout, "RGBA", docs / "cutout.png", args.width)
        save_small(soft, "L", docs / "soft-1.png", args.width)


if __name__ == "__main__":
    main()
