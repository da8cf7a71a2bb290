"""``vostool bench``: the speed papers report and the speed users get, side by side.

For each model it measures, as medians over repeated runs after a warm-up:

* **model-only FPS**: frames decoded and pre-processed onto the device before the clock starts, the
  way papers measure (the clock covers the network, the memory, aggregation and post-processing);
* **end-to-end FPS**: a video decoded in a background thread -> segmented -> palette PNGs and an
  overlay MP4 written in a writer thread, exactly the path of ``vostool segment`` (opening the video
  and loading the model are reported separately, they are paid once per run);
* **time per stage** (ms per frame, see :data:`vostool.engine.timing.STAGES`);
* **peak memory**: process RSS and ``torch.cuda.max_memory_allocated``;
* **memory growth**: peak memory after short and long streams of frames at a small size, which shows
  whether memory is bounded (``max_memory_frames``) or grows with the video;
* with ``compile``: the **compile time**, paid on the first frames of the resolution (see
  :func:`_compile_seconds`); the speeds are those of the compiled network.

Without an input video a synthetic clip is rendered (textured background, moving objects) and encoded
as H.264, so decoding costs what a real video costs. Models that need a released checkpoint run with
deterministic synthetic weights in that checkpoint's layout, loaded through the normal loading path,
unless ``weights`` is given: speed does not depend on the values, accuracy does, so such results say
"synthetic weights: speed only". The JSON layout is documented in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import __version__
from .api import load_network, resolve_device
from .engine.compile import compile_network
from .engine.core import VideoPropagator
from .engine.protocol import VOSNetwork
from .engine.timing import StageTimer
from .tracker import PreparedFrame, Session, Tracker
from .errors import InputError, VostoolError
from .io.frames import FrameSource, open_frames
from .io.masks import read_mask
from .io.writers import OverlayWriter, PaletteWriter
from .models.registry import DEFAULT_MODEL, get_spec, layout_of
from .pipeline import segment_stream
from .settings import RunSettings

SCHEMA = "vostool-bench-v1"
SYNTHETIC_NOTE = "synthetic weights: speed only"
CLIP_FPS = 25.0
DEFAULT_SIZE = 480
DEFAULT_GROWTH_FRAMES = (100, 1000)
DEFAULT_GROWTH_SIZE = 64

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """What to measure. ``None`` picks a device-dependent default (small on CPU, see :meth:`resolved`)."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False  # torch.compile the fixed-shape parts (vostool.engine.compile)
    size: int = DEFAULT_SIZE  # internal short side; the synthetic clip is rendered at this size too
    objects: int = 2
    frames: int | None = None  # frames per run (default: 8 on CPU, 100 on a GPU)
    repeats: int | None = None  # timed runs per measurement (default: 3 on CPU, 5 on a GPU)
    warmup: int | None = None  # frames of the untimed warm-up run (default: 3 on CPU, 10 on a GPU)
    input: str | None = None  # a video or frame folder instead of the synthetic clip
    mask: str | None = None  # with input: its first frame's mask (PNG or RLE JSON) instead of a grid of boxes
    weights: str | None = None  # checkpoint for the (single) model
    max_memory_frames: int | None = None
    growth_frames: tuple[int, ...] = DEFAULT_GROWTH_FRAMES  # () skips the memory-growth runs
    growth_size: int = DEFAULT_GROWTH_SIZE
    threads: int | None = None  # torch intra-op CPU threads (default: torch's own choice)
    seed: int = 0

    def resolved(self, device: torch.device) -> BenchSettings:
        on_cpu = device.type == "cpu"
        return BenchSettings(
            **{
                **asdict(self),
                "frames": self.frames or (8 if on_cpu else 100),
                "repeats": self.repeats or (3 if on_cpu else 5),
                "warmup": self.warmup if self.warmup is not None else (3 if on_cpu else 10),
                "models": tuple(self.models),
                "growth_frames": tuple(self.growth_frames),
            }
        )

    def run_settings(self) -> RunSettings:
        """The options bench shares with ``segment``, validated the same way."""
        return RunSettings(
            size=self.size, max_memory_frames=self.max_memory_frames, precision=self.precision, device=self.device,
            compile=self.compile,
        )

    def check(self) -> None:
        if not self.models:
            raise VostoolError("bench: give at least one --model")
        if self.mask is not None and self.input is None:
            raise InputError("--mask is the first-frame mask of --input; give --input too", self.mask)
        for model in self.models:
            get_spec(model)  # unknown names fail before any work
        self.run_settings()  # the options bench shares with segment get segment's validation
        if self.weights is not None and len(self.models) != 1:
            raise VostoolError("--weights applies to one model: give exactly one --model with it")
        if self.objects < 1 or self.objects > 255:
            raise VostoolError("--objects must be between 1 and 255")
        for name in ("frames", "repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VostoolError(f"--{name} must be at least 1")
        if any(n < 2 for n in self.growth_frames):
            raise VostoolError("--growth-frames: each length must be at least 2 frames")
        if self.threads is not None and self.threads < 1:
            raise VostoolError("--threads must be at least 1")
        if self.growth_frames and self.growth_size < 16:
            raise VostoolError("--growth-size must be at least 16 pixels")


@dataclass
class MemoryPeak:
    rss_start_bytes: int | None
    peak_rss_bytes: int | None
    gpu_start_bytes: int | None
    peak_gpu_bytes: int | None


@dataclass
class GrowthPoint:
    frames: int
    frame_size: list[int]
    memory_frames: int  # entries in the memory bank after the last frame
    memory_bank_bytes: int  # bytes of the tensors those entries hold (exact, unlike RSS)
    fps: float
    memory: MemoryPeak


@dataclass
class ModelResult:
    model: str
    weights: str  # "bundled", "file" or "synthetic"
    weights_path: str | None
    note: str | None
    frames: int
    objects: int  # in the first-frame mask (--mask's, or --objects boxes)
    frame_size: list[int]  # (H, W) of the video
    input_size: list[int]  # (H, W) the network sees, padded
    load_seconds: float
    compile_seconds: float | None  # None without compile
    model_only: dict
    end_to_end: dict
    stages_ms_per_frame: dict[str, float]
    memory: dict
    growth: list[GrowthPoint] = field(default_factory=list)


@dataclass
class BenchReport:
    settings: BenchSettings
    machine: dict
    results: list[ModelResult]

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "vostool": __version__,
            "machine": self.machine,
            "settings": {**asdict(self.settings), "models": list(self.settings.models),
                         "growth_frames": list(self.settings.growth_frames)},
            "results": [asdict(result) for result in self.results],
        }


