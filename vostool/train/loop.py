"""The training loop behind ``vostool train``: sampling, optimisation, checkpoints with resume, loss curve.

Model-specific parts come from the model's :class:`Trainable` (its spec's ``trainer``): the network, the
parameters it trains and its forward pass over a sample. Everything here is the same for any such model.

Files, for ``out = my.pth``:
* ``my.pth``: the trained weights (fp16 state_dict), written once, at the end, through a temporary file;
* ``my.pth.state``: the training state every ``checkpoint_every`` steps (weights, optimiser, step, random
  generators, losses), written atomically, so an interrupted run loses at most that many steps and
  ``resume=True`` continues it exactly where the last state was taken; removed when the run completes;
* ``my.pth.state.png``: the loss curve so far, redrawn at every checkpoint, removed with the state;
* ``my.loss.png``: the run's loss curve, written at the end.
A failed or interrupted run therefore leaves an earlier run's ``my.pth`` and ``my.loss.png`` as they were.
"""

from __future__ import annotations

import dataclasses
import math
import pkgutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from vostool.api import resolve_device
from vostool.errors import InputError, ModelError
from vostool.io.writers import atomic_path
from vostool.models.checkpoint import check_weights_destination, save_checkpoint
from vostool.train.curve import draw_loss_curve
from vostool.train.data import SamplerSettings, TripletSampler, find_clips
from vostool.train.loss import bootstrapped_cross_entropy, hard_pixel_fraction

_WARMUP_STEPS = 50


class Trainable(Protocol):
    """What a trainable model gives the loop."""

    trained: nn.Module
    """The trained part: its state_dict is the checkpoint ``vostool segment --weights`` loads."""

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> Sequence[torch.Tensor]:
        """``frames`` (B, T, 3, S, S), ``masks`` (B, T, 1, S, S) -> class log-odds of frames 1..T-1."""
        ...


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 4
    learning_rate: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 100
    crop: int = 320
    max_skip: int = 10
    static_fraction: float = 0.25
    distractor_fraction: float = 0.5
    shapes_fraction: float = 0.0
    device: str = "auto"


@dataclass(frozen=True)
class TrainReport:
    steps: int
    resumed_from: int
    seconds: float
    final_loss: float  # mean over the last 50 steps (fewer if the run is shorter)
    weights: Path
    loss_curve: Path


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def curve_path(out: Path) -> Path:
    return out.with_suffix(".loss.png")


def _partial_curve_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.png")


def build_trainable(model: str, weights: Path | None, device: torch.device) -> Trainable:
    """The model's trainer from its spec (``weights`` None: its untrained starting point)."""
    return pkgutil.resolve_name(_check_trainable(model))(weights, device)


def _check_trainable(model: str) -> str:
    """The spec's ``trainer``; ModelError for unknown models and models vostool cannot train."""
    from vostool.models.registry import get_spec

    trainer = get_spec(model).trainer
    if trainer is None:
        raise ModelError(f"model '{model}' cannot be trained by vostool (trainable: {', '.join(trainable_models())})")
    return trainer


def trainable_models() -> list[str]:
    from vostool.models.registry import MODELS

    return [name for name, spec in MODELS.items() if spec.trainer is not None]


