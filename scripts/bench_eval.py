"""Time vostool's DAVIS 2017 J&F evaluator (``vostool.eval.evaluate_davis``).

Usage (from the repository root):

    python scripts/bench_eval.py                      # davis-mini, 'exact' predictions
    python scripts/bench_eval.py --davis D --results R --repeats 7 --workers 1 4 0

``--workers 0`` means the default (min(CPUs, sequences)). For each setting the first run is
reported on its own ("cold": it includes starting the worker processes' server), then the median
of ``--repeats`` further runs. For scale: the official davis2017-evaluation takes about 73 s on
the 30-sequence DAVIS 2017 val set (1999 frames), i.e. about 37 ms per frame.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from vostool.eval import evaluate_davis
from vostool.eval.davis import available_cpus

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DAVIS = REPO_ROOT.parent / "shared" / "data" / "davis-mini"
DEFAULT_RESULTS = REPO_ROOT.parent / "shared" / "data" / "eval-vectors" / "exact"
OFFICIAL_MS_PER_FRAME = 73.0 / 1999 * 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS root (ground truth)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="predictions folder")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting after the cold one")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="worker counts; 0 = default")
    return parser.parse_args()


def time_once(davis: Path, results: Path, workers: int | None) -> float:
    start = time.perf_counter()
    evaluate_davis(davis, results, workers=workers)
    return time.perf_counter() - start


def frames_in(davis: Path, sequences: list[str]) -> int:
    return sum(len(list((davis / "Annotations" / "480p" / name).glob("*.png"))) for name in sequences)


def main() -> None:
    args = parse_args()
    for path in (args.davis, args.results):
        if not path.is_dir():
            sys.exit(f"{path}: not found (pass --davis / --results)")
    report = evaluate_davis(args.davis, args.results, workers=1)
    n_frames = frames_in(args.davis, report.sequences)
    print(f"machine: {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"cpus: os.cpu_count()={os.cpu_count()}, available={available_cpus()}, load average={os.getloadavg()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}")
    print(
        f"data: {args.davis} / {args.results}: {len(report.sequences)} sequences, {n_frames} frames,"
        f" {len(report.per_object)} objects; J&F-Mean {report.global_metrics['J&F-Mean']:.6f}"
    )
    for workers in args.workers:
        setting = None if workers == 0 else workers
        default = min(available_cpus(), len(report.sequences))
        label = f"workers={setting}" if setting else f"workers=default ({default})"
        cold = time_once(args.davis, args.results, setting)
        runs = [time_once(args.davis, args.results, setting) for _ in range(args.repeats)]
        median = statistics.median(runs)
        per_frame_ms = median / n_frames * 1000
        print(
            f"{label:>16}: median {median:.3f} s over {len(runs)} runs (min {min(runs):.3f}, max {max(runs):.3f});"
            f" cold {cold:.3f} s; {per_frame_ms:.2f} ms/frame,"
            f" {OFFICIAL_MS_PER_FRAME / per_frame_ms:.1f}x the official tool's ~{OFFICIAL_MS_PER_FRAME:.0f} ms/frame"
        )


if __name__ == "__main__":
    main()