# ---------------------------------------------------------------------------------------------- run


def run_bench(settings: BenchSettings, log: Log | None = None) -> BenchReport:
    """Measure every model of ``settings`` (see the module docstring). Raises VostoolError for bad input."""
    log = log or (lambda message: None)
    settings.check()
    device = resolve_device(settings.device)
    settings = settings.resolved(device)
    threads_before = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        machine = machine_info(device)
        with tempfile.TemporaryDirectory(prefix="vostool-bench-") as scratch:
            workdir = Path(scratch)
            video, given = _bench_input(settings, workdir, log)
            results = [_bench_model(model, settings, device, video, given, workdir, log) for model in settings.models]
    finally:
        torch.set_num_threads(threads_before)
    return BenchReport(settings, machine, results)


def _bench_input(settings: BenchSettings, workdir: Path, log: Log) -> tuple[FrameSource, np.ndarray]:
    """The video every model runs on, and a first-frame label map with ``settings.objects`` objects."""
    if settings.input is not None:
        source = open_frames(settings.input)
        if settings.mask is not None:
            return source, read_mask(settings.mask, source.size).labels
        return source, grid_objects(source.size, settings.objects)
    short = settings.size if settings.size > 0 else DEFAULT_SIZE
    size = (short, _even(short * 16 / 9))
    log(f"rendering a synthetic {size[1]}x{size[0]} clip of {settings.frames} frames")
    scene = SyntheticScene(size, settings.objects, settings.seed)
    video = workdir / "clip.mp4"
    scene.encode(video, settings.frames)
    return open_frames(video), scene.labels(0)


