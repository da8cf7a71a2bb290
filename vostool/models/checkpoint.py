"""Loading released checkpoints safely and checking that they fit a network.

Every model goes through the same two steps: :func:`load_checkpoint` reads a file with
``weights_only=True`` (no arbitrary code runs while unpickling) and insists on a plain mapping from
names to tensors; :func:`check_layout` compares that mapping with the layout the network expects
(taken from the network itself with :func:`expected_layout`) and explains any mismatch on one line.
"""

from __future__ import annotations

import fnmatch
import pickle
import re
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import nn

from vostool.errors import ModelError

# How many key names a mismatch message lists per category before it says "...".
_NAMES_SHOWN = 3
# How torch.load(weights_only=True) reports a pickled class it will not construct.
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
# Start of a legacy (pre-zip) torch.save file: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", unwrap: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Read a state_dict (name -> tensor) from ``path``.

    ``unwrap`` lists wrapper keys a model's released files are known to use (for example
    ``("model",)``); when the file holds a dict with one of them, the state_dict inside it is used.
    Nothing is unwrapped unless the caller names the key: STCN files are bare and pass nothing.
    Raises :class:`ModelError` naming the file if it is missing, unreadable, not a PyTorch
    checkpoint, or not a plain state_dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError("weights file not found", path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise ModelError(f"cannot read the weights file ({exc.strerror or exc})", path) from exc
    except pickle.UnpicklingError as exc:
        # weights_only refuses pickled Python classes other than tensors and plain containers; any
        # other unpickling failure means the bytes are not a torch.save file at all.
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused and _is_torch_save_file(path):
            raise ModelError(
                f"is not a plain state_dict (it holds a pickled Python object: {refused.group(1)})", path
            ) from exc
        raise ModelError("is not a PyTorch checkpoint (the file cannot be unpickled)", path) from exc
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on foreign bytes
        raise ModelError(f"is not a PyTorch checkpoint ({type(exc).__name__})", path) from exc
    return _as_state_dict(obj, path, unwrap)


def _is_torch_save_file(path: Path) -> bool:
    """True for the zip archives torch.save writes (torch >= 1.6) and its legacy pickle format."""
    with path.open("rb") as stream:
        head = stream.read(len(_LEGACY_MAGIC))
    return zipfile.is_zipfile(path) or head == _LEGACY_MAGIC


def _as_state_dict(obj: object, path: Path, unwrap: Collection[str]) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in unwrap:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ModelError(f"is not a plain state_dict (it holds a {type(obj).__name__})", path)
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ModelError(
            f"is not a plain state_dict: {len(bad)} entries are not named tensors ({_names(bad)})", path
        )
    return dict(obj)


def expected_layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The state_dict layout of ``module``: name -> shape, in the module's own key order."""
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def check_layout(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    model_name: str,
    path: str | Path,
    ignore: Collection[str] = (),
) -> None:
    """Raise :class:`ModelError` unless ``state`` has exactly the keys and shapes of ``expected``.

    ``ignore`` holds key names or shell-style patterns (``"*.num_batches_tracked"``) left out of the
    comparison on both sides. The message names the file, the model and the first few missing,
    unexpected and mis-shaped keys, so a wrong file is recognisable at a glance.
    """

    def ignored(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore)

    missing = [k for k in expected if k not in state and not ignored(k)]
    unexpected = [k for k in state if k not in expected and not ignored(k)]
    wrong_shape = [
        f"{k}: {_shape(expected[k])} expected, got {_shape(tuple(state[k].shape))}"
        for k in expected
        if k in state and not ignored(k) and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with the wrong shape ({_names(wrong_shape)})")
    if problems:
        raise ModelError(f"not a {model_name} checkpoint: " + ", ".join(problems), path)


def pad_input_channel(state: dict[str, torch.Tensor], key: str, channels: int) -> dict[str, torch.Tensor]:
    """Give the conv weight ``key`` of a single-object (stage-0) checkpoint a zero last input channel.

    Stage-0 files were trained without the "other objects" mask; a zero channel makes that input
    have no effect. States whose ``key`` already has ``channels`` inputs (or is absent) are returned as is.
    """
    weight = state.get(key)
    if weight is None or weight.dim() != 4 or weight.shape[1] != channels - 1:
        return state
    zeros = weight.new_zeros((weight.shape[0], 1, *weight.shape[2:]))
    return {**state, key: torch.cat([weight, zeros], dim=1)}


def load_exact_state(net: nn.Module, state: Mapping[str, torch.Tensor], model_name: str, path: str | Path) -> None:
    """Load ``state`` into ``net`` strictly, after :func:`check_layout` has explained any mismatch."""
    check_layout(state, expected_layout(net), model_name, path)
    net.load_state_dict(state, strict=True)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMES_SHOWN])
    return shown + (", ..." if len(items) > _NAMES_SHOWN else "")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"
