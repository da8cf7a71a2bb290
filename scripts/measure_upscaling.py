"""Does upscaling small frames to the model's internal size help accuracy? Measured on davis-mini.

Usage (from the repository root):

    python scripts/measure_upscaling.py [--model propagate-lite0] [--short-sides 360 240] [--threads 1]

davis-mini (854x480) is first downscaled to each ``--short-sides`` value (frames bicubic, annotations
nearest) into a scratch folder in the DAVIS layout (never into the repository). Each copy is then
segmented twice with ``--model``: at the model's internal short side (the small frames upscaled, today's
behaviour) and at their native size (``size=-1``), and scored with vostool's DAVIS evaluator against the
downscaled ground truth. It prints J&F per run and the wall time, as a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from vostool.eval.davis import evaluate_davis
from vostool.eval.predict import segment_davis
from vostool.tracker import load

DAVIS_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-mini"


def downscaled_copy(source: Path, target: Path, short_side: int) -> None:
    """``source`` (a DAVIS root) with every frame and annotation scaled to ``short_side``."""
    for kind, resample in (("JPEGImages", Image.BICUBIC), ("Annotations", Image.NEAREST)):
        for image_path in sorted((source / kind / "480p").rglob("*.*")):
            out = target / kind / "480p" / image_path.relative_to(source / kind / "480p")
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(image_path) as image:
                w, h = image.size
                scale = short_side / min(w, h)
                size = (round(w * scale), round(h * scale))
                resized = image.resize(size, resample)
                if image.mode == "P":
                    resized.putpalette(image.getpalette())
                resized.save(out, quality=95) if out.suffix == ".jpg" else resized.save(out)
    shutil.copytree(source / "ImageSets", target / "ImageSets")


def score(root: Path, model: str, size: int | None, scratch: Path) -> tuple[float, float]:
    results = scratch / f"results-{size}"
    tracker = load(model, device="cpu", size=size)
    start = time.perf_counter()
    segment_davis(root, results, tracker=tracker)
    seconds = time.perf_counter() - start
    return evaluate_davis(root, results, workers=1).global_metrics["J&F-Mean"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="propagate-lite0")
    parser.add_argument("--short-sides", type=int, nargs="+", default=[360, 240])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| frames' short side | processed at | J&F | seconds |")
    print("|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="vostool-upscaling-") as tmp:
        for short_side in args.short_sides:
            root = Path(tmp) / f"davis-{short_side}"
            downscaled_copy(DAVIS_MINI, root, short_side)
            for size, label in ((None, "internal size (upscaled)"), (-1, "native size")):
                jf, seconds = score(root, args.model, size, Path(tmp))
                print(f"| {short_side} | {label} | {jf:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
