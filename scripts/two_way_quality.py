"""Two-way propagation quality: annotate only the middle frame of each DAVIS sequence, segment with
``direction="both"``, and score the frames before it (the backward half) and after it (the forward half)
separately with vostool's DAVIS J&F (per object and frame, as ``vostool eval`` scores them).

    python scripts/two_way_quality.py [--davis ../shared/data/davis-mini] [--model propagate-lite0] [--device cpu]

Prints one row per sequence and the mean J&F of each half; the check is that they lie within 0.03.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import vostool  # noqa: E402
from vostool.eval.davis import read_sequence_names  # noqa: E402
from vostool.eval.metrics import boundary_radius, frame_scores  # noqa: E402


def half_scores(gt: np.ndarray, pred: np.ndarray, frames: range) -> float:
    """Mean of (J + F) / 2 over the objects and ``frames`` of one sequence."""
    radius = boundary_radius(*gt.shape[1:])
    scores = []
    for object_id in (int(i) for i in np.unique(gt[0]) if i not in (0, 255)):
        j, f = frame_scores(gt[frames] == object_id, pred[frames] == object_id, radius)
        scores.append((j + f) / 2)
    return float(np.mean(np.concatenate(scores)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, default=REPO.parent / "shared" / "data" / "davis-mini")
    parser.add_argument("--model", default="propagate-lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args()
    tracker = vostool.load(args.model, device=args.device, size=args.size)
    rows, started = [], time.perf_counter()
    for name in read_sequence_names(args.davis, "val", "2017"):
        frames_dir = args.davis / "JPEGImages" / "480p" / name
        annotations = sorted((args.davis / "Annotations" / "480p" / name).glob("*.png"))
        gt = np.stack([np.array(Image.open(path)) for path in annotations])
        middle = len(annotations) // 2
        with tempfile.TemporaryDirectory() as work:
            masks, out = Path(work) / "masks", Path(work) / "out"
            masks.mkdir()
            Image.open(annotations[middle]).save(masks / annotations[middle].name)  # the middle frame only
            vostool.segment(frames_dir, masks_dir=masks, out_dir=out, direction="both", tracker=tracker)
            pred = np.stack([np.array(Image.open(path)) for path in sorted(out.glob("*.png"))])
        backward = half_scores(gt, pred, range(0, middle))
        forward = half_scores(gt, pred, range(middle + 1, len(gt)))
        rows.append((name, len(gt), middle, backward, forward))
        print(f"{name:24s} frames {len(gt):3d}  annotated {middle:3d}  backward J&F {backward:.3f}  forward J&F {forward:.3f}",
              flush=True)  # fmt: skip
    backward, forward = np.mean([r[3] for r in rows]), np.mean([r[4] for r in rows])
    print(f"{'mean':24s} backward J&F {backward:.3f}  forward J&F {forward:.3f}  difference {backward - forward:+.3f}"
          f"  ({time.perf_counter() - started:.0f} s, {args.model} on {tracker.device})")  # fmt: skip


if __name__ == "__main__":
    main()
