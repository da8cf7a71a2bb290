"""Issue 11's catalogue for options, devices, outputs that would overwrite inputs, and interrupts.

Every bad option is refused in one line with exit 2 before any model work, by the library (naming the
parameter) and by the CLI (naming the flag); SIGTERM/SIGHUP unwind like Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vostool
from vostool.cli import app
from vostool.engine.transforms import Geometry, long_side_capped, resized_size
from vostool.engine.protocol import Preprocessing
from vostool.io.palette import DAVIS_PALETTE
from vostool.settings import MAX_ASPECT, MAX_SIZE, MIN_SIZE, RunSettings, SettingsError

REPO_ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _palette_png(path: Path, labels: np.ndarray) -> Path:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE)
    image.save(path)
    return path


def _make_clip(root: Path, frames: int, height: int = 48, width: int = 64) -> tuple[Path, Path]:
    """A frame folder with one textured square moving right, and its first-frame mask."""
    rng = np.random.default_rng(1)
    background = (rng.random((height, width, 3)) * 80).astype(np.uint8)
    folder = root / "frames"
    folder.mkdir(parents=True)
    for t in range(frames):
        image = background.copy()
        x = 4 + t % (width - 24)
        image[8:28, x : x + 20] = (230, 60, 40)
        Image.fromarray(image).save(folder / f"{t:05d}.jpg", quality=95)
    labels = np.zeros((height, width), np.uint8)
    labels[8:28, 4:24] = 1
    return folder, _palette_png(root / "mask.png", labels)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    return _make_clip(tmp_path_factory.mktemp("clip"), 4)


def _no_model_work(monkeypatch) -> None:
    """Fail the test if a network is built: the errors below must come before any model work."""
    import vostool.api

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built before the bad option was refused")

    monkeypatch.setattr(vostool.api, "load_network", refuse)


# --- 8 and 14: one validation for the library and the CLI -------------------------------------------

BAD_SETTINGS = [
    ("size", 0), ("size", -5), ("size", 1), ("size", MIN_SIZE - 1), ("size", MAX_SIZE + 1), ("size", 100000),
    ("mem_every", 0), ("mem_every", -3), ("max_memory_frames", 0), ("top_k", 0), ("precision", "fp64"),
    ("device", "meta"), ("device", "cuda:x"), ("device", "cpu:1"), ("device", "xla"),
]


@pytest.mark.parametrize(("parameter", "value"), BAD_SETTINGS)
def test_library_names_the_parameter(parameter, value, clip, tmp_path, monkeypatch):
    _no_model_work(monkeypatch)
    frames, mask = clip
    with pytest.raises(SettingsError) as caught:
        vostool.segment(frames, mask, out_dir=tmp_path / "out", **{parameter: value})
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}={value!r}: ")
    assert isinstance(caught.value, vostool.VostoolError)
    assert not (tmp_path / "out").exists()


FLAGS = {"size": "--size", "mem_every": "--mem-every", "max_memory_frames": "--max-memory-frames",
         "top_k": "--top-k", "precision": "--precision", "device": "--device"}


@pytest.mark.parametrize(("parameter", "value"), BAD_SETTINGS)
def test_cli_names_the_flag_in_one_line(parameter, value, clip, tmp_path, monkeypatch):
    _no_model_work(monkeypatch)
    frames, mask = clip
    result = runner.invoke(
        app, ["segment", str(frames), "--mask", str(mask), "--out", str(tmp_path / "out"), FLAGS[parameter], str(value)]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {FLAGS[parameter]} {value}: "), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [-1, None, MIN_SIZE, 480, MAX_SIZE])
def test_valid_sizes_are_accepted(size):
    assert RunSettings(size=size).size == size


def test_native_size_has_one_engine_encoding():
    from vostool.models.registry import get_spec

    stcn = get_spec("stcn")
    assert stcn.settings_for(RunSettings(size=-1)).preprocessing.short_side is None
    assert stcn.settings_for(RunSettings()).preprocessing.short_side == stcn.defaults.preprocessing.short_side == 480


def test_top_k_for_a_model_without_top_k_names_the_parameter():
    from vostool.models.registry import get_spec

    with pytest.raises(SettingsError, match=r"^top_k=5: model sitvos-toy has no top-k"):
        get_spec("sitvos").defaults.merged(RunSettings(top_k=5), "sitvos-toy")


# --- 9: the default size does not upscale elongated frames without bound -----------------------------


def test_elongated_frames_are_capped():
    prep = Preprocessing(short_side=480, stride=16)
    assert resized_size((64, 2000), 480) == (int(int(480 * MAX_ASPECT) * 64 / 2000), int(480 * MAX_ASPECT))
    assert long_side_capped((64, 2000), 480) and long_side_capped((2000, 64), 480)
    h, w = Geometry.for_frame((64, 2000), prep).resized
    assert max(h, w) <= 480 * MAX_ASPECT and h < 480
    # Ordinary shapes are untouched, 16:9 and 21:9 included (the parity clips' geometry stays as it was).
    for size in [(480, 854), (360, 640), (1080, 1920), (480, 1120), (854, 480)]:
        assert not long_side_capped(size, 480)
        short, long = min(size), max(size)
        expected = (480, int(480 * long / short))
        assert sorted(resized_size(size, 480)) == sorted(expected)
    assert not long_side_capped((64, 2000), None)  # native resolution is the user's choice


def test_capped_run_says_so_in_one_warning(tmp_path):
    root = tmp_path / "wide"
    frames, mask = _make_clip(root, 2, height=48, width=480)  # 10:1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vostool.segment(frames, mask, out_dir=tmp_path / "out", size=64, device="cpu")
    notes = [w for w in caught if issubclass(w.category, vostool.VostoolWarning)]
    assert len(notes) == 1 and "processed at 227x22" in str(notes[0].message), [str(w.message) for w in caught]
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_capped_run_warning_is_one_cli_line(tmp_path):
    frames, mask = _make_clip(tmp_path / "wide", 2, height=48, width=480)
    process = subprocess.run(
        [sys.executable, "-m", "vostool.cli", "segment", str(frames), "--mask", str(mask),
         "--out", str(tmp_path / "out"), "--size", "64", "--device", "cpu", "--quiet"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert process.returncode == 0, process.stderr
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "processed at 227x22" in lines[0], lines


# --- 10: devices ---------------------------------------------------------------------------------------


def test_cuda_index_that_does_not_exist_is_an_error(monkeypatch):
    import torch

    from vostool.api import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(resolve_device("cuda:0")) == "cuda:0"
    with pytest.raises(SettingsError, match=r"^device='cuda:1': this machine has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.cuda
def test_cuda_index_is_echoed(clip, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    frames, mask = clip
    summary = vostool.segment(frames, mask, out_dir=tmp_path / "out", device="cuda:0", size=64)
    assert summary.device == "cuda:0"


# --- 3: outputs never overwrite inputs ------------------------------------------------------------------


def _overlap_cases(root: Path) -> list[tuple[str, list[str], Path]]:
    frames, mask = _make_clip(root, 3)
    video = root / "clip.mp4"
    from vostool.io.writers import OverlayWriter

    with OverlayWriter(video, fps=10, alpha=0.0, contour=False) as writer:
        for file in sorted(frames.iterdir()):
            writer.write(np.array(Image.open(file)), np.zeros((48, 64), np.uint8))
    rle_mask = root / "mask.json"
    from vostool.io.writers import encode_rle_objects

    rle_mask.write_text(json.dumps([{"counts": o["counts"], "size": o["size"]}
                                    for o in encode_rle_objects(np.array(Image.open(mask)))]))
    link = root / "frames-link"
    link.symlink_to(frames, target_is_directory=True)
    hard = root / "hard.mp4"
    os.link(video, hard)
    masks_dir = root / "masks"
    masks_dir.mkdir()
    _palette_png(masks_dir / "00000.png", np.array(Image.open(mask)))
    return [
        ("out is the frames folder", [str(frames), "--mask", str(mask), "--out", str(frames)], frames),
        ("out is a symlink to the frames folder", [str(frames), "--mask", str(mask), "--out", str(link)], frames),
        ("out holds the frames folder", [str(frames), "--mask", str(mask), "--out", str(root)], frames),
        ("out is the masks folder", [str(frames), "--masks", str(masks_dir), "--out", str(masks_dir)], masks_dir),
        ("overlay is the input video", [str(video), "--mask", str(mask), "--overlay", str(video)], video),
        ("overlay is a hard link to the input", [str(hard), "--mask", str(mask), "--overlay", str(video)], video),
        ("rle is the mask json", [str(frames), "--mask", str(rle_mask), "--rle", str(rle_mask)], rle_mask),
        ("rle and overlay are one file", [str(frames), "--mask", str(mask), "--overlay", str(root / "x.mp4"),
                                          "--rle", str(root / "x.mp4")], None),
    ]


def _snapshot(path: Path | None) -> dict[str, bytes]:
    if path is None:
        return {}
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_outputs_never_overwrite_inputs(tmp_path, monkeypatch):
    _no_model_work(monkeypatch)
    for index, (case, args, guarded) in enumerate(_overlap_cases(tmp_path / "inputs")):
        before = _snapshot(guarded)
        result = runner.invoke(app, ["segment", *args, "--device", "cpu"])
        assert result.exit_code == 2, (case, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.output)
        assert _snapshot(guarded) == before, case


# --- 4 and 13: SIGTERM, SIGHUP and Ctrl-C ----------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.pop("COLUMNS", None)
    return env


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))}


def _wait_for_progress(process: subprocess.Popen, watched: Path, before: dict, timeout: float = 240) -> None:
    """Wait until the run has started writing (a new entry appears under ``watched``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it was signalled: {process.stderr.read()}")
        if set(_listing(watched)) - set(before):
            return
        time.sleep(0.05)
    raise AssertionError("the run never started writing")


@pytest.mark.parametrize(("signum", "code", "line"), [
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),
    (signal.SIGHUP, 129, "terminated (SIGHUP)"),
    (signal.SIGINT, 130, "interrupted"),
])
def test_signal_leaves_old_outputs_and_no_temp_files(signum, code, line, tmp_path):
    frames, mask = _make_clip(tmp_path / "in", 300, height=96, width=128)
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "out" / "00000.png").write_bytes(b"an older run's mask")
    (work / "overlay.mp4").write_bytes(b"an older run's overlay")
    before = _listing(work)
    process = subprocess.Popen(
        [sys.executable, "-m", "vostool.cli", "segment", str(frames), "--mask", str(mask), "--out", str(work / "out"),
         "--overlay", str(work / "overlay.mp4"), "--size", "-1", "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), preexec_fn=_as_in_a_terminal,
    )
    try:
        _wait_for_progress(process, work, before)
        time.sleep(0.3)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    lines = [text for text in stderr.splitlines() if text.strip()]
    assert lines == [line], stderr
    assert _listing(work) == before


def _as_in_a_terminal() -> None:
    """Ctrl-C's default action in the child, as in a terminal: a test run started in the background (``&``
    in a script) ignores SIGINT, and its children would inherit that and never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _make_davis(root: Path, sequences: int, frames: int) -> Path:
    """A DAVIS-layout set whose predictions equal the ground truth (only the scoring runs)."""
    jpeg = root / "frame.jpg"
    root.mkdir(parents=True)
    Image.fromarray(np.zeros((480, 854, 3), np.uint8)).save(jpeg)
    for name in [f"seq{i}" for i in range(sequences)]:
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
        (root / "results" / name).mkdir(parents=True)
        for t in range(frames):
            labels = np.zeros((480, 854), np.uint8)
            labels[100 + t % 50 : 300, 200:500] = 1
            _palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels)
            os.link(jpeg, root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg")
            _palette_png(root / "results" / name / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"seq{i}\n" for i in range(sequences)))
    return root


def _wait_for_workers(process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the eval has forked its worker processes (they are what used to print tracebacks)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if not children.exists():
        pytest.skip("needs Linux /proc to see the worker processes")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if children.read_text().split():
            return
        time.sleep(0.02)


def test_ctrl_c_during_eval_is_one_line_and_exit_130(tmp_path):
    davis = _make_davis(tmp_path / "davis", sequences=8, frames=100)
    for attempt in range(3):  # the failure was intermittent; every attempt must be clean
        process = subprocess.Popen(
            [sys.executable, "-m", "vostool.cli", "eval", "--davis", str(davis), "--results", str(davis / "results"),
             "--workers", "2", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True,
            preexec_fn=_as_in_a_terminal,
        )
        try:
            _wait_for_workers(process)
            time.sleep(0.1 * attempt)  # interrupt at different points of the run
            if process.poll() is not None:
                pytest.fail(f"eval finished before it could be interrupted: {process.stderr.read()}")
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == 130, stderr
        assert [text for text in stderr.splitlines() if text.strip()] == ["interrupted"], stderr
