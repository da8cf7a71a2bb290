"""Throughput of `vostool batch` with 1 and with N processes on this machine: videos/hour, frames/s, scaling.

    python scripts/bench_batch.py                       # 1 vs 2 processes on a synthetic DAVIS-layout set
    python scripts/bench_batch.py --processes 1 8 --device cuda --videos 64 --frames 60 --size 480

A synthetic DAVIS-layout set (textured background, two boxes moving across it) is written to a temporary
folder; each configuration runs `vostool batch` in a fresh process on a fresh --out (`--workers N`, i.e.
torch's elastic launcher, for N > 1) with the CPU cores split evenly between the processes. Figures:

* `seconds`: wall time of the whole command (interpreter and torch start, model load, every video);
* `segment_seconds`: the batch's own clock (model load + videos, rank 0's view, from its JSON summary);
* videos/hour and fps from both; scaling efficiency = throughput(N) / (N x throughput(1)).

Prints a JSON report (machine, load average before and after, settings, runs) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, videos: int, frames: int, height: int, width: int) -> Path:
    """DAVIS layout: ``videos`` sequences of ``frames`` frames, lengths varied by a third so that sharding matters."""
    rng = np.random.default_rng(0)
    names = []
    for index in range(videos):
        name = f"seq{index:03d}"
        names.append(name)
        count = max(3, int(frames * (0.67 + 0.66 * index / max(videos - 1, 1))))
        texture = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
        for t in range(count):
            shift = (3 * t) % width
            frame = texture[:, shift : shift + width].copy()
            labels = np.zeros((height, width), np.uint8)
            for object_id, (y, x, dx) in enumerate([(height // 5, width // 8, 2), (height // 2, width // 2, -2)], 1):
                x0 = int(np.clip(x + dx * t, 0, width - width // 4))
                region = np.s_[y : y + height // 4, x0 : x0 + width // 4]
                frame[region] = (230, 190, 40) if object_id == 1 else (40, 200, 230)
                labels[region] = object_id
            image_dir = root / "JPEGImages" / "480p" / name
            image_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(image_dir / f"{t:05d}.jpg", quality=90)
            annotation_dir = root / "Annotations" / "480p" / name
            annotation_dir.mkdir(parents=True, exist_ok=True)
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9))
            mask.save(annotation_dir / f"{t:05d}.png")
    listing = root / "ImageSets" / "2017" / "val.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{name}\n" for name in names))
    return root


def run(dataset: Path, out: Path, processes: int, args: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // processes) if args.device == "cpu" else None
    command = [sys.executable, "-m", "vostool", "batch", str(dataset), "--out", str(out), "--model", args.model,
               "--device", args.device, "--size", str(args.size), "--json", "--quiet", "--workers", str(processes)]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"vostool batch failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    videos, frames = summary["counts"]["done"], summary["frames"]
    return {
        "processes": processes, "threads_per_process": threads, "videos": videos, "frames": frames,
        "seconds": round(seconds, 2), "segment_seconds": summary["seconds"],
        "videos_per_hour": round(videos * 3600 / seconds, 1), "fps": round(frames / seconds, 2),
        "segment_videos_per_hour": summary["videos_per_hour"], "segment_fps": summary["fps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=24, help="average frames per video (lengths vary +-33%%)")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--size", type=int, default=120, help="--size for vostool (internal short side)")
    parser.add_argument("--model", default="propagate-lite0")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vostool-bench-batch-") as temp:
        dataset = make_dataset(Path(temp) / "davis", args.videos, args.frames, args.height, args.width)
        runs = [run(dataset, Path(temp) / f"out-{n}", n, args) for n in args.processes]
    base = runs[0]
    for entry in runs:
        scale = entry["processes"] / base["processes"]
        entry["scaling_efficiency"] = round(entry["videos_per_hour"] / (scale * base["videos_per_hour"]), 3)
        entry["segment_scaling_efficiency"] = round(
            entry["segment_videos_per_hour"] / (scale * base["segment_videos_per_hour"]), 3)
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": vars(args), "runs": runs,
    }
    print(json.dumps(report, indent=1))
    print("\n| processes | threads each | videos | frames | wall s | videos/hour | fps | scaling | batch clock s | "
          "videos/hour | fps | scaling |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['processes']} | {r['threads_per_process'] or '-'} | {r['videos']} | {r['frames']} | {r['seconds']} | "
              f"{r['videos_per_hour']} | {r['fps']} | {r['scaling_efficiency']:.0%} | {r['segment_seconds']} | "
              f"{r['segment_videos_per_hour']} | {r['segment_fps']} | {r['segment_scaling_efficiency']:.0%} |")


if __name__ == "__main__":
    main()
