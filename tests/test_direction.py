"""``--direction forward|backward|both``: the rule (each object from its nearest annotation), the
backward session (``Session.reverse``), frame-accurate backward reading of a video with B-frames, and
memory that stays flat in the video's length."""

from __future__ import annotations

import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vostool
from tests.helpers import assert_one_line_error, encode_frames, gradient_frames, paint_boxes, read_label_pngs, save_palette_png, write_frames
from vostool.cli import app
from vostool.engine.aggregate import aggregate
from vostool.io.frames import open_frames
from vostool.pipeline import BACKWARD, FORWARD, DirectionPlan
from vostool.tracker import Tracker

runner = CliRunner()
FRAMES, HEIGHT, WIDTH = 12, 48, 64


def box_clip(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Object 1 moving right, object 3 moving left, over smooth backgrounds."""
    clip = [paint_boxes(background, [(np.s_[6:24, 2 + 2 * t : 20 + 2 * t], (230, 60, 40), 1),
                                     (np.s_[28:44, 44 - 2 * t : 60 - 2 * t], (40, 200, 230), 3)])
            for t, background in enumerate(gradient_frames(frames, height, width))]  # fmt: skip
    return [frame for frame, _ in clip], [labels for _, labels in clip]


def only(labels: np.ndarray, object_id: int) -> np.ndarray:
    return np.where(labels == object_id, labels, 0).astype(labels.dtype)


# ------------------------------------------------------------------------------------------ the rule


def test_both_takes_each_object_from_its_nearest_annotation():
    one, three = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    one[0, 0], three[1, 1] = 1, 3
    given = {2: one, 9: one + three, 5: three}  # object 1 on frames 2 and 9, object 3 on 5 and 9
    plan = DirectionPlan("both", given)
    assert [plan.source(t, 1) for t in range(12)] == [BACKWARD] * 2 + [FORWARD] * 4 + [BACKWARD] * 3 + [FORWARD] * 3
    #                                           frames 0-1 (before 2) | 2-5 (t-2 <= 9-t) | 6-8 | 9 on
    assert [plan.source(t, 3) for t in range(12)] == [BACKWARD] * 5 + [FORWARD] * 3 + [BACKWARD] + [FORWARD] * 3
    assert plan.backward_range == (9, 0)  # from the latest annotation a backward span ends at, to frame 0
    assert [DirectionPlan("forward", given).source(t, 1) for t in (1, 2, 11)] == [None, FORWARD, FORWARD]
    assert [DirectionPlan("backward", given).source(t, 3) for t in (0, 9, 10)] == [BACKWARD, BACKWARD, None]
    assert DirectionPlan("forward", given).backward_range is None
    assert DirectionPlan("both", {0: one}).backward_range is None  # annotated on frame 0: forward as today
    with pytest.raises(vostool.VostoolError, match="direction='sideways'"):
        DirectionPlan("sideways", given)


@pytest.fixture(scope="module")
def lite():
    return vostool.load("propagate-lite0", device="cpu", size=64)


def random_weights_tracker(model: str) -> Tracker:
    """``model`` on random weights at the frames' own size: the plumbing is under test, not the masks."""
    from tests.conftest import settings_for
    from vostool.models.registry import get_spec

    torch.manual_seed(0)
    network = get_spec(model).build(None, torch.device("cpu"), settings_for(model, short_side=None))
    return Tracker(network, model, torch.device("cpu"))


@pytest.fixture(scope="module")
def stcn():
    return random_weights_tracker("stcn")


# One model per package (simvos-l and simvos-bs run SimVOS-B's adapter code at 3-15x its CPU time).
@pytest.mark.parametrize("model", ["propagate-lite0", "stcn", "simvos-b", "sitvos", "jointformer"])
def test_middle_annotation_both_ways_is_the_two_passes_joined(request, model, tmp_path):
    tracker = request.getfixturevalue("lite") if model == "propagate-lite0" else (
        request.getfixturevalue("stcn") if model == "stcn" else random_weights_tracker(model))
    frames, labels = box_clip(6)
    middle = 3
    write_frames(tmp_path / "frames", frames)
    save_palette_png(tmp_path / "masks" / f"{middle:05d}.png", labels[middle])
    for direction in ("both", "backward", "forward"):
        vostool.segment(tmp_path / "frames", masks_dir=tmp_path / "masks", out_dir=tmp_path / direction,
                        direction=direction, tracker=tracker)  # fmt: skip
    both, backward, forward = (read_label_pngs(tmp_path / d) for d in ("both", "backward", "forward"))
    session = tracker.session()
    reversed_run = list(session.reverse(frames, {middle: labels[middle]}))
    assert [r.index for r in reversed_run] == list(range(middle, -1, -1))
    expected_backward = np.stack([r.labels for r in reversed(reversed_run)])
    np.testing.assert_array_equal(both[:middle], expected_backward[:middle])
    np.testing.assert_array_equal(both[middle:], forward[middle:])
    np.testing.assert_array_equal(backward[: middle + 1], expected_backward)
    assert not backward[middle + 1 :].any() and not forward[:middle].any()
    on_reversed = list(tracker.session().track(frames[middle::-1], {0: labels[middle]}))  # the clip played backward
    for a, b in zip(reversed_run, on_reversed):
        np.testing.assert_array_equal(a.labels, b.labels)


def test_objects_annotated_on_different_frames_come_from_different_passes(lite, tmp_path):
    frames, labels = box_clip()
    write_frames(tmp_path / "frames", frames)
    save_palette_png(tmp_path / "masks" / "00003.png", only(labels[3], 1))
    save_palette_png(tmp_path / "masks" / "00008.png", only(labels[8], 3))
    summary = vostool.segment(tmp_path / "frames", masks_dir=tmp_path / "masks", out_dir=tmp_path / "out",
                              soft=tmp_path / "soft", direction="both", tracker=lite)  # fmt: skip
    assert summary.objects == [1, 3]
    out = read_label_pngs(tmp_path / "out")
    masks = {3: only(labels[3], 1), 8: only(labels[8], 3)}
    forward = list(lite.session().track(frames, masks))
    backward = {r.index: r for r in lite.session().reverse(frames, masks)}
    plan = DirectionPlan("both", masks)
    for t in range(FRAMES):  # frames 0-2: both backward; 3-7: object 1 forward, object 3 backward; 8 on: forward
        sources = plan.sources(t)
        assert sources == {1: BACKWARD if t < 3 else FORWARD, 3: BACKWARD if t < 8 else FORWARD}
        planes = []
        for object_id, where in sources.items():
            result = forward[t] if where == FORWARD else backward[t]
            plane = result.probabilities[result.object_ids.index(object_id) + 1]
            planes.append(plane if where == FORWARD else torch.round(plane * 255) / 255)  # stored in 8 bits
        expected = np.array([0, 1, 3])[aggregate(torch.stack(planes)).argmax(0).numpy()]
        if len(set(sources.values())) == 1:  # one pass: its own labels, as the engine gave them
            expected = (forward[t] if FORWARD in sources.values() else backward[t]).labels
        np.testing.assert_array_equal(out[t], expected, err_msg=str(t))
    soft = np.stack([np.array(Image.open(tmp_path / "soft" / "3" / f"{t:05d}.png")) for t in range(FRAMES)])
    assert ((soft > 127) == (out == 3)).mean() > 0.99  # the soft maps are the merged result's


# ------------------------------------------------------------------------------- videos backward


@pytest.fixture(scope="module")
def bframes_video(tmp_path_factory):
    """30 distinct frames in an MP4 with B-frames (libx264, 3 B-frames, a keyframe every 8 frames)."""
    frames, labels = box_clip(30)
    root = tmp_path_factory.mktemp("bframes")
    write_frames(root / "frames", frames)
    video = encode_frames(root / "frames", root / "clip.mp4", 25, "-c:v", "libx264", "-bf", "3", "-g", "8", "-pix_fmt", "yuv420p")
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video), "-c", "copy", "-f", "framecrc", "-"],
                          capture_output=True, text=True).stdout  # fmt: skip
    dts_pts = [line.split(",")[1:3] for line in info.splitlines() if line.startswith("0,")]
    assert any(dts.strip() != pts.strip() for dts, pts in dts_pts)  # reordered frames: B-frames are there
    return video, labels


