"""`vostool batch`: every layout end to end on tiny synthetic datasets, resume, failures, torchrun, --workers.

Frames are 64x48 and the model runs at `--size 64`, one CPU thread per process (`--threads 1`), so that a
single process and several ranks compute exactly the same thing. The torchrun and `--workers` runs start
several Python processes each; there are only two of them, shared by the tests through module fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.helpers import assert_one_line_error, leftover_temp_files, paint_boxes, save_palette_png, write_davis, write_davis_listing, write_frames
from tests.test_io import write_video
from vostool.batch.layouts import VideoJob
from vostool.batch.plan import MARKER, completed_marker, shard
from vostool.cli import app
from vostool.eval import evaluate_davis

runner = CliRunner()
H, W = 48, 64
FAST = ["--size", "64", "--device", "cpu", "--threads", "1"]
DAVIS_LENGTHS = {"long": 40, "a": 5, "b": 4, "c": 6}  # "long" keeps one rank busy while the test kills it


def clip(count: int, boxes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and label maps of boxes sliding over a grey background; ``boxes``: (id, colour, y, x, dx, start)."""
    frames, labels = [], []
    for t in range(count):
        placed = [(np.s_[y : y + 16, x + dx * t : x + dx * t + 18], colour, object_id)
                  for object_id, colour, y, x, dx, start in boxes if t >= start]
        frame, label = paint_boxes(np.full((H, W, 3), 40, np.uint8), placed)
        frames.append(frame)
        labels.append(label)
    return frames, labels


def pngs(folder: Path) -> dict[str, bytes]:
    """Every result PNG under ``folder`` (``<video>/<frame>.png``) by relative path, as bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob("*/*.png"))}


def batch(*args: str):
    return runner.invoke(app, ["batch", *map(str, args)])


def summary_of(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout  # printed once, by rank 0
    return json.loads(lines[0])


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}


# -------------------------------------------------------------------------------------------- DAVIS


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    images, annotations = {}, {}
    for index, (name, count) in enumerate(DAVIS_LENGTHS.items()):
        images[name], annotations[name] = clip(count, [(1, (230, 190, 40), 16, 10 + index, 1 if count < 20 else 0, 0)])
    root = write_davis(tmp_path_factory.mktemp("davis"), annotations, images)
    write_davis_listing(root, ["a", "b", "c"], "small")  # a cheaper set for the tests that run several times
    return root


@pytest.fixture(scope="module")
def single(davis, tmp_path_factory) -> tuple[Path, dict]:
    """One process over the DAVIS set, scored and exported: the reference for the multi-rank runs."""
    out = tmp_path_factory.mktemp("single") / "results"
    result = batch(davis, "--out", out, *FAST, "--eval", "--export", "davis", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return out, summary_of(result.stdout)


def test_davis_results_scores_and_zip(davis, single):
    out, summary = single
    assert summary["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    assert summary["ranks"] == 1 and summary["layout"] == "davis"
    for name, count in DAVIS_LENGTHS.items():
        assert sorted(p.name for p in (out / name).glob("*.png")) == [f"{t:05d}.png" for t in range(count)]
    scored = evaluate_davis(davis, out, workers=1).to_json()  # --eval scored exactly these results
    assert summary["scores"]["global"] == pytest.approx(scored["global"], abs=1e-12)
    assert summary["scores"]["global"]["J&F-Mean"] > 0.3  # the box is tracked (a broken run scores about 0)
    with zipfile.ZipFile(summary["export"]) as archive:  # DAVIS server layout: <seq>/<frame>.png at the root
        assert sorted(archive.namelist()) == sorted(pngs(out))
    assert json.loads((out / "batch-summary.json").read_text())["counts"]["done"] == 4
    assert leftover_temp_files(out.parent) == []


def test_rerun_skips_complete_videos_and_redoes_broken_ones(davis, single, tmp_path):
    out = tmp_path / "results"
    small = ["--set", "small", *FAST]
    assert batch(davis, "--out", out, *small, "--quiet").exit_code == 0
    reference = {path: data for path, data in pngs(single[0]).items() if not path.startswith("long/")}
    assert pngs(out) == reference
    (out / "a" / "00002.png").write_bytes(b"cut short")  # a damaged mask: its size no longer matches the marker
    (out / "b" / MARKER).unlink()  # a folder without its marker (never complete, whatever it holds)
    stamp = (out / "c" / "00000.png").stat().st_mtime_ns
    result = batch(davis, "--out", out, *small, "--json", "--quiet")
    status = {video["name"]: video["status"] for video in summary_of(result.stdout)["videos"]}
    assert status == {"a": "done", "b": "done", "c": "skipped"}
    assert (out / "c" / "00000.png").stat().st_mtime_ns == stamp  # not rewritten
    assert pngs(out) == reference
    # Other settings are another result: every video is redone (and --force redoes them regardless).
    result = batch(davis, "--out", out, "--set", "small", "--size", "96", "--device", "cpu", "--json", "--quiet")
    assert summary_of(result.stdout)["counts"]["done"] == 3
    result = batch(davis, "--out", out, *small, "--force", "--json", "--quiet")
    assert summary_of(result.stdout)["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    assert pngs(out) == reference


def test_torchrun_rank_killed_mid_video_is_restarted_and_resumes(davis, single, tmp_path):
    """Two ranks under torchrun; the rank segmenting the long video is SIGKILLed in the middle of it. With
    --max-restarts 1 the ranks restart, skip what was committed and redo only the rest: the results are
    byte-identical to one process's."""
    out = tmp_path / "results"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
               "--monitor-interval", "0.2", "-m", "vostool", "batch", str(davis), "--out", str(out), *FAST,
               "--json", "--quiet"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group: a failure stops the ranks too
    killed_at = None  # when the rank was killed
    try:
        deadline = time.monotonic() + 120
        while killed_at is None and time.monotonic() < deadline and process.poll() is None:
            staging = [p for p in out.parent.glob("results/.tmp-vostool-stage-*-long")] if out.exists() else []
            if staging and any(staging[0].glob("*.png")):  # the rank is inside the long video
                pid = int(staging[0].name.split("-")[4])
                os.kill(pid, signal.SIGKILL)
                killed_at = time.time_ns()
            time.sleep(0.01)
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert killed_at is not None, "the long video finished before the test could kill its rank"
    assert process.returncode == 0, stderr[-3000:]
    summary = summary_of(stdout)
    assert summary["ranks"] == 2
    status = {video["name"]: video["status"] for video in summary["videos"]}
    assert status["long"] == "done"  # redone after the restart
    for name, state in status.items():  # skipped: committed before the restart; done: by the restarted ranks
        attempt = json.loads((out / name / MARKER).read_text())["attempt"]
        assert attempt == (0 if state == "skipped" else 1), (name, state)
    assert pngs(out) == pngs(single[0])
    assert leftover_temp_files(tmp_path) == []


