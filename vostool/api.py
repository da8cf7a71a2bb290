"""The library entry point: ``vostool.segment(...)`` does what ``vostool segment`` does.

It wires the pieces together: frame source and masks (``vostool.io``), a model from the registry
(``vostool.models``), the streaming engine (``vostool.engine``) and the writers. The CLI only parses
arguments, calls this and prints.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine.config import ModelSettings
from .engine.protocol import VOSNetwork
from .engine.transforms import long_side_capped, resized_size
from .errors import InputError, OutputError, VostoolWarning
from .io.frames import FrameSource, open_frames
from .io.guard import refuse_overwriting_inputs
from .io.masks import LabelMap, read_mask, read_masks_dir
from .io.outputs import OutputTargets, RunOutputs
from .io.stdin import StdinFrames, is_stdin
from .models.registry import DEFAULT_MODEL, get_spec
from .pipeline import FORWARD, DirectionPlan, propagate_video
from .settings import RunSettings, SettingsError, validate_device_name
from .tracker import Tracker, build_tracker

ProgressCallback = Callable[[int, int | None], None]


@dataclass
class SegmentSummary:
    """What a ``segment`` run did; ``to_dict()`` is the CLI's ``--json`` line."""

    input: str
    model: str
    device: str
    precision: str
    frames: int
    size: tuple[int, int]
    objects: list[int]
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["fps"] = round(self.fps, 3)
        d["seconds"] = round(self.seconds, 3)
        return d


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; explicit names (cpu, cuda, cuda:N, mps) are checked to exist.

    Raises :class:`~vostool.settings.SettingsError` (parameter ``device``) for any other name or a
    device this machine does not have.
    """
    validate_device_name(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SettingsError("device", device, "no CUDA device is available (use cpu)")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise SettingsError("device", device, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SettingsError("device", device, "Apple MPS is not available (use cpu)")
    return torch.device(device)


def load_network(
    model: str,
    weights: str | Path | None,
    device: torch.device,
    settings: ModelSettings | None = None,
    *,
    offline: bool = False,
) -> VOSNetwork:
    """Build a registered model on ``device`` with ``weights``, or its default checkpoint: fetched when
    needed, and checked against its registered or recorded hash even when it ships with the install.
    ``settings``: the merged settings (None: the model's defaults)."""
    from .weights import resolve_weights

    spec = get_spec(model)
    return spec.build(resolve_weights(model, weights, offline=offline), device, settings)


def read_given_masks(
    source: FrameSource | StdinFrames, mask: str | Path | None, masks_dir: str | Path | None
) -> tuple[dict[int, np.ndarray], bytes | None]:
    """Label maps by frame index (frame 0 from ``mask``, any frames from ``masks_dir``), and a palette.

    For a stream of unknown length (standard input), masks in ``masks_dir`` are named by frame number."""
    given: dict[int, LabelMap] = {}
    if masks_dir is not None:
        names = source.names if isinstance(source, FrameSource) else None
        given.update(read_masks_dir(masks_dir, names, source.size))
    if mask is not None:
        given[0] = read_mask(mask, source.size)
    if not given:
        raise InputError("no mask given: pass --mask FILE (first frame) or --masks DIR")
    palette = next((m.palette for _, m in sorted(given.items()) if m.palette is not None), None)
    return {t: m.labels for t, m in given.items()}, palette


def open_input(input: str | Path, *, allow_truncated: bool = False) -> FrameSource | StdinFrames:
    """A video file or frame folder (:func:`open_frames`), or standard input for ``-``."""
    return StdinFrames() if is_stdin(input) else open_frames(input, allow_truncated=allow_truncated)


def segment(
    input: str | Path,
    mask: str | Path | None = None,
    *,
    masks_dir: str | Path | None = None,
    model: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str = "auto",
    size: int | None = None,
    precision: str = "fp32",
    out_dir: str | Path | None = None,
    overlay: str | Path | None = None,
    rle: str | Path | None = None,
    jsonl: str | Path | None = None,
    matte: str | Path | None = None,
    cutout: str | Path | None = None,
    soft: str | Path | None = None,
    objects: Iterable[int] | None = None,
    direction: str = FORWARD,
    mem_every: int | None = None,
    top_k: int | None = None,
    max_memory_frames: int | None = None,
    offline: bool = False,
    progress: ProgressCallback | None = None,
    tracker: Tracker | None = None,
    allow_truncated: bool = False,
    compile: bool = False,
) -> SegmentSummary:
    """Segment the objects of ``mask`` (and/or ``masks_dir``) through the video or frame folder ``input``
    (``"-"``: a video piped into standard input, read as it arrives).

    ``size``: internal short side (None = the model's default, -1 = native resolution). Outputs: palette
    PNGs in ``out_dir`` (named like the input frames; an existing folder is replaced as a whole), an
    overlay MP4, a COCO RLE JSON (``rle``), JSON lines (``jsonl``: one line per frame with each
    object's RLE, area and bounding box; ``rle="-"`` or ``jsonl="-"`` writes them to standard output,
    flushed frame by frame), and for editors: ``matte`` (white = object: an H.264 .mp4/.mov/.mkv, or a
    folder of 8-bit PNGs), ``cutout`` (the frames with the matte as alpha: .webm VP9 ``yuva420p``, .mov
    ProRes 4444, or a folder of RGBA PNGs) and ``soft`` (a folder: ``<id>/<frame>.png``, each object's
    probability in 8 bits); ``objects`` selects the ids these three show (default: all). They replace the old outputs together, once all are complete (the video
    checked): a failed or interrupted run leaves the old ones as they were and no new ones. When the
    reader of a stream closes it early, every other output is discarded and
    :class:`vostool.io.writers.OutputClosed` is raised.
    ``direction``: ``"forward"`` (default), ``"backward"`` or ``"both"``, by the rule of
    :data:`vostool.pipeline.DIRECTION_RULE`. Going backward through a video file decodes it forward in chunks, handed out in reverse (memory stays flat);
    the backward results wait on disk (a temporary folder) until the outputs are written in frame order.
    ``tracker``: a :class:`vostool.Tracker` from :func:`vostool.load`, to reuse one loaded network
    across videos (then it supplies the model, device and settings, and ``model``, ``weights``,
    ``device``, ``size``, ``precision``, ``mem_every``, ``top_k``, ``max_memory_frames``, ``offline`` and
    ``compile`` are not used). ``allow_truncated``: segment the frames a damaged video still decodes instead of
    refusing it (see :func:`vostool.io.frames.open_frames`). ``compile``: ``torch.compile`` the network's
    encoders and decoders (see :func:`vostool.load`). ``progress(done, total)``: after each frame;
    ``total`` is None for standard input.

    Raises :class:`vostool.VostoolError` for bad input, before any model work where it can be known
    then: :class:`~vostool.settings.SettingsError` (a subclass; its ``parameter`` names the argument) for
    an option out of range, ``InputError`` for an input file, ``ModelError`` for a model or checkpoint,
    ``OutputError`` for an output that cannot be written or would overwrite an input. A frame that is
    processed smaller than ``size`` asks (a very elongated video, see ``vostool.settings.MAX_ASPECT``)
    is reported with a :class:`vostool.errors.VostoolWarning`.
    """
    if tracker is None:
        run = RunSettings(
            size=size, mem_every=mem_every, top_k=top_k, max_memory_frames=max_memory_frames,
            precision=precision, device=device, compile=compile,
        )
        settings = get_spec(model).settings_for(run)  # a setting the model lacks fails before any input is read
    DirectionPlan(direction, {})  # a direction that does not exist fails here (SettingsError)
    if is_stdin(input) and direction != FORWARD:
        raise SettingsError("direction", direction, "standard input is read once, forward; give a video file or a frame folder")
    targets = OutputTargets(
        out_dir=out_dir, overlay=overlay, rle=rle, jsonl=jsonl, matte=matte, cutout=cutout, soft=soft,
        objects=None if objects is None else tuple(objects),
    )
    targets.check()
    refuse_overwriting_inputs(
        {"INPUT": None if is_stdin(input) else input, "--mask": mask, "--masks": masks_dir},
        targets.files(),
        folders=targets.folders(),
    )
    source = open_input(input, allow_truncated=allow_truncated)
    try:
        given, palette = read_given_masks(source, mask, masks_dir)
        if out_dir is not None:
            _check_ids_fit_png(given, mask, masks_dir)
        mask_ids = sorted({int(i) for labels in given.values() for i in np.unique(labels) if i != 0})
        targets.check_objects(mask_ids)
        outputs = RunOutputs(targets, palette, source.fps, mask_ids)  # checks the output folders, writes nothing yet
        if tracker is None:
            tracker = build_tracker(model, settings, run.device, weights, offline=offline)
        _warn_if_downscaled(source, tracker)

        start = time.perf_counter()
        with outputs:
            # Decoding and writing run in background threads next to the model (see vostool.pipeline).
            frames, object_ids = propagate_video(
                tracker, source, given, outputs.write, direction=direction,
                probabilities=outputs.wants_probabilities, progress=progress,
            )
    finally:
        getattr(source, "close", lambda: None)()  # stops the decoder of standard input
    return SegmentSummary(
        input=str(input),
        model=tracker.model,
        device=str(tracker.device),
        precision=tracker.settings.precision,
        frames=frames,
        size=source.size,
        objects=list(object_ids),
        seconds=time.perf_counter() - start,
        outputs=outputs.written,
    )


def _check_ids_fit_png(given: dict[int, np.ndarray], mask: str | Path | None, masks_dir: str | Path | None) -> None:
    """Palette PNGs hold ids 1-254 (255 reads back as void): say so now, naming the mask, rather than after
    frame 0 is segmented."""
    for t, labels in sorted(given.items()):
        max_id = int(labels.max()) if labels.size else 0
        if max_id > 254:
            where = mask if t == 0 and mask is not None else masks_dir
            raise OutputError(
                f"object id {max_id} does not fit in the palette PNGs of --out (ids 1-254; 255 means void); "
                "write --rle FILE.json instead, or renumber the objects",
                where,
            )


def _warn_if_downscaled(source: FrameSource, tracker: Tracker) -> None:
    short_side = tracker.settings.preprocessing.short_side
    if long_side_capped(source.size, short_side):
        height, width = resized_size(source.size, short_side)
        warnings.warn(
            VostoolWarning(
                f"{source.path}: frames are {source.size[1]}x{source.size[0]}, processed at {width}x{height}, "
                f"smaller than the short side {short_side} would give (the long side is capped at "
                f"{max(height, width)})"
            ),
            stacklevel=3,
        )
