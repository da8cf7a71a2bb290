"""Frame sources, mask readers and writers: round trips and the catalogue of user errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from tests.conftest import DAVIS_MINI, require
from tests.helpers import gradient_frames, leftover_temp_files, write_frames
from vostool.errors import InputError, OutputError
from vostool.io import (
    DAVIS_PALETTE,
    LabelMap,
    OverlayWriter,
    PaletteWriter,
    RleWriter,
    atomic_path,
    blend_overlay,
    colors,
    encode_rle_objects,
    open_frames,
    read_mask,
    read_masks_dir,
    read_rle_video,
)
from vostool.io.masks import _compressed_runs

H, W = 48, 64


# ----------------------------------------------------------------------------------------- helpers


def two_objects(height: int = H, width: int = W) -> np.ndarray:
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[5:20, 4:30] = 1
    labels[25:40, 20:60] = 2
    labels[15:30, 25:35] = 2  # touches and overlaps object 1's area
    return labels


def numpy_runs(binary: np.ndarray) -> list[int]:
    """COCO run lengths computed independently: column-major order, starting with a background run."""
    flat = binary.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def expect_error(error_type: type[Exception], path: Path, call, *args, **kwargs) -> str:
    """Run ``call`` expecting ``error_type`` whose one-line message names ``path``."""
    with pytest.raises(error_type) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    return message


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def rle_of(binary: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------------------- palette


def test_davis_palette_follows_the_voc_colour_map():
    table = colors(DAVIS_PALETTE)
    assert len(DAVIS_PALETTE) == 768
    assert table.shape == (256, 3) and table.dtype == np.uint8
    first = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    assert table[:6].tolist() == first
    assert table[8].tolist() == [64, 0, 0]
    assert table[255].tolist() == [224, 224, 192]  # DAVIS "void" colour
    assert len({tuple(row) for row in table.tolist()}) == 256


def test_davis_palette_matches_the_dataset_files():
    annotation = require(DAVIS_MINI / "Annotations" / "480p" / "blackswan" / "00000.png")
    with Image.open(annotation) as image:
        assert bytes(image.getpalette()) == DAVIS_PALETTE


def test_colors_defaults_and_pads_short_palettes():
    assert np.array_equal(colors(None), colors(DAVIS_PALETTE))
    short = colors(bytes([1, 2, 3, 4, 5, 6]))
    assert short[:2].tolist() == [[1, 2, 3], [4, 5, 6]] and not short[2:].any()


# ------------------------------------------------------------------------------------ folder frames


def test_folder_frames_natural_order_and_conversions(tmp_path):
    frames = gradient_frames(4)
    Image.fromarray(frames[0]).save(tmp_path / "f10.png")
    Image.fromarray(frames[1]).convert("L").save(tmp_path / "f2.png")
    Image.fromarray(frames[2]).convert("RGBA").save(tmp_path / "f1.PNG")
    Image.fromarray(frames[3]).convert("P").save(tmp_path / "f03.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub.png").mkdir()  # a folder with an image-like name is not a frame

    source = open_frames(tmp_path)
    assert source.names == ["f1", "f2", "f03", "f10"]
    assert len(source) == 4 and source.size == (H, W) and source.fps is None
    first = list(source)
    second = list(source)  # iterating twice re-reads the files
    assert [frame.shape for frame in first] == [(H, W, 3)] * 4
    assert all(frame.dtype == np.uint8 for frame in first)
    assert np.array_equal(first[0], frames[2])  # RGBA with opaque alpha keeps its colours
    grey = first[1]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert np.array_equal(first[3], frames[0])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_folder_jpeg_frames(tmp_path):
    write_frames(tmp_path, gradient_frames(3), suffix=".jpg", quality=95)
    source = open_frames(str(tmp_path))
    assert source.names == ["00000", "00001", "00002"]
    assert np.abs(next(iter(source)).astype(int) - gradient_frames(1)[0]).mean() < 3


# ------------------------------------------------------------------------------------------- video


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def test_overlay_video_round_trip(tmp_path):
    frames = gradient_frames(10)
    background = np.zeros((H, W), dtype=np.uint8)
    path = tmp_path / "overlay.mp4"
    with OverlayWriter(path, fps=10) as writer:
        for frame in frames:
            writer.write(frame, background)
    assert writer.frames_written == 10
    assert leftover_temp_files(tmp_path) == []

    source = open_frames(path)
    assert len(source) == 10
    assert source.names == [f"{index:05d}" for index in range(10)]
    assert source.size == (H, W) and source.fps == pytest.approx(10.0)
    decoded = list(source)
    assert len(decoded) == 10 and all(frame.shape == (H, W, 3) for frame in decoded)
    # Background pixels are untouched by the overlay; only the codec's loss remains.
    for original, frame in zip(frames, decoded):
        assert np.abs(frame.astype(int) - original).mean() < 6
    assert len(list(source)) == 10  # a second pass re-opens the video


def test_overlay_tints_objects_in_the_video(tmp_path):
    grey = np.full((H, W, 3), 128, dtype=np.uint8)
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[8:40, 8:56] = 1
    path = tmp_path / "tinted.mp4"
    with OverlayWriter(path, fps=None, alpha=0.5) as writer:
        for _ in range(3):
            writer.write(grey, labels)
    source = open_frames(path)
    assert source.fps == pytest.approx(25.0)  # the default when the input has no frame rate
    frame = next(iter(source)).astype(int)
    assert np.abs(frame[24, 32] - [128, 64, 64]).max() < 12  # half-way to DAVIS red (128, 0, 0)
    assert np.abs(frame[2, 2] - [128, 128, 128]).max() < 6


def test_odd_frame_size_is_padded_to_even(tmp_path):
    frames = gradient_frames(3, height=47, width=63)
    path = tmp_path / "odd.mp4"
    with OverlayWriter(path, fps=12) as writer:
        for frame in frames:
            writer.write(frame, np.zeros((47, 63), dtype=np.uint8))
    source = open_frames(path)
    assert len(source) == 3 and source.size == (48, 64)
    first = next(iter(source)).astype(int)
    assert np.abs(first[:47, :63] - frames[0]).mean() < 6


def test_video_extension_is_case_insensitive_and_counts_exactly(tmp_path):
    path = tmp_path / "clip.MP4"
    write_video(path, gradient_frames(7), fps=7.5)
    source = open_frames(path)
    assert len(source) == 7 and source.fps == pytest.approx(7.5)
    assert sum(1 for _ in source) == 7


def test_variable_frame_rate_video_yields_each_frame_once(tmp_path):
    # 25 test-pattern frames with a one-second gap after frame 10: a constant-rate decode would
    # invent 25 duplicate frames to fill the gap.
    path = tmp_path / "vfr.mkv"
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25:duration=1",
        "-vf", "setpts='(N*0.04+if(gt(N,10),1.0,0))/TB'", "-fps_mode", "vfr",
        "-c:v", "libx264", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    source = open_frames(path)
    frames = list(source)
    assert len(source) == 25 and len(frames) == 25
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))


def test_video_iteration_can_stop_early_and_restart(tmp_path):
    path = tmp_path / "clip.mkv"
    write_video(path, gradient_frames(6))
    source = open_frames(path)
    iterator = iter(source)
    next(iterator)
    iterator.close()
    assert sum(1 for _ in source) == 6


def test_blend_overlay_leaves_background_and_tints_objects():
    frame = np.full((6, 6, 3), 100, dtype=np.uint8)
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[1:5, 1:5] = 2
    labels[0, 0] = 300  # ids beyond the palette still get a colour
    out = blend_overlay(frame, labels, colors(), alpha=0.5, contour=True)
    assert out[5, 5].tolist() == [100, 100, 100]
    assert out[2, 2].tolist() == [50, 114, 50]  # (100 + (0, 128, 0)) / 2
    assert out[1, 1].tolist() == [0, 128, 0]  # contour pixel in the full colour
    plain = blend_overlay(frame, labels, colors(), alpha=0.5, contour=False)
    assert plain[1, 1].tolist() == [50, 114, 50]
    assert np.array_equal(frame, np.full((6, 6, 3), 100))  # input not modified


# ----------------------------------------------------------------------------------- frame errors


def test_frame_source_errors(tmp_path):
    expect_error(InputError, tmp_path / "missing.mp4", open_frames, tmp_path / "missing.mp4")

    text_video = tmp_path / "x.mp4"
    text_video.write_text("this is not a video\n")
    message = expect_error(InputError, text_video, open_frames, text_video)
    assert "decode" in message

    unsupported = tmp_path / "notes.txt"
    unsupported.write_text("hello")
    expect_error(InputError, unsupported, open_frames, unsupported)

    single_image = tmp_path / "frame.png"
    Image.fromarray(gradient_frames(1)[0]).save(single_image)
    expect_error(InputError, single_image, open_frames, single_image)

    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(InputError, empty, open_frames, empty)

    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "readme.md").write_text("no frames here")
    expect_error(InputError, no_images, open_frames, no_images)


def test_folder_with_a_frame_of_another_size(tmp_path):
    Image.fromarray(gradient_frames(1)[0]).save(tmp_path / "0.png")
    Image.fromarray(gradient_frames(1, height=40)[0]).save(tmp_path / "1.png")
    message = expect_error(InputError, tmp_path / "1.png", open_frames, tmp_path)
    assert "40x64" in message and "48x64" in message


def test_folder_with_an_unreadable_frame(tmp_path):
    Image.fromarray(gradient_frames(1)[0]).save(tmp_path / "0.png")
    (tmp_path / "1.jpg").write_bytes(b"\xff\xd8 truncated nonsense")
    expect_error(InputError, tmp_path / "1.jpg", open_frames, tmp_path)


def test_folder_with_two_frames_of_one_name(tmp_path):
    Image.fromarray(gradient_frames(1)[0]).save(tmp_path / "a.png")
    Image.fromarray(gradient_frames(1)[0]).save(tmp_path / "a.jpg")
    expect_error(InputError, tmp_path, open_frames, tmp_path)


# ------------------------------------------------------------------------------------- PNG masks


def test_palette_png_round_trip_keeps_ids_and_palette(tmp_path):
    labels = two_objects()
    labels[0, :3] = [3, 17, 254]  # 254: the highest id a palette mask carries (255 is void)
    custom = bytes(range(256)) * 3
    PaletteWriter(tmp_path / "custom", palette=custom).write("00007", labels)
    PaletteWriter(tmp_path / "davis").write("00007", labels)

    for folder, palette in ((tmp_path / "custom", custom), (tmp_path / "davis", DAVIS_PALETTE)):
        path = folder / "00007.png"
        with Image.open(path) as image:
            assert image.mode == "P"
        label_map = read_mask(path, size=(H, W))
        assert label_map.labels.dtype == np.uint8
        assert np.array_equal(label_map.labels, labels)
        assert label_map.palette == palette
        assert label_map.object_ids == [1, 2, 3, 17, 254]


def test_greyscale_png_values_are_ids(tmp_path):
    labels = two_objects()
    labels[40:, :5] = 7
    Image.fromarray(labels, mode="L").save(tmp_path / "grey.png")
    label_map = read_mask(tmp_path / "grey.png")
    assert np.array_equal(label_map.labels, labels) and label_map.palette is None


def test_binary_0_255_png_is_one_object(tmp_path):
    binary = (two_objects() > 0).astype(np.uint8) * 255
    Image.fromarray(binary).save(tmp_path / "binary.png")
    labels = read_mask(tmp_path / "binary.png").labels
    assert sorted(np.unique(labels).tolist()) == [0, 1]
    assert np.array_equal(labels, (binary == 255).astype(np.uint8))

    # Only an exactly binary mask gets the rule: with other values present, 255 is void (background).
    binary[0, 0] = 3
    Image.fromarray(binary).save(tmp_path / "three_values.png")
    assert sorted(np.unique(read_mask(tmp_path / "three_values.png").labels).tolist()) == [0, 3]

    Image.fromarray(binary > 0).save(tmp_path / "one_bit.png")
    assert read_mask(tmp_path / "one_bit.png").labels.max() == 1


def test_sixteen_bit_png_with_large_ids(tmp_path):
    labels = two_objects().astype(np.uint16) * 150  # ids 150 and 300
    Image.fromarray(labels).save(tmp_path / "wide.png")
    read = read_mask(tmp_path / "wide.png").labels
    assert read.dtype == np.int32
    assert np.array_equal(read, labels.astype(np.int32))


def test_rgb_png_only_when_grey(tmp_path):
    labels = two_objects()
    Image.fromarray(np.stack([labels] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(read_mask(tmp_path / "grey_rgb.png").labels, labels)

    coloured = colors()[labels]
    Image.fromarray(coloured).save(tmp_path / "colour.png")
    message = expect_error(InputError, tmp_path / "colour.png", read_mask, tmp_path / "colour.png")
    assert "ambiguous" in message


# ------------------------------------------------------------------------------------- RLE masks


def test_compressed_rle_strings_decode_to_the_right_runs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        binary = rng.random((H, W)) < rng.uniform(0.05, 0.95)
        binary[rng.integers(0, H) :, : rng.integers(0, W)] = True  # long runs exercise multi-group values
        counts = rle_of(binary)["counts"]
        assert _compressed_runs(Path("x.json"), counts, 1) == numpy_runs(binary)


def test_rle_list_of_compressed_objects(tmp_path):
    labels = two_objects()
    objects = [rle_of(labels == 1), rle_of(labels == 2)]
    path = write_json(tmp_path / "list.json", objects)
    assert np.array_equal(read_mask(path, size=(H, W)).labels, labels)

    # A single RLE object on its own is accepted too.
    alone = write_json(tmp_path / "alone.json", objects[1])
    assert np.array_equal(read_mask(alone).labels, (labels == 2).astype(np.uint8))


def test_rle_uncompressed_counts(tmp_path):
    labels = two_objects()
    objects = [{"size": [H, W], "counts": numpy_runs(labels == k)} for k in (1, 2)]
    path = write_json(tmp_path / "uncompressed.json", objects)
    assert np.array_equal(read_mask(path).labels, labels)


def test_rle_later_objects_overwrite_earlier_ones(tmp_path):
    first = np.zeros((H, W), dtype=bool)
    first[10:30, 10:30] = True
    second = np.zeros((H, W), dtype=bool)
    second[20:40, 20:40] = True
    path = write_json(tmp_path / "overlap.json", [rle_of(first), rle_of(second)])
    labels = read_mask(path).labels
    assert labels[25, 25] == 2 and labels[12, 12] == 1 and labels[35, 35] == 2


def test_rle_list_with_explicit_ids(tmp_path):
    labels = two_objects()
    items = [
        {"segmentation": rle_of(labels == 2), "id": 9},
        {"segmentation": rle_of(labels == 1), "object_id": 4, "id": 1000},  # object_id wins over id
    ]
    read = read_mask(write_json(tmp_path / "ids.json", items)).labels
    assert np.array_equal(read == 9, labels == 2) and np.array_equal(read == 4, labels == 1)


def test_rle_coco_annotation_file(tmp_path):
    labels = two_objects()
    coco = {
        "images": [{"id": 42, "height": H, "width": W, "file_name": "00000.jpg"}],
        "annotations": [
            {"id": 900100, "image_id": 42, "category_id": 1, "segmentation": rle_of(labels == 1)},
            {"id": 900101, "image_id": 42, "category_id": 1, "segmentation": rle_of(labels == 2)},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    # Annotation ids are not object ids: objects are numbered in file order.
    assert np.array_equal(read_mask(write_json(tmp_path / "coco.json", coco)).labels, labels)

    for number, ann in enumerate(coco["annotations"]):
        ann["object_id"] = 5 + number
    read = read_mask(write_json(tmp_path / "coco_ids.json", coco)).labels
    assert sorted(np.unique(read).tolist()) == [0, 5, 6]


def test_rle_coco_polygons_use_the_image_size(tmp_path):
    coco = {
        "images": [{"id": 1, "height": H, "width": W}],
        "annotations": [{"image_id": 1, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}],
    }
    labels = read_mask(write_json(tmp_path / "polygon.json", coco)).labels
    assert labels.shape == (H, W)
    assert labels[15, 20] == 1 and labels[30, 20] == 0 and labels[15, 40] == 0


def test_encoded_objects_read_back_as_a_mask(tmp_path):
    labels = two_objects()
    path = write_json(tmp_path / "encoded.json", encode_rle_objects(labels))
    assert np.array_equal(read_mask(path).labels, labels)


def test_rle_mask_errors(tmp_path):
    labels = two_objects()
    expect_error(InputError, tmp_path / "nothing.json", read_mask, tmp_path / "nothing.json")

    broken = tmp_path / "broken.json"
    broken.write_text('[{"counts": "abc", "size": [4, ')
    assert "malformed JSON" in expect_error(InputError, broken, read_mask, broken)

    short_runs = write_json(tmp_path / "short.json", [{"size": [H, W], "counts": [5, 10]}])
    assert "RLE size mismatch" in expect_error(InputError, short_runs, read_mask, short_runs)

    wrong_size = rle_of(labels == 1)
    wrong_size["size"] = [H, W + 1]
    mismatch = write_json(tmp_path / "mismatch.json", [wrong_size])
    assert "RLE size mismatch" in expect_error(InputError, mismatch, read_mask, mismatch)

    mixed_sizes = write_json(tmp_path / "mixed.json", [rle_of(labels == 1), rle_of(np.ones((4, 4), bool))])
    assert "RLE size mismatch" in expect_error(InputError, mixed_sizes, read_mask, mixed_sizes)

    garbage = write_json(tmp_path / "garbage.json", [{"size": [H, W], "counts": "\u00e9\u00e9"}])
    expect_error(InputError, garbage, read_mask, garbage)

    half_ids = write_json(tmp_path / "half_ids.json", [{**rle_of(labels == 1), "id": 3}, rle_of(labels == 2)])
    expect_error(InputError, half_ids, read_mask, half_ids)

    bad_id = write_json(tmp_path / "bad_id.json", [{**rle_of(labels == 1), "id": 0}])
    expect_error(InputError, bad_id, read_mask, bad_id)

    empty = write_json(tmp_path / "empty.json", [rle_of(np.zeros((H, W), bool))])
    assert "no object" in expect_error(InputError, empty, read_mask, empty)

    two_images = write_json(
        tmp_path / "two_images.json",
        {"annotations": [{"image_id": 1, "segmentation": rle_of(labels == 1)},
                         {"image_id": 2, "segmentation": rle_of(labels == 2)}]},
    )
    expect_error(InputError, two_images, read_mask, two_images)

    not_rle = write_json(tmp_path / "not_rle.json", {"hello": "world"})
    expect_error(InputError, not_rle, read_mask, not_rle)


def test_image_mask_errors(tmp_path):
    expect_error(InputError, tmp_path / "missing.png", read_mask, tmp_path / "missing.png")

    not_image = tmp_path / "text.png"
    not_image.write_text("not an image")
    expect_error(InputError, not_image, read_mask, not_image)

    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(tmp_path / "blank.png")
    assert "no object" in expect_error(InputError, tmp_path / "blank.png", read_mask, tmp_path / "blank.png")
    assert not read_mask(tmp_path / "blank.png", allow_empty=True).labels.any()

    PaletteWriter(tmp_path).write("big", two_objects(36, 40))
    message = expect_error(InputError, tmp_path / "big.png", read_mask, tmp_path / "big.png", size=(H, W))
    assert "mask is 36x40 but frames are 48x64" in message


# ----------------------------------------------------------------------------------- mask folders


def test_read_masks_dir_matches_by_stem(tmp_path):
    names = [f"{index:05d}" for index in range(20)]
    labels = two_objects()
    writer = PaletteWriter(tmp_path)
    writer.write("00000", labels)
    write_json(tmp_path / "00012.json", [rle_of(labels == 2)])
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(tmp_path / "00005.png")  # empty: skipped
    writer.write("7", labels)  # numeric stem matches frame "00007"
    (tmp_path / "README.txt").write_text("ignored")

    masks = read_masks_dir(tmp_path, names, size=(H, W))
    assert sorted(masks) == [0, 7, 12]
    assert all(isinstance(mask, LabelMap) for mask in masks.values())
    assert np.array_equal(masks[0].labels, labels) and masks[0].palette == DAVIS_PALETTE
    assert masks[12].object_ids == [1]


def test_read_masks_dir_later_frames_only(tmp_path):
    names = ["frame_a", "frame_b", "frame_c"]
    PaletteWriter(tmp_path).write("frame_c", two_objects())
    assert list(read_masks_dir(tmp_path, names)) == [2]


def test_read_masks_dir_errors(tmp_path):
    names = [f"{index:05d}" for index in range(5)]
    expect_error(InputError, tmp_path / "absent", read_masks_dir, tmp_path / "absent", names)

    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(InputError, empty, read_masks_dir, empty, names)

    stray = tmp_path / "stray"
    PaletteWriter(stray).write("00002", two_objects())
    PaletteWriter(stray).write("00099", two_objects())
    assert "matches no frame" in expect_error(InputError, stray / "00099.png", read_masks_dir, stray, names)

    doubled = tmp_path / "doubled"
    PaletteWriter(doubled).write("00001", two_objects())
    write_json(doubled / "00001.json", [rle_of(two_objects() == 1)])
    expect_error(InputError, doubled, read_masks_dir, doubled, names)

    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    Image.fromarray(two_objects()).save(jpeg / "00000.jpg")
    expect_error(InputError, jpeg / "00000.jpg", read_masks_dir, jpeg, names)

    wrong_size = tmp_path / "wrong_size"
    PaletteWriter(wrong_size).write("00000", two_objects(36, 40))
    expect_error(InputError, wrong_size / "00000.png", read_masks_dir, wrong_size, names, size=(H, W))


# ------------------------------------------------------------------------------------ RLE writer


def test_rle_writer_round_trip(tmp_path):
    frames = {
        "00000": two_objects(),
        "00001": np.zeros((H, W), dtype=np.uint8),  # an empty frame keeps its size
        "00002": np.where(two_objects() == 2, 300, two_objects().astype(np.int32)),
    }
    path = tmp_path / "masks.json"
    with RleWriter(path) as writer:
        for name, labels in frames.items():
            writer.write(name, labels)
    assert leftover_temp_files(tmp_path) == []

    document = json.loads(path.read_text())
    assert document["format"] == "vostool-rle-v1"
    first_objects = document["frames"][0]["objects"]
    assert [obj["id"] for obj in first_objects] == [1, 2]
    assert first_objects[0]["size"] == [H, W] and isinstance(first_objects[0]["counts"], str)

    read_back = list(read_rle_video(path))
    assert [name for name, _ in read_back] == list(frames)
    for (_, labels), expected in zip(read_back, frames.values()):
        assert np.array_equal(labels, expected)
    assert read_back[0][1].dtype == np.uint8 and read_back[2][1].dtype == np.int32


def test_single_frame_rle_file_reads_as_a_mask(tmp_path):
    with RleWriter(tmp_path / "one.json") as writer:
        writer.write("00000", two_objects())
    assert np.array_equal(read_mask(tmp_path / "one.json").labels, two_objects())


def test_read_rle_video_errors(tmp_path):
    expect_error(InputError, tmp_path / "none.json", read_rle_video, tmp_path / "none.json")
    other = write_json(tmp_path / "other.json", [rle_of(two_objects() == 1)])
    expect_error(InputError, other, read_rle_video, other)
    bad_frame = write_json(
        tmp_path / "bad_frame.json",
        {
            "format": "vostool-rle-v1",
            "frames": [{"name": "0", "objects": [{"id": 1, "size": [2, 2], "counts": [1]}]}],
        },
    )
    expect_error(InputError, bad_frame, read_rle_video, bad_frame)


# --------------------------------------------------------------------------------- atomic writing


def test_atomic_path_renames_on_success(tmp_path):
    final = tmp_path / "result.txt"
    with atomic_path(final) as temp:
        assert temp.parent == tmp_path and temp != final
        temp.write_text("done")
        assert not final.exists()
    assert final.read_text() == "done"
    assert leftover_temp_files(tmp_path) == []


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    final = tmp_path / "result.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as temp:
            temp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert final.read_text() == "old"
    assert leftover_temp_files(tmp_path) == []


def test_palette_writer_failure_does_not_clobber(tmp_path):
    writer = PaletteWriter(tmp_path)
    writer.write("00000", two_objects())
    before = (tmp_path / "00000.png").read_bytes()
    too_big = two_objects().astype(np.int32) * 200
    message = expect_error(OutputError, tmp_path / "00000.png", writer.write, "00000", too_big)
    assert "255" in message
    assert (tmp_path / "00000.png").read_bytes() == before
    assert leftover_temp_files(tmp_path) == []


def test_palette_writer_creates_nested_folders(tmp_path):
    writer = PaletteWriter(tmp_path / "a" / "b")
    assert writer.write("x", two_objects()) == tmp_path / "a" / "b" / "x.png"


def test_overlay_writer_exception_leaves_nothing_behind(tmp_path):
    path = tmp_path / "overlay.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with OverlayWriter(path, fps=10) as writer:
            for frame in gradient_frames(3):
                writer.write(frame, two_objects())
            raise RuntimeError("model crashed")
    assert path.read_bytes() == b"previous result"
    assert leftover_temp_files(tmp_path) == []


def test_overlay_writer_abort(tmp_path):
    writer = OverlayWriter(tmp_path / "aborted.mp4", fps=10)
    writer.write(gradient_frames(1)[0], two_objects())
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_rle_writer_exception_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RleWriter(tmp_path / "masks.json") as writer:
            writer.write("00000", two_objects())
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_output_errors(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("a file, not a folder")
    expect_error(OutputError, a_file, PaletteWriter, a_file)
    expect_error(OutputError, a_file / "sub", PaletteWriter, a_file / "sub")
    expect_error(OutputError, a_file, OverlayWriter, a_file / "x.mp4", 25)
    expect_error(OutputError, tmp_path, OverlayWriter, tmp_path, 25)
    expect_error(OutputError, tmp_path / "overlay.gif", OverlayWriter, tmp_path / "overlay.gif", 25)
    expect_error(OutputError, tmp_path, RleWriter, tmp_path)
    expect_error(OutputError, a_file, RleWriter, a_file / "masks.json")
    expect_error(OutputError, tmp_path / "empty.mp4", OverlayWriter(tmp_path / "empty.mp4", 25).close)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions are not enforced for root")
def test_read_only_folder_is_an_output_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expect_error(OutputError, locked, PaletteWriter, locked)
        expect_error(OutputError, locked, RleWriter, locked / "masks.json")
    finally:
        locked.chmod(0o700)