def _bench_model(
    model: str,
    settings: BenchSettings,
    device: torch.device,
    source: FrameSource,
    first_mask: np.ndarray,
    workdir: Path,
    log: Log,
) -> ModelResult:
    weights, kind, note = _weights_for(model, settings, workdir)
    log(f"{model}: loading ({kind} weights)")
    start = time.perf_counter()
    network = load_network(model, weights, device, get_spec(model).settings_for(settings.run_settings()))
    load_seconds = time.perf_counter() - start
    tracker = Tracker(network, model, device)
    # Growth runs come first: freed memory that the process keeps for reuse would hide the small
    # runs' growth behind the peak of the full-size runs.
    growth = []
    if settings.growth_frames:
        _growth_point(network, device, settings, 3)  # warm-up at this size, not reported
    for length in settings.growth_frames:
        log(f"{model}: memory growth, {length} frames at short side {settings.growth_size}")
        growth.append(_growth_point(network, device, settings, length))

    frames = min(settings.frames, len(source))
    given = {0: first_mask}
    runner = _Runner(tracker, source, frames, given, workdir)

    compile_run = None
    if settings.compile:
        # After the growth runs (which stay eager): the graphs are those of this resolution alone.
        log(f"{model}: compiling (torch.compile, on the first frames)")
        compile_network(network)
        compile_run = runner.model_only(min(COMPILE_FRAMES, frames))
    log(f"{model}: warm-up, then model-only runs ({frames} frames preloaded)")
    if settings.warmup > 0:
        runner.model_only(settings.warmup)
    model_runs = [runner.model_only(frames) for _ in range(settings.repeats)]
    runner.release_preloaded()

    log(f"{model}: end-to-end runs (decode -> segment -> PNG + overlay MP4)")
    # On CPU the stage clock costs nothing, so the end-to-end runs are also the staged runs. On a GPU
    # every stage boundary synchronises the device, which would slow the end-to-end runs down, so the
    # stages get runs of their own.
    staged_inline = device.type == "cpu"
    e2e_runs = [runner.end_to_end(timed_stages=staged_inline) for _ in range(settings.repeats)]
    stage_runs = e2e_runs if staged_inline else [runner.end_to_end(timed_stages=True) for _ in range(settings.repeats)]

    return ModelResult(
        model=model,
        weights=kind,
        weights_path=str(weights) if kind == "file" else None,
        note=note,
        frames=frames,
        objects=int(np.count_nonzero(np.unique(first_mask))),
        frame_size=list(source.size),
        input_size=list(runner.input_size),
        load_seconds=load_seconds,
        compile_seconds=None if compile_run is None else _compile_seconds(compile_run, model_runs, frames),
        model_only=_speed_summary(model_runs, frames),
        end_to_end={
            **_speed_summary(e2e_runs, frames),
            "open_seconds": statistics.median(run.open_seconds for run in e2e_runs),
            "outputs": ["palette-png", "overlay-mp4"],
        },
        stages_ms_per_frame=_median_stages(stage_runs),
        memory={
            "end_to_end": asdict(_max_peak([run.memory for run in e2e_runs])),
            "model_only": asdict(_max_peak([run.memory for run in model_runs])),
        },
        growth=growth,
    )


# Frames of the run that compiles: the first frame (key and value encoders), the second (the decoder, one
# memory frame) and the third (two memory frames), so the shapes of a steady run are all seen.
COMPILE_FRAMES = 3


def _compile_seconds(compile_run: _Run, model_runs: Sequence[_Run], frames: int) -> float:
    """The compiling run's time beyond what its frames take compiled (median of the timed runs)."""
    frames_run = min(COMPILE_FRAMES, frames)
    per_frame = statistics.median(run.seconds for run in model_runs) / frames
    return max(0.0, compile_run.seconds - frames_run * per_frame)


