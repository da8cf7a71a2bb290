"""Numerical precision of a run: autocast for fp16/bf16, TF32 on or off on CUDA, fp32 islands.

``--precision`` (``ModelSettings.precision``) is one of:

* ``fp32``: everything in float32. On CUDA, TF32 is *off* for matrix products and cuDNN convolutions
  while vostool computes (PyTorch leaves cuDNN's TF32 on by default, which would cost parity with the
  official code's float32 results), and the user's own settings are put back after every frame.
* ``tf32``: float32 tensors, with TF32 tensor cores allowed for matrix products and convolutions on
  CUDA (about 10 bits of mantissa in the products). On the CPU there is no TF32: it is ``fp32``.
* ``fp16`` / ``bf16``: autocast to that type on the device. What decides labels stays in float32:
  the memory affinity and its softmax (:func:`float32_region`), the mask logits' sigmoid / softmax and
  the soft aggregation of the objects (done by the engine outside autocast).

The TF32 switches are process-wide PyTorch flags; :func:`tf32_matmul` sets them for the duration of
one engine step and restores them, so a library user's own setting holds outside vostool's calls (two
threads computing at once with different precisions would see each other's setting).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision``'s type on ``device`` (nothing for fp32 / tf32)."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def tf32_matmul(precision: str, device: torch.device) -> Iterator[None]:
    """On CUDA: TF32 allowed in matrix products and cuDNN convolutions only for ``tf32``, then the
    previous flags back. Elsewhere nothing (the CPU has no TF32)."""
    if device.type != "cuda":
        yield
        return
    allow = precision == "tf32"
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def float32_region(like: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``like``'s device: the code inside runs in the type of its inputs, which the
    caller casts up with ``.float()`` (a no-op for float32 tensors, so fp32 runs are unchanged)."""
    return torch.autocast(like.device.type, enabled=False)
