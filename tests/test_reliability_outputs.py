"""Nothing lost, nothing clobbered: a failed or interrupted run leaves every old output byte for byte as it
was and no temporary file; a successful run replaces its outputs together (issue 11, items 1, 2 and 4).

A catalogue: each case makes a good first run, breaks something (a corrupt frame, a full disk, a
failing ffmpeg, an interrupt at some point), runs again into the same outputs and checks the outputs.
Runs use the engine's tiny ColourMatcher network instead of the default model, so they take no time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import torch

import vostool
import vostool.api
import vostool.pipeline
from tests.test_engine import ColourMatcher
from vostool.cli import app
from vostool.errors import OutputError
from vostool.export import export_results, import_rle
from vostool.io import staging
from vostool.io.frames import open_frames
from vostool.io.palette import DAVIS_PALETTE
from vostool.io.staging import MASK_FOLDER, RESULTS_FOLDER, VIDEO_FOLDER, StagedFolder, host_tag, remove_stale_temps
from tests.helpers import assert_one_line_error
from vostool.tracker import Tracker
from vostool.io.writers import OverlayWriter, PaletteWriter, RleWriter

runner = CliRunner()
SIZE = (64, 96)
FRAMES = 10


def tiny_tracker() -> Tracker:
    """The ColourMatcher on the CPU, as a tracker for ``segment`` / ``segment_davis``."""
    return Tracker(ColourMatcher(), "colour-matcher", torch.device("cpu"))


# ----------------------------------------------------------------------------------------- helpers


def save_palette_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE)
    image.save(path)


def make_clip(folder: Path, frames: int = FRAMES, shift: int = 3) -> Path:
    """A JPEG frame folder of a red box sliding over a grey background; returns its first-frame mask."""
    folder.mkdir(parents=True)
    for t in range(frames):
        image = np.full((*SIZE, 3), 40, np.uint8)
        x = 20 + shift * t
        image[16:40, x : x + 24] = (240, 30, 30)
        Image.fromarray(image).save(folder / f"{t:05d}.jpg", quality=95)
    labels = np.zeros(SIZE, np.uint8)
    labels[16:40, 20:44] = 1
    mask = folder.parent / f"{folder.name}-mask.png"
    save_palette_png(mask, labels)
    return mask


def relabel(mask: Path, object_id: int) -> Path:
    """Give the object of ``mask`` another id, so that a second run writes different bytes than the first."""
    labels = np.array(Image.open(mask))
    save_palette_png(mask, np.where(labels > 0, object_id, 0))
    return mask


def corrupt_frame(folder: Path, index: int) -> None:
    """Cut a JPEG short: its header still reads (the folder opens), its pixels do not (the run fails there)."""
    frame = folder / f"{index:05d}.jpg"
    data = frame.read_bytes()
    frame.write_bytes(data[: data.index(b"\xff\xda") + 40])  # 40 bytes into the scan (SOS marker)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (hidden ones too): file contents, None for folders."""
    return {
        path.relative_to(root).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def temp_entries(root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in root.rglob(".tmp-*")]


@pytest.fixture
def toy_network(monkeypatch):
    """The CLI builds the tiny ColourMatcher instead of loading the default model."""
    monkeypatch.setattr(vostool.api, "load_network", lambda *args, **kwargs: ColourMatcher())


class InlineWriter:
    """vostool.pipeline.BackgroundWriter without the thread: each frame is written before the next one is
    segmented, so a run that fails at frame 4 has certainly written frames 0-3 (as a slow model does)."""

    def __init__(self, write) -> None:
        self.write = write

    def __enter__(self) -> InlineWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def submit(self, *args) -> None:
        self.write(*args)


@pytest.fixture
def inline_writes(monkeypatch):
    monkeypatch.setattr(vostool.pipeline, "BackgroundWriter", InlineWriter)


def expect_exit_2(args: list[str], *fragments: str) -> str:
    return assert_one_line_error(runner.invoke(app, args), *fragments)


def run_ok(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def stale_name(role: str, name: str, pid: int, host: str | None = None) -> str:
    """A temporary name in vostool's format, as written by process ``pid``."""
    return f".tmp-vostool-{role}-{host or host_tag()}-{pid}-{'ab' * 6}-{name}"


def gradient(t: int) -> np.ndarray:
    ys, xs = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    return np.stack([(xs * 2 + 9 * t) % 256, ys * 3, np.full_like(xs, 60 + 10 * t)], -1).astype(np.uint8)


def write_overlay(path: Path, frames: int) -> None:
    with OverlayWriter(path, fps=10) as writer:
        for t in range(frames):
            writer.write(gradient(t), np.zeros(SIZE, np.uint8))


# ------------------------------------------------------------------------------ item 1: the overlay


@pytest.mark.parametrize("frames", [1, 7])
def test_overlay_decodes_to_the_frames_written(tmp_path, frames):
    video = tmp_path / "overlay.mp4"
    write_overlay(video, frames)
    assert imageio_ffmpeg.count_frames_and_secs(str(video))[0] == frames
    assert len(list(open_frames(video))) == frames
    assert temp_entries(tmp_path) == []


def _ffmpeg_with_file_size_limit(tmp_path: Path, monkeypatch) -> None:
    """The real ffmpeg, but its writes fail once the file passes 1 block (EFBIG, as a full disk fails)."""
    script = tmp_path / "ffmpeg-limited.sh"
    script.write_text(f'#!/bin/sh\ntrap "" XFSZ\nulimit -f 1\nexec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(script))


def _frame_count_off_by_one(tmp_path: Path, monkeypatch) -> None:
    real = imageio_ffmpeg.count_frames_and_secs
    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", lambda path: (real(path)[0] - 1, 0.0))


def _file_that_cannot_be_decoded(tmp_path: Path, monkeypatch) -> None:
    def probe(path):
        raise RuntimeError("FFMPEG call failed with 1:\nffmpeg version n9\n[mov,mp4 @ 0x5f] moov atom not found")

    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", probe)


OVERLAY_FAULTS = {
    "ffmpeg fails writing": (_ffmpeg_with_file_size_limit, "video encoder failed (", "File too large"),
    "frame count differs": (_frame_count_off_by_one, "wrote 6 frames but the video decodes to 5"),
    "file does not decode": (_file_that_cannot_be_decoded, "cannot be decoded (moov atom not found)"),
}


@pytest.mark.skipif(os.name != "posix", reason="the file-size limit needs a POSIX shell")
@pytest.mark.parametrize("fault", OVERLAY_FAULTS, ids=list(OVERLAY_FAULTS))
def test_overlay_fault_keeps_the_old_video(tmp_path, monkeypatch, fault):
    inject, *fragments = OVERLAY_FAULTS[fault]
    video = tmp_path / "overlay.mp4"
    video.write_bytes(b"the good old video")
    inject(tmp_path, monkeypatch)
    with pytest.raises(OutputError) as info:
        write_overlay(video, 6)
    message = str(info.value)
    assert "\n" not in message and str(video) in message
    for fragment in fragments:
        assert fragment in message, message
    assert video.read_bytes() == b"the good old video"
    assert temp_entries(tmp_path) == []


def test_failed_overlay_keeps_every_old_output_of_the_run(tmp_path, monkeypatch, inline_writes):
    """The video is checked before anything moves: its failure keeps the old masks and RLE file too."""
    mask = make_clip(tmp_path / "clip")
    outputs = dict(out_dir=tmp_path / "masks", overlay=tmp_path / "overlay.mp4", rle=tmp_path / "masks.json")
    vostool.segment(tmp_path / "clip", mask, tracker=tiny_tracker(), **outputs)
    before = snapshot(tmp_path)
    make_clip(tmp_path / "clip2", shift=-2)  # a different run: its outputs would differ
    _frame_count_off_by_one(tmp_path, monkeypatch)
    with pytest.raises(OutputError, match="decodes to"):
        vostool.segment(tmp_path / "clip2", mask, tracker=tiny_tracker(), **outputs)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("clip2")} == before
    assert temp_entries(tmp_path) == []


def _mount_tmpfs(folder: Path) -> None:
    folder.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a 1 MB tmpfs needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.decode().strip()})")


