"""Pipelines: ``vostool segment -`` reads a video from standard input as it arrives, ``--rle -`` and
``--jsonl`` write one flushed JSON line per finished frame, a reader that leaves early ends the run quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from pycocotools import mask as mask_api
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.helpers import assert_one_line_error, encode_frames, leftover_temp_files, paint_boxes, save_palette_png, write_frames
from vostool.cli import FrameProgress, app
from vostool.io.stdin import StdinFrames

runner = CliRunner()
FAST = ["--size", "64", "--device", "cpu"]
FRAMES = 40


@pytest.fixture(scope="module")
def piped(tmp_path_factory) -> dict:
    """40 frames of 64x48 (a box moving right) as a Matroska file, the bytes a producer would pipe."""
    root = tmp_path_factory.mktemp("piped")
    rng = np.random.default_rng(3)
    background = (rng.random((48, 64, 3)) * 80).astype(np.uint8)
    boxes = [paint_boxes(background, [(np.s_[8:28, 4 + t : 24 + t], (230, 60, 40), 1),
                                      (np.s_[30:44, 40:56], (40, 200, 230), 3)]) for t in range(FRAMES)]
    write_frames(root / "frames", [frame for frame, _ in boxes])
    mask = save_palette_png(root / "mask.png", boxes[0][1])
    video = encode_frames(root / "frames", root / "clip.mkv", 10, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12", "-f", "matroska")
    return {"video": video, "mask": mask, "bytes": video.read_bytes(), "root": root}


def _decode_rle(obj: dict) -> np.ndarray:
    return mask_api.decode({"size": obj["size"], "counts": obj["counts"].encode()}).astype(bool)


def test_first_line_arrives_before_the_input_ends_and_an_early_reader_exit_is_quiet(piped, tmp_path):
    out = tmp_path / "masks"
    command = [sys.executable, "-m", "vostool.cli", "segment", "-", "--mask", str(piped["mask"]), "--rle", "-",
               "--out", str(out), *FAST]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               cwd=tmp_path)  # fmt: skip
    data, first_line_read = piped["bytes"], threading.Event()
    head = len(data) * 3 // 4  # the first frame's packets are in it, the last ones are not

    def produce() -> None:
        # Like a camera: part of the stream, then the rest only once the consumer has seen a result.
        try:
            process.stdin.write(data[:head])
            process.stdin.flush()
            first_line_read.wait(120)
            process.stdin.write(data[head:])
            process.stdin.close()
        except BrokenPipeError:
            pass  # vostool stopped once its reader had left: the stream is not needed

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    line = process.stdout.readline()
    input_still_open = not process.stdin.closed
    first_line_read.set()
    process.stdout.close()  # the consumer has what it wants and leaves (``| head -1``)
    producer.join(120)  # the rest of the stream goes in (or vostool has stopped reading)
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)

    assert input_still_open
    record = json.loads(line)
    assert record["index"] == 0 and record["name"] == "00000" and record["size"] == [48, 64]
    by_id = {obj["id"]: obj for obj in record["objects"]}
    assert sorted(by_id) == [1, 3]
    first = _decode_rle(by_id[1])
    assert by_id[1]["area"] == int(first.sum()) > 300
    ys, xs = np.nonzero(first)
    assert by_id[1]["bbox"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    assert process.returncode in (0, 141), stderr
    assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr
    assert not out.exists() and leftover_temp_files(tmp_path) == []  # nothing half-written


def test_stdin_gives_the_masks_the_file_gives_and_jsonl_is_committed(piped, tmp_path):
    jsonl = tmp_path / "frames.jsonl"
    from_stdin = runner.invoke(
        app, ["segment", "-", "--mask", str(piped["mask"]), "--rle", "-", "--jsonl", str(jsonl), "--quiet", *FAST],
        input=piped["bytes"],
    )
    assert from_stdin.exit_code == 0, from_stdin.output
    lines = from_stdin.stdout.splitlines()
    assert len(lines) == FRAMES and jsonl.read_text().splitlines() == lines  # stdout: data only
    records = [json.loads(line) for line in lines]
    assert [r["index"] for r in records] == list(range(FRAMES))
    from_file = runner.invoke(app, ["segment", str(piped["video"]), "--mask", str(piped["mask"]), "--jsonl",
                                    str(tmp_path / "file.jsonl"), "--quiet", *FAST])  # fmt: skip
    assert from_file.exit_code == 0, from_file.output
    assert (tmp_path / "file.jsonl").read_text().splitlines() == lines
    assert leftover_temp_files(tmp_path) == []


def test_stdin_frames_read_a_file_object_once(piped):
    import io

    source = StdinFrames(io.BytesIO(piped["bytes"]))
    assert source.size == (48, 64) and source.fps == 10 and source.frame_count is None
    frames = list(source)
    assert len(frames) == FRAMES and frames[0].shape == (48, 64, 3)
    assert source.name_of(12) == "00012"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--overlay", "-"], ["--overlay -", "only --rle and --jsonl"]),
        (["--rle", "-", "--jsonl", "-"], ["--jsonl -", "standard output"]),
        (["--rle", "-", "--json"], ["--json", "drop --json"]),
    ],
)
def test_stdout_conflicts_are_one_line_errors(piped, args, fragments):
    result = runner.invoke(app, ["segment", "-", "--mask", str(piped["mask"]), *args, *FAST], input=piped["bytes"])
    assert_one_line_error(result, *fragments)


def test_stdin_that_is_not_a_video_is_a_one_line_error(piped):
    result = runner.invoke(app, ["segment", "-", "--mask", str(piped["mask"]), "--rle", "-", *FAST], input=b"no video" * 50)
    assert_one_line_error(result, "<stdin>", "not a video")


def test_progress_of_a_stream_has_no_eta():
    progress = FrameProgress("segment stdin")
    try:
        progress(3, None)
        columns = [type(column).__name__ for column in progress.bar.columns]
    finally:
        progress.close()
    assert "TimeRemainingColumn" not in columns and "MofNCompleteColumn" in columns


def test_masks_of_a_stream_are_named_by_frame_number(tmp_path):
    from vostool.errors import InputError
    from vostool.io.masks import read_masks_dir

    labels = np.zeros((48, 64), np.uint8)
    labels[5:9, 5:9] = 2
    save_palette_png(tmp_path / "masks" / "00012.png", labels)
    save_palette_png(tmp_path / "masks" / "30.png", labels)
    assert sorted(read_masks_dir(tmp_path / "masks", None, (48, 64))) == [12, 30]
    save_palette_png(tmp_path / "masks" / "first.png", labels)
    with pytest.raises(InputError, match="numbered from 0"):
        read_masks_dir(tmp_path / "masks", None, (48, 64))
