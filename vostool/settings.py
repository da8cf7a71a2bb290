"""The user's settings for a run, validated once for the library and the CLI alike.

``vostool.segment``, ``eval --model`` and ``bench`` take the same overrides of a model's defaults; this
module checks them before anything is loaded or decoded. Errors name the *parameter* (``size=0``), so
they read right to a Python caller; the CLI re-words them with its flag (``--size 0``) through
:attr:`SettingsError.flag`.

Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import VostoolError

# fp32 (TF32 off on CUDA, for parity), tf32 (allowed on CUDA; fp32 on the CPU), fp16/bf16 autocast.
# What each one computes how: vostool.engine.precision.
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
NATIVE_SIZE = -1
# The smallest internal short side any model can segment at: every network matches on a grid 16 times
# coarser than its input, so below 32 pixels a frame is a single row of cells and masks come out empty
# (`--size 1` did, even on the annotated frame). Checked against the requested size, not native ones.
MIN_SIZE = 32
# The largest internal short side: 4K's. Larger requests are typos or unit mix-ups (`--size 100000`
# tried to allocate 213 GB) rather than a resolution any of these models was meant for.
MAX_SIZE = 2160
# The internal long side is at most this many times the short side (2 x 16:9). A very elongated
# frame (2000x64) would otherwise be upscaled without bound by the default short side of 480
# (to 480x15000); it is processed smaller instead, and the run says so (see engine.transforms).
MAX_ASPECT = 2 * 16 / 9
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


class SettingsError(VostoolError):
    """A setting out of range. ``parameter`` is the library's name for it, ``value`` what was given."""

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        self.parameter = parameter
        self.value = value
        self.problem = problem
        super().__init__(f"{parameter}={value!r}: {problem}")

    @property
    def flag(self) -> str:
        """The same message worded for the command line (``--max-memory-frames 0: ...``)."""
        return f"--{self.parameter.replace('_', '-')} {self.value}: {self.problem}"


@dataclass(frozen=True)
class RunSettings:
    """Overrides of a model's defaults; ``None`` keeps the model's own value.

    ``size``: internal short side in pixels, or ``-1`` for native resolution. They are merged into a
    model's defaults once, by :meth:`vostool.engine.config.ModelSettings.merged`. ``compile``: run the
    encoders and decoders through ``torch.compile`` (compiled on the first frame of each resolution).
    """

    size: int | None = None
    mem_every: int | None = None
    top_k: int | None = None
    max_memory_frames: int | None = None
    precision: str = "fp32"
    device: str = "auto"
    compile: bool = False  # torch.compile the network's fixed-shape parts (vostool.engine.compile)

    def __post_init__(self) -> None:
        validate_size(self.size)
        _positive("mem_every", self.mem_every)
        _positive("top_k", self.top_k)
        _positive("max_memory_frames", self.max_memory_frames)
        if self.precision not in PRECISIONS:
            raise SettingsError("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        validate_device_name(self.device)
        if not isinstance(self.compile, bool):
            raise SettingsError("compile", self.compile, "must be True or False")


def validate_size(size: int | None) -> None:
    if size is None or size == NATIVE_SIZE:
        return
    if not _is_int(size) or size < MIN_SIZE or size > MAX_SIZE:
        raise SettingsError(
            "size", size, f"use -1 (native resolution) or a short side from {MIN_SIZE} to {MAX_SIZE} pixels"
        )


def validate_device_name(device: str) -> None:
    """Only the kinds vostool runs on: auto, cpu, cuda, cuda:N, mps (whether it exists is checked later)."""
    kind, _, index = str(device).partition(":")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise SettingsError("device", device, "choose auto, cpu, cuda, cuda:N or mps")


def _positive(parameter: str, value: int | None) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        raise SettingsError(parameter, value, "must be a whole number of at least 1")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