def test_full_disk_while_writing_the_overlay(tmp_path, toy_network):
    """The issue's repro on a real full disk: exit 2, one line, the old video untouched, no temp file."""
    mask = make_clip(tmp_path / "clip")
    disk = tmp_path / "disk"
    _mount_tmpfs(disk)
    try:
        video = disk / "ov.mp4"
        video.write_bytes(b"the good old video")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(bytes(free))  # full: the tiny clip's video would fit in 4 KB
        expect_exit_2(["segment", str(tmp_path / "clip"), "--mask", str(mask), "--overlay", str(video), "--quiet"],
                      "ov.mp4", "video encoder failed", "No space left on device")
        assert video.read_bytes() == b"the good old video"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "ov.mp4"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ------------------------------------------------------------------- item 2: run-level atomic outputs


SEGMENT_OUTPUTS = {
    "masks": ["--out", "masks"],
    "masks, video and RLE beside": ["--out", "masks", "--overlay", "ov.mp4", "--rle", "masks.json"],
    "video and RLE inside the masks folder": ["--out", "masks", "--overlay", "masks/ov.mp4", "--rle", "masks/r.json"],
    "video only": ["--overlay", "ov.mp4"],
}


def _segment_args(tmp_path: Path, outputs: list[str]) -> list[str]:
    paths = [str(tmp_path / item) if not item.startswith("--") else item for item in outputs]
    return ["segment", str(tmp_path / "clip"), "--mask", str(tmp_path / "clip-mask.png"), *paths, "--quiet"]


