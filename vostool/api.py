"""The library entry point: ``vostool.segment(...)`` does what ``vostool segment`` does.

It wires the pieces together: frame source and masks (``vostool.io``), a model from the registry
(``vostool.models``), the streaming engine (``vostool.engine``) and the writers. The CLI only parses
arguments, calls this and prints.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine.config import ModelSettings
from .engine.protocol import VOSNetwork
from .engine.transforms import long_side_capped, resized_size
from .errors import InputError, OutputError, VostoolError, VostoolWarning
from .io.frames import FrameSource, open_frames
from .io.guard import refuse_overwriting_inputs
from .io.masks import LabelMap, read_mask, read_masks_dir
from .io.staging import MASK_FOLDER, StagedFolder, commit_together, finish_despite_interrupts, path_inside
from .io.writers import AtomicFile, OverlayWriter, PaletteWriter, RleWriter
from .models.registry import DEFAULT_MODEL, get_spec
from .pipeline import segment_stream
from .settings import RunSettings, SettingsError, validate_device_name
from .tracker import Tracker, build_tracker

ProgressCallback = Callable[[int, int], None]


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
    source: FrameSource, mask: str | Path | None, masks_dir: str | Path | None
) -> tuple[dict[int, np.ndarray], bytes | None]:
    """Label maps by frame index (frame 0 from ``mask``, any frames from ``masks_dir``), and a palette."""
    given: dict[int, LabelMap] = {}
    if masks_dir is not None:
        given.update(read_masks_dir(masks_dir, source.names, source.size))
    if mask is not None:
        given[0] = read_mask(mask, source.size)
    if not given:
        raise InputError("no mask given: pass --mask FILE (first frame) or --masks DIR")
    palette = next((m.palette for _, m in sorted(given.items()) if m.palette is not None), None)
    return {t: m.labels for t, m in given.items()}, palette


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
    mem_every: int | None = None,
    top_k: int | None = None,
    max_memory_frames: int | None = None,
    offline: bool = False,
    progress: ProgressCallback | None = None,
    tracker: Tracker | None = None,
    allow_truncated: bool = False,
    compile: bool = False,
) -> SegmentSummary:
    """Segment the objects of ``mask`` (and/or ``masks_dir``) through the video or frame folder ``input``.

    ``size``: internal short side (None = the model's default, -1 = native resolution). Outputs: palette
    PNGs in ``out_dir`` (named like the input frames; an existing folder is replaced as a whole), an
    overlay MP4, and/or a COCO RLE JSON. They replace the old outputs together, once all are complete
    (the video checked): a failed or interrupted run leaves the old ones as they were and no new ones.
    ``tracker``: a :class:`vostool.Tracker` from :func:`vostool.load`, to reuse one loaded network
    across videos (then it supplies the model, device and settings, and ``model``, ``weights``,
    ``device``, ``size``, ``precision``, ``mem_every``, ``top_k``, ``max_memory_frames``, ``offline`` and
    ``compile`` are not used). ``allow_truncated``: segment the frames a damaged video still decodes instead of
    refusing it (see :func:`vostool.io.frames.open_frames`). ``compile``: ``torch.compile`` the network's
    encoders and decoders (see :func:`vostool.load`).

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
    if out_dir is None and overlay is None and rle is None:
        raise VostoolError("no output requested: pass --out DIR, --overlay FILE.mp4 and/or --rle FILE.json")
    refuse_overwriting_inputs(
        {"INPUT": input, "--mask": mask, "--masks": masks_dir},
        {"--overlay": overlay, "--rle": rle},
        ("--out", out_dir),
    )
    source = open_frames(input, allow_truncated=allow_truncated)
    given, palette = read_given_masks(source, mask, masks_dir)
    if out_dir is not None:
        _check_ids_fit_png(given, mask, masks_dir)
    outputs = _Outputs(out_dir, overlay, rle, palette, source.fps)  # checks the masks folder, writes nothing yet
    if tracker is None:
        tracker = build_tracker(model, settings, run.device, weights, offline=offline)
    session = tracker.session(num_frames=len(source))
    _warn_if_downscaled(source, tracker)

    start = time.perf_counter()
    with outputs:
        # Decoding and writing run in background threads next to the model (see vostool.pipeline).
        segment_stream(session, source, source.names, given, outputs.write, progress=progress)
    return SegmentSummary(
        input=str(input),
        model=tracker.model,
        device=str(tracker.device),
        precision=tracker.settings.precision,
        frames=len(source),
        size=source.size,
        objects=list(session.object_ids),
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


class _Outputs:
    """All requested outputs of one run, moved into place together once every one is complete.

    The masks are written into a staging folder beside ``out_dir`` (the old folder is replaced as a
    whole), the video and the RLE file into temporary files beside theirs (or inside the staging
    folder when they lie in ``out_dir``). Only when the video has been checked and the RLE file
    written do all of them move in, together (:func:`commit_together`); a failure or an interrupt
    before that leaves every old output exactly as it was and removes every temporary file.
    """

    def __init__(self, out_dir, overlay, rle, palette: bytes | None, fps: float | None) -> None:
        # Only checks here (StagedFolder raises OutputError for a folder it must not replace); files are
        # created on entering, so an error in between (loading the model) leaves nothing behind.
        self.targets = {"masks": out_dir, "overlay": overlay, "rle": rle}
        self.palette, self.fps = palette, fps
        self.nested = {
            kind: inside
            for kind in ("overlay", "rle")
            if out_dir is not None and self.targets[kind] is not None
            and (inside := path_inside(self.targets[kind], out_dir)) is not None
        }
        self.masks = StagedFolder(out_dir, MASK_FOLDER, extra=self.nested.values()) if out_dir is not None else None
        self.palette_writer: PaletteWriter | None = None
        self.overlay_writer: OverlayWriter | None = None
        self.rle_writer: RleWriter | None = None
        self.written: dict[str, str] = {}

    def __enter__(self) -> _Outputs:
        try:
            if self.masks is not None:
                self.palette_writer = PaletteWriter(self.masks.create(), self.palette)
            if self.targets["overlay"] is not None:
                self.overlay_writer = OverlayWriter(self._path("overlay"), self.fps, palette=self.palette)
            if self.targets["rle"] is not None:
                self.rle_writer = RleWriter(self._path("rle"))
        except BaseException:
            self._discard()
            raise
        return self

    def _path(self, kind: str) -> Path:
        nested = self.nested.get(kind)
        return self.masks.temp / nested if nested is not None else Path(self.targets[kind])

    def write(self, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        if self.palette_writer is not None:
            self.palette_writer.write(name, labels)
        if self.overlay_writer is not None:
            self.overlay_writer.write(frame, labels)
        if self.rle_writer is not None:
            self.rle_writer.write(name, labels)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            commit_together(self._finish_files() + ([self.masks] if self.masks is not None else []))
        except BaseException:
            self._discard()
            raise
        self.written = {k: str(v) for k, v in self.targets.items() if v is not None}

    def _finish_files(self) -> list[AtomicFile]:
        """Finish and check the video and the RLE file; those in the masks folder move into its staging."""
        pending = []
        for kind, writer in (("overlay", self.overlay_writer), ("rle", self.rle_writer)):
            if writer is None:
                continue
            file = writer.finish()
            if kind in self.nested:
                file.commit()
            else:
                pending.append(file)
        return pending

    def _discard(self) -> None:
        steps = [writer.abort for writer in (self.overlay_writer, self.rle_writer) if writer is not None]
        if self.masks is not None:
            steps.append(self.masks.discard)
        finish_despite_interrupts(steps)
