"""``vostool export``: every format round-trips, zips are laid out per server, names cannot escape."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import assert_one_line_error, leftover_temp_files, write_frames
from vostool.cli import app
from vostool.errors import InputError
from vostool.export import archive_name, export_results, find_sequences, import_rle, read_frames_list
from vostool.io.frames import open_frames
from vostool.io.masks import read_rle_video
from vostool.io.palette import colors
from vostool.io.writers import PaletteWriter

runner = CliRunner()
SIZE = (24, 32)


def labels_for(seq: int, t: int) -> np.ndarray:
    """A distinct label map per (sequence, frame): two rectangles that move, one id above 100."""
    labels = np.zeros(SIZE, np.uint8)
    labels[2 + t : 10 + t, 3 + seq : 12 + seq] = 1
    labels[14:22, 18 - t : 28 - t] = 7 + 100 * seq
    return labels


@pytest.fixture
def results(tmp_path) -> dict:
    """Two sequences "bear" and "car-turn" of four frames each, as palette PNGs."""
    root = tmp_path / "results"
    truth = {}
    for seq_index, seq in enumerate(["bear", "car-turn"]):
        writer = PaletteWriter(root / seq)
        for t in range(4):
            name = f"{5 * t:05d}"
            writer.write(name, labels_for(seq_index, t))
            truth[(seq, name)] = labels_for(seq_index, t)
    return {"root": root, "truth": truth}


def zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def png_labels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P"
    return np.array(image)


@pytest.mark.parametrize("fmt", ["davis", "mose"])
def test_davis_and_mose_zip_sequences_at_the_archive_root(results, tmp_path, fmt):
    out = tmp_path / f"{fmt}.zip"
    summary = export_results(results["root"], fmt, out)
    assert (summary.sequences, summary.frames) == (2, 8)
    entries = zip_entries(out)
    assert set(entries) == {f"{seq}/{name}.png" for seq, name in results["truth"]}
    for (seq, name), truth in results["truth"].items():
        np.testing.assert_array_equal(png_labels(entries[f"{seq}/{name}.png"]), truth)
    assert leftover_temp_files(tmp_path) == []


def test_youtube_vos_keeps_only_the_frames_of_meta_json(results, tmp_path):
    writer = PaletteWriter(results["root"] / "extra")  # a video the meta does not list
    writer.write("00000", labels_for(0, 0))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"videos": {
        "bear": {"objects": {"1": {"category": "bear", "frames": ["00000", "00010"]},
                             "7": {"category": "x", "frames": ["00010", "00015"]}}},
        "car-turn": {"objects": {"107": {"category": "car", "frames": ["00005"]}}},
    }}))
    out = tmp_path / "yt.zip"
    summary = export_results(results["root"], "youtube-vos", out, frames_list=meta)
    entries = zip_entries(out)
    expected = {("bear", "00000"), ("bear", "00010"), ("bear", "00015"), ("car-turn", "00005")}
    assert set(entries) == {f"Annotations/{seq}/{name}.png" for seq, name in expected}
    for seq, name in expected:
        np.testing.assert_array_equal(png_labels(entries[f"Annotations/{seq}/{name}.png"]), results["truth"][(seq, name)])
    assert summary.skipped == ["extra"] and summary.frames == 4


def test_youtube_vos_without_a_list_takes_every_frame(results, tmp_path):
    out = tmp_path / "yt.zip"
    export_results(results["root"], "youtube-vos", out)
    assert set(zip_entries(out)) == {f"Annotations/{seq}/{name}.png" for seq, name in results["truth"]}


def test_youtube_vos_missing_listed_frame_fails_without_writing(results, tmp_path):
    listing = tmp_path / "frames.txt"
    listing.write_text("bear/00000.jpg\nbear/00020.jpg\n")
    assert read_frames_list(listing) == {"bear": ["00000", "00020"]}
    out = tmp_path / "yt.zip"
    with pytest.raises(InputError, match="00020"):
        export_results(results["root"], "youtube-vos", out, frames_list=listing)
    assert not out.exists() and leftover_temp_files(tmp_path) == []


@pytest.mark.parametrize("bad_video", ["..", "/etc", "a/../../b", "C:evil"])
def test_meta_json_names_cannot_escape(results, tmp_path, bad_video):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"videos": {bad_video: {"objects": {"1": {"frames": ["00000"]}}}}}))
    with pytest.raises(InputError, match="safe"):
        export_results(results["root"], "youtube-vos", tmp_path / "yt.zip", frames_list=meta)


def test_archive_names_are_relative_and_inside_the_root():
    assert archive_name("Annotations", "bear", "00000.png", source="x") == "Annotations/bear/00000.png"
    for parts in [("..", "a.png"), ("", "a.png"), ("/abs",), ("a\\..\\b",), (".",), ("seq", "..")]:
        with pytest.raises(InputError):
            archive_name(*parts, source="x")


def test_sequence_folder_with_unsafe_name_is_refused(tmp_path):
    PaletteWriter(tmp_path / "res" / "a\\..\\b").write("00000", labels_for(0, 0))
    with pytest.raises(InputError, match="safe"):
        find_sequences(tmp_path / "res")


def test_one_sequence_folder_is_named_after_itself_and_greyscale_becomes_indexed(tmp_path):
    seq = tmp_path / "dog"
    seq.mkdir()
    labels = labels_for(0, 1)
    Image.fromarray(labels, mode="L").save(seq / "00000.png")  # greyscale ids
    out = tmp_path / "dog.zip"
    export_results(seq, "davis", out)
    entries = zip_entries(out)
    assert list(entries) == ["dog/00000.png"]
    np.testing.assert_array_equal(png_labels(entries["dog/00000.png"]), labels)


def test_folder_with_masks_and_sequence_folders_is_ambiguous(results):
    PaletteWriter(results["root"]).write("stray", labels_for(0, 0))
    with pytest.raises(InputError, match="both"):
        find_sequences(results["root"])


def test_coco_rle_round_trip_with_several_sequences(results, tmp_path):
    rle = tmp_path / "results.json"
    export_results(results["root"], "coco-rle", rle)
    names = [name for name, _ in read_rle_video(rle)]
    assert names == [f"{seq}/{name}" for seq, name in results["truth"]]
    back = tmp_path / "back"
    summary = import_rle(rle, back)
    assert (summary.sequences, summary.frames) == (2, 8)
    for (seq, name), truth in results["truth"].items():
        image = Image.open(back / seq / f"{name}.png")
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), truth)


def test_coco_rle_round_trip_of_one_sequence(results, tmp_path):
    rle = tmp_path / "bear.json"
    export_results(results["root"] / "bear", "coco-rle", rle)
    assert [name for name, _ in read_rle_video(rle)] == ["00000", "00005", "00010", "00015"]
    back = tmp_path / "back"
    import_rle(rle, back)
    for t, name in enumerate(["00000", "00005", "00010", "00015"]):
        np.testing.assert_array_equal(np.array(Image.open(back / f"{name}.png")), labels_for(0, t))


@pytest.mark.parametrize("bad_name", ["../evil", "/abs", "a/b/c", "..", "seq/.."])
def test_rle_import_names_cannot_escape_and_nothing_is_written(tmp_path, bad_name):
    frame = {"size": list(SIZE), "objects": []}
    rle = tmp_path / "in" / "x.json"
    rle.parent.mkdir()
    rle.write_text(json.dumps({"format": "vostool-rle-v1", "frames": [{"name": "ok", **frame}, {"name": bad_name, **frame}]}))
    out = tmp_path / "in" / "out"
    with pytest.raises(InputError):
        import_rle(rle, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "x.json"]


def make_frames(folder: Path, count: int, shade: int) -> list[np.ndarray]:
    """``count`` two-tone JPEG frames named like the results (00000, 00005, ...), as decoded from disk."""
    frame = np.full((*SIZE, 3), shade, np.uint8)
    frame[:, : SIZE[1] // 2] = (shade // 2, shade, 255 - shade)
    paths = write_frames(folder, [frame] * count, names=[f"{5 * t:05d}" for t in range(count)], suffix=".jpg", quality=100)
    return [np.array(Image.open(path)) for path in paths]


def check_overlay(video: Path, frames: list[np.ndarray], masks: list[np.ndarray | None]) -> None:
    """Masked pixels show the blend with the palette colour; the rest shows the frame (H.264 tolerance)."""
    palette = colors()
    decoded = list(open_frames(video))
    assert len(decoded) == len(frames)
    for picture, frame, labels in zip(decoded, frames, masks):
        labels = labels if labels is not None else np.zeros(SIZE, np.uint8)
        expected = frame.astype(float)
        inside = labels > 0
        expected[inside] = 0.5 * frame[inside] + 0.5 * palette[labels[inside]]
        error = np.abs(picture.astype(float) - expected)
        # H.264 chroma subsampling blurs colour edges; interiors must match closely.
        core = np.zeros(SIZE, bool)
        core[1:-1, 1:-1] = True
        assert np.median(error[core]) < 12, np.median(error[core])
        if inside.any():
            assert np.abs(picture[inside].astype(float) - frame[inside]).mean() > 15  # visibly tinted


def test_overlay_mp4_of_one_sequence_draws_masks_on_the_frames(results, tmp_path):
    frames = make_frames(tmp_path / "frames", 4, 90)
    out = tmp_path / "bear.mp4"
    summary = export_results(results["root"] / "bear", "overlay-mp4", out, frames=tmp_path / "frames")
    assert summary.frames == 4
    check_overlay(out, frames, [labels_for(0, t) for t in range(4)])


def test_overlay_mp4_of_several_sequences_writes_one_video_each(results, tmp_path):
    frames = {seq: make_frames(tmp_path / "frames" / seq, 4, shade) for seq, shade in [("bear", 60), ("car-turn", 160)]}
    (results["root"] / "car-turn" / "00010.png").unlink()  # a frame without a mask stays unchanged
    out = tmp_path / "videos"
    export_results(results["root"], "overlay-mp4", out, frames=tmp_path / "frames")
    assert sorted(p.name for p in out.iterdir()) == ["bear.mp4", "car-turn.mp4"]
    check_overlay(out / "bear.mp4", frames["bear"], [labels_for(0, t) for t in range(4)])
    check_overlay(out / "car-turn.mp4", frames["car-turn"], [labels_for(1, t) if t != 2 else None for t in range(4)])


def test_overlay_mask_that_matches_no_frame_is_an_error(results, tmp_path):
    make_frames(tmp_path / "frames", 2, 90)  # frames 00000 and 00005 only
    with pytest.raises(InputError, match="matches no frame"):
        export_results(results["root"] / "bear", "overlay-mp4", tmp_path / "o.mp4", frames=tmp_path / "frames")
    assert not (tmp_path / "o.mp4").exists()


def test_cli_export_and_import(results, tmp_path):
    out = tmp_path / "sub.zip"
    result = runner.invoke(app, ["export", str(results["root"]), "--format", "davis", "--out", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"format": "davis", "output": str(out), "sequences": 2, "frames": 8, "skipped": []}
    rle = tmp_path / "r.json"
    assert runner.invoke(app, ["export", str(results["root"]), "-f", "coco-rle", "-o", str(rle), "-q"]).exit_code == 0
    result = runner.invoke(app, ["export", str(rle), "--from", "coco-rle", "-o", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "back" / "bear" / "00005.png")), labels_for(0, 1))


def test_default_output_goes_next_to_the_results(results):
    summary = export_results(results["root"], "mose")
    assert Path(summary.output) == results["root"].parent / "results-mose.zip"
    assert Path(summary.output).is_file()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-f", "davis", "--from", "coco-rle"], "either"),
        ([], "either"),
        (["-f", "pascal"], "pascal"),
        (["-f", "overlay-mp4"], "--frames"),
        (["-f", "davis", "--frames-list", "x.txt"], "youtube-vos"),
        (["-f", "davis", "-o", "out.tar"], ".zip"),
    ],
)
def test_cli_errors_are_one_line(results, args, fragment):
    assert_one_line_error(runner.invoke(app, ["export", str(results["root"]), *args]), fragment)