@pytest.mark.parametrize("outputs", SEGMENT_OUTPUTS, ids=list(SEGMENT_OUTPUTS))
def test_failed_rerun_leaves_the_first_runs_outputs_byte_identical(tmp_path, toy_network, inline_writes, outputs):
    make_clip(tmp_path / "clip")
    run_ok(_segment_args(tmp_path, SEGMENT_OUTPUTS[outputs]))
    corrupt_frame(tmp_path / "clip", 4)  # run 2 fails at frame 4, after frames 0-3 were written
    relabel(tmp_path / "clip-mask.png", 2)  # with other ids than run 1's
    before = snapshot(tmp_path)
    expect_exit_2(_segment_args(tmp_path, SEGMENT_OUTPUTS[outputs]), "00004.jpg")
    assert snapshot(tmp_path) == before
    assert temp_entries(tmp_path) == []


NEW_FOLDERS = {
    "masks and RLE": ["--out", "new/deeper/masks", "--rle", "new/masks.json"],
    "video": ["--overlay", "new/deeper/ov.mp4"],
    "RLE": ["--rle", "new/masks.json"],
}


@pytest.mark.parametrize("outputs", NEW_FOLDERS, ids=list(NEW_FOLDERS))
def test_failed_first_run_leaves_no_new_folder(tmp_path, toy_network, inline_writes, outputs):
    """Not even the parent folders it had to create for its outputs."""
    make_clip(tmp_path / "clip")
    corrupt_frame(tmp_path / "clip", 4)
    before = snapshot(tmp_path)
    expect_exit_2(_segment_args(tmp_path, NEW_FOLDERS[outputs]), "00004.jpg")
    assert snapshot(tmp_path) == before


def test_rerun_replaces_the_masks_folder_as_a_whole(tmp_path, toy_network):
    make_clip(tmp_path / "clip")
    masks = tmp_path / "masks"
    masks.mkdir()
    save_palette_png(masks / "00099.png", np.ones(SIZE, np.uint8))  # a mask this run does not produce
    (masks / ".DS_Store").write_bytes(b"finder")
    masks.chmod(0o750)
    link = tmp_path / "link-to-masks"
    link.symlink_to(masks)
    run_ok(_segment_args(tmp_path, ["--out", "link-to-masks"]))
    assert sorted(p.name for p in masks.iterdir()) == [f"{t:05d}.png" for t in range(FRAMES)]
    assert link.is_symlink() and link.resolve() == masks  # the link now shows the new folder
    assert masks.stat().st_mode & 0o777 == 0o750  # the replaced folder keeps its permissions
    assert temp_entries(tmp_path) == []


