"""Issue 11, items 5-7: inputs that used to be misread silently, as a catalogue.

5. lossy (JPEG) masks are refused; 6. pixel value 255 is void; 7. truncated videos are refused.
Every refusal is a one-line InputError naming the file (exit 2 from the CLI, nothing written); the
"not wrongly refused" cases pin the video check against the kinds of video it must accept.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vostool.cli import app
from vostool.errors import InputError
from vostool.io import LabelMap, open_frames, read_mask, read_masks_dir
from vostool.io.palette import DAVIS_PALETTE

H, W = 96, 128
runner = CliRunner()
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


# ----------------------------------------------------------------------------------------- helpers


def expect_input_error(path: Path, call: Callable, *args, **kwargs) -> str:
    """``call`` raises a one-line InputError naming ``path``; returns the message."""
    with pytest.raises(InputError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


def expect_cli_error(args: list[str], *fragments: str) -> str:
    """The CLI exits 2 with one line (no traceback) containing every fragment."""
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output


def two_objects() -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[10:40, 10:50] = 1
    labels[50:90, 60:120] = 2
    return labels


def save_palette(path: Path, labels: np.ndarray, palette: bytes = DAVIS_PALETTE) -> Path:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette)
    image.save(path)
    return path


def save_grey(path: Path, labels: np.ndarray) -> Path:
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    return path


def save_grey_rgb(path: Path, labels: np.ndarray) -> Path:
    Image.fromarray(np.repeat(labels.astype(np.uint8)[..., None], 3, axis=-1), mode="RGB").save(path)
    return path


def save_16bit(path: Path, labels: np.ndarray) -> Path:
    Image.fromarray(labels.astype(np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I"), image.mode  # really a 16-bit PNG
    return path


def textured_frames(count: int) -> list[np.ndarray]:
    """Smooth gradients with a moving noise square: frames an encoder cannot make tiny."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(count):
        frame = np.stack([(xs * 2 + 9 * t) % 256, (ys * 2) % 256, (xs + ys + 5 * t) % 256], -1).astype(np.uint8)
        frame[20:60, 10 + 8 * t : 50 + 8 * t] = rng.integers(0, 256, (40, 40, 3))
        frames.append(frame)
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], *output_params: str) -> Path:
    writer = imageio_ffmpeg.write_frames(
        str(path), (W, H), fps=10, codec="libx264", macro_block_size=1, ffmpeg_log_level="error",
        output_params=list(output_params),
    )  # fmt: skip
    writer.send(None)
    for frame in frames:
        writer.send(frame)
    writer.close()
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True, capture_output=True)


def cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.fixture
def truncated_mp4(tmp_path) -> Path:
    """A 10-frame faststart MP4 (index at the front, so the header still declares 10) cut in half."""
    whole = write_mp4(tmp_path / "whole.mp4", textured_frames(10), "-movflags", "+faststart")
    return cut_in_half(whole, tmp_path / "cut.mp4")


# ------------------------------------------------------------------------------ 5: lossy masks


def save_jpeg(path: Path) -> Path:
    Image.fromarray(two_objects() * 100).save(path, format="JPEG", quality=90)
    return path


def save_lossy_webp(path: Path) -> Path:
    Image.fromarray(two_objects() * 100).save(path, format="WEBP", quality=90)
    return path


def save_jpeg_tiff(path: Path) -> Path:
    Image.fromarray(np.repeat((two_objects() * 100)[..., None], 3, -1)).save(path, compression="jpeg")
    return path


LOSSY_MASKS = {
    "jpg": ("mask.jpg", save_jpeg, "JPEG"),
    "jpeg upper case": ("mask.JPEG", save_jpeg, "JPEG"),
    "jpeg named png": ("mask.png", save_jpeg, "JPEG"),
    "lossy webp": ("mask.webp", save_lossy_webp, "lossy WebP"),
    "jpeg-compressed tiff": ("mask.tif", save_jpeg_tiff, "JPEG-compressed TIFF"),
}


