"""``--compile``: ``torch.compile`` for the parts of a network whose shapes are fixed for a video.

A network's modules fall in two kinds. Encoders and decoders see tensors shaped by the frame (and the
number of objects): fixed for a video, so each compiles once per resolution. The memory readout sees
tensors that grow with the memory bank, so it is left eager: STCN's and the Lite0 models' readouts are
functions (``vostool.engine.readout``) and JointFormer's joint blocks are called through their
sub-modules (never compiled). The rule is generic: the units compiled are the outermost modules of
``network.net`` with a ``forward`` of their own class (:func:`compiled_units`).

What may still be traced again (``torch._dynamo`` guards on shapes), and why, as measured with
``scripts/compile_check.py`` on the parity clips:

* nothing from frame to frame once the memory holds two frames: STCN and JointFormer trace on frames
  0 and 1 only; SimVOS and SITVOS once more on frame 2, because their joint blocks / interactive
  transformer do read the memory (sequence length = memory frames x tokens): that axis is then compiled
  dynamic, so a memory of any later size reuses the graph;
* the object axis of per-object modules (value encoder, decoder) when an object is added or removed:
  compiled dynamic from its second size on; a group of one object (an object added later is decoded in a
  group of its own: it is in fewer memory frames) is its own graph, as dynamo specialises size 1;
* another resolution (another video): its sizes become dynamic, one more graph that serves the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


def compiled_units(net: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The outermost modules of ``net`` with a ``forward`` of their own class (``net`` itself when it has
    one). PyTorch's own modules are looked into instead: containers have no forward to compile, and a
    lone ``Linear`` or ``LayerNorm`` gains nothing from it, while all of them share one compiled entry
    point whose recompile limit (8) a network's dozen would exceed."""
    own_forward = type(net).forward is not nn.Module.forward
    if own_forward and not type(net).__module__.startswith("torch."):
        yield prefix or "<network>", net
        return
    for name, child in net.named_children():
        yield from compiled_units(child, f"{prefix}.{name}" if prefix else name)


def compile_network(network, *, backend: str = "inductor") -> tuple[str, ...]:
    """Compile ``network.net``'s fixed-shape units in place (their state_dict keys do not change).

    Compilation itself happens lazily, on the first frame of each resolution. ``backend``: a
    ``torch.compile`` backend (tests count recompiles with ``"eager"``, which compiles nothing).
    Returns the names of the compiled units.
    """
    units = list(compiled_units(network.net))
    for _, module in units:
        module.compile(backend=backend, dynamic=None)
    return tuple(name for name, _ in units)


def compile_counters() -> dict[str, int]:
    """``torch._dynamo``'s counts since the last ``torch._dynamo.reset()``: ``graphs`` compiled and
    ``traced``, the calls into compiled units that had to be traced (first compiles plus recompiles)."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "traced": counters["frames"]["total"]}
