"""Time the windowed top-k readout of ``propagate-lite0`` against an earlier revision of it.

Usage::

    PYTHONPATH=$PWD python scripts/bench_readout.py [--baseline REV] [--frames 2 8 16] [--threads 1 2]

The baseline is ``vostool/engine/readout.py`` as it was at git revision ``REV`` (default: the commit
before the strip readout), loaded from git, so nothing old is kept in the package. Runs are
interleaved (baseline, current, baseline, current, ...) so that the load of other processes on a
shared machine hits both alike; each figure is the median of ``--rounds`` runs, of the wall-clock time
and of the CPU time (all threads: with 2 threads it includes the time they spend waiting for each
other). The load average is printed with every row because on a shared machine it decides how far
the absolute times can be trusted (the ratio is more robust).

Inputs are random, shaped as the default model sees them on DAVIS 480p: a 480x854 frame padded to
480x864 gives 60x108 stride-8 cells, keys have 40 + 112 channels, one object, top-k 20, radius 12,
temperature 0.1. The model holds the annotated frame and up to 15 recent ones, so T = 16 is what it
reads from the 16th frame of a video on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vostool.engine.readout import local_topk_readout  # noqa: E402

BASELINE_REV = "2ce9885"  # the tiled readout with a dense window bias, before this change
SETTINGS = dict(top_k=20, radius=12, temperature=0.1)


def load_baseline(rev: str) -> Callable[..., torch.Tensor]:
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:vostool/engine/readout.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    module = types.ModuleType(f"readout_{rev}")
    exec(compile(source, f"{rev}:vostool/engine/readout.py", "exec"), module.__dict__)
    return module.local_topk_readout


def make_inputs(frames: int, channels: int, h: int, w: int, objects: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(frames, channels, h, w, generator=gen), dim=1)
    values = torch.rand(frames, objects, h, w, generator=gen)
    query = F.normalize(torch.randn(channels, h, w, generator=gen), dim=0)
    return keys, values, query


def seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of the baseline readout")
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 8, 16], help="memory frames T")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each side per row")
    parser.add_argument("--size", type=int, nargs=2, default=[60, 108], metavar=("H", "W"),
                        help="feature cells")
    parser.add_argument("--channels", type=int, default=152)
    parser.add_argument("--objects", type=int, default=1)
    args = parser.parse_args()

    baseline = load_baseline(args.baseline)
    print(f"baseline {args.baseline} vs working tree; {args.size[0]}x{args.size[1]} cells, "
          f"C={args.channels}, {args.objects} object(s), {args.rounds} interleaved rounds, medians; "
          "load average 1/5/15 min")
    print()
    print("| threads | T | baseline ms | current ms | speed-up | CPU-time speed-up | max abs diff "
          "| load before | load after |")
    print("|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for frames in args.frames:
                keys, values, query = make_inputs(frames, args.channels, *args.size, args.objects)
                old = lambda: baseline(keys, values, query, **SETTINGS)  # noqa: E731
                new = lambda: local_topk_readout(keys, values, query, **SETTINGS)  # noqa: E731
                diff = (old() - new()).abs().max().item()  # also the warm-up of both
                before = load()
                times_old, times_new = [], []
                for _ in range(args.rounds):
                    times_old.append(seconds(old))
                    times_new.append(seconds(new))
                t_old, c_old = (statistics.median(x) for x in zip(*times_old))
                t_new, c_new = (statistics.median(x) for x in zip(*times_new))
                print(f"| {threads} | {frames} | {t_old * 1e3:.0f} | {t_new * 1e3:.0f} "
                      f"| {t_old / t_new:.2f}x | {c_old / c_new:.2f}x | {diff:.1e} | {before} | {load()} |",
                      flush=True)


if __name__ == "__main__":
    main()