def _weights_for(model: str, settings: BenchSettings, workdir: Path) -> tuple[Path | None, str, str | None]:
    """(path, kind, note): the user's file, the bundled weights, or synthetic ones saved to ``workdir``."""
    if settings.weights is not None:
        return Path(settings.weights), "file", None
    if not get_spec(model).needs_checkpoint:
        return None, "bundled", None
    path = workdir / f"{model}-synthetic.pth"
    torch.save(synthetic_state_dict(layout_of(model), settings.seed), path)
    return path, "synthetic", SYNTHETIC_NOTE


@dataclass
class _Run:
    seconds: float
    memory: MemoryPeak
    open_seconds: float = 0.0
    stages: dict[str, float] | None = None  # ms per frame


class _Runner:
    """Runs one tracker over the benchmark video in the two ways being compared."""

    def __init__(
        self, tracker: Tracker, source: FrameSource, frames: int, given: dict[int, np.ndarray], workdir: Path
    ) -> None:
        self.tracker, self.device = tracker, tracker.device
        self.source, self.frames, self.given = source, frames, given
        self.workdir = workdir
        self.runs = 0
        self.input_size: tuple[int, int] | None = None
        self._prepared: list[PreparedFrame] | None = None

    def _session(self, frames: int) -> Session:
        session = self.tracker.session(num_frames=frames)
        for t, labels in self.given.items():
            session.add_masks(t, labels)
        return session

    def _preloaded(self) -> list[PreparedFrame]:
        if self._prepared is None:
            session = self.tracker.session()
            self._prepared = [session.prepare(frame) for frame in _first_frames(self.source, self.frames)]
            self.input_size = tuple(self._prepared[0].image.shape[-2:])
            _synchronize(self.device)
        return self._prepared

    def release_preloaded(self) -> None:
        self._prepared = None

    def model_only(self, frames: int) -> _Run:
        """Frames already on the device; the clock covers network, memory, aggregation, post-processing."""
        prepared = self._preloaded()[:frames]
        session = self._session(len(prepared))
        probe = MemoryProbe(self.device)
        start = time.perf_counter()
        for frame in prepared:
            session.step(frame)
        _synchronize(self.device)
        return _Run(time.perf_counter() - start, probe.read())

    def end_to_end(self, timed_stages: bool) -> _Run:
        """What ``vostool segment`` does: open, decode ahead, segment, write PNGs + MP4 behind."""
        self.runs += 1
        out = self.workdir / f"run-{self.runs}"
        timer = StageTimer(self.device)
        probe = MemoryProbe(self.device)
        start = time.perf_counter()
        source = open_frames(self.source.path)
        opened = time.perf_counter()
        session = self._session(self.frames)
        masks = PaletteWriter(out / "masks")
        with OverlayWriter(out / "overlay.mp4", source.fps) as overlay:

            def write(name: str, frame: np.ndarray, labels: np.ndarray) -> None:
                masks.write(name, labels)
                overlay.write(frame, labels)

            if timed_stages:
                with timer.active():
                    segment_stream(session, source, source.names, {}, write, limit=self.frames)
            else:
                segment_stream(session, source, source.names, {}, write, limit=self.frames)
        seconds = time.perf_counter() - opened  # includes the overlay encoder's final flush
        memory = probe.read()
        shutil.rmtree(out, ignore_errors=True)
        stages = timer.per_frame_ms(self.frames) if timed_stages else None
        return _Run(seconds, memory, open_seconds=opened - start, stages=stages)


def _growth_point(network: VOSNetwork, device: torch.device, settings: BenchSettings, length: int) -> GrowthPoint:
    """Stream ``length`` synthetic frames (generated on the fly, no I/O) and record peak memory."""
    short = settings.growth_size
    size = (short, _even(short * 16 / 9))
    scene = SyntheticScene(size, settings.objects, settings.seed)
    # An engine-level measurement at a size below what RunSettings allows: the network's settings
    # (memory cap and precision merged already) at the growth size.
    engine_settings = dataclasses.replace(
        network.settings, preprocessing=dataclasses.replace(network.settings.preprocessing, short_side=short)
    )
    propagator = VideoPropagator(network, size, length, device, settings=engine_settings)
    given = {0: scene.labels(0)}
    probe = MemoryProbe(device)
    start = time.perf_counter()
    for t in range(length):
        propagator.step(scene.frame(t), given.get(t))
    _synchronize(device)
    seconds = time.perf_counter() - start
    memory = probe.read()
    bank_bytes = tensor_bytes([(entry.key, entry.values) for entry in propagator.bank.entries])
    return GrowthPoint(length, list(size), len(propagator.bank), bank_bytes, length / seconds, memory)


