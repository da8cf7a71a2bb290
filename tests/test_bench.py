"""``vostool bench``, the stage timer and the threaded decode/write pipeline.

Bench runs use tiny settings (a few frames at a 32-pixel short side); timings are never asserted,
only that every documented field is there and holds a finite, positive number.
"""

from __future__ import annotations

import json
import math
import mmap
import sys
import threading
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import assert_one_line_error, leftover_temp_files, write_frames
from vostool.bench import (
    SCHEMA,
    SYNTHETIC_NOTE,
    BenchSettings,
    MemoryProbe,
    SyntheticScene,
    grid_objects,
    run_bench,
    synthetic_state_dict,
)
from vostool.cli import app
from vostool.engine.timing import STAGES, StageTimer, carry_to_thread, stage
from vostool.errors import InputError, OutputError, VostoolError
from vostool.models.registry import layout_of
from vostool.pipeline import BackgroundWriter, FramePrefetcher

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # These tests check fields, not speed. Two intra-op threads on a machine whose cores are busy
    # with other work wait on each other at every operator (tens of times slower); one does not.
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


TINY = dict(size=32, objects=2, frames=4, repeats=2, warmup=1, growth_frames=(6, 12), growth_size=32)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_result(result: dict, settings: dict) -> None:
    """The documented per-model fields (docs/benchmarks.md) with sane values."""
    assert result["frames"] == settings["frames"]
    assert result["frame_size"] == [32, 56] and result["input_size"] == [32, 64]
    assert positive(result["load_seconds"])
    for kind in ("model_only", "end_to_end"):
        speed = result[kind]
        assert positive(speed["fps"]) and len(speed["fps_runs"]) == settings["repeats"]
        assert all(positive(v) for v in speed["fps_runs"] + speed["seconds_runs"])
        assert min(speed["fps_runs"]) <= speed["fps"] <= max(speed["fps_runs"])
    assert result["end_to_end"]["open_seconds"] >= 0
    assert result["end_to_end"]["outputs"] == ["palette-png", "overlay-mp4"]
    stages = result["stages_ms_per_frame"]
    for name in ("decode", "preprocess", "key_encoding", "aggregation", "memory_write", "postprocess", "write"):
        assert positive(stages[name]), name
    assert set(stages) <= set(STAGES)
    for kind in ("end_to_end", "model_only"):
        memory = result["memory"][kind]
        assert positive(memory["peak_rss_bytes"]) and memory["peak_rss_bytes"] >= 0.5 * memory["rss_start_bytes"]
        assert memory["peak_gpu_bytes"] is None and memory["gpu_start_bytes"] is None  # CPU run
    assert [g["frames"] for g in result["growth"]] == list(settings["growth_frames"])
    for point in result["growth"]:
        assert point["frame_size"] == [32, 56] and positive(point["fps"]) and point["memory_frames"] >= 1
        assert positive(point["memory_bank_bytes"])
        assert positive(point["memory"]["peak_rss_bytes"])


