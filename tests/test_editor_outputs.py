"""Outputs for editors: ``--matte`` (H.264 gray, full range / 8-bit PNGs), ``--cutout`` (VP9 yuva420p
WebM, ProRes 4444 MOV, RGBA PNGs), ``--soft`` (per-object probability PNGs), ``--objects``; each checked
with ffmpeg (stream description, frame count) and decoded back, and committed with the run's other outputs."""

from __future__ import annotations

import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vostool
from tests.helpers import (
    assert_one_line_error,
    gradient_frames,
    leftover_temp_files,
    paint_boxes,
    read_label_pngs,
    save_palette_png,
    write_frames,
)
from vostool.cli import app

runner = CliRunner()
FRAMES, HEIGHT, WIDTH = 8, 48, 64
FAST = ["--size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """Smooth frames (lossy codecs keep them close) with objects 1 and 3 moving; a frame folder and mask."""
    root = tmp_path_factory.mktemp("editor")
    frames, labels = [], []
    for t, background in enumerate(gradient_frames(FRAMES, HEIGHT, WIDTH)):
        frame, lab = paint_boxes(background, [(np.s_[6:26, 4 + 2 * t : 24 + 2 * t], (230, 60, 40), 1),
                                              (np.s_[28:44, 36:58], (40, 200, 230), 3)])  # fmt: skip
        frames.append(frame)
        labels.append(lab)
    write_frames(root / "frames", frames)
    return {"dir": root / "frames", "mask": save_palette_png(root / "mask.png", labels[0]), "frames": np.stack(frames)}


@pytest.fixture(scope="module")
def tracker():
    return vostool.load("propagate-lite0", device="cpu", size=64)


def stream_line(path, decoder: str | None = None) -> str:
    """ffmpeg's description of the first video stream (as ffprobe would give it), e.g. "Video: h264 ..."."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *(["-c:v", decoder] if decoder else []), "-i", str(path)]
    text = subprocess.run(command, capture_output=True, text=True).stderr
    return next(line for line in text.splitlines() if re.search(r"Stream #0:\d.*Video:", line))


def decode(path, pix_fmt: str, channels: int, decoder: str | None = None) -> np.ndarray:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *(["-c:v", decoder] if decoder else []), "-i", str(path),
               "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, HEIGHT, WIDTH, channels)


def mostly_equal(a: np.ndarray, b: np.ndarray, tolerance: int, share: float = 0.98) -> bool:
    """At least ``share`` of the values within ``tolerance`` (lossy codecs blur edges)."""
    return float(np.mean(np.abs(a.astype(int) - b.astype(int)) <= tolerance)) >= share


def test_video_matte_cutout_and_soft_maps_in_one_pass(clip, tracker, tmp_path):
    summary = vostool.segment(
        clip["dir"], clip["mask"], tracker=tracker, out_dir=tmp_path / "masks", matte=tmp_path / "matte.mp4",
        cutout=tmp_path / "cutout.webm", soft=tmp_path / "soft", objects=[1],
    )
    assert summary.frames == FRAMES
    labels = read_label_pngs(tmp_path / "masks")
    expected_matte = np.where(labels == 1, 255, 0).astype(np.uint8)

    line = stream_line(tmp_path / "matte.mp4")
    assert "h264" in line and "(pc" in line, line  # yuv420p flagged full range (ffmpeg shows it as yuvj420p)
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "matte.mp4"))[0] == FRAMES
    matte = decode(tmp_path / "matte.mp4", "gray", 1)[..., 0]
    assert matte.shape == (FRAMES, HEIGHT, WIDTH) and mostly_equal(matte, expected_matte, 24)

    assert "yuva420p" in stream_line(tmp_path / "cutout.webm", decoder="libvpx-vp9")
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "cutout.webm"))[0] == FRAMES
    cutout = decode(tmp_path / "cutout.webm", "rgba", 4, decoder="libvpx-vp9")
    assert mostly_equal(cutout[..., 3], expected_matte, 32)
    assert mostly_equal(cutout[..., :3], clip["frames"], 16, share=0.95)

    # The soft maps are the tracker's aggregated probabilities at the frames' size, in 8 bits.
    assert sorted(p.name for p in (tmp_path / "soft").iterdir()) == ["1"]  # --objects 1
    session = tracker.session()
    frames = [np.array(Image.open(p).convert("RGB")) for p in sorted(clip["dir"].glob("*.png"))]
    first = np.array(Image.open(clip["mask"]))
    for t, result in enumerate(session.track(frames, masks={0: first})):
        channel = result.object_ids.index(1) + 1
        expected = torch.round(result.probabilities[channel] * 255).clamp(0, 255).to(torch.uint8).numpy()
        written = np.array(Image.open(tmp_path / "soft" / "1" / f"{t:05d}.png"))
        assert written.dtype == np.uint8 and np.abs(written.astype(int) - expected).max() <= 1, t
    assert leftover_temp_files(tmp_path) == []


