"""Blending two checkpoints of one model: a weighted average of their tensors, name by name.

Two fine-tunes from one starting point can be averaged in weight space (a "model soup"; WiSE-FT blends a
fine-tune with its starting weights) and often keep what each run learnt. lite0-stcn's shipped checkpoint
is such a blend, and a user can blend their own fine-tune with the shipped weights the same way, to keep
some of the shipped model's general behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vostool.errors import InputError
from vostool.io.guard import refuse_overwriting_inputs
from vostool.weights.verify import LayoutProvider, default_layout_of, load_verified

if TYPE_CHECKING:  # listing checkpoints (this package) must not import torch
    import torch


def blend_checkpoints(
    first: str | Path,
    second: str | Path,
    out: str | Path,
    *,
    model: str,
    share: float = 0.5,
    layout_of: LayoutProvider | None = None,
) -> Path:
    """Write ``(1 - share) * first + share * second`` to ``out`` and return ``out``.

    Both files must have ``model``'s exact layout. Each tensor is averaged in fp32 and stored in
    ``first``'s dtype; whole-number tensors (counters) are taken from ``first``. ``out`` is written
    through a temporary file, and never replaces either input.
    """
    first, second, out = Path(first), Path(second), Path(out)
    if not 0 <= share <= 1:
        raise InputError(f"--share must be between 0 and 1 (got {share})")
    # Imported here: the models package (torch) is heavier than this one, which listing checkpoints imports.
    from vostool.models.checkpoint import check_weights_destination, save_checkpoint

    check_weights_destination(out, "blended")
    refuse_overwriting_inputs({"FIRST": first, "SECOND": second}, {"--out": out})
    layout_of = layout_of or default_layout_of
    a = load_verified(first, model, layout_of)
    b = load_verified(second, model, layout_of)
    save_checkpoint(out, {name: _average(tensor, b[name], share) for name, tensor in a.items()})
    return out


def _average(a: torch.Tensor, b: torch.Tensor, share: float) -> torch.Tensor:
    if not a.is_floating_point():
        return a
    return ((1 - share) * a.float() + share * b.float()).to(a.dtype)