def test_shards_are_greedy_longest_first_and_deterministic():
    weights = [5, 60, 4, 6, 30, 30]
    assert shard(weights, 2) == [[1, 3], [4, 5, 0, 2]]  # loads 66 and 69
    assert shard(weights, 2) == shard(list(weights), 2)
    assert shard(weights, 1) == [[1, 4, 5, 3, 0, 2]]
    assert shard([3], 3) == [[0], [], []]


def test_a_partial_folder_is_never_complete(tmp_path):
    folder = tmp_path / "v"
    write_frames(tmp_path / "frames", [np.zeros((H, W, 3), np.uint8)] * 2)
    job = VideoJob("v", tmp_path / "frames", frame_count=2)
    save_palette_png(folder / "00000.png", np.zeros((H, W), np.uint8))
    key = {"model": "m", "settings": {}, "weights_sha256": None}
    marker = {"schema": "vostool-batch-video-v1", **key, "source": job.source_signature(), "frames": 2,
              "files": {"00000.png": (folder / "00000.png").stat().st_size, "00001.png": 10}}
    (folder / MARKER).write_text(json.dumps(marker))
    assert completed_marker(folder, job, key) is None  # a listed PNG is missing
    save_palette_png(folder / "00001.png", np.zeros((H, W), np.uint8))
    marker["files"]["00001.png"] = (folder / "00001.png").stat().st_size
    (folder / MARKER).write_text(json.dumps(marker))
    assert completed_marker(folder, job, key) is not None
    assert completed_marker(folder, job, {**key, "weights_sha256": "other"}) is None
    save_palette_png(folder / "00002.png", np.zeros((H, W), np.uint8))  # a PNG the run did not write
    assert completed_marker(folder, job, key) is None
    (folder / "00002.png").unlink()
    (folder / MARKER).write_text(json.dumps(marker)[:-5])  # cut off
    assert completed_marker(folder, job, key) is None


# -------------------------------------------------------------------------------- YouTube-VOS, MOSE

ALL_FRAMES = 20
LISTED = [f"{t:05d}" for t in range(0, ALL_FRAMES, 5)]  # what meta.json lists: every 5th frame
LATE = 10  # object 2 of v1 first appears here


