"""``--compile`` for every model: same labels as eager, compile time, and what dynamo traced when.

Usage (from the repository root; ../shared must be present):

    python scripts/compile_check.py                       # every model, inductor, on its parity clip
    python scripts/compile_check.py --models stcn --backend eager --added-object

Each model runs its parity clip (the clips and synthetic weights of scripts/precision_agreement.py) in
eager mode, then with :func:`vostool.engine.compile.compile_network`. Printed per model: the share of
labels equal to eager's (inductor reorders floating-point sums, so a pixel the synthetic weights leave
tied between two objects may flip: the largest eager top-2 margin among changed labels is printed too),
the largest probability change, the compile time (the compiled run's time minus a second, already compiled run's),
and the number of dynamo traces after each frame (first compiles plus recompiles; see
``vostool.engine.compile`` for what recompiles and why). ``--added-object`` adds an object on frame 2.
Set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder to time a compile from scratch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tests/conftest.py: shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_agreement as clips  # noqa: E402


def run(network, frames: list[np.ndarray], masks: dict[int, np.ndarray]):
    """Labels (T, H, W), probabilities (T, K+1, H, W), dynamo's traces after each frame, seconds."""
    from vostool.engine.compile import compile_counters
    from vostool.engine.core import propagate

    labels, probabilities, traced = [], [], []
    start = time.perf_counter()
    for result in propagate(network, frames, masks, num_frames=len(frames)):
        labels.append(result.labels)
        probabilities.append(result.probabilities)
        traced.append(compile_counters()["traced"])
    return np.stack(labels), torch.stack(probabilities), traced, time.perf_counter() - start


def check(model: str, backend: str, frames: int, added_object: bool) -> str:
    import torch._dynamo
    from torch._dynamo.utils import counters

    from vostool.engine.compile import compile_network

    clip = clips.clip_for(model, frames=frames)
    masks = {0: clip.first_mask}
    if added_object:
        later = np.zeros_like(clip.first_mask)
        later[-(later.shape[0] // 4):, : later.shape[1] // 4] = 9
        masks[2] = later
    eager, eager_prob, _, _ = run(clip.build("fp32"), clip.frames, masks)
    network = clip.build("fp32")
    units = compile_network(network, backend=backend)
    torch._dynamo.reset()
    counters.clear()
    labels, prob, traced, first = run(network, clip.frames, masks)
    _, _, traced_again, second = run(network, clip.frames, masks)
    differ = labels != eager
    top2 = eager_prob.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    # Inductor reorders floating-point sums: labels may change only where eager's top two are that close.
    worst = f"{margin[differ].max():.1e}" if differ.any() else "-"
    change = float((prob - eager_prob).abs().max())
    return (f"| {model} | {clip.describe()} | {len(units)} | {1 - differ.mean():.5f} | {worst} | {change:.1e} | "
            f"{first - second:.1f} | {traced} | {traced_again[-1] - traced[-1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(clips.MODELS), choices=clips.MODELS)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--added-object", action="store_true", help="add an object on frame 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | clip | units compiled | labels as eager | largest eager margin of a changed label | "
          "max probability change | compile s | dynamo traces after each frame | traces in a 2nd video |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        print(check(model, args.backend, args.frames, args.added_object), flush=True)


if __name__ == "__main__":
    main()
