"""The loss curve as a PNG, drawn with Pillow (no plotting library needed for one line chart)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

_SIZE = (800, 400)
_MARGIN = 50


def smoothed(values: list[float], window: int) -> list[float]:
    """Running mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_loss_curve(losses: list[float], path: Path, title: str) -> None:
    """Per-step loss (grey) and its running mean (blue) against the step, written to ``path``."""
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    width, height = _SIZE[0] - 2 * _MARGIN, _SIZE[1] - 2 * _MARGIN
    draw.rectangle([_MARGIN, _MARGIN, _MARGIN + width, _MARGIN + height], outline="black")
    draw.text((_MARGIN, 15), title, fill="black")
    if losses:
        top = max(losses) or 1.0
        def point(i: int, value: float) -> tuple[float, float]:
            x = _MARGIN + width * i / max(len(losses) - 1, 1)
            return x, _MARGIN + height * (1 - value / top)
        for series, colour in ((losses, (190, 190, 190)), (smoothed(losses, 50), (30, 80, 200))):
            if len(series) > 1:
                draw.line([point(i, v) for i, v in enumerate(series)], fill=colour, width=2)
        draw.text((5, _MARGIN - 5), f"{top:.3f}", fill="black")
        draw.text((5, _MARGIN + height - 5), "0", fill="black")
        draw.text((_MARGIN + width - 60, _MARGIN + height + 8), f"step {len(losses)}", fill="black")
    image.save(path)
