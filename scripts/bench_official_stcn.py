"""vostool's STCN against the official STCN code, side by side in one run, on the same frames and weights.

Usage (from the repository root; OFFICIAL is a checkout of hkchengrex/STCN, commit eb83102):

    python scripts/bench_official_stcn.py --official OFFICIAL [--device cpu] [--frames 12] [--repeats 5]

The official code is never imported from the repository: its files are copied into a scratch folder and,
for a CPU run, given the device edits only (``.cuda()`` dropped, ``device = 'cuda'`` -> ``'cpu'``, and the
ImageNet downloads off: ``pretrained=False``, ``weights=None``), as when the parity vectors were made.
Both sides get the synthetic weights of the released checkpoint's layout (``../shared/spec/synthweights.py``)
and the first ``--frames`` frames of a davis-mini sequence at native size (the official DAVIS path: top-k
20, memory every 5th frame), with 1 and 3 objects (3: the sequence's mask split into vertical thirds).

Measured, per object count, in interleaved runs (official, vostool, official, vostool, ...):

* model-only: frames already decoded, normalised and in memory; the official ``InferenceCore.interact``
  against vostool's tracker session stepping prepared frames, labels on the host at the end of each;
* end to end: read the JPEG frames, segment, write palette PNGs (the official ``eval_davis.py`` loop: its
  dataset's loading and normalisation, ``interact``, unpad, argmax, PIL save) against ``vostool.segment``.

It prints a markdown table of medians and ratios, with the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
OFFICIAL_FILES = ("inference_core.py", "inference_memory_bank.py", "model", "util")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of hkchengrex/STCN")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequence", default="blackswan", help="davis-mini sequence")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    return parser.parse_args()


# ----------------------------------------------------------------------------------- the official side


def official_scratch_copy(official: Path, scratch: Path, device: str) -> Path:
    """The official files in ``scratch``, with the device edits for a CPU run (nothing numeric changes)."""
    scratch.mkdir(parents=True)
    for name in OFFICIAL_FILES:
        source = official / name
        if source.is_dir():
            shutil.copytree(source, scratch / name)
        else:
            shutil.copy2(source, scratch / name)
    for path in scratch.rglob("*.py"):
        text = path.read_text()
        text = text.replace("pretrained=True", "pretrained=False")
        text = text.replace("models.resnet50(pretrained=False)", "models.resnet50(weights=None)")
        if device == "cpu":
            text = text.replace(".cuda()", "").replace("device = 'cuda'", "device = 'cpu'")
            text = text.replace("device='cuda'", "device='cpu'")
        path.write_text(text)
    return scratch


class Official:
    """The official STCN network and inference core, imported from the scratch copy."""

    def __init__(self, scratch: Path, state: dict[str, torch.Tensor]) -> None:
        sys.path.insert(0, str(scratch))
        self.core_module = importlib.import_module("inference_core")
        self.tensor_util = importlib.import_module("util.tensor_util")
        network = importlib.import_module("model.eval_network").STCN()
        network.load_state_dict(state)
        self.net = network.eval()

    @torch.no_grad()
    def run(self, images: torch.Tensor, first_mask: np.ndarray) -> np.ndarray:
        """``images`` (1, T, 3, H, W) normalised; returns the labels (T, H, W) as eval_davis.py computes them."""
        ids = [i for i in np.unique(first_mask) if i != 0]
        mask = torch.stack([torch.from_numpy(first_mask == i).float() for i in ids]).unsqueeze(1)  # (K, 1, H, W)
        core = self.core_module.InferenceCore(self.net, images, len(ids), top_k=20, mem_every=5)
        core.interact(mask, 0, images.shape[1])
        labels = []
        for t in range(core.t):
            prob = self.tensor_util.unpad(core.prob[:, t], core.pad)
            labels.append(torch.argmax(prob, dim=0)[0].cpu().numpy().astype(np.uint8))
        return np.stack(labels)


def official_end_to_end(official: Official, files: list[Path], first_mask: np.ndarray, out: Path) -> None:
    """eval_davis.py's loop: load and normalise every frame (its dataset), interact, unpad, argmax, save PNGs."""
    frames = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255 for f in files]
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    images = torch.stack([(f - mean) / std for f in frames]).unsqueeze(0)
    labels = official.run(images, first_mask)
    out.mkdir(parents=True, exist_ok=True)
    palette = Image.open(SHARED / "data" / "davis-mini" / "Annotations" / "480p" / files[0].parent.name / "00000.png").getpalette()
    for file, frame_labels in zip(files, labels):
        image = Image.fromarray(frame_labels)
        image.putpalette(palette)
        image.save(out / f"{file.stem}.png")


# ------------------------------------------------------------------------------------- the shared input