def _file(masks: Path) -> str:
    (masks / "notes.txt").write_text("mine")
    return "notes.txt"


def _folder(masks: Path) -> str:
    (masks / "thumbnails").mkdir()
    return "thumbnails/"


def _hidden(masks: Path) -> str:
    (masks / ".git").mkdir()
    return ".git/"


def _link(masks: Path) -> str:
    (masks / "00003.png").unlink()
    (masks / "00003.png").symlink_to(masks.parent / "clip-mask.png")
    return "00003.png"


FOREIGN_ENTRIES = {"a file": _file, "a folder": _folder, "a hidden folder": _hidden, "a symlink": _link}


@pytest.mark.parametrize("entry", FOREIGN_ENTRIES, ids=list(FOREIGN_ENTRIES))
def test_a_folder_holding_more_than_masks_is_refused_untouched(tmp_path, toy_network, entry):
    """Replacing the folder would lose what the user put there: exit 2 naming it, before any work."""
    make_clip(tmp_path / "clip")
    run_ok(_segment_args(tmp_path, ["--out", "masks"]))
    shown = FOREIGN_ENTRIES[entry](tmp_path / "masks")
    before = snapshot(tmp_path)
    expect_exit_2(_segment_args(tmp_path, ["--out", "masks"]), "masks", f"holds {shown},", "replaces the folder")
    assert snapshot(tmp_path) == before


LAYOUTS = {
    "masks: PNG files": (MASK_FOLDER, ["00000.png", "00001.PNG", ".DS_Store"], None),
    "masks: a sub-folder": (MASK_FOLDER, ["seq/00000.png"], "seq/"),
    "masks: an older vostool's temp file": (MASK_FOLDER, [".tmp-0123456789ab-00000.png"], None),
    "results: sequence folders": (RESULTS_FOLDER, ["s/00000.png", "t/00000.png"], None),
    "results: too deep": (RESULTS_FOLDER, ["s/x/00000.png"], "s/x/"),
    "results: a CSV beside": (RESULTS_FOLDER, ["s/00000.png", "scores.csv"], "scores.csv"),
    "videos: MP4 files": (VIDEO_FOLDER, ["s1.mp4", "s2.mp4"], None),
    "videos: a PNG": (VIDEO_FOLDER, ["s1.mp4", "s1.png"], "s1.png"),
}


@pytest.mark.parametrize("case", LAYOUTS, ids=list(LAYOUTS))
def test_what_an_existing_output_folder_may_hold(tmp_path, case):
    layout, files, refused = LAYOUTS[case]
    folder = tmp_path / "target"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    if refused is None:
        StagedFolder(folder, layout)
        return
    with pytest.raises(OutputError, match=f"holds {refused}, which is not a"):
        StagedFolder(folder, layout)


def test_a_mount_point_is_refused(tmp_path, toy_network):
    make_clip(tmp_path / "clip")
    masks = tmp_path / "masks"
    _mount_tmpfs(masks)
    try:
        expect_exit_2(_segment_args(tmp_path, ["--out", "masks"]), "mount point")
        assert list(masks.iterdir()) == []
    finally:
        subprocess.run(["umount", str(masks)], check=True)


class Interrupt(KeyboardInterrupt):
    """What the CLI's SIGTERM/SIGHUP handlers raise (a KeyboardInterrupt), here from a progress callback."""


