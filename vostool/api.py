"""The library entry point: ``vostool.segment(...)`` does what ``vostool segment`` does.

It wires the pieces together: frame source and masks (``vostool.io``), a model from the registry
(``vostool.models``), the streaming engine (``vostool.engine``) and the writers. The CLI only parses
arguments, calls this and prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine.core import PRECISIONS, EngineOptions, VideoPropagator
from .engine.protocol import VOSNetwork
from .errors import InputError, VostoolError
from .io.frames import FrameSource, open_frames
from .io.masks import LabelMap, read_mask, read_masks_dir
from .io.staging import MASK_FOLDER, StagedFolder, commit_together, finish_despite_interrupts, path_inside
from .io.writers import AtomicFile, OverlayWriter, PaletteWriter, RleWriter
from .models.registry import DEFAULT_MODEL, build_model, get_model_info
from .pipeline import segment_stream

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
    """'auto' picks CUDA, then Apple MPS, then CPU; explicit names are checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VostoolError("--device cuda: no CUDA device is available (use --device cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise VostoolError("--device mps: Apple MPS is not available (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise VostoolError(f"--device {device}: unknown device (use auto, cpu, cuda or mps)") from None


def load_network(
    model: str, weights: str | Path | None, device: torch.device, *, offline: bool = False
) -> VOSNetwork:
    """Build a registered model on ``device``, fetching its default checkpoint when needed."""
    info = get_model_info(model)
    path = Path(weights) if weights is not None else None
    if info.needs_checkpoint:
        from .weights import resolve_weights

        path = resolve_weights(model, path, offline=offline)
    return build_model(model, path, device)


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
    network: VOSNetwork | None = None,
) -> SegmentSummary:
    """Segment the objects of ``mask`` (and/or ``masks_dir``) through the video or frame folder ``input``.

    ``size``: internal short side (None = the model's default, -1 = native resolution). Outputs: palette
    PNGs in ``out_dir`` (named like the input frames; an existing folder is replaced as a whole), an
    overlay MP4, and/or a COCO RLE JSON. They replace the old outputs together, once all are complete
    (the video checked): a failed or interrupted run leaves the old ones as they were and no new ones.
    ``network``: a network already built by :func:`load_network` for ``model`` on ``device``, to reuse
    it across videos (then ``weights`` and ``offline`` are not used).
    Raises :class:`vostool.errors.VostoolError` for bad input.
    """
    if precision not in PRECISIONS:
        raise VostoolError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if out_dir is None and overlay is None and rle is None:
        raise VostoolError("no output requested: pass --out DIR, --overlay FILE.mp4 and/or --rle FILE.json")
    source = open_frames(input)
    given, palette = read_given_masks(source, mask, masks_dir)
    outputs = _Outputs(out_dir, overlay, rle, palette, source.fps)  # checks the masks folder, writes nothing yet
    torch_device = resolve_device(device)
    if network is None:
        network = load_network(model, weights, torch_device, offline=offline)
    if top_k is not None:
        _set_top_k(network, model, top_k)
    options = EngineOptions(
        short_side=size, mem_every=mem_every, max_memory_frames=max_memory_frames, precision=precision
    )
    propagator = VideoPropagator(network, source.size, len(source), torch_device, options)

    start = time.perf_counter()
    with outputs:
        # Decoding and writing run in background threads next to the model (see vostool.pipeline).
        segment_stream(propagator, source, source.names, given, outputs.write, progress=progress)
    return SegmentSummary(
        input=str(input),
        model=model,
        device=str(torch_device),
        precision=precision,
        frames=len(source),
        size=source.size,
        objects=list(propagator.object_ids),
        seconds=time.perf_counter() - start,
        outputs=outputs.written,
    )


def _set_top_k(network: VOSNetwork, model: str, top_k: int) -> None:
    if not hasattr(network, "top_k"):
        raise VostoolError(f"--top-k: model {model} has no top-k memory readout")
    if top_k < 1:
        raise VostoolError("--top-k must be at least 1")
    network.top_k = top_k


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