def tensor_bytes(obj: object) -> int:
    """Bytes of the distinct tensor storages reachable through dataclasses, sequences and mappings."""
    storages: dict[int, int] = {}

    def visit(item: object) -> None:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif is_dataclass(item) and not isinstance(item, type):
            for member in fields(item):
                visit(getattr(item, member.name))
        elif isinstance(item, (list, tuple)):
            for element in item:
                visit(element)
        elif isinstance(item, dict):
            for element in item.values():
                visit(element)

    visit(obj)
    return sum(storages.values())


def _speed_summary(runs: Sequence[_Run], frames: int) -> dict:
    fps = [frames / run.seconds for run in runs]
    return {"fps": statistics.median(fps), "fps_runs": fps, "seconds_runs": [run.seconds for run in runs]}


def _median_stages(runs: Sequence[_Run]) -> dict[str, float]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.stages or {}))
    return {name: statistics.median((run.stages or {}).get(name, 0.0) for run in runs) for name in names}


def _max_peak(peaks: Sequence[MemoryPeak]) -> MemoryPeak:
    def largest(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    return MemoryPeak(
        rss_start_bytes=largest([p.rss_start_bytes for p in peaks]),
        peak_rss_bytes=largest([p.peak_rss_bytes for p in peaks]),
        gpu_start_bytes=largest([p.gpu_start_bytes for p in peaks]),
        peak_gpu_bytes=largest([p.peak_gpu_bytes for p in peaks]),
    )


def _first_frames(source: FrameSource, count: int) -> list[np.ndarray]:
    frames = []
    iterator = iter(source)
    try:
        for frame in iterator:
            frames.append(frame)
            if len(frames) == count:
                break
    finally:
        getattr(iterator, "close", lambda: None)()  # stops ffmpeg when the video is longer
    return frames


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


# ------------------------------------------------------------------------------------------- memory


class MemoryProbe:
    """Peak process RSS and peak allocated GPU memory from construction to :meth:`read`.

    On Linux the RSS high-water mark is reset through ``/proc/self/clear_refs``, so each probe sees
    its own peak. Elsewhere only the process-lifetime peak (``ru_maxrss``) exists; it never goes down,
    so a probe after a larger run reports that larger run's peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_start = current_rss()
        _reset_peak_rss()
        self.gpu_start = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.gpu_start = torch.cuda.memory_allocated(device)

    def read(self) -> MemoryPeak:
        peak_gpu = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak_gpu = torch.cuda.max_memory_allocated(self.device)
        return MemoryPeak(self.rss_start, peak_rss(), self.gpu_start, peak_gpu)


def _proc_status(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def current_rss() -> int | None:
    return _proc_status("VmRSS")


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass  # not Linux, or not allowed: peak_rss falls back to the lifetime peak


def peak_rss() -> int | None:
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


# ------------------------------------------------------------------------------------ synthetic data


def synthetic_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights of the given layout, scaled so activations stay in a normal range.

    Speed does not depend on the values, but it does depend on their range: weights drawn too large
    overflow to inf/NaN and too small ones underflow to denormals, either of which can slow CPU
    kernels down. Matrices are Kaiming-like (std 1/sqrt(fan_in)), norm scales 1, biases and running
    means 0, running variances 1.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[name] = torch.zeros(shape, dtype=torch.long)
        elif leaf == "running_var" or (len(shape) == 1 and leaf == "weight"):
            state[name] = torch.ones(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        else:
            state[name] = torch.zeros(shape)
    return state


class SyntheticScene:
    """A panning textured background with ``objects`` textured ellipses moving across it.

    Deterministic for a seed; ``frame(t)`` and ``labels(t)`` can be asked for any t without keeping
    earlier frames, so arbitrarily long streams cost no memory.
    """

    def __init__(self, size: tuple[int, int], objects: int, seed: int = 0) -> None:
        self.size = size
        height, width = size
        rng = np.random.default_rng(seed)
        # A background twice as wide as the frame, panned one pixel per frame and wrapped.
        coarse = rng.integers(0, 256, (max(height // 16, 2), max(width // 8, 2), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((2 * width, height), Image.BILINEAR), dtype=np.int16)
        grain = rng.integers(-12, 13, smooth.shape, dtype=np.int16)
        self.background = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        self.colors = rng.integers(40, 256, (objects, 3))
        self.centres = rng.uniform(0.2, 0.8, (objects, 2)) * (height, width)
        self.velocities = rng.uniform(-2.0, 2.0, (objects, 2))
        self.radii = rng.uniform(0.08, 0.18, (objects, 2)) * min(height, width) + 2
        self.rows, self.cols = np.mgrid[0:height, 0:width]

    def labels(self, t: int) -> np.ndarray:
        """Object ids 1..K of frame ``t`` (later objects in front)."""
        height, width = self.size
        labels = np.zeros(self.size, np.uint8)
        for k in range(len(self.colors)):
            cy, cx = self._bounce(self.centres[k] + t * self.velocities[k], (height, width))
            ry, rx = self.radii[k]
            inside = ((self.rows - cy) / ry) ** 2 + ((self.cols - cx) / rx) ** 2 <= 1.0
            labels[inside] = k + 1
        return labels

    def frame(self, t: int) -> np.ndarray:
        width = self.size[1]
        shift = t % (2 * width)
        frame = np.roll(self.background, -shift, axis=1)[:, :width].copy()
        labels = self.labels(t)
        for k, color in enumerate(self.colors):
            inside = labels == k + 1
            # Stripes give the objects texture that moves with them.
            stripes = ((self.cols[inside] + self.rows[inside] - 2 * t) // 6 % 2) * 40
            frame[inside] = np.clip(color[None, :] - stripes[:, None], 0, 255)
        return frame

    def encode(self, path: Path, frames: int) -> None:
        """Write ``frames`` frames as an H.264 MP4 at 25 fps."""
        import imageio_ffmpeg

        height, width = self.size
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=CLIP_FPS, codec="libx264", pix_fmt_out="yuv420p",
            quality=8, macro_block_size=2, ffmpeg_log_level="error",
        )
        writer.send(None)
        for t in range(frames):
            writer.send(np.ascontiguousarray(self.frame(t)))
        writer.close()

    @staticmethod
    def _bounce(position: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
        """Reflect a position that has travelled past the frame back into it."""
        result = []
        for value, limit in zip(position, size):
            period = 2 * limit
            value = value % period
            result.append(period - value if value > limit else value)
        return result[0], result[1]


def grid_objects(size: tuple[int, int], objects: int) -> np.ndarray:
    """A first-frame mask for a user's video: ``objects`` rectangles on a grid (speed, not accuracy)."""
    height, width = size
    columns = math.ceil(math.sqrt(objects))
    rows = math.ceil(objects / columns)
    labels = np.zeros(size, np.uint8)
    cell_h, cell_w = height // rows, width // columns
    if cell_h < 4 or cell_w < 4:
        raise InputError(f"frames of {height}x{width} are too small for {objects} objects")
    for k in range(objects):
        r, c = divmod(k, columns)
        top, left = r * cell_h + cell_h // 4, c * cell_w + cell_w // 4
        labels[top : top + cell_h // 2, left : left + cell_w // 2] = k + 1
    return labels


# ------------------------------------------------------------------------------------------ machine


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": _cpu_name(),
        # Other processes competing for the cores skew CPU figures; this makes it visible.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    elif device.type == "mps":
        info["device_name"] = "Apple MPS"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