def train(
    data: str | Path,
    out: str | Path,
    *,
    model: str,
    weights: str | Path | None = None,
    from_scratch: bool = False,
    masks: str | Path | None = None,
    settings: TrainSettings = TrainSettings(),
    resume: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainReport:
    """Train ``model`` on the clips in ``data`` (see :func:`find_clips`) and write its weights to ``out``.

    It starts from ``weights``, else from the model's own checkpoint (fine-tuning), else, with
    ``from_scratch``, from the model's untrained starting point. ``on_step(step, steps, loss)`` is called
    after every step. ``resume`` continues from ``out``'s training state when there is one.
    """
    out = Path(out)
    _check_settings(settings)
    _check_trainable(model)
    device = resolve_device(settings.device)
    _check_out(out, Path(data), masks)  # before reading every mask of the data
    clips = find_clips(data, masks)
    weights = _starting_weights(model, weights, from_scratch)
    torch.manual_seed(settings.seed)  # torchvision's augmentations draw from torch's global generator
    generator = torch.Generator().manual_seed(settings.seed)
    trainable = build_trainable(model, weights, device)
    sampler = TripletSampler(clips, SamplerSettings(settings.crop, settings.max_skip, settings.static_fraction,
                                                    settings.distractor_fraction, settings.shapes_fraction), generator)
    params = [p for p in trainable.trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=1e-4)
    losses: list[float] = []
    start = 0
    if resume and state_path(out).is_file():
        start = _restore(state_path(out), trainable, optimizer, generator, losses, settings)
    began = time.perf_counter()
    trainable.trained.train()
    for step in range(start, settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * _lr_factor(step, settings.steps)
        frames, target = _batch(sampler, settings.batch_size, device)
        outputs = trainable.forward(frames, target)
        fraction = hard_pixel_fraction(step, settings.steps)
        loss = sum(bootstrapped_cross_entropy(logits, target[:, t + 1, 0].long(), fraction)
                   for t, logits in enumerate(outputs)) / len(outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % settings.checkpoint_every == 0 and done < settings.steps:
            _save_state(out, trainable, optimizer, generator, losses, settings, done)
        if on_step is not None:
            on_step(done, settings.steps, losses[-1])
    trainable.trained.eval()
    _write_weights(out, trainable.trained)
    with atomic_path(curve_path(out)) as temp:
        draw_loss_curve(losses, temp, f"{model}: training loss ({settings.steps} steps)")
    for leftover in (state_path(out), _partial_curve_path(out)):
        leftover.unlink(missing_ok=True)
    tail = losses[-50:]
    return TrainReport(settings.steps, start, time.perf_counter() - began, sum(tail) / max(len(tail), 1), out,
                       curve_path(out))


def _starting_weights(model: str, weights: str | Path | None, from_scratch: bool) -> Path | None:
    if weights is not None:
        if from_scratch:
            raise InputError("--weights and --from-scratch exclude each other")
        return Path(weights)
    if from_scratch:
        return None
    from vostool.weights import resolve_weights

    return resolve_weights(model, None, offline=True, progress=False)


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < _WARMUP_STEPS:
        return (step + 1) / _WARMUP_STEPS
    progress = (step - _WARMUP_STEPS) / max(total - _WARMUP_STEPS, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _batch(sampler: TripletSampler, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [sampler.sample() for _ in range(size)]
    frames = torch.stack([frames for frames, _ in samples]).to(device)
    masks = torch.stack([masks for _, masks in samples]).to(device)
    return frames, masks


def _check_out(out: Path, data: Path, masks: str | Path | None) -> None:
    check_weights_destination(out, "trained")
    resolved = out.resolve()
    for source in (data, Path(masks) if masks else None):
        if source is not None and resolved.is_relative_to(source.resolve()):
            raise InputError(f"is inside the training data {source}; write the weights elsewhere", out)


def _check_settings(settings: TrainSettings) -> None:
    if settings.crop % 16 or settings.crop < 64:
        raise InputError(f"--crop must be a multiple of 16, at least 64 (got {settings.crop})")
    for name in ("steps", "batch_size", "checkpoint_every", "max_skip"):
        if getattr(settings, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(settings, name)})")
    if not 0 <= settings.shapes_fraction <= 1:
        raise InputError(f"--shapes must be between 0 and 1 (got {settings.shapes_fraction})")


def _save_state(out: Path, trainable: Trainable, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                losses: list[float], settings: TrainSettings, step: int) -> None:
    state = {
        "trained": trainable.trained.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "losses": torch.tensor(losses, dtype=torch.float64),
        "torch_rng": torch.get_rng_state(),
        "sampler_rng": generator.get_state(),
        "settings": dataclasses.asdict(settings),
    }
    with atomic_path(state_path(out)) as temp:
        torch.save(state, temp)
    with atomic_path(_partial_curve_path(out)) as temp:
        draw_loss_curve(losses, temp, f"training loss (step {step} of {settings.steps})")


def _restore(path: Path, trainable: Trainable, optimizer: torch.optim.Optimizer, generator: torch.Generator,
             losses: list[float], settings: TrainSettings) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged state file can fail to load in many ways
        raise InputError(f"cannot read the training state ({err}); delete it to start again", path) from err
    saved = {k: v for k, v in state["settings"].items() if k not in ("steps", "device", "checkpoint_every")}
    current = {k: v for k, v in dataclasses.asdict(settings).items() if k in saved}
    if saved != current:
        changed = ", ".join(f"{k} {saved[k]} -> {current[k]}" for k in saved if saved[k] != current[k])
        raise InputError(f"training state was made with other settings ({changed}); resume with the same ones", path)
    trainable.trained.load_state_dict(state["trained"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    generator.set_state(state["sampler_rng"])
    losses.extend(state["losses"].tolist())
    return int(state["step"])


def _write_weights(out: Path, trained: nn.Module) -> None:
    """The trained part's state_dict in fp16 (the shipped checkpoint's form), through a temporary file."""
    save_checkpoint(out, {name: tensor.to(torch.float16) for name, tensor in trained.state_dict().items()})
