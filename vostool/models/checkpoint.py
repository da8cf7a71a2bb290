"""Loading released checkpoints safely and checking that they fit a network.

Every model goes through the same two steps: :func:`load_checkpoint` reads a file with
``weights_only=True`` (no arbitrary code runs while unpickling) and insists on a plain mapping from
names to tensors; :func:`check_layout` compares that mapping with the layout the network expects
(taken from the network itself with :func:`expected_layout`) and explains any mismatch on one line.
"""

from __future__ import annotations

import fnmatch
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from vostool.errors import InputError, ModelError
from vostool.io.writers import atomic_path

# How many key names a mismatch message lists per category before it says "...".
_NAMES_SHOWN = 3
# How torch.load(weights_only=True) names a pickled global it refuses, in the wordings torch has used:
# "Unsupported global: GLOBAL x.y was not an allowed global" (2.4+), "Trying to load unsupported
# GLOBAL x.y whose module x is blocked" (os, subprocess, ...) and "Unsupported class x.y" (before 2.4).
_REFUSED_GLOBAL = re.compile(r"unsupported (?:global: GLOBAL|GLOBAL|class) ([\w.]+)", re.IGNORECASE)
# Start of a legacy (pre-zip) torch.save file: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_ZIP_MAGIC = b"PK\x03\x04"
# Globals a plain state_dict's pickle uses (tensors and storages are torch.*); anything else is an object.
_STATE_DICT_GLOBALS = {"collections.OrderedDict", "_codecs.encode"}
# The most pickles read from one file: a legacy torch.save file holds five, then raw storage bytes.
_MAX_PICKLES = 5
# The highest pickle protocol torch.load(weights_only=True) reads (torch.save's default).
_SAFE_PROTOCOL = 2


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", unwrap: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Read a state_dict (name -> tensor) from ``path``.

    ``unwrap`` lists wrapper keys a model's released files are known to use (for example
    ``("model",)``); when the file holds a dict with one of them, the state_dict inside it is used.
    Nothing is unwrapped unless the caller names the key: STCN files are bare and pass nothing.
    Raises :class:`ModelError` naming the file if it is missing, unreadable, truncated, not a
    PyTorch checkpoint, or not a plain state_dict of tensors (a file holding code is refused
    without running it, and the first object that is not a tensor is named).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError("weights file not found", path)
    head = _read_head(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols on the way to refusing a foreign file (and on some
            # good ones): the one-line error below is all a user needs, without warning lines above it.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on foreign or damaged bytes
        raise _load_failure(path, head, exc) from exc
    return _as_state_dict(obj, path, unwrap)


def save_checkpoint(path: str | Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write the state_dict ``state`` to ``path`` through a temporary file (an existing ``path`` stays as it
    was until the new file is complete). The same tensors give the same bytes, so a sha256 names them."""
    # Saved through memory: torch.save names the archive after the file it writes, here a temporary name.
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu() for name, tensor in state.items()}, buffer)
    with atomic_path(path) as temp:
        temp.write_bytes(buffer.getvalue())


def check_weights_destination(out: Path, kind: str) -> None:
    """InputError unless ``out`` can take a new ``kind`` ("trained", "blended") weights file: a ``.pth`` name,
    not a folder, in a folder that exists."""
    if out.suffix != ".pth":
        raise InputError(f"the {kind} weights file must end in .pth", out)
    if out.is_dir():
        raise InputError("is a folder; --out names the weights file to write", out)
    if not out.parent.is_dir():
        raise InputError("folder does not exist", out.parent)


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.read(len(_LEGACY_MAGIC))
    except OSError as exc:
        raise ModelError(f"cannot read the weights file ({exc.strerror or exc})", path) from exc


def _load_failure(path: Path, head: bytes, exc: Exception) -> ModelError:
    """The one-line error for a file torch.load could not read, saying what is wrong with it."""
    saved_by_torch = _saved_by_torch(path, head)
    scan = _scan_pickles(path) if isinstance(exc, pickle.UnpicklingError) else None
    if scan is not None:
        protocol, globals_used = scan
        named = _REFUSED_GLOBAL.search(str(exc))
        refused = named.group(1) if named else next((g for g in globals_used if not _is_tensor_global(g)), None)
        if refused is not None:
            what = "a plain state_dict" if saved_by_torch else "a PyTorch checkpoint"
            return ModelError(
                f"is not {what} (refused because it contains objects that are not tensors; the first: "
                f"{refused}); nothing in it was run", path)
        if saved_by_torch and protocol > _SAFE_PROTOCOL:
            return ModelError(
                f"was saved with pickle protocol {protocol}, which torch cannot load safely "
                "(weights_only); save the state_dict again with torch.save's default protocol", path)
    if saved_by_torch:
        return ModelError("is truncated or corrupt (a PyTorch checkpoint that cannot be read to the end); "
                          "download or save it again", path)
    if isinstance(exc, OSError):
        return ModelError(f"cannot read the weights file ({exc.strerror or exc})", path)
    return ModelError("is not a PyTorch checkpoint (the file cannot be unpickled)", path)


def _saved_by_torch(path: Path, head: bytes) -> bool:
    """True for torch.save's zip archive (intact or not) and its legacy format, from the first bytes."""
    if head == _LEGACY_MAGIC:
        return True
    if not head.startswith(_ZIP_MAGIC):
        return False
    try:  # an intact zip is torch's only if it has the pickle; a damaged one cannot tell, so it counts
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return True


def _is_tensor_global(name: str) -> bool:
    return name.split(".", 1)[0] == "torch" or name in _STATE_DICT_GLOBALS


def _scan_pickles(path: Path) -> tuple[int, list[str]] | None:
    """(highest protocol, every global named) of the pickles in ``path``, read without unpickling.

    A torch.save zip holds its pickle in ``*/data.pkl``; a legacy torch.save file and a raw pickle
    start with their pickles. None when the file holds no complete pickle (a damaged zip, foreign bytes).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                with archive.open(member) as stream:
                    return _scan_stream(stream)
        with path.open("rb") as stream:
            if stream.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
                return None  # the start of a zip whose end is missing or damaged
            stream.seek(0)
            return _scan_stream(stream)
    except (OSError, zipfile.BadZipFile):
        return None


def _scan_stream(stream: BinaryIO) -> tuple[int, list[str]] | None:
    protocol, found, complete = 0, [], 0
    for _ in range(_MAX_PICKLES):
        try:
            pickle_protocol, names = _pickle_globals(stream)
        except (ValueError, EOFError):  # the stream ended, or what follows is not a pickle (storage bytes)
            break
        protocol, complete = max(protocol, pickle_protocol), complete + 1
        found += names
    return (protocol, found) if complete else None


def _pickle_globals(stream: BinaryIO) -> tuple[int, list[str]]:
    """(protocol, the module.name of every global) of the next pickle in ``stream``; nothing is run.

    Raises ValueError when the bytes are not one complete pickle.
    """
    protocol, found, pushed, memo = 0, [], [], {}
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name == "PROTO":
            protocol = arg
        elif opcode.name in ("GLOBAL", "INST"):
            found.append(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":  # protocol 4+: module and name are the two strings pushed last
            found.append(".".join(str(part) for part in pushed[-2:]))
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif opcode.stack_after:
            pushed.append(arg if isinstance(arg, str) else None)
    return protocol, found


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
        raise ModelError(f"not {with_article(model_name)} checkpoint: " + ", ".join(problems), path)


def with_article(name: str) -> str:
    """``name`` after "a" or "an", chosen by how it is read: "an efficientnet-lite0", "an STCN", "a SimVOS".

    A name whose leading letters hold no vowel is an initialism, read letter by letter, so it takes
    "an" when its first letter's name starts with a vowel sound (STCN: "ess-tee-..."). Any other
    name is read as a word and takes "an" before a vowel letter (sitvos, jointformer: "a").
    """
    letters = re.match(r"[a-z]*", name.lower()).group(0)
    initialism = bool(letters) and not any(ch in "aeiouy" for ch in letters)
    vowel_sounds = "aefhilmnorsx" if initialism else "aeiou"
    article = "an" if letters[:1] and letters[0] in vowel_sounds else "a"
    return f"{article} {name}"


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