def test_bench_json_on_cpu_for_the_default_model_through_the_cli():
    args = ["bench", "--device", "cpu", "--json", "-q", "--size", "32", "--frames", "4", "--repeats", "2",
            "--warmup", "1", "--growth-frames", "6", "--growth-frames", "24", "--growth-size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == SCHEMA
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"] == torch.__version__
    assert report["settings"]["models"] == ["lite0-stcn"] and report["settings"]["repeats"] == 2
    (lite,) = report["results"]
    assert lite["model"] == "lite0-stcn" and lite["weights"] == "bundled" and lite["note"] is None
    check_result(lite, {**TINY, "growth_frames": (6, 24)})
    assert positive(lite["stages_ms_per_frame"]["segment"])
    # lite0-stcn writes every 3rd frame (not the last), at most 6: 6 frames write 0 and 3; 24 frames would
    # write 8 and keep 6.
    short, long = lite["growth"]
    assert (short["memory_frames"], long["memory_frames"]) == (2, 6)
    assert short["memory_bank_bytes"] * 3 == long["memory_bank_bytes"]  # every entry has one size


def test_bench_stcn_runs_on_synthetic_weights_and_says_so():
    report = run_bench(BenchSettings(models=("stcn",), device="cpu", **TINY)).to_dict()
    (stcn,) = report["results"]
    assert stcn["weights"] == "synthetic" and stcn["note"] == SYNTHETIC_NOTE
    check_result(stcn, TINY)
    # STCN times its readout and decoder itself.
    assert positive(stcn["stages_ms_per_frame"]["memory_readout"]) and positive(stcn["stages_ms_per_frame"]["decoding"])
    # No cap: every 5th frame enters memory (never the last one), so memory grows with the video:
    # frame 0 of 6 frames; frames 0, 5, 10 of 12.
    short, long = stcn["growth"]
    assert (short["memory_frames"], long["memory_frames"]) == (1, 3)
    assert long["memory_bank_bytes"] == 3 * short["memory_bank_bytes"]


def test_bench_simvos_runs_on_synthetic_weights():
    report = run_bench(BenchSettings(models=("simvos-b",), device="cpu", **{**TINY, "repeats": 1})).to_dict()
    (simvos,) = report["results"]
    assert simvos["weights"] == "synthetic" and simvos["note"] == SYNTHETIC_NOTE
    check_result(simvos, {**TINY, "repeats": 1})
    assert positive(simvos["stages_ms_per_frame"]["segment"])  # SimVOS reads memory inside its ViT


def test_bench_memory_cap_bounds_the_growth_runs_and_input_video_is_used(tmp_path):
    scene = SyntheticScene((40, 72), objects=1, seed=3)
    scene.encode(tmp_path / "user.mp4", 5)
    settings = BenchSettings(models=("stcn",), device="cpu", input=str(tmp_path / "user.mp4"), size=32, objects=3,
                             frames=50, repeats=1, warmup=0, max_memory_frames=1, growth_frames=(12,), growth_size=32)
    (stcn,) = run_bench(settings).to_dict()["results"]
    assert stcn["frames"] == 5 and stcn["frame_size"] == [40, 72]  # all of a shorter input
    assert stcn["objects"] == 3  # --objects boxes on a grid
    assert stcn["growth"][0]["memory_frames"] == 1
    # Key (64 ch) + values of 3 objects (512 ch each), float32, on the 2x4 grid of a 32x64 input.
    assert stcn["growth"][0]["memory_bank_bytes"] == (64 + 3 * 512) * 2 * 4 * 4


def test_bench_input_with_its_own_mask_tracks_the_mask_objects(tmp_path):
    from tests.helpers import save_palette_png

    scene = SyntheticScene((40, 72), objects=1, seed=3)
    scene.encode(tmp_path / "user.mp4", 4)
    save_palette_png(tmp_path / "first.png", scene.labels(0))
    settings = BenchSettings(models=("stcn",), device="cpu", input=str(tmp_path / "user.mp4"),
                             mask=str(tmp_path / "first.png"), size=32, objects=3, frames=4, repeats=1, warmup=0,
                             growth_frames=())
    (stcn,) = run_bench(settings).to_dict()["results"]
    assert stcn["objects"] == 1  # the mask's one object, not --objects 3 (which only the growth runs use)
    save_palette_png(tmp_path / "small.png", scene.labels(0)[:20])
    result = runner.invoke(app, ["bench", "--device", "cpu", "-q", "--no-growth", "--input", str(tmp_path / "user.mp4"),
                                 "--mask", str(tmp_path / "small.png")])
    assert_one_line_error(result, "small.png")
    assert_one_line_error(runner.invoke(app, ["bench", "--device", "cpu", "-q", "--mask", str(tmp_path / "first.png")]),
                          "first.png", "give --input too")


def test_bench_text_output_names_both_speeds():
    result = runner.invoke(app, ["bench", "--device", "cpu", "--size", "32", "--frames", "3", "--repeats", "1",
                                 "--warmup", "0", "--no-growth"])
    assert result.exit_code == 0, result.output
    for fragment in ("model-only fps", "end-to-end fps", "key_encoding", "peak RSS"):
        assert fragment in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "nope"], "unknown model"),
        (["--model", "stcn", "--model", "propagate-lite0", "--weights", "w.pth"], "--weights"),
        (["--precision", "fp8"], "fp8"),
        (["--input", "missing.mp4"], "missing.mp4"),
    ],
)
def test_bench_errors_are_one_line(args, fragment):
    result = runner.invoke(app, ["bench", "--device", "cpu", "-q", "--frames", "2", "--no-growth", *args])
    assert_one_line_error(result, fragment)


def test_synthetic_weights_are_deterministic_and_fit_the_layout():
    layout = layout_of("stcn")
    first, second = synthetic_state_dict(layout, seed=1), synthetic_state_dict(layout, seed=1)
    assert {k: tuple(v.shape) for k, v in first.items()} == layout
    name = next(k for k, shape in layout.items() if len(shape) == 4)
    assert torch.equal(first[name], second[name])
    assert not torch.equal(first[name], synthetic_state_dict(layout, seed=2)[name])
    assert all(torch.isfinite(v.float()).all() for v in first.values())
    assert all((v == 1).all() for k, v in first.items() if k.endswith("running_var"))