def test_prores_cutout_and_png_folders_round_trip(clip, tracker, tmp_path):
    vostool.segment(
        clip["dir"], clip["mask"], tracker=tracker, out_dir=tmp_path / "masks", matte=tmp_path / "matte",
        cutout=tmp_path / "cutout.mov", soft=tmp_path / "soft",
    )
    vostool.segment(clip["dir"], clip["mask"], tracker=tracker, cutout=tmp_path / "rgba")
    labels = read_label_pngs(tmp_path / "masks")
    expected_matte = np.where(labels > 0, 255, 0).astype(np.uint8)  # all objects by default

    mattes = [Image.open(p) for p in sorted((tmp_path / "matte").glob("*.png"))]
    assert len(mattes) == FRAMES and {m.mode for m in mattes} == {"L"}
    np.testing.assert_array_equal(np.stack([np.array(m) for m in mattes]), expected_matte)

    line = stream_line(tmp_path / "cutout.mov")
    assert "prores (4444)" in line and "yuva444p" in line, line
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "cutout.mov"))[0] == FRAMES
    cutout = decode(tmp_path / "cutout.mov", "rgba", 4)
    assert mostly_equal(cutout[..., 3], expected_matte, 2, share=1.0)
    assert mostly_equal(cutout[..., :3], clip["frames"], 6, share=0.99)

    pngs = [Image.open(p) for p in sorted((tmp_path / "rgba").glob("*.png"))]
    assert len(pngs) == FRAMES and {p.mode for p in pngs} == {"RGBA"}
    rgba = np.stack([np.array(p) for p in pngs])
    np.testing.assert_array_equal(rgba[..., :3], clip["frames"])
    np.testing.assert_array_equal(rgba[..., 3], expected_matte)
    assert sorted(p.name for p in (tmp_path / "soft").iterdir()) == ["1", "3"]
    assert all(len(list((tmp_path / "soft" / k).glob("*.png"))) == FRAMES for k in ("1", "3"))


def test_failed_run_keeps_the_old_editor_outputs(clip, tracker, tmp_path):
    vostool.segment(clip["dir"], clip["mask"], tracker=tracker, matte=tmp_path / "matte.mp4", soft=tmp_path / "soft")
    before = {p: p.read_bytes() for p in [tmp_path / "matte.mp4", *sorted((tmp_path / "soft").rglob("*.png"))]}
    broken = tmp_path / "frames"
    write_frames(broken, clip["frames"])
    data = (broken / "00005.png").read_bytes()
    (broken / "00005.png").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    with pytest.raises(vostool.VostoolError, match="00005"):
        vostool.segment(broken, clip["mask"], tracker=tracker, matte=tmp_path / "matte.mp4", soft=tmp_path / "soft",
                        cutout=tmp_path / "new.webm")  # fmt: skip
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "new.webm").exists() and leftover_temp_files(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--matte", "m.mp4", "--objects", "1,9"], ["--objects 1,9", "no mask has object 9", "1, 3"]),
        (["--matte", "m.mp4", "--objects", "one"], ["--objects one", "separated by commas"]),
        (["--out", "o", "--objects", "1"], ["--objects 1", "--matte"]),
        (["--cutout", "c.mp4"], ["--cutout c.mp4", ".webm", ".mov"]),
        (["--matte", "m.webm"], ["--matte m.webm", ".mp4"]),
        (["--out", "o", "--soft", "o/soft"], ["--soft", "--out", "overlap"]),
        (["--soft", "s", "--overlay", "s/overlay.mp4"], ["--overlay", "--soft"]),
        (["--matte", "-"], ["--matte -", "standard output"]),
    ],
)
def test_bad_editor_options_are_one_line_errors(clip, tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["segment", str(clip["dir"]), "--mask", str(clip["mask"]), *args, *FAST])
    assert_one_line_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was written