@pytest.mark.parametrize("at_frame", [1, 5, FRAMES])
def test_interrupt_mid_run_keeps_old_outputs_and_leaves_no_temp(tmp_path, inline_writes, at_frame):
    mask = make_clip(tmp_path / "clip")
    outputs = dict(out_dir=tmp_path / "masks", overlay=tmp_path / "ov.mp4", rle=tmp_path / "masks.json")
    vostool.segment(tmp_path / "clip", mask, tracker=tiny_tracker(), **outputs)
    relabel(mask, 2)
    before = snapshot(tmp_path)

    def progress(done: int, total: int) -> None:
        if done == at_frame:
            raise Interrupt

    with pytest.raises(Interrupt):
        vostool.segment(tmp_path / "clip", mask, tracker=tiny_tracker(), progress=progress,
                        **outputs)
    assert snapshot(tmp_path) == before
    assert temp_entries(tmp_path) == []


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("rename", range(6))
def test_interrupt_during_the_commit_rolls_every_output_back(tmp_path, monkeypatch, rename, when):
    """An interrupt just before or just after any rename of the swap: all old outputs come back."""
    mask = make_clip(tmp_path / "clip")
    outputs = dict(out_dir=tmp_path / "masks", overlay=tmp_path / "ov.mp4", rle=tmp_path / "masks.json")
    vostool.segment(tmp_path / "clip", mask, tracker=tiny_tracker(), **outputs)
    relabel(mask, 2)
    before = snapshot(tmp_path)
    real_rename, calls = os.rename, []

    def interrupted_rename(source, target):
        calls.append(source)
        if len(calls) == rename + 1 and when == "before":
            raise Interrupt
        real_rename(source, target)
        if len(calls) == rename + 1:
            raise Interrupt

    monkeypatch.setattr(staging.os, "rename", interrupted_rename)
    with pytest.raises(Interrupt):
        vostool.segment(tmp_path / "clip", mask, tracker=tiny_tracker(), **outputs)
    monkeypatch.undo()
    assert len(calls) > rename  # the commit of 3 outputs makes 6 renames; each one was hit
    assert snapshot(tmp_path) == before
    assert temp_entries(tmp_path) == []


# ------------------------------------------------------------------------------- eval --model


def make_davis(root: Path, sequences: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """A DAVIS-layout set of 4-frame clips (make_clip's), annotated on every frame."""
    for index, name in enumerate(sequences):
        shift = 2 + index
        make_clip(root / "JPEGImages" / "480p" / name, frames=4, shift=shift).unlink()
        annotations = root / "Annotations" / "480p" / name
        annotations.mkdir(parents=True)
        for t in range(4):
            labels = np.zeros(SIZE, np.uint8)
            labels[16:40, 20 + shift * t : 44 + shift * t] = 1
            save_palette_png(annotations / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{name}\n" for name in sequences))
    return root


def _eval_args(root: Path, results: Path) -> list[str]:
    return ["eval", "--davis", str(root), "--model", "propagate-lite0", "--results", str(results),
            "--device", "cpu", "--workers", "1", "--quiet"]


def test_eval_model_failure_in_a_later_sequence_keeps_the_previous_results(tmp_path, toy_network, inline_writes):
    root, results = make_davis(tmp_path / "davis"), tmp_path / "results"
    run_ok(_eval_args(root, results))
    assert sorted(p.name for p in results.iterdir()) == ["a", "b", "c"]
    corrupt_frame(root / "JPEGImages" / "480p" / "b", 2)  # sequence 2 of 3 fails after a was done
    relabel(root / "Annotations" / "480p" / "a" / "00000.png", 2)
    before = snapshot(tmp_path)
    expect_exit_2(_eval_args(root, results), "00002.jpg")
    assert snapshot(tmp_path) == before
    assert temp_entries(tmp_path) == []


def test_eval_model_rerun_replaces_the_results_folder(tmp_path, toy_network):
    root, results = make_davis(tmp_path / "davis", ("a", "b")), tmp_path / "results"
    (results / "old-sequence").mkdir(parents=True)
    save_palette_png(results / "old-sequence" / "00000.png", np.ones(SIZE, np.uint8))
    run_ok(_eval_args(root, results))
    assert sorted(p.name for p in results.iterdir()) == ["a", "b"]
    assert len(list((results / "b").glob("*.png"))) == 4


def test_eval_model_interrupt_between_sequences_keeps_the_previous_results(tmp_path):
    from vostool.eval.predict import segment_davis

    root, results = make_davis(tmp_path / "davis"), tmp_path / "results"
    segment_davis(root, results, tracker=tiny_tracker())
    relabel(root / "Annotations" / "480p" / "a" / "00000.png", 2)
    before = snapshot(tmp_path)

    def on_sequence(name: str, index: int, total: int) -> None:
        if index == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        segment_davis(root, results, tracker=tiny_tracker(), on_sequence=on_sequence)
    assert snapshot(tmp_path) == before
    assert temp_entries(tmp_path) == []


# ------------------------------------------------------------------------------------------ export


def _rle_file(path: Path, ids: list[int]) -> Path:
    """A vostool-rle-v1 file of frames "<seq>/<t>", one square object per frame with the given id."""
    writer = RleWriter(path)
    for t, object_id in enumerate(ids):
        labels = np.zeros(SIZE, np.int32)
        labels[4 + t : 20 + t, 8:30] = object_id
        writer.write(f"seq/{t:05d}", labels)
    writer.close()
    return path


def test_import_failure_keeps_the_old_png_folder(tmp_path):
    out = tmp_path / "pngs"
    import_rle(_rle_file(tmp_path / "good.json", [1, 2, 3, 4]), out)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="does not fit"):  # frame 3 has id 300: no indexed PNG holds it
        import_rle(_rle_file(tmp_path / "bad.json", [5, 6, 300, 7]), out)
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "bad.json"} == before
    assert temp_entries(tmp_path) == []