@pytest.fixture(scope="module")
def youtube(tmp_path_factory) -> Path:
    """``valid/`` (every 5th frame, meta.json) and ``valid_all_frames/`` of two videos; in v1 object 2 first
    appears on frame 10, and its mask is only on that frame."""
    root = tmp_path_factory.mktemp("youtube")
    videos = {
        "v1": clip(ALL_FRAMES, [(1, (230, 190, 40), 6, 4, 1, 0), (2, (40, 200, 230), 28, 40, -1, LATE)]),
        "v2": clip(ALL_FRAMES, [(1, (200, 60, 200), 16, 20, 1, 0)]),
    }
    meta = {"videos": {}}
    for name, (frames, labels) in videos.items():
        names = [f"{t:05d}" for t in range(ALL_FRAMES)]
        write_frames(root / "valid_all_frames" / "JPEGImages" / name, frames, names=names, suffix=".jpg", quality=95)
        write_frames(root / "valid" / "JPEGImages" / name, frames[::5], names=LISTED, suffix=".jpg", quality=95)
        objects = {}
        for object_id in map(int, np.unique(labels[-1])[1:]):
            first = next(t for t in range(ALL_FRAMES) if (labels[t] == object_id).any())
            mask = np.where(labels[first] == object_id, object_id, 0)
            previous = root / "valid" / "Annotations" / name / f"{first:05d}.png"
            if previous.exists():
                mask = np.maximum(mask, np.array(Image.open(previous)))
            save_palette_png(previous, mask)
            objects[str(object_id)] = {"category": "box", "frames": [n for n in LISTED if int(n) >= first]}
        meta["videos"][name] = {"objects": objects}
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    return root


def test_youtube_vos_writes_the_listed_frames_with_late_objects(youtube, tmp_path):
    out = tmp_path / "results"
    result = batch(youtube / "valid", "--out", out, *FAST, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert summary_of(result.stdout)["layout"] == "youtube-vos"
    v1 = {name: np.array(Image.open(out / "v1" / f"{name}.png")) for name in LISTED}
    assert sorted(p.stem for p in (out / "v1").glob("*.png")) == LISTED
    assert all(2 not in v1[name] for name in LISTED if int(name) < LATE)
    assert all(2 in v1[name] and 1 in v1[name] for name in LISTED if int(name) >= LATE)


@pytest.fixture(scope="module")
def workers_all_frames(youtube, tmp_path_factory) -> tuple[Path, dict]:
    """`--workers 2 --all-frames ... --export youtube-vos`, through torch's elastic launcher."""
    out = tmp_path_factory.mktemp("all-frames") / "results"
    command = [sys.executable, "-m", "vostool", "batch", str(youtube / "valid"), "--all-frames",
               str(youtube / "valid_all_frames"), "--out", str(out), *FAST, "--workers", "2",
               "--export", "youtube-vos", "--json", "--quiet"]
    run = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, summary_of(run.stdout)


def test_all_frames_propagates_densely_writes_listed_and_zips_for_the_server(workers_all_frames):
    out, summary = workers_all_frames
    assert summary["ranks"] == 2 and summary["counts"]["done"] == 2
    assert summary["frames"] == 2 * ALL_FRAMES  # every frame propagated
    for video in ("v1", "v2"):
        assert sorted(p.stem for p in (out / video).glob("*.png")) == LISTED  # only the listed ones written
    with zipfile.ZipFile(summary["export"]) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"Annotations/{v}/{f}.png" for v in ("v1", "v2") for f in LISTED)


