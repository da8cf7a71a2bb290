"""``vostool segment`` end to end through the CLI, and its error catalogue (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.helpers import assert_one_line_error, leftover_temp_files, paint_boxes, save_palette_png, write_frames
from vostool.cli import app
from vostool.io.frames import open_frames
from vostool.io.masks import read_rle_video
from vostool.io.writers import OverlayWriter

runner = CliRunner()
FAST = ["--size", "128", "--device", "cpu", "--quiet"]  # a small internal size keeps the test quick


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """8 frames of 64x96 with two textured squares moving right, as a frame folder and an MP4."""
    root = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    background = (rng.random((64, 96, 3)) * 80).astype(np.uint8)
    frames, labels = [], []
    for t in range(8):
        x = 10 + 3 * t
        img, lab = paint_boxes(background, [(np.s_[10:34, x : x + 24], (230, 60, 40), 1),
                                            (np.s_[40:60, 60 - 2 * t : 84 - 2 * t], (40, 200, 230), 5)])
        frames.append(img)
        labels.append(lab)
    frames_dir = root / "frames"
    write_frames(frames_dir, frames, names=[f"img_{t}" for t in range(8)])
    mask = root / "mask.png"
    save_palette_png(mask, labels[0])
    video = root / "clip.mp4"
    with OverlayWriter(video, fps=10, alpha=0.0, contour=False) as writer:  # alpha 0: the frames themselves
        for img in frames:
            writer.write(img, np.zeros((64, 96), np.uint8))
    return {"dir": frames_dir, "video": video, "mask": mask, "labels": labels, "root": root}


def _command_paths(group, prefix=()) -> list[tuple[str, ...]]:
    """Every command of the click group, by the words that call it (sub-apps such as ``weights`` included)."""
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):  # a group (typer carries its own copy of click's classes)
            paths.extend(_command_paths(command, (*prefix, name)))
    return paths


def test_every_command_prints_its_help():
    # Rich reads help text as markup, so a bracket such as "[/480p]" there fails only when --help runs.
    import typer

    paths = _command_paths(typer.main.get_command(app))
    assert {("segment",), ("eval",), ("train",), ("weights", "list")} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, f"vostool {' '.join(path)} --help: {result.exception!r}"
        assert "Usage" in result.output


def test_segment_folder_writes_every_output(clip, tmp_path):
    out, overlay, rle = tmp_path / "masks", tmp_path / "overlay.mp4", tmp_path / "rle.json"
    result = runner.invoke(
        app,
        ["segment", str(clip["dir"]), "--mask", str(clip["mask"]), "--out", str(out), "--overlay", str(overlay),
         "--rle", str(rle), "--json", *FAST],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 8 and summary["objects"] == [1, 5]
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == [f"img_{t}" for t in range(8)]
    for p, truth in zip(pngs, clip["labels"]):
        labels = np.array(Image.open(p))
        assert Image.open(p).mode == "P" and labels.shape == (64, 96)
        assert set(np.unique(labels)) <= {0, 1, 5}
        iou = [((labels == k) & (truth == k)).sum() / ((labels == k) | (truth == k)).sum() for k in (1, 5)]
        assert min(iou) > 0.7, iou  # stride-8 propagation on a tiny clip: coarse edges
    assert len(open_frames(overlay)) == 8
    decoded = list(read_rle_video(rle))
    assert [name for name, _ in decoded] == [f"img_{t}" for t in range(8)]
    np.testing.assert_array_equal(decoded[3][1], np.array(Image.open(pngs[3])))
    assert leftover_temp_files(tmp_path) == []


def test_segment_video_names_frames_by_number(clip, tmp_path):
    out = tmp_path / "masks"
    result = runner.invoke(app, ["segment", str(clip["video"]), "-m", str(clip["mask"]), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert [p.stem for p in sorted(out.glob("*.png"))] == [f"{t:05d}" for t in range(8)]


def test_library_api_matches_cli(clip, tmp_path):
    import vostool

    summary = vostool.segment(clip["dir"], clip["mask"], out_dir=tmp_path / "m", size=128, device="cpu")
    assert summary.frames == 8 and summary.objects == [1, 5] and summary.fps > 0


def run_error(args: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def expect_error(args: list[str], *fragments: str) -> None:
    assert_one_line_error(runner.invoke(app, args), *fragments)


def test_entry_point_process_reports_an_error_in_one_line(tmp_path, clip):
    """A real process running the console script's ``main`` (the other tests use CliRunner in-process):
    exit code 2, one line on stderr naming the file, nothing on stdout."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-c", "from vostool.cli import main; main()",
               "segment", str(tmp_path / "nope.mp4"), "-m", str(clip["mask"]), "-o", str(tmp_path / "o")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.mp4" in lines[0], done.stderr


