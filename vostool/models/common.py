"""What every engine adapter shares: the network on its device in eval mode with its BatchNorms folded
into their convolutions, and its settings."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vostool.engine.config import ModelSettings


class NetworkAdapter:
    """Base of an adapter. ``defaults``: the model's official settings (its spec's ``defaults``), used
    when no ``settings`` are given; the engine reads ``self.settings``."""

    defaults: ModelSettings
    # Submodules (by name, "" = the whole network) whose weights are stored channels_last, chosen per
    # model where measured faster: their convolutions then compute in that layout (the first converts an
    # NCHW input; same values up to summation order, about 1e-6 relative). The network makes their outputs
    # contiguous where they leave them, in its own code rather than in hooks, which torch.compile would
    # trace as graphs of their own.
    channels_last: tuple[str, ...] = ()

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu", settings: ModelSettings | None = None) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        fold_batchnorms(self.net)
        for name in self.channels_last:
            self.net.get_submodule(name).to(memory_format=torch.channels_last)
        self.settings = settings or self.defaults


def fold_batchnorms(net: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` into the convolution that feeds it; returns how many.

    An inference-only rewrite: ``bn(conv(x))`` becomes one convolution with scaled weights and a bias,
    and the BatchNorm is replaced by ``Identity`` (module names stay, so hooks and ``get_submodule``
    still work, but ``net.state_dict()`` no longer has the checkpoint's layout). The result differs
    from the unfolded network only by float rounding (about 1e-6 relative). It saves a full pass over
    each activation, 10-25 % of a ResNet's CPU time.

    The producer of a BatchNorm is found by registration order: the ``Conv2d`` registered last before
    it in the same parent, with no other BatchNorm in between. Every network here registers
    ``conv, bn`` pairs that way (torchvision ResNets, STCN, SITVOS, EfficientNet-Lite), and a test
    checks with forward hooks that each folded BatchNorm's input was exactly its convolution's output.
    """
    pairs = batchnorm_producers(net)
    for parent, conv_name, bn_name in pairs:
        setattr(parent, conv_name, fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name)))
        setattr(parent, bn_name, nn.Identity())
    return len(pairs)


def batchnorm_producers(net: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv name, BatchNorm name)`` of each eval-mode BatchNorm2d and the conv that feeds it."""
    pairs = []
    for parent in net.modules():
        conv_name = None
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv_name = name
            elif isinstance(child, nn.BatchNorm2d) and conv_name is not None and not child.training:
                pairs.append((parent, conv_name, name))
                conv_name = None
    return pairs
