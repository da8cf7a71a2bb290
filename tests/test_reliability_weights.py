"""Issue 11, items 11 and 12: offline `weights download`, and the messages for damaged or foreign checkpoints.

Each message is checked through the library and through the CLI (exit 2, exactly one line on stderr, no
torch warning and no traceback). Offline tests replace the downloader's network entry point with one that
fails the test, so "nothing was downloaded" is asserted, not timed.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.test_weights import (  # noqa: F401 - registered and vostool_home are fixtures (vostool_home autouse)
    TOY_BYTES,
    TOY_SHA,
    registered,
    toy_checkpoint,
    toy_layout,
    vostool_home,
)
from vostool.cli import app
from vostool.errors import ModelError
from vostool.models.checkpoint import check_layout, load_checkpoint, with_article
from vostool.models.propagate_lite0.adapter import build as build_propagate_lite0
from vostool.models.registry import MODELS
from vostool.models.stcn.adapter import build as build_stcn
from vostool.weights import DownloadError, cache_file, download, get_checkpoint, verify
from vostool.weights import downloads
from vostool.weights.cache import record_sha256

runner = CliRunner()
# The first object torch or vostool names for each payload: os.system is posix.system on Linux (nt.system on
# Windows); print is "print" in torch's wording and "builtins.print" when vostool reads the pickle itself.
SYSTEM_NAME = re.escape(f"{os.system.__module__}.system")
PRINT_NAME = r"(builtins\.)?print"
PAYLOAD_TEXT = "PAYLOAD-RAN-11"
REFUSED = "refused because it contains objects that are not tensors"


class _RunsShell:
    """Unpickled with plain pickle, this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Prints:
    """Unpickled with plain pickle, this prints a recognisable line."""

    def __reduce__(self):
        return (print, (PAYLOAD_TEXT,))


def _payload(kind: str, marker: Path) -> object:
    return _RunsShell(marker) if kind == "system" else _Prints()