def test_import_rerun_replaces_the_png_folder(tmp_path):
    out = tmp_path / "pngs"
    import_rle(_rle_file(tmp_path / "long.json", [1, 2, 3, 4]), out)
    import_rle(_rle_file(tmp_path / "short.json", [9, 9]), out)
    assert sorted(p.name for p in (out / "seq").iterdir()) == ["00000.png", "00001.png"]
    assert np.array(Image.open(out / "seq" / "00000.png")).max() == 9


@pytest.fixture
def two_sequences(tmp_path) -> dict:
    results, frames = tmp_path / "results", tmp_path / "frames"
    for name in ("s1", "s2"):
        PaletteWriter(results / name).write("00000", np.ones(SIZE, np.uint8))
        PaletteWriter(results / name).write("00001", np.ones(SIZE, np.uint8))
        make_clip(frames / name, frames=2)
    return {"results": results, "frames": frames}


def _interrupt_at(frame: int):
    def progress(done: int, total: int) -> None:
        if done == frame:
            raise Interrupt

    return progress


EXPORTS = {
    "overlay videos folder": ("overlay-mp4", "videos"),
    "submission zip": ("davis", "submission.zip"),
    "RLE file": ("coco-rle", "results.json"),
}


@pytest.mark.parametrize("export", EXPORTS, ids=list(EXPORTS))
def test_export_interrupted_into_a_new_folder_leaves_nothing(tmp_path, two_sequences, export):
    fmt, name = EXPORTS[export]
    frames = two_sequences["frames"] if fmt == "overlay-mp4" else None
    before = snapshot(tmp_path)
    with pytest.raises(Interrupt):
        export_results(two_sequences["results"], fmt, tmp_path / "new" / name, frames=frames,
                       progress=_interrupt_at(3))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("export", EXPORTS, ids=list(EXPORTS))
def test_export_interrupted_mid_way_keeps_the_old_target(tmp_path, two_sequences, export):
    fmt, name = EXPORTS[export]
    frames = two_sequences["frames"] if fmt == "overlay-mp4" else None
    export_results(two_sequences["results"], fmt, tmp_path / name, frames=frames)
    relabel(two_sequences["results"] / "s1" / "00000.png", 2)
    before = snapshot(tmp_path)
    with pytest.raises(Interrupt):
        export_results(two_sequences["results"], fmt, tmp_path / name, frames=frames, progress=_interrupt_at(3))
    assert snapshot(tmp_path) == before
    assert temp_entries(tmp_path) == []


def test_export_overlay_folder_rerun_replaces_the_videos(tmp_path, two_sequences):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "gone.mp4").write_bytes(b"an old video of a sequence no longer exported")
    export_results(two_sequences["results"], "overlay-mp4", videos, frames=two_sequences["frames"])
    assert sorted(p.name for p in videos.iterdir()) == ["s1.mp4", "s2.mp4"]
    assert all(len(open_frames(video)) == 2 for video in videos.iterdir())
    assert temp_entries(tmp_path) == []


