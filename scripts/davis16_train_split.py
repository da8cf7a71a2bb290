"""Make the training and held-out folders lite0-stcn was trained on, from a DAVIS 2016 checkout.

The DAVIS 2016 train split (30 sequences, 2,079 frames, a mask on every frame) is in the public repository
xmican10/KNN-project at commit 80880aeb900a0a1a7b010f111d4f33d0a5d25e05 (folders DAVIS/JPEGImages/480p,
DAVIS/Annotations/480p, DAVIS/ImageSets/480p). Only its *train* sequences are used; four of them are held
out for choosing settings, so that DAVIS val (davis-mini included) stays unseen:

    git clone https://github.com/xmican10/KNN-project && git -C KNN-project checkout 80880aeb
    python scripts/davis16_train_split.py KNN-project/DAVIS /data/davis16
    vostool train /data/davis16/train26 --init lite0-stcn --from-scratch --out lite0_stcn.pth \\
        --steps 2000 --max-skip 15 --checkpoint-every 200 --seed 0
    vostool eval --davis /data/davis16/holdout4-eval --model lite0-stcn --weights lite0_stcn.pth

Folders hold symbolic links to the checkout (nothing is copied), except ``holdout4-eval/Annotations``: the
DAVIS 2017 evaluator reads object ids, so the 0/255 masks are rewritten there as palette PNGs of id 1.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

HELD_OUT = ("bmx-bumps", "dog-agility", "kite-walk", "mallard-fly")


def train_sequences(davis: Path) -> list[str]:
    lines = (davis / "ImageSets" / "480p" / "train.txt").read_text().split("\n")
    return sorted({line.split("/")[3] for line in lines if line.strip()})


def link_layout(davis: Path, root: Path, sequences: list[str]) -> None:
    for kind in ("JPEGImages", "Annotations"):
        folder = root / kind / "480p"
        folder.mkdir(parents=True, exist_ok=True)
        for name in sequences:
            if not (folder / name).exists():
                os.symlink((davis / kind / "480p" / name).resolve(), folder / name)
    listing = root / "ImageSets" / "2017" / "val.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{name}\n" for name in sequences))


def write_eval_layout(davis: Path, root: Path, sequences: list[str]) -> None:
    link_layout(davis, root, sequences)
    palette = [0, 0, 0, 128, 0, 0] + [0] * (768 - 6)
    for name in sequences:
        folder = root / "Annotations" / "480p" / name
        folder.unlink()
        folder.mkdir()
        for mask in sorted((davis / "Annotations" / "480p" / name).glob("*.png")):
            ids = (np.array(Image.open(mask)) > 127).astype(np.uint8)
            image = Image.fromarray(ids, "P")
            image.putpalette(palette)
            image.save(folder / mask.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("davis", type=Path, help="the checkout's DAVIS folder")
    parser.add_argument("out", type=Path, help="where train26/, holdout4/ and holdout4-eval/ go")
    args = parser.parse_args()
    train = train_sequences(args.davis)
    assert set(HELD_OUT) <= set(train), "the held-out sequences must be train sequences"
    link_layout(args.davis, args.out / "train26", [s for s in train if s not in HELD_OUT])
    link_layout(args.davis, args.out / "holdout4", list(HELD_OUT))
    write_eval_layout(args.davis, args.out / "holdout4-eval", list(HELD_OUT))
    print(f"{len(train) - len(HELD_OUT)} training and {len(HELD_OUT)} held-out sequences in {args.out}")


if __name__ == "__main__":
    main()
