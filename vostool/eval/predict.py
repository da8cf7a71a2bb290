"""Run ``segment`` over a DAVIS-layout set so that ``vostool eval --model`` can score a model end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vostool.errors import InputError
from vostool.eval.davis import RESOLUTION, read_sequence_names
from vostool.io.staging import RESULTS_FOLDER, StagedFolder

if TYPE_CHECKING:
    from vostool.tracker import Tracker


def segment_davis(
    davis_root: str | Path,
    results_dir: str | Path,
    *,
    subset: str = "val",
    year: str = "2017",
    on_sequence: Callable[[str, int, int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
    **load_options: Any,
) -> list[str]:
    """Segment every sequence of ``ImageSets/<year>/<subset>.txt`` from its first annotation.

    Results go to ``results_dir/<sequence>/<frame>.png`` (the DAVIS results layout). The folder is
    written beside ``results_dir`` and replaces it as a whole once every sequence is done: a failure or
    an interrupt in any sequence leaves the previous ``results_dir`` exactly as it was (an existing
    folder may only hold sequence folders of PNGs, else OutputError before the model is built).
    ``tracker`` (a :class:`vostool.Tracker`, e.g. to score variants of one network) or the ``load_options``
    of :func:`vostool.load` (model, weights, device, size, precision, ...) say what segments the set.
    ``on_sequence(name, index, total)`` is called before each sequence. Returns the sequence names.
    """
    from vostool.api import segment
    from vostool.tracker import load

    davis_root, results_dir = Path(davis_root), Path(results_dir)
    names = read_sequence_names(davis_root, subset, str(year))
    staged = StagedFolder(results_dir, RESULTS_FOLDER)  # checks the old folder before the model is built
    # Validate the settings, then build (and download / hash-check) the model once for the whole set.
    tracker = tracker or load(**load_options)
    with staged:
        for index, name in enumerate(names):
            if on_sequence is not None:
                on_sequence(name, index, len(names))
            frames = davis_root / "JPEGImages" / RESOLUTION / name
            segment(frames, first_annotation(davis_root, name), out_dir=staged.temp / name, tracker=tracker,
                    progress=progress)
    return names


def first_annotation(davis_root: str | Path, name: str) -> Path:
    """The annotation a DAVIS sequence is segmented from: the first PNG of ``Annotations/480p/<name>``
    (``vostool eval --model`` and ``vostool batch`` start from the same one)."""
    folder = Path(davis_root) / "Annotations" / RESOLUTION / name
    annotations = sorted(folder.glob("*.png"))
    if not annotations:
        raise InputError("no annotation PNG for this sequence", folder)
    return annotations[0]
