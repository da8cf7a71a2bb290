"""Synthetic training sequences: textured shapes moving over a background, in front of and behind each other.

Real clips teach the network natural objects; these teach it what they rarely show: flat or periodic
textures (stripes, checks) whose interior is still the object, small objects, and objects crossing one
another, where the one behind must come back when the one in front has passed. Each sequence has one to
three shapes (random star-like polygons, ellipses or boxes) with a fixed depth order, each moving, turning
and scaling a little from frame to frame; one of them is the target, labelled where it is visible.

Every shape is a texture and an outline drawn once in its own coordinates and warped into each frame
by one affine map (``grid_sample``), so its texture moves with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.transforms.v2.functional import gaussian_blur

MIN_VISIBLE_PIXELS = 100  # the target must show at least this much in frame 0
_TRIES = 5
_SYNTHETIC_TEXTURES = ("noise", "stripes", "checks", "flat")
# Flat twice: real video rarely shows a large uniform object, and without such objects the decoder learns
# that uniform regions are background (it hollowed a flat box out from its middle).
_SHAPE_TEXTURES = ("real", "noise", "stripes", "checks", "flat", "flat")


def uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One draw in [low, high) from ``generator`` (training samples draw only from theirs: reproducible)."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def randint(generator: torch.Generator, high: int) -> int:
    """One integer in [0, high) from ``generator``."""
    return int(torch.randint(high, (1,), generator=generator))


class ShapeSequences:
    """Draws synthetic sequences of ``frames`` square frames of side ``size``, reproducibly from
    ``generator``. ``real_image(size)`` gives a (3, size, size) uint8 crop of a real frame: backgrounds
    and shape textures are sometimes real, so the shapes are not the only thing that looks synthetic."""

    def __init__(self, size: int, frames: int, generator: torch.Generator,
                 real_image: Callable[[int], torch.Tensor]) -> None:
        self.size = size
        self.frames = frames
        self.generator = generator
        self.real_image = real_image

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frames (T, 3, S, S) float 0..255, target masks (T, 1, S, S) bool)``."""
        for _ in range(_TRIES):
            frames, masks = self._render()
            if masks[0].sum() >= MIN_VISIBLE_PIXELS:
                break
        return frames, masks

    def _render(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.generator
        background = self._background()
        count = 1 + randint(g, 3)
        shapes = [self._shape() for _ in range(count)]  # depth order: later ones in front
        target = randint(g, count)
        pan = torch.tensor([uniform(g, -0.04, 0.04), uniform(g, -0.04, 0.04)])  # camera drift per frame
        frames, masks = [], []
        for t in range(self.frames):
            frame, mask = compose(_warp(background, torch.eye(2), pan * t, 1.0, padding="border")[0], shapes,
                                  target, t)
            frames.append(self._camera(frame))
            masks.append(mask[None])
        return torch.stack(frames), torch.stack(masks)

    def _background(self) -> torch.Tensor:
        """(3, S, S): a real frame half of the time, else a synthetic texture."""
        if randint(self.generator, 2):
            return self.real_image(self.size).float()
        return self._texture(_SYNTHETIC_TEXTURES[randint(self.generator, len(_SYNTHETIC_TEXTURES))])

    def _texture(self, kind: str | None = None) -> torch.Tensor:
        """(3, S, S) float 0..255 of ``kind`` (default: drawn from :data:`_SHAPE_TEXTURES`)."""
        g, size = self.generator, self.size
        kind = kind or _SHAPE_TEXTURES[randint(g, len(_SHAPE_TEXTURES))]
        if kind == "real":
            return self.real_image(size).float()
        base = torch.rand(3, 1, 1, generator=g) * 255
        other = torch.rand(3, 1, 1, generator=g) * 255
        if kind == "flat":  # with faint noise
            pattern = torch.zeros(size, size)
        elif kind == "noise":  # smooth value noise
            cell = int(uniform(g, 8, 64))
            coarse = torch.rand(1, 1, size // cell + 2, size // cell + 2, generator=g)
            pattern = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)
        elif kind == "stripes":  # at a random angle and period
            angle, period = uniform(g, 0, math.pi), uniform(g, 6, 48)
            ys, xs = _pixel_grid(size)
            pattern = (torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period) > 0).float()
        else:  # checks
            cell = int(uniform(g, 4, 32))
            ys, xs = _pixel_grid(size)
            pattern = ((ys // cell + xs // cell) % 2).float()
        strength = uniform(g, 0.1, 1.0)
        image = base + (other - base) * strength * pattern
        return (image + torch.randn(3, size, size, generator=g) * uniform(g, 0, 6)).clamp(0, 255)

    def _shape(self) -> "MovingShape":
        g, size = self.generator, self.size
        radius = size * (uniform(g, 0.25, 0.5) if randint(g, 3) == 0 else uniform(g, 0.04, 0.3))
        outline = _outline(g, size, radius)
        texture = torch.cat([self._texture(), outline[None].float()])
        start = torch.tensor([uniform(g, -0.7, 0.7), uniform(g, -0.7, 0.7)])
        velocity = torch.tensor([uniform(g, -0.25, 0.25), uniform(g, -0.25, 0.25)])
        return MovingShape(texture, start, velocity, uniform(g, 0, 2 * math.pi), uniform(g, -0.15, 0.15),
                            uniform(g, 0.9, 1.1))

    def _camera(self, frame: torch.Tensor) -> torch.Tensor:
        """Mild blur or a low-resolution look (a small video upscaled), sometimes, and sensor noise, as a
        video camera, its codec and vostool's resize to the working size give."""
        g = self.generator
        look = randint(g, 4)
        if look < 2:
            frame = gaussian_blur(frame, [5, 5], [uniform(g, 0.3, 1.2)])
        elif look == 2:
            size = frame.shape[-1]
            small = F.interpolate(frame[None], size=int(size / uniform(g, 2, 8)), mode="bilinear", antialias=True)
            frame = F.interpolate(small, size=size, mode="bilinear", align_corners=False)[0]
        return (frame + torch.randn(frame.shape, generator=g) * uniform(g, 0, 4)).clamp(0, 255)


def compose(background: torch.Tensor, shapes: list["MovingShape"], target: int, t: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame ``t``: the shapes drawn over ``background`` in list order (later ones in front), and the
    mask of shape ``target`` where it is visible."""
    frame, label = background, torch.full(background.shape[-2:], -1)
    for index, shape in enumerate(shapes):
        texture, outline = shape.at(t)
        frame = torch.where(outline, texture, frame)
        label[outline] = index
    return frame, label == target


class MovingShape:
    """A texture with its outline (channel 3) in shape coordinates, placed by position, angle and scale
    that change linearly (position, angle) or geometrically (scale) with the frame index."""

    def __init__(self, texture: torch.Tensor, start: torch.Tensor, velocity: torch.Tensor, angle: float,
                 spin: float, growth: float) -> None:
        self.texture, self.start, self.velocity = texture, start, velocity
        self.angle, self.spin, self.growth = angle, spin, growth

    def at(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        angle = self.angle + self.spin * t
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        warped = _warp(self.texture, rotation, self.start + self.velocity * t, self.growth**t)[0]
        return warped[:3], warped[3] > 0.5


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates of a (size, size) image."""
    axis = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(axis, axis, indexing="ij")


def _warp(image: torch.Tensor, rotation: torch.Tensor, centre: torch.Tensor, scale: float,
          padding: str = "zeros") -> torch.Tensor:
    """``image`` (C, S, S) drawn rotated, scaled and centred at ``centre`` (normalised coordinates)."""
    inverse = rotation.T / scale  # output coordinates -> shape coordinates
    theta = torch.cat([inverse, (-inverse @ centre)[:, None]], dim=1)[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _outline(generator: torch.Generator, size: int, radius: float) -> torch.Tensor:
    """(S, S) bool: a star-like polygon, an ellipse or a box of about ``radius``, centred."""
    kind = randint(generator, 3)
    if kind == 0:
        corners = 5 + randint(generator, 8)
        angles = np.sort(np.array([uniform(generator, 0, 2 * math.pi) for _ in range(corners)]))
        radii = np.array([radius * uniform(generator, 0.45, 1.0) for _ in range(corners)])
    else:
        corners = 48 if kind == 1 else 4
        angles = np.arange(corners) * 2 * math.pi / corners + (math.pi / 4 if kind == 2 else 0)
        radii = np.full(corners, radius)
    aspect = uniform(generator, 0.4, 1.0)
    points = [(size / 2 + r * math.cos(a), size / 2 + r * aspect * math.sin(a)) for r, a in zip(radii, angles)]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return torch.from_numpy(np.array(canvas, dtype=bool))
