"""Run ``segment`` over a DAVIS-layout set so that ``vostool eval --model`` can score a model end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vostool.errors import InputError
from vostool.eval.davis import RESOLUTION, read_sequence_names
from vostool.io.staging import RESULTS_FOLDER, StagedFolder


def segment_davis(
    davis_root: str | Path,
    results_dir: str | Path,
    *,
    subset: str = "val",
    year: str = "2017",
    on_sequence: Callable[[str, int, int], None] | None = None,
    **segment_options: Any,
) -> list[str]:
    """Segment every sequence of ``ImageSets/<year>/<subset>.txt`` from its first annotation.

    Results go to ``results_dir/<sequence>/<frame>.png`` (the DAVIS results layout). The folder is
    written beside ``results_dir`` and replaces it as a whole once every sequence is done: a failure or
    an interrupt in any sequence leaves the previous ``results_dir`` exactly as it was (an existing
    folder may only hold sequence folders of PNGs, else OutputError before the model is built).
    ``segment_options`` are passed to :func:`vostool.api.segment` (model, weights, device, size,
    precision, ...), or ``network=`` an already built network (to score variants of one).
    ``on_sequence(name, index, total)`` is called before each sequence. Returns the sequence names.
    """
    from vostool.api import load_network, resolve_device, segment
    from vostool.models.registry import DEFAULT_MODEL

    davis_root, results_dir = Path(davis_root), Path(results_dir)
    names = read_sequence_names(davis_root, subset, str(year))
    staged = StagedFolder(results_dir, RESULTS_FOLDER)  # checks the old folder before the model is built
    # Build (and download / hash-check) the model once for the whole set, not once per sequence.
    device = resolve_device(segment_options.pop("device", "auto"))
    network = segment_options.pop("network", None) or load_network(
        segment_options.get("model", DEFAULT_MODEL), segment_options.pop("weights", None), device,
        offline=segment_options.pop("offline", False),
    )
    with staged:
        for index, name in enumerate(names):
            if on_sequence is not None:
                on_sequence(name, index, len(names))
            frames = davis_root / "JPEGImages" / RESOLUTION / name
            annotations = sorted((davis_root / "Annotations" / RESOLUTION / name).glob("*.png"))
            if not annotations:
                raise InputError("no annotation PNG for this sequence", davis_root / "Annotations" / RESOLUTION / name)
            segment(frames, annotations[0], out_dir=staged.temp / name, device=str(device), network=network,
                    **segment_options)
    return names