def test_error_missing_input(tmp_path, clip):
    expect_error(["segment", str(tmp_path / "nope.mp4"), "-m", str(clip["mask"]), "-o", str(tmp_path)], "nope.mp4")


def test_error_undecodable_video(tmp_path, clip):
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video")
    expect_error(["segment", str(bad), "-m", str(clip["mask"]), "-o", str(tmp_path / "o")], "bad.mp4")


def test_error_empty_folder(tmp_path, clip):
    (tmp_path / "empty").mkdir()
    expect_error(["segment", str(tmp_path / "empty"), "-m", str(clip["mask"]), "-o", str(tmp_path / "o")], "empty")


def test_error_mask_size_differs(tmp_path, clip):
    small = tmp_path / "small.png"
    save_palette_png(small, np.ones((10, 10), np.uint8))
    expect_error(["segment", str(clip["dir"]), "-m", str(small), "-o", str(tmp_path / "o")], "small.png", "64x96")


def test_error_mask_without_object(tmp_path, clip):
    blank = tmp_path / "blank.png"
    save_palette_png(blank, np.zeros((64, 96), np.uint8))
    expect_error(["segment", str(clip["dir"]), "-m", str(blank), "-o", str(tmp_path / "o")], "blank.png")


def test_error_malformed_rle(tmp_path, clip):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"counts": "abc", "size": [64]}]')
    expect_error(["segment", str(clip["dir"]), "-m", str(bad), "-o", str(tmp_path / "o")], "bad.json")


def test_error_unknown_model(tmp_path, clip):
    expect_error(
        ["segment", str(clip["dir"]), "-m", str(clip["mask"]), "-o", str(tmp_path / "o"), "--model", "nope"],
        "unknown model 'nope'", "propagate-lite0",
    )


def test_error_weights_not_a_checkpoint(tmp_path, clip):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    expect_error(["segment", str(clip["dir"]), "-m", str(clip["mask"]), "-o", str(tmp_path / "o"),
                  "--weights", str(junk)], "junk.pth")


def test_error_weights_of_another_model(tmp_path, clip):
    import torch

    other = tmp_path / "other.pth"
    torch.save({"decoder.pred.weight": torch.zeros(1, 256, 3, 3)}, other)
    expect_error(["segment", str(clip["dir"]), "-m", str(clip["mask"]), "-o", str(tmp_path / "o"),
                  "--weights", str(other)], "other.pth", "missing")


def test_error_unwritable_output_keeps_existing_files(tmp_path, clip):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("keep me")
    expect_error(["segment", str(clip["dir"]), "-m", str(clip["mask"]), "-o", str(blocker)], "file-not-folder")
    assert blocker.read_text() == "keep me"


def test_error_no_mask_and_no_output(tmp_path, clip):
    expect_error(["segment", str(clip["dir"]), "-o", str(tmp_path / "o")], "--mask")
    expect_error(["segment", str(clip["dir"]), "-m", str(clip["mask"])], "--out")


def test_failed_run_leaves_no_partial_video(tmp_path, clip):
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(b"previous result")
    blank = tmp_path / "blank.png"
    save_palette_png(blank, np.zeros((64, 96), np.uint8))
    run_error(["segment", str(clip["dir"]), "-m", str(blank), "--overlay", str(overlay)])
    assert overlay.read_bytes() == b"previous result"
    assert leftover_temp_files(tmp_path) == []


def test_masks_dir_introduces_objects_on_later_frames(clip, tmp_path):
    masks = tmp_path / "given"
    masks.mkdir()
    first = np.where(clip["labels"][0] == 1, 1, 0).astype(np.uint8)
    later = np.where(clip["labels"][3] == 5, 5, 0).astype(np.uint8)
    save_palette_png(masks / "img_0.png", first)
    save_palette_png(masks / "img_3.png", later)
    out = tmp_path / "masks"
    result = runner.invoke(app, ["segment", str(clip["dir"]), "--masks", str(masks), "-o", str(out), "--json", *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["objects"] == [1, 5]
    labels = [np.array(Image.open(out / f"img_{t}.png")) for t in range(8)]
    assert all(5 not in np.unique(lab) for lab in labels[:3])
    np.testing.assert_array_equal(labels[3] == 5, later == 5)  # the given mask is kept on its frame
    assert all(5 in np.unique(lab) and 1 in np.unique(lab) for lab in labels[4:])