# ------------------------------------------------------------------- item 4: stale temporary files


def _stale_cases(folder: Path) -> dict[str, bool]:
    """Entries in ``folder`` -> whether a later run must remove them."""
    gone, live = dead_pid(), os.getppid()
    other_host = "0" * 8 if host_tag() != "0" * 8 else "1" * 8
    (folder / stale_name("file", "ov.mp4", gone)).write_bytes(b"half a video")
    (folder / stale_name("stage", "masks", gone)).mkdir()
    (folder / stale_name("stage", "masks", gone) / "00000.png").write_bytes(b"half a run")
    (folder / stale_name("file", "ov.mp4", live)).write_bytes(b"being written by a live process")
    (folder / stale_name("file", "ov.mp4", gone, host=other_host)).write_bytes(b"another machine's")
    (folder / ".tmp-0123456789ab-ov.mp4").write_bytes(b"an older vostool's, no pid: not provably stale")
    (folder / ".tmp-vostool-notes").write_bytes(b"a user's file that only looks similar")
    (folder / stale_name("file", "link.mp4", gone)).symlink_to(folder / ".tmp-vostool-notes")
    return {
        stale_name("file", "ov.mp4", gone): True,
        stale_name("stage", "masks", gone): True,
        stale_name("file", "ov.mp4", live): False,
        stale_name("file", "ov.mp4", gone, host=other_host): False,
        ".tmp-0123456789ab-ov.mp4": False,
        ".tmp-vostool-notes": False,
        stale_name("file", "link.mp4", gone): False,
    }


def test_a_run_removes_stale_temp_files_of_dead_writers_only(tmp_path):
    mask = make_clip(tmp_path / "clip")
    out = tmp_path / "out"
    out.mkdir()
    cases = _stale_cases(out)
    vostool.segment(tmp_path / "clip", mask, tracker=tiny_tracker(), out_dir=out / "masks",
                    overlay=out / "ov.mp4")
    left = {p.name for p in out.iterdir()}
    assert {name for name, removed in cases.items() if not removed} <= left
    assert not {name for name, removed in cases.items() if removed} & left
    assert {"masks", "ov.mp4"} <= left


def test_overlay_writer_alone_removes_stale_temps_in_its_folder(tmp_path):
    stale = tmp_path / stale_name("file", "ov.mp4", dead_pid())
    stale.write_bytes(b"half a video")
    write_overlay(tmp_path / "ov.mp4", 2)
    assert not stale.exists()


def test_an_old_output_moved_aside_by_a_killed_commit_is_put_back(tmp_path):
    """Killed between "old aside" and "new in": the next run restores the old folder, drops the new one."""
    gone = dead_pid()
    aside = tmp_path / stale_name("old", "masks", gone)
    aside.mkdir()
    (aside / "00000.png").write_bytes(b"run 1")
    staged = tmp_path / stale_name("stage", "masks", gone)
    staged.mkdir()
    (staged / "00000.png").write_bytes(b"run 2, never committed")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]
    assert (tmp_path / "masks" / "00000.png").read_bytes() == b"run 1"


def test_an_old_output_whose_replacement_is_in_place_is_removed(tmp_path):
    """Killed after "new in": the new output stays, the old one moved aside goes."""
    (tmp_path / "ov.mp4").write_bytes(b"run 2")
    (tmp_path / stale_name("old", "ov.mp4", dead_pid())).write_bytes(b"run 1")
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ov.mp4"]
    assert (tmp_path / "ov.mp4").read_bytes() == b"run 2"


def test_temp_names_carry_host_and_pid(tmp_path):
    with StagedFolder(tmp_path / "masks") as staged:
        name = staged.temp.name
        assert name.startswith(f".tmp-vostool-stage-{host_tag()}-{os.getpid()}-") and name.endswith("-masks")
        (staged.temp / "00000.png").write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["00000.png"]