def test_mose_without_meta_writes_every_frame(youtube, tmp_path):
    split = tmp_path / "valid"
    for kind in ("JPEGImages", "Annotations"):
        (split / kind).mkdir(parents=True)
        (split / kind / "v1").symlink_to(youtube / "valid" / kind / "v1")
    out = tmp_path / "results"
    result = batch(split, "--out", out, *FAST, "--export", "mose", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = summary_of(result.stdout)
    assert summary["layout"] == "mose"
    late = np.array(Image.open(out / "v1" / f"{LATE:05d}.png"))
    assert 2 in late  # its mask (found among the annotation PNGs) introduced it
    with zipfile.ZipFile(summary["export"]) as archive:
        assert sorted(archive.namelist()) == [f"v1/{f}.png" for f in LISTED]


# -------------------------------------------------------------------------------------------- LVOS


def test_lvos_uses_only_each_objects_first_mask(tmp_path):
    """LVOS ships dense ground truth: only each object's frame-range start may be fed to the tracker. Here
    the later annotation PNGs hold a decoy box the tracker would copy if it read them."""
    split = tmp_path / "valid"
    frames, labels = clip(8, [(1, (230, 190, 40), 16, 8, 1, 0), (2, (40, 200, 230), 30, 44, 0, 3)])
    write_frames(split / "JPEGImages" / "clip", frames, names=[f"{t:08d}" for t in range(8)], suffix=".jpg", quality=95)
    for t, label in enumerate(labels):
        decoy = label.copy()
        if t > 0:
            decoy[0:6, 0:6] = 1
        save_palette_png(split / "Annotations" / "clip" / f"{t:08d}.png", decoy)
    meta = {"videos": {"clip": {"objects": {"1": {"frame_range": {"start": 0, "end": 7, "frame_nums": 8}},
                                             "2": {"frame_range": {"start": "00000003", "end": 7, "frame_nums": 5}}}}}}
    (split / "valid_meta.json").write_text(json.dumps(meta))
    out = tmp_path / "results"
    result = batch(split, "--out", out, *FAST, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert summary_of(result.stdout)["layout"] == "lvos"
    results = [np.array(Image.open(out / "clip" / f"{t:08d}.png")) for t in range(8)]
    assert all((r[0:6, 0:6] == 0).all() for r in results)  # the decoy was never an input
    assert 2 not in results[2] and 2 in results[3]


# ---------------------------------------------------------------------------------------- manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A CSV of two MP4s with first-frame masks, a frame folder whose object is given on frame 2, and an MP4
    that is not a video at all."""
    root = tmp_path_factory.mktemp("manifest")
    rows = ["input,mask,masks_dir,name"]
    for index in range(2):
        frames, labels = clip(6, [(1, (230, 190, 40), 10, 8 + 10 * index, 2, 0)])
        write_video(root / f"clip{index}.mp4", frames)
        save_palette_png(root / f"clip{index}.png", labels[0])
        rows.append(f"clip{index}.mp4,clip{index}.png,,")
    frames, labels = clip(5, [(3, (40, 200, 230), 20, 30, -1, 0)])
    write_frames(root / "folder", frames)
    save_palette_png(root / "folder-masks" / "00002.png", labels[2])
    rows.append("folder,,folder-masks,late-start")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    save_palette_png(root / "broken.png", labels[0])
    rows.append("broken.mp4,broken.png,,")
    (root / "videos.csv").write_text("\n".join(rows) + "\n")
    return root / "videos.csv"


def test_manifest_of_mp4s_with_a_failed_video(manifest, tmp_path):
    out = tmp_path / "results"
    result = batch(manifest, "--out", out, *FAST, "--json", "--quiet")
    assert result.exit_code == 1, result.output  # one video failed; the others are done
    summary = summary_of(result.stdout)
    status = {video["name"]: video["status"] for video in summary["videos"]}
    assert status == {"clip0": "done", "clip1": "done", "late-start": "done", "broken": "failed"}
    assert summary["failed"] == ["broken"] and "broken.mp4" in summary["videos"][3]["error"]
    assert not (out / "broken").exists()
    assert sorted(p.name for p in (out / "clip0").glob("*.png")) == [f"{t:05d}.png" for t in range(6)]
    late = [np.array(Image.open(out / "late-start" / f"{t:05d}.png")) for t in range(5)]
    assert not late[0].any() and not late[1].any() and 3 in late[2] and 3 in late[4]
    assert leftover_temp_files(tmp_path) == []
    rerun = batch(manifest, "--out", out, *FAST, "--json", "--quiet")  # only the failed one is tried again
    assert rerun.exit_code == 1
    assert summary_of(rerun.stdout)["counts"] == {"done": 0, "skipped": 3, "failed": 1}


# --------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_before_any_model_work(davis, youtube, manifest, tmp_path):
    out = tmp_path / "never"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    missing_row = tmp_path / "rows.jsonl"
    missing_row.write_text(json.dumps({"input": "nowhere.mp4", "mask": str(manifest.parent / "clip0.png")}) + "\n")
    no_meta = tmp_path / "no-meta"
    for kind in ("JPEGImages", "Annotations"):
        (no_meta / kind).mkdir(parents=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        ([davis, "--layout", "kitti"], "--layout kitti"),
        ([no_meta, "--layout", "youtube-vos"], "meta.json is missing"),
        ([empty], "lists no videos"),
        ([missing_row], "'nowhere.mp4' does not exist"),
        ([youtube / "valid", "--eval"], "--eval"),
        ([davis, "--export", "zip"], "--export zip"),
        ([davis, "--size", "0"], "--size 0"),
        ([tmp_path], "cannot tell the layout"),
    ]
    for args, fragment in cases:
        assert_one_line_error(batch(*args, "--out", out, "--device", "cpu"), fragment)
        assert not out.exists()
    assert_one_line_error(batch(davis, "--out", foreign, "--device", "cpu"), "notes.txt")
    assert (foreign / "notes.txt").read_text() == "mine"
