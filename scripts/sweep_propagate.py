"""Re-measure the readout-temperature sweep of the default model (README, "Accuracy of the default model").

Usage (from the repository root):

    python scripts/sweep_propagate.py                          # davis-mini, temperatures 0.05 0.07 0.1 0.15
    python scripts/sweep_propagate.py --davis D --temperature 0.1 0.2

Each temperature segments the whole set with ``propagate-lite0`` (every other setting as shipped) and
scores it with vostool's DAVIS evaluator. About 4-5 minutes per temperature on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from vostool.eval import evaluate_davis
from vostool.eval.predict import segment_davis
from vostool.models.propagate_lite0.adapter import build as build_propagate_lite0
from vostool.tracker import Tracker

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DAVIS = REPO_ROOT.parent / "shared" / "data" / "davis-mini"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS root (frames and ground truth)")
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.05, 0.07, 0.1, 0.15])
    return parser.parse_args()


def score(davis: Path, temperature: float) -> dict[str, float]:
    network = build_propagate_lite0()
    network.propagation.temperature = temperature
    with tempfile.TemporaryDirectory() as results:
        tracker = Tracker(network, "propagate-lite0", torch.device("cpu"))
        segment_davis(davis, results, tracker=tracker)
        report = evaluate_davis(davis, results, workers=1)
    per_object = {o.name: o.jf_mean for o in report.per_object}
    return {"J&F": report.global_metrics["J&F-Mean"], **per_object}


def main() -> None:
    args = parse_args()
    for temperature in args.temperature:
        scores = score(args.davis, temperature)
        print(f"temperature {temperature:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()