@pytest.mark.parametrize("chunk", [3, 64])
def test_video_read_backward_in_chunks_is_frame_accurate(bframes_video, chunk):
    source = open_frames(bframes_video[0])
    forward = list(source)
    backward = list(source.iter_reversed(chunk_frames=chunk))
    assert len(backward) == 30
    for got, expected in zip(backward, forward[::-1]):
        np.testing.assert_array_equal(got, expected)
    middle = list(source.iter_reversed(20, 5, chunk_frames=chunk))
    assert len(middle) == 16 and all(np.array_equal(a, b) for a, b in zip(middle, forward[20:4:-1]))


def test_session_reverse_over_a_video_source(bframes_video, lite):
    video, labels = bframes_video
    source = open_frames(video)
    results = list(lite.session().reverse(source, {20: labels[20]}))
    frames = list(source)
    from_list = list(lite.session().reverse(frames, {20: labels[20]}))
    assert [r.index for r in results] == list(range(20, -1, -1))
    for a, b in zip(results, from_list):
        np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(vostool.VostoolError, match="iterator"):
        next(lite.session().reverse(iter(frames), {20: labels[20]}))
    session = lite.session()
    session.step(frames[0])
    with pytest.raises(vostool.VostoolError, match="new session"):
        session.start_reverse(5)