def _write_code_file(path: Path, kind: str, how: str, marker: Path) -> Path:
    """A file whose pickle holds code: torch.save'd beside a tensor, or a raw pickle (default protocol)."""
    payload = _payload(kind, marker)
    if how == "torch.save":
        torch.save({"weight": torch.zeros(2), "payload": payload}, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def _truncated_checkpoint(path: Path, zip_format: bool) -> Path:
    """A real torch.save'd state_dict, cut in half."""
    torch.save(torch.nn.Linear(64, 64).state_dict(), path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CODE_CASES = [
    pytest.param(kind, how, id=f"{kind}-{how}")
    for kind in ("system", "print")
    for how in ("torch.save", "raw-pickle")
]


def _refusal_pattern(path: Path, kind: str) -> str:
    name = SYSTEM_NAME if kind == "system" else PRINT_NAME
    return (re.escape(f"{path}: is not a ") + r"(plain state_dict|PyTorch checkpoint) \(" + re.escape(REFUSED)
            + f"; the first: {name}\\); nothing in it was run$")


# ---------------------------------------------------------------------------------------------------------
# The library


@pytest.mark.parametrize(("kind", "how"), CODE_CASES)
def test_file_with_code_is_refused_naming_the_first_object(tmp_path, kind, how, capfd, recwarn):
    marker = tmp_path / "code-ran"
    path = _write_code_file(tmp_path / "bad.pth", kind, how, marker)
    warnings.simplefilter("always")  # a warning already shown once in this process must show again
    with pytest.raises(ModelError, match=_refusal_pattern(path, kind)):
        load_checkpoint(path)
    assert not marker.exists()
    captured = capfd.readouterr()
    assert PAYLOAD_TEXT not in captured.out + captured.err
    assert [str(w.message) for w in recwarn] == []  # torch's protocol warnings are silenced for this call


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoint_says_truncated_or_corrupt(tmp_path, zip_format):
    path = _truncated_checkpoint(tmp_path / "cut.pth", zip_format)
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: is truncated or corrupt") and "RuntimeError" not in message
    assert "\n" not in message


def test_intact_checkpoint_still_loads_without_warnings(tmp_path, recwarn):
    # pickle protocol 3 makes torch warn even on success; the warning is not the user's problem.
    state = torch.nn.Linear(4, 4).state_dict()
    path = tmp_path / "p3.pth"
    torch.save(state, path, pickle_protocol=3)
    warnings.simplefilter("always")
    loaded = load_checkpoint(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert [str(w.message) for w in recwarn] == []


def test_checkpoint_in_a_protocol_torch_cannot_read_safely_says_so(tmp_path):
    path = tmp_path / "p4.pth"
    torch.save(torch.nn.Linear(4, 4).state_dict(), path, pickle_protocol=4)
    with pytest.raises(ModelError, match=re.escape(f"{path}: was saved with pickle protocol 4")):
        load_checkpoint(path)


ARTICLES = {
    "propagate-lite0": "a",
    "lite0-stcn": "a",  # "light-zero"
    "efficientnet-lite0": "an",
    "stcn": "an",  # an initialism: "an ess-tee-see-en"
    "STCN": "an",
    "simvos-b": "a",
    "simvos-l": "a",
    "simvos-bs": "a",
    "sitvos": "a",  # read as a word
    "SITVOS": "a",
    "jointformer": "a",
    "JointFormer": "a",
}


@pytest.mark.parametrize(("name", "article"), ARTICLES.items())
def test_article_follows_the_first_sound(name, article):
    assert with_article(name) == f"{article} {name}"


def test_every_registered_model_has_its_article_checked():
    assert set(MODELS) <= set(ARTICLES)


def test_layout_mismatch_messages_use_the_right_article(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(ModelError, match=re.escape(f"{wrong}: not an efficientnet-lite0 checkpoint: ")):
        build_propagate_lite0(wrong)
    with pytest.raises(ModelError, match=re.escape(f"{wrong}: not an STCN checkpoint: ")):
        build_stcn(wrong, "cpu")
    with pytest.raises(ModelError, match=re.escape(f"{wrong}: not an stcn checkpoint: ")):
        verify(wrong, "stcn")
    with pytest.raises(ModelError, match="toy.pth: not a toy checkpoint"):
        check_layout({}, {"w": (1,)}, "toy", "toy.pth")


# ---------------------------------------------------------------------------------------------------------
# The CLI: exit 2, one line on stderr, no warning, no traceback


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """Three 32x32 frames and a first-frame mask: valid input, so the weights are the only problem."""
    root = tmp_path_factory.mktemp("tiny")
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(11)
    for t in range(3):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(frames / f"{t:05d}.png")
    labels = np.zeros((32, 32), np.uint8)
    labels[8:20, 8:20] = 1
    mask = root / "mask.png"
    Image.fromarray(labels, mode="L").save(mask)
    return frames, mask


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _invoke(args: list[str]):
    """Run the CLI with warnings printed to its stderr, as a user's terminal would show them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a warning already shown once in this process must show again
        warnings.showwarning = _print_warning  # pytest would record them instead
        return runner.invoke(app, args)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Warning" not in result.output and "Traceback" not in result.output
    return lines[0]


def _cli_runs(tiny_clip, weights: Path) -> dict[str, list[str]]:
    frames, mask = tiny_clip
    return {
        "segment": ["segment", str(frames), "--mask", str(mask), "--model", "stcn", "--weights", str(weights),
                    "--device", "cpu", "--quiet", "--out", str(weights.parent / "out")],
        "verify": ["weights", "verify", str(weights), "--model", "stcn"],
    }


@pytest.mark.parametrize("command", ["segment", "verify"])
@pytest.mark.parametrize(("kind", "how"), CODE_CASES)
def test_cli_refuses_a_file_with_code_on_one_line(tmp_path, tiny_clip, command, kind, how):
    marker = tmp_path / "code-ran"
    path = _write_code_file(tmp_path / "bad.pth", kind, how, marker)
    line = _one_line_error(_invoke(_cli_runs(tiny_clip, path)[command]))
    assert re.fullmatch("error: " + _refusal_pattern(path, kind), line), line
    assert not marker.exists() and PAYLOAD_TEXT not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["segment", "verify"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_cli_reports_a_truncated_checkpoint_on_one_line(tmp_path, tiny_clip, command, zip_format):
    path = _truncated_checkpoint(tmp_path / "cut.pth", zip_format)
    line = _one_line_error(_invoke(_cli_runs(tiny_clip, path)[command]))
    assert line.startswith(f"error: {path}: is truncated or corrupt") and "RuntimeError" not in line


@pytest.mark.parametrize(("command", "shown"), [("segment", "STCN"), ("verify", "stcn")])
def test_cli_names_the_model_with_the_right_article(tmp_path, tiny_clip, command, shown):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    line = _one_line_error(_invoke(_cli_runs(tiny_clip, path)[command]))
    assert line.startswith(f"error: {path}: not an {shown} checkpoint: "), line


# ---------------------------------------------------------------------------------------------------------
# Offline downloads


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test (fetch is the downloader's only way to the network)."""

    def fetch(url: str, *args, **kwargs) -> None:
        pytest.fail(f"offline, but a download of {url} was started")

    monkeypatch.setattr(downloads, "fetch", fetch)


UNREACHABLE = "http://127.0.0.1:9/toy.pth"


def _cache_toy(ckpt) -> Path:
    path = cache_file(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TOY_BYTES)
    record_sha256(path, TOY_SHA)
    return path


def _offline_message_pattern(ckpt) -> str:
    return (re.escape(f"{ckpt.model}: the {ckpt.name} checkpoint is not in the cache ({cache_file(ckpt)}) and "
                      "downloads are off (--offline or VOSTOOL_OFFLINE=1)") + ".*" + re.escape(ckpt.urls[0]))


@pytest.mark.parametrize("how", ["argument", "env=1", "env=yes"])
def test_offline_download_of_an_uncached_checkpoint_fails_at_once(how, no_network, monkeypatch):
    ckpt = toy_checkpoint(UNREACHABLE)
    if how.startswith("env="):
        monkeypatch.setenv("VOSTOOL_OFFLINE", how.removeprefix("env="))
    with pytest.raises(DownloadError, match=_offline_message_pattern(ckpt)):
        download(ckpt, offline=how == "argument", progress=False, layout_of=toy_layout)
    assert not cache_file(ckpt).parent.exists()  # not even the cache folder was created


def test_offline_download_returns_a_cached_checkpoint(no_network, monkeypatch):
    ckpt = toy_checkpoint(UNREACHABLE)
    path = _cache_toy(ckpt)
    assert download(ckpt, offline=True, layout_of=toy_layout) == path
    monkeypatch.setenv("VOSTOOL_OFFLINE", "1")
    assert download(ckpt, layout_of=toy_layout) == path


def test_offline_force_download_is_refused(no_network):
    ckpt = toy_checkpoint(UNREACHABLE)
    path = _cache_toy(ckpt)
    with pytest.raises(DownloadError, match="toy-v1: cannot download it again .--force. while downloads are off"):
        download(ckpt, offline=True, force=True, layout_of=toy_layout)
    assert path.read_bytes() == TOY_BYTES


@pytest.mark.parametrize("how", ["--offline", "VOSTOOL_OFFLINE=1"])
@pytest.mark.parametrize("name", ["toy-v1", "stcn"])
def test_cli_offline_download_of_an_uncached_checkpoint_is_one_line(how, name, registered, no_network, monkeypatch):
    registered(toy_checkpoint(UNREACHABLE))
    args = ["weights", "download", name]
    if how == "--offline":
        args.append("--offline")
    else:
        monkeypatch.setenv("VOSTOOL_OFFLINE", "1")
    line = _one_line_error(_invoke(args))
    assert re.fullmatch("error: " + _offline_message_pattern(get_checkpoint(name)) + ".*", line), line


@pytest.mark.parametrize("how", ["--offline", "VOSTOOL_OFFLINE=1"])
def test_cli_offline_download_reports_a_cached_checkpoint(how, registered, no_network, monkeypatch):
    ckpt = toy_checkpoint(UNREACHABLE)
    registered(ckpt)
    path = _cache_toy(ckpt)
    args = ["weights", "download", "toy-v1"]
    if how == "--offline":
        args.append("--offline")
    else:
        monkeypatch.setenv("VOSTOOL_OFFLINE", "1")
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"toy-v1: cached, {path}"