def test_synthetic_scene_is_deterministic_and_objects_move():
    a, b = SyntheticScene((48, 80), 3, seed=5), SyntheticScene((48, 80), 3, seed=5)
    np.testing.assert_array_equal(a.frame(7), b.frame(7))
    assert set(np.unique(a.labels(0))) == {0, 1, 2, 3}
    assert not np.array_equal(a.labels(0), a.labels(10))
    assert a.frame(3).shape == (48, 80, 3) and a.frame(3).dtype == np.uint8
    assert set(np.unique(grid_objects((40, 60), 5))) == {0, 1, 2, 3, 4, 5}
    with pytest.raises(InputError):
        grid_objects((6, 6), 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resettable peak RSS is Linux-only")
def test_memory_probe_sees_its_own_peak():
    probe = MemoryProbe(torch.device("cpu"))
    # Fresh anonymous pages: a numpy allocation could reuse heap memory that is already resident.
    block = mmap.mmap(-1, 64 * 2**20)
    pages = np.frombuffer(block, np.uint8)
    pages[:] = 1
    del pages
    block.close()
    first = probe.read()
    assert first.peak_rss_bytes - first.rss_start_bytes > 48 * 2**20
    second = MemoryProbe(torch.device("cpu")).read()  # the earlier peak does not leak into a new probe
    assert second.peak_rss_bytes - second.rss_start_bytes < 32 * 2**20


# ---------------------------------------------------------------------------------------- timing


def test_stage_is_free_without_a_timer_and_times_exclusively_with_one():
    assert stage("a") is stage("b")  # one shared no-op object: nothing is allocated per call
    timer = StageTimer("cpu")
    with timer.active():
        with stage("outer"):
            time.sleep(0.02)
            with stage("inner"):
                time.sleep(0.05)
        with stage("inner"):
            time.sleep(0.01)
    with stage("outer"):  # after the block, nothing is recorded
        time.sleep(0.01)
    assert timer.calls == {"outer": 1, "inner": 2}
    assert 0.015 < timer.seconds["outer"] < 0.045  # the nested 50 ms are not counted twice
    assert timer.seconds["inner"] >= 0.06
    per_frame = timer.per_frame_ms(2)  # names outside STAGES come after them, sorted
    assert list(per_frame) == ["inner", "outer"]
    assert per_frame["outer"] == pytest.approx(1000 * timer.seconds["outer"] / 2)


def test_stages_in_threads_report_to_the_timer_of_their_creator():
    timer = StageTimer("cpu")

    def work() -> None:
        with stage("write", sync=False):
            time.sleep(0.01)

    with timer.active():
        thread = threading.Thread(target=carry_to_thread(work))
    thread.start()
    thread.join()
    plain = threading.Thread(target=work)  # created outside: no timer
    plain.start()
    plain.join()
    assert timer.calls == {"write": 1}


# -------------------------------------------------------------------------------------- pipeline


def test_prefetcher_yields_everything_in_order_and_respects_the_limit():
    with FramePrefetcher(iter(range(20)), depth=2) as reader:
        assert list(reader) == list(range(20))
    with FramePrefetcher(range(20), depth=2, limit=5) as reader:
        assert list(reader) == [0, 1, 2, 3, 4]


def test_prefetcher_reraises_the_sources_error_in_the_consumer():
    def frames():
        yield 1
        raise InputError("cannot decode frame 2", "clip.mp4")

    with FramePrefetcher(frames()) as reader, pytest.raises(InputError, match="frame 2"):
        list(reader)


def test_prefetcher_stops_and_closes_the_source_on_early_exit():
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.set()

    with FramePrefetcher(endless(), depth=2) as reader:
        for _ in zip(range(3), reader):
            pass
    assert closed.is_set()  # the source was closed (a video source stops ffmpeg here)
    assert not any(t.name == "vostool-reader" and t.is_alive() for t in threading.enumerate())


def test_writer_keeps_order_and_reraises_a_failed_write_in_the_caller():
    done = []
    with BackgroundWriter(done.append, depth=2) as writer:
        for i in range(50):
            writer.submit(i)
    assert done == list(range(50))

    def failing(i):
        if i == 3:
            raise OutputError("disk full", "out/00003.png")
        done.append(i)

    done.clear()
    with pytest.raises(OutputError, match="disk full"):
        with BackgroundWriter(failing, depth=2) as writer:
            for i in range(1000):
                writer.submit(i)
    assert done == [0, 1, 2]


def test_writer_drops_queued_writes_when_the_caller_fails():
    started, release, done = threading.Event(), threading.Event(), []

    def slow(i):
        started.set()
        release.wait()
        done.append(i)

    with pytest.raises(RuntimeError):
        with BackgroundWriter(slow, depth=8) as writer:
            for i in range(5):
                writer.submit(i)
            started.wait()
            release.set()
            raise RuntimeError("model failed")
    # The write in progress finishes; the queued ones are dropped; the thread is gone.
    assert done == [0]
    assert not any(t.name == "vostool-writer" and t.is_alive() for t in threading.enumerate())


def test_failed_segment_leaves_no_partial_outputs(tmp_path):
    """A frame that cannot be decoded midway: the error reaches the caller, nothing half-written stays."""
    import vostool
    from PIL import Image

    frames = tmp_path / "frames"
    scene = SyntheticScene((32, 48), 1)
    write_frames(frames, [scene.frame(t) for t in range(6)])
    Image.fromarray(scene.labels(0) * 1).save(tmp_path / "mask.png")
    # Corrupt frame 4 after the header check: the folder opens fine and fails while decoding.
    data = (frames / "00004.png").read_bytes()
    (frames / "00004.png").write_bytes(data[:60])
    overlay = tmp_path / "out.mp4"
    with pytest.raises(VostoolError, match="00004"):
        vostool.segment(frames, tmp_path / "mask.png", out_dir=tmp_path / "masks", overlay=overlay, device="cpu", size=32)
    assert not overlay.exists()
    assert leftover_temp_files(tmp_path) == []