def split_objects(mask: np.ndarray, objects: int) -> np.ndarray:
    """The sequence's foreground as ``objects`` objects: vertical thirds (or halves) of its bounding box."""
    foreground = mask > 0
    if objects == 1:
        return foreground.astype(np.uint8)
    columns = np.nonzero(foreground.any(axis=0))[0]
    edges = np.linspace(columns[0], columns[-1] + 1, objects + 1).astype(int)
    labels = np.zeros(mask.shape, np.uint8)
    for index in range(objects):
        band = np.zeros_like(foreground)
        band[:, edges[index] : edges[index + 1]] = True
        labels[foreground & band] = index + 1
    return labels


def save_mask(labels: np.ndarray, path: Path) -> Path:
    from vostool.io.palette import DAVIS_PALETTE

    image = Image.fromarray(labels, mode="P")
    image.putpalette(DAVIS_PALETTE)
    image.save(path)
    return path


def median_seconds(runs: list[float]) -> float:
    return statistics.median(runs)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SHARED / "spec"))
    import synthweights

    import vostool
    from vostool.io.frames import open_frames

    manifest = json.loads((SHARED / "spec" / "stcn" / "manifest.json").read_text())
    state = synthweights.synth_state_dict(manifest["checkpoint_layout"], seed=0)
    sequence = SHARED / "data" / "davis-mini" / "JPEGImages" / "480p" / args.sequence
    files = sorted(sequence.glob("*.jpg"))[: args.frames]
    gt = np.array(Image.open(SHARED / "data" / "davis-mini" / "Annotations" / "480p" / args.sequence / "00000.png"))
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="vostool-vs-official-") as scratch_name:
        scratch = Path(scratch_name)
        official = Official(official_scratch_copy(args.official, scratch / "official", args.device), state)
        weights = scratch / "stcn-synthetic.pth"
        torch.save(state, weights)
        tracker = vostool.load("stcn", weights=weights, device=args.device, size=-1)  # the official DAVIS path
        frames_dir = scratch / "frames"
        frames_dir.mkdir()
        for file in files:
            shutil.copy2(file, frames_dir / file.name)
        source_frames = list(open_frames(frames_dir))
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        images = torch.stack([(torch.from_numpy(f).permute(2, 0, 1).float() / 255 - mean) / std for f in source_frames])
        images = images.unsqueeze(0)

        rows = []
        for objects in args.objects:
            first = split_objects(gt, objects)
            mask_file = save_mask(first, scratch / f"mask{objects}.png")
            times: dict[str, list[float]] = {"official model-only": [], "vostool model-only": [],
                                             "official end to end": [], "vostool end to end": []}
            agreement = None
            for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
                start = time.perf_counter()
                official_labels = official.run(images, first)
                t_official = time.perf_counter() - start

                session = tracker.session(num_frames=len(source_frames))
                session.add_masks(0, first)
                prepared = [session.prepare(frame) for frame in source_frames]
                start = time.perf_counter()
                ours = np.stack([session.step(frame).labels for frame in prepared])
                t_ours = time.perf_counter() - start

                start = time.perf_counter()
                official_end_to_end(official, files, first, scratch / f"official-{objects}-{repeat}")
                t_official_e2e = time.perf_counter() - start
                start = time.perf_counter()
                vostool.segment(frames_dir, mask_file, out_dir=scratch / f"ours-{objects}-{repeat}", tracker=tracker)
                t_ours_e2e = time.perf_counter() - start
                if repeat == 0:
                    agreement = float((ours == official_labels).mean())
                    continue
                for key, value in zip(times, (t_official, t_ours, t_official_e2e, t_ours_e2e)):
                    times[key].append(value)
            medians = {key: median_seconds(value) for key, value in times.items()}
            rows.append((objects, medians, agreement))

    load_after = os.getloadavg()[0]
    height, width = source_frames[0].shape[:2]
    print(f"STCN, vostool vs official (eb83102, device edits only), {args.device}, torch threads "
          f"{torch.get_num_threads()}, {len(files)} frames of {args.sequence} at {width}x{height}, "
          f"synthetic weights, median of {args.repeats} interleaved runs; load average {load_before:.1f} -> {load_after:.1f}")
    print()
    print("| objects | official model-only fps | vostool model-only fps | ratio | official end-to-end fps | "
          "vostool end-to-end fps | ratio | labels equal |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    frames = len(files)
    for objects, medians, agreement in rows:
        o_mo, v_mo = frames / medians["official model-only"], frames / medians["vostool model-only"]
        o_e2e, v_e2e = frames / medians["official end to end"], frames / medians["vostool end to end"]
        print(f"| {objects} | {o_mo:.3f} | {v_mo:.3f} | {v_mo / o_mo:.2f}x | {o_e2e:.3f} | {v_e2e:.3f} | "
              f"{v_e2e / o_e2e:.2f}x | {agreement:.4%} |")


if __name__ == "__main__":
    main()
