"""Per-stage timing for ``vostool bench``, free when nobody is measuring.

Code marks its stages with ``with stage("key_encoding"): ...``. Unless a :class:`StageTimer` is active
(``with timer.active(): ...``), :func:`stage` returns one shared do-nothing context manager, so the
normal ``segment`` path pays a context-variable lookup per stage and nothing else.

While a timer is active each stage is timed with ``time.perf_counter``; on CUDA/MPS the device is
synchronised at both ends of the stage, because kernels run asynchronously and would otherwise be
billed to whichever later stage first waits for them. Times are *exclusive*: a stage nested in another
(a network's ``decoding`` inside the engine's ``segment``) is subtracted from its parent, so the stages
of one thread add up to that thread's busy time without double counting.

The timer lives in a context variable. Threads do not inherit context variables, so background
threads (the frame reader, the writer) run their work through :func:`carry_to_thread`.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Every stage name in use, in pipeline order. Tables and JSON list stages in this order.
STAGES = (
    "decode",  # reading + decoding the next frame (frame reader thread)
    "preprocess",  # normalise, resize, pad, copy to the device
    "key_encoding",  # the network's encode_query (once per frame)
    "segment",  # memory readout + decoding, where the network does not time them separately
    "memory_readout",  # the network's affinity / top-k readout (networks that mark it)
    "decoding",  # the network's mask decoder (networks that mark it)
    "aggregation",  # merging given masks + soft aggregation
    "memory_write",  # encode_value + memory_key for frames that enter memory
    "postprocess",  # unpad, resize to the original size, argmax, copy to the host
    "write",  # palette PNG + overlay video + RLE (writer thread)
)


class StageTimer:
    """Accumulates exclusive seconds and call counts per stage; thread-safe."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def active(self) -> Iterator[StageTimer]:
        """Make this the timer that :func:`stage` reports to, in this context."""
        token = _timer.set(self)
        try:
            yield self
        finally:
            _timer.reset(token)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.calls[name] = self.calls.get(name, 0) + 1

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        """Milliseconds per frame for every stage seen, in :data:`STAGES` order (others last)."""
        order = [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES))
        return {name: 1000.0 * self.seconds[name] / max(frames, 1) for name in order}


class _Span:
    """One running stage: its timer and the time spent in stages nested inside it."""

    __slots__ = ("timer", "name", "sync", "start", "nested", "parent", "token")

    def __init__(self, timer: StageTimer, name: str, sync: bool) -> None:
        self.timer, self.name, self.sync = timer, name, sync
        self.nested = 0.0

    def __enter__(self) -> None:
        if self.sync:
            self.timer.synchronize()
        self.parent = _span.get()
        self.token = _span.set(self)
        self.start = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        if self.sync:
            self.timer.synchronize()
        elapsed = time.perf_counter() - self.start
        _span.reset(self.token)
        self.timer.add(self.name, elapsed - self.nested)
        if self.parent is not None:
            self.parent.nested += elapsed


class _NoStage:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_STAGE = _NoStage()
_timer: contextvars.ContextVar[StageTimer | None] = contextvars.ContextVar("vostool_timer", default=None)
_span: contextvars.ContextVar[_Span | None] = contextvars.ContextVar("vostool_span", default=None)


def stage(name: str, *, sync: bool = True) -> _Span | _NoStage:
    """Time the ``with`` block as stage ``name`` when a timer is active; otherwise do nothing.

    ``sync=False`` for host-only work in background threads: synchronising there would wait for the
    main thread's kernels and bill them to this stage.
    """
    timer = _timer.get()
    if timer is None:
        return _NO_STAGE
    return _Span(timer, name, sync)


def carry_to_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap a thread's target so that it reports to the timer active here, outside any open stage."""
    context = contextvars.copy_context()

    def run() -> Any:
        _span.set(None)  # stages in the thread are not nested in whatever is open in this thread
        return fn()

    return lambda: context.run(run)