# ------------------------------------------------------------------------------------ memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resettable peak RSS is Linux-only")
def test_backward_peak_memory_stays_flat_in_the_video_length(tmp_path, lite, monkeypatch):
    """A 160-frame 320x240 video holds 37 MB of frames; going backward holds one chunk (8 frames here)."""
    from vostool.bench import MemoryProbe
    from vostool.io import frames as frames_module

    monkeypatch.setattr(frames_module, "REVERSE_CHUNK_BYTES", 8 * 320 * 240 * 3)
    height, width = 240, 320
    background = gradient_frames(1, height, width)[0]

    def video(count: int):
        path = tmp_path / f"clip{count}.mp4"
        encoder = subprocess.Popen(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
             f"{width}x{height}", "-r", "25", "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-g", "16", str(path)],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        for t in range(count):
            frame, labels = paint_boxes(background, [(np.s_[60:140, 40 + t : 120 + t], (230, 60, 40), 1)])
            encoder.stdin.write(frame.tobytes())
        encoder.stdin.close()
        assert encoder.wait() == 0
        masks = tmp_path / f"masks{count}"
        save_palette_png(masks / f"{count - 1:05d}.png", labels)  # the last frame: all of it goes backward
        return path, masks

    def peak_growth(count: int) -> int:
        path, masks = video(count)
        probe = MemoryProbe(torch.device("cpu"))
        vostool.segment(path, masks_dir=masks, rle=tmp_path / f"{count}.json", direction="backward", tracker=lite)
        memory = probe.read()
        return memory.peak_rss_bytes - memory.rss_start_bytes

    peak_growth(20)  # warm-up: allocator pools, ffmpeg pipes, model buffers at this frame size
    short, long = peak_growth(40), peak_growth(160)
    assert long < short + 16 * 2**20, (short, long)  # 120 more frames held would add 28 MB


# ---------------------------------------------------------------------------------------- CLI


def test_direction_errors_are_one_line(tmp_path):
    frames, labels = box_clip(3)
    write_frames(tmp_path / "frames", frames)
    mask = save_palette_png(tmp_path / "mask.png", labels[0])
    result = runner.invoke(app, ["segment", str(tmp_path / "frames"), "--mask", str(mask), "--out", str(tmp_path / "o"),
                                 "--direction", "sideways"])  # fmt: skip
    assert_one_line_error(result, "--direction sideways", "forward, backward or both")
    result = runner.invoke(app, ["segment", "-", "--mask", str(mask), "--rle", "-", "--direction", "both"], input=b"")
    assert_one_line_error(result, "--direction both", "standard input")
    assert not (tmp_path / "o").exists()


def test_help_states_the_rule():
    result = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "nearest annotation" in text and "a tie goes forward" in text