@pytest.mark.parametrize("case", LOSSY_MASKS, ids=list(LOSSY_MASKS))
def test_lossy_mask_is_refused(tmp_path, case):
    name, save, kind = LOSSY_MASKS[case]
    path = save(tmp_path / name)
    message = expect_input_error(path, read_mask, path)
    assert f"{kind} masks are not supported" in message and "use PNG" in message


def test_lossless_webp_mask_is_read(tmp_path):
    path = tmp_path / "mask.webp"
    Image.fromarray(two_objects()).save(path, format="WEBP", lossless=True)
    assert read_mask(path).object_ids == [1, 2]


def test_cli_refuses_jpeg_mask_before_any_work(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(textured_frames(2)):
        Image.fromarray(frame).save(frames / f"{index:05d}.png")
    mask, out = save_jpeg(tmp_path / "mask.jpg"), tmp_path / "out"
    expect_cli_error(["segment", str(frames), "--mask", str(mask), "--out", str(out)], str(mask), "JPEG")
    assert not out.exists()


# ------------------------------------------------------------------------------------ 6: void 255

SAVERS = {"palette": save_palette, "greyscale": save_grey, "grey rgb": save_grey_rgb}


VOID = np.zeros((H, W), bool)
VOID[0:5, :] = True  # a void band, as DAVIS draws over uncertain areas
VOID[45:48, 60:120] = True  # and one across object 2's edge


def with_void(labels: np.ndarray) -> np.ndarray:
    return np.where(VOID, 255, labels).astype(np.uint8)


VOID_CASES = {
    # name: (pixel values written, ids expected back)
    "binary 0/255 is object 1": ((two_objects() > 0) * 255, (two_objects() > 0)),
    "1, 2 and void": (with_void(two_objects()), np.where(VOID, 0, two_objects())),
    "3 and void": (with_void((two_objects() == 2) * 3), np.where(VOID, 0, (two_objects() == 2) * 3)),
}


@pytest.mark.parametrize("saver", SAVERS, ids=list(SAVERS))
@pytest.mark.parametrize("case", VOID_CASES, ids=list(VOID_CASES))
def test_void_255_is_background(tmp_path, saver, case):
    written, expected = VOID_CASES[case]
    path = SAVERS[saver](tmp_path / "mask.png", written)
    label_map = read_mask(path, size=(H, W))
    assert label_map.labels.dtype == np.uint8
    np.testing.assert_array_equal(label_map.labels, expected.astype(np.uint8))
    assert 255 not in label_map.object_ids and label_map.max_id == max(label_map.object_ids)


@pytest.mark.parametrize("saver", SAVERS, ids=list(SAVERS))
def test_mask_of_only_void_has_no_object(tmp_path, saver):
    path = SAVERS[saver](tmp_path / "void.png", np.full((H, W), 255, np.uint8))
    assert "no object" in expect_input_error(path, read_mask, path)
    assert not read_mask(path, allow_empty=True).labels.any()


def test_cli_refuses_mask_of_only_void(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(textured_frames(1)[0]).save(frames / "00000.png")
    mask, out = save_palette(tmp_path / "void.png", np.full((H, W), 255, np.uint8)), tmp_path / "out"
    expect_cli_error(["segment", str(frames), "--mask", str(mask), "--out", str(out)], str(mask), "no object")
    assert not out.exists()


def test_binary_palette_mask_keeps_the_colour_of_its_object(tmp_path):
    palette = bytearray(768)
    palette[3 * 255 : 3 * 256] = b"\xff\xff\xff"  # white object on black, index 1 left black
    path = save_palette(tmp_path / "binary.png", (two_objects() > 0) * 255, bytes(palette))
    label_map = read_mask(path)
    assert label_map.object_ids == [1]
    assert label_map.palette[3:6] == b"\xff\xff\xff" and label_map.palette[:3] == b"\x00\x00\x00"


def test_palette_mask_with_void_keeps_its_palette(tmp_path):
    path = save_palette(tmp_path / "void.png", with_void(two_objects()))
    assert read_mask(path).palette == DAVIS_PALETTE


def test_cli_void_is_not_tracked_as_object_255(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(textured_frames(3)):
        Image.fromarray(frame).save(frames / f"{index:05d}.png")
    mask = save_palette(tmp_path / "mask.png", with_void(two_objects()))
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", str(frames), "--mask", str(mask), "--out", str(out), "--json",
              "--size", "128", "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["objects"] == [1, 2]
    for png in sorted(out.glob("*.png")):
        assert set(np.unique(np.array(Image.open(png))).tolist()) <= {0, 1, 2}


# ---------------------------------------------------------------------------- --masks DIR and void


def test_masks_dir_reads_void_as_background(tmp_path):
    names = [f"{index:05d}" for index in range(4)]
    save_palette(tmp_path / "00000.png", with_void(two_objects() == 1))
    save_grey(tmp_path / "00002.png", np.where(with_void(two_objects()) == 255, 255, (two_objects() == 2) * 2))
    save_grey(tmp_path / "00003.png", np.full((H, W), 255, np.uint8))  # only void: no object, skipped
    masks = read_masks_dir(tmp_path, names, (H, W))
    assert sorted(masks) == [0, 2]
    assert masks[0].object_ids == [1] and masks[2].object_ids == [2]
    assert not (masks[0].labels[0:5] != 0).any() and not (masks[2].labels[0:5] != 0).any()


def test_masks_dir_of_only_void_has_no_object(tmp_path):
    for index in range(2):
        save_palette(tmp_path / f"{index:05d}.png", np.full((H, W), 255, np.uint8))
    message = expect_input_error(tmp_path, read_masks_dir, tmp_path, ["00000", "00001"], (H, W))
    assert "no mask with an object" in message


def test_masks_dir_refuses_jpeg(tmp_path):
    save_palette(tmp_path / "00000.png", two_objects())
    jpeg = save_jpeg(tmp_path / "00001.jpg")
    assert "JPEG" in expect_input_error(jpeg, read_masks_dir, tmp_path, ["00000", "00001"])


# --------------------------------------------------------------------------------- 16-bit masks

SIXTEEN_BIT = {
    # name: (values written, expected object ids)
    "id 300": ({1: 300}, [300]),
    "ids 1 and 300": ({1: 1, 2: 300}, [1, 300]),
    "binary 0/65535 is object 1": ({1: 65535, 2: 65535}, [1]),
    "65535 is void beside ids": ({1: 7, 2: 65535}, [7]),
    "255 is an ordinary id at 16 bits": ({1: 255, 2: 3}, [3, 255]),
}


@pytest.mark.parametrize("case", SIXTEEN_BIT, ids=list(SIXTEEN_BIT))
def test_16bit_mask_ids(tmp_path, case):
    mapping, expected = SIXTEEN_BIT[case]
    written = np.zeros((H, W), np.int64)
    for label, value in mapping.items():
        written[two_objects() == label] = value
    label_map = read_mask(save_16bit(tmp_path / "ids.png", written), size=(H, W))
    assert label_map.object_ids == expected and label_map.max_id == expected[-1]
    assert label_map.labels.dtype == (np.int32 if expected[-1] > 255 else np.uint8)
    if case == "id 300":
        np.testing.assert_array_equal(label_map.labels, (two_objects() == 1) * 300)


def test_max_id_of_an_empty_map_is_zero():
    assert LabelMap(np.zeros((2, 2), np.uint8)).max_id == 0


# ------------------------------------------------------------------------------ 7: truncated video


def test_truncated_faststart_mp4_is_refused(truncated_mp4):
    message = expect_input_error(truncated_mp4, open_frames, truncated_mp4)
    decoded = int(re.search(r"decoded (\d+) of 10 frames", message).group(1))
    assert 0 < decoded < 10, message


def test_allow_truncated_gives_the_decodable_frames(tmp_path, truncated_mp4):
    source = open_frames(truncated_mp4, allow_truncated=True)
    frames = list(source)
    assert 0 < len(source) < 10 and len(frames) == len(source) and source.declared_frames == 10
    # The frames that decode are frames of the real video, in order. (Not always its first ones: a
    # B-frame whose later reference was cut off does not decode, so the sequence may skip it.)
    whole = list(open_frames(truncated_mp4.with_name("whole.mp4")))
    matches = [next(i for i, complete in enumerate(whole) if np.array_equal(frame, complete)) for frame in frames]
    assert matches == sorted(set(matches)) and matches[0] == 0, matches


def test_cli_refuses_truncated_video_and_writes_nothing(tmp_path, truncated_mp4):
    mask = save_palette(tmp_path / "mask.png", two_objects())
    out, overlay, rle = tmp_path / "out", tmp_path / "overlay.mp4", tmp_path / "masks.json"
    args = ["segment", str(truncated_mp4), "--mask", str(mask), "--out", str(out), "--overlay", str(overlay),
            "--rle", str(rle)]  # fmt: skip
    output = expect_cli_error(args, str(truncated_mp4), "of 10 frames")
    assert re.search(r"decoded \d of 10 frames", output), output
    assert not out.exists() and not overlay.exists() and not rle.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_cli_truncated_video_as_a_subprocess(tmp_path, truncated_mp4):
    """The same through a real process: exit status 2 and exactly one line on stderr."""
    mask = save_palette(tmp_path / "mask.png", two_objects())
    command = [sys.executable, "-m", "vostool.cli", "segment", str(truncated_mp4), "--mask", str(mask),
               "--out", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "decoded" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def make_matroska(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-frames:v", "10", "-c:v", "libx264",
           "-g", "1", str(path))  # fmt: skip


def make_trimmed_faststart_mp4(path: Path) -> None:
    make_trimmed_mp4(path.with_name("trimmed.mp4"))
    ffmpeg("-i", str(path.with_name("trimmed.mp4")), "-c", "copy", "-movflags", "+faststart", str(path))


TRUNCATED = {
    # name: (file name, maker, frames of the whole file, pattern of the message)
    "mkv, from its duration": ("clip.mkv", make_matroska, 10, r"decoded \d of about 10 frames"),
    "mp4 trimmed by an edit list": ("clip.mp4", make_trimmed_faststart_mp4, 15, r"decoded \d+ of 15 frames"),
}


@pytest.mark.parametrize("case", TRUNCATED, ids=list(TRUNCATED))
def test_truncated_video_is_refused(tmp_path, case):
    name, make, frames, pattern = TRUNCATED[case]
    whole = tmp_path / name
    make(whole)
    assert len(open_frames(whole)) == frames
    cut = cut_in_half(whole, tmp_path / f"cut-{name}")
    message = expect_input_error(cut, open_frames, cut)
    assert re.search(pattern, message), message


def test_video_cut_while_iterating_is_one_line_error(tmp_path):
    whole = write_mp4(tmp_path / "clip.mp4", textured_frames(10), "-movflags", "+faststart")
    source = open_frames(whole)
    cut_in_half(whole, tmp_path / "half.mp4").replace(whole)  # the file changes after it was opened
    message = expect_input_error(whole, list, source)
    assert re.search(r"video ended early: decoded \d of 10 frames", message), message


# --------------------------------------------------------------------- videos that must be accepted

LAVFI = f"testsrc2=size={W}x{H}:rate=25:duration=1"
VFR = "setpts='(N*0.04+if(gt(N,10),1.0,0))/TB'"  # 25 frames with a one-second gap after frame 10


def make_plain_mp4(path: Path) -> None:
    write_mp4(path, textured_frames(10), "-bf", "0")


def make_bframes_mp4(path: Path) -> None:
    write_mp4(path, textured_frames(10), "-bf", "3", "-movflags", "+faststart")


def make_vfr(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", LAVFI, "-vf", VFR, "-fps_mode", "vfr", "-c:v", "libx264", str(path))


def make_trimmed_mp4(path: Path) -> None:
    # A stream copy from mid-GOP keeps the whole GOP and hides its start with an edit list.
    long = path.with_name("long.mp4")
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-frames:v", "30", "-g", "30",
           "-c:v", "libx264", str(long))  # fmt: skip
    ffmpeg("-ss", "1.45", "-i", str(long), "-c", "copy", str(path))


def make_mp4_whose_edit_ends_early(path: Path) -> None:
    # The edit list shows only the first half of the track's 10 samples (as a trim without re-encoding).
    make_bframes_mp4(path)
    data = bytearray(path.read_bytes())
    elst = data.index(b"elst")
    assert data[elst + 4] == 0 and int.from_bytes(data[elst + 8 : elst + 12], "big") == 1  # version 0, 1 edit
    duration = int.from_bytes(data[elst + 12 : elst + 16], "big")
    data[elst + 12 : elst + 16] = (duration // 2).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def make_mp4_with_longer_audio(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-f", "lavfi", "-i", "sine=duration=3",
           "-map", "0:v", "-map", "1:a", "-frames:v", "10", "-c:v", "libx264", "-c:a", "aac", str(path))  # fmt: skip


def make_delayed_mp4(path: Path) -> None:
    # Video starting 0.5 s after the audio: an empty edit before the track's samples.
    ffmpeg("-itsoffset", "0.5", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-f", "lavfi",
           "-i", "sine=duration=2", "-map", "0:v", "-map", "1:a", "-frames:v", "10", "-c:v", "libx264",
           "-c:a", "aac", str(path))  # fmt: skip


def make_fragmented_mp4(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-frames:v", "20", "-g", "5", "-c:v", "libx264",
           "-movflags", "frag_keyframe+empty_moov", str(path))  # fmt: skip


def make_webm_with_audio(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-f", "lavfi", "-i", "sine=duration=1.5",
           "-frames:v", "10", "-c:v", "libvpx-vp9", "-c:a", "libopus", str(path))  # fmt: skip


ACCEPTED_VIDEOS = {
    # name: (file name, maker, frames it holds)
    "plain mp4": ("plain.mp4", make_plain_mp4, 10),
    "mp4 with b-frames": ("bframes.mp4", make_bframes_mp4, 10),
    "vfr mp4": ("vfr.mp4", make_vfr, 25),
    "vfr mkv": ("vfr.mkv", make_vfr, 25),
    "mp4 trimmed by an edit list": ("trimmed.mp4", make_trimmed_mp4, 15),
    "mp4 whose edit list ends early": ("half-shown.mp4", make_mp4_whose_edit_ends_early, 5),
    "mp4 with longer audio": ("audio.mp4", make_mp4_with_longer_audio, 10),
    "mp4 starting after its audio": ("delayed.mp4", make_delayed_mp4, 10),
    "fragmented mp4": ("fragmented.mp4", make_fragmented_mp4, 20),
    "webm with audio": ("clip.webm", make_webm_with_audio, 10),
}


@pytest.mark.parametrize("case", ACCEPTED_VIDEOS, ids=list(ACCEPTED_VIDEOS))
def test_complete_video_is_not_refused(tmp_path, case):
    name, make, frames = ACCEPTED_VIDEOS[case]
    path = tmp_path / name
    make(path)
    source = open_frames(path)
    assert len(source) == frames and sum(1 for _ in source) == frames
    if source.declared_frames is not None and not case.startswith("vfr mkv"):
        assert source.declared_frames == frames  # vfr mkv: duration x nominal fps is only an estimate


def test_cli_allow_truncated_segments_what_decodes(tmp_path, truncated_mp4):
    mask = save_palette(tmp_path / "mask.png", two_objects())
    result = runner.invoke(app, ["segment", str(truncated_mp4), "--mask", str(mask), "--out", str(tmp_path / "out"),
                                 "--allow-truncated", "--size", "64", "--device", "cpu", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "out").glob("*.png"))
    assert 0 < len(written) < 10 and json.loads(result.stdout.splitlines()[-1])["frames"] == len(written)


def test_ids_above_254_with_palette_output_are_refused_before_model_work(tmp_path, monkeypatch):
    import vostool.api

    labels = np.zeros((H, W), np.uint16)
    labels[10:30, 10:30] = 300
    mask = save_16bit(tmp_path / "mask16.png", labels)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(textured_frames(2)):
        Image.fromarray(frame).save(frames / f"{t:05d}.png")
    monkeypatch.setattr(vostool.api, "load_network", lambda *a, **k: pytest.fail("the model ran first"))
    output = expect_cli_error(["segment", str(frames), "--mask", str(mask), "--out", str(tmp_path / "out")],
                              str(mask), "object id 300", "--rle")
    assert "1-254" in output and not (tmp_path / "out").exists()
