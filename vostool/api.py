"""The library entry point: ``vostool.segment(...)`` does what ``vostool segment`` does.

It wires the pieces together: frame source and masks (``vostool.io``), a model from the registry
(``vostool.models``), the streaming engine (``vostool.engine``) and the writers. The CLI only parses
arguments, calls this and prints.
"""

from __future__ import annotations

import contextlib
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
from .io.writers import OverlayWriter, PaletteWriter, RleWriter
from .models.registry import DEFAULT_MODEL, get_spec
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
    """Build a registered model on ``device`` with ``weights``, or its default checkpoint: fetched when
    needed, and checked against its registered or recorded hash even when it ships with the install."""
    from .weights import resolve_weights

    spec = get_spec(model)
    return spec.build(resolve_weights(model, weights, offline=offline), device)


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
    PNGs in ``out_dir`` (named like the input frames), an overlay MP4, and/or a COCO RLE JSON; each file is
    written atomically. ``network``: a network already built by :func:`load_network` for ``model`` on
    ``device``, to reuse it across videos (then ``weights`` and ``offline`` are not used).
    Raises :class:`vostool.errors.VostoolError` for bad input.
    """
    if precision not in PRECISIONS:
        raise VostoolError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if out_dir is None and overlay is None and rle is None:
        raise VostoolError("no output requested: pass --out DIR, --overlay FILE.mp4 and/or --rle FILE.json")
    source = open_frames(input)
    given, palette = read_given_masks(source, mask, masks_dir)
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
    with _Outputs(out_dir, overlay, rle, palette, source.fps) as outputs:
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
    """All requested writers behind one ``write``; a failed run discards the unfinished video files."""

    def __init__(self, out_dir, overlay, rle, palette: bytes | None, fps: float | None) -> None:
        self.targets = {"masks": out_dir, "overlay": overlay, "rle": rle}
        self.palette_writer = PaletteWriter(out_dir, palette) if out_dir is not None else None
        self.overlay_writer = OverlayWriter(overlay, fps, palette=palette) if overlay is not None else None
        self.rle_writer = RleWriter(rle) if rle is not None else None
        self.written: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Outputs:
        for writer in (self.overlay_writer, self.rle_writer):
            if writer is not None:
                self._stack.enter_context(writer)
        return self

    def write(self, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        if self.palette_writer is not None:
            self.palette_writer.write(name, labels)
        if self.overlay_writer is not None:
            self.overlay_writer.write(frame, labels)
        if self.rle_writer is not None:
            self.rle_writer.write(name, labels)

    def __exit__(self, *exc_info) -> None:
        self._stack.__exit__(*exc_info)
        if exc_info[0] is None:
            self.written = {k: str(v) for k, v in self.targets.items() if v is not None}
