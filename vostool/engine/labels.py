"""A frame's labels on their way from the device to the host, without stalling the per-frame loop.

The argmax runs on the device and its channel indices (uint8 when they fit) are all that crosses to the
host. On CUDA that copy goes into pinned memory with ``non_blocking=True`` and a CUDA event marks its
end, so the loop queues the next frame's work at once; whoever first reads :meth:`HostLabels.numpy`
(in a run: the writer thread) waits for the event and maps the indices to the user's ids. On the CPU
the indices are already on the host and nothing waits.
"""

from __future__ import annotations

import threading

import numpy as np
import torch


class HostLabels:
    """Label ids of one frame, (H, W), resolved to numpy on first read (thread-safe, then cached)."""

    def __init__(self, index: torch.Tensor, lut: np.ndarray) -> None:
        """``index``: channel indices (H, W) on any device; ``lut[channel]`` = the user's id."""
        self._event = None
        if index.device.type == "cuda":
            host = torch.empty(index.shape, dtype=index.dtype, pin_memory=True)
            host.copy_(index, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            index = host
        elif index.device.type != "cpu":
            index = index.cpu()
        self._index: torch.Tensor | None = index
        self._lut = lut
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, labels: np.ndarray) -> HostLabels:
        """Labels already on the host."""
        done = cls.__new__(cls)
        done._event, done._index, done._lut, done._array = None, None, None, labels
        done._lock = threading.Lock()
        return done

    def numpy(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                if self._event is not None:
                    self._event.synchronize()
                self._array = self._lut[self._index.numpy()]
                self._index = self._lut = self._event = None
        return self._array
