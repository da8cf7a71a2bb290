"""The streaming API (``vostool.load(...).session().track(...)``): same masks as ``segment``, sessions that
share a tracker without sharing state, objects added and removed on any frame, device tensors as frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vostool
from tests.conftest import SPEC, require
from tests.helpers import save_palette_png, write_frames
from vostool.errors import VostoolError


def _write_clip(root, frames: np.ndarray, first_mask: np.ndarray):
    folder = root / "frames"
    write_frames(folder, frames)
    return folder, save_palette_png(root / "mask.png", first_mask)


@pytest.fixture(scope="module")
def stcn_case(synthweights, tmp_path_factory):
    case = np.load(require(SPEC / "stcn" / "case_clip.npz"))
    manifest = json.loads(require(SPEC / "stcn" / "manifest.json").read_text())
    path = tmp_path_factory.mktemp("stcn") / "stcn.pth"
    torch.save(synthweights.synth_state_dict(manifest["checkpoint_layout"], seed=0), path)
    return case, path


@pytest.fixture(scope="module")
def stcn_tracker(stcn_case):
    case, weights = stcn_case
    return vostool.load("stcn", weights=weights, device="cpu", size=-1)  # the official DAVIS path


def test_track_gives_segments_masks_and_the_official_labels(stcn_case, stcn_tracker, tmp_path):
    case, weights = stcn_case
    results = list(stcn_tracker.session().track(list(case["frames"]), masks={0: case["first_mask"]}))
    labels = np.stack([r.labels for r in results])
    folder, mask = _write_clip(tmp_path, case["frames"], case["first_mask"])
    vostool.segment(folder, mask, out_dir=tmp_path / "out", tracker=stcn_tracker)
    written = np.stack([np.array(Image.open(p)) for p in sorted((tmp_path / "out").glob("*.png"))])
    np.testing.assert_array_equal(labels, written)
    decided = case["margin"] >= 1e-4  # the criterion of tests/test_stcn.py's clip parity
    np.testing.assert_array_equal(labels[decided], case["labels"][decided])
    probabilities = torch.stack([r.probabilities for r in results], dim=1)
    assert results[0].object_ids == (1, 2) and probabilities.shape == (3, 8, 90, 120)
    torch.testing.assert_close(probabilities, torch.from_numpy(case["prob"]), atol=2e-5, rtol=0)


def _two_videos(case) -> list[tuple[np.ndarray, np.ndarray]]:
    frames = case["frames"]
    return [(frames, case["first_mask"]), (frames[::-1].copy(), case["labels"][-1])]


def test_sessions_on_one_tracker_do_not_share_state(stcn_case, stcn_tracker):
    case, _ = stcn_case
    videos = _two_videos(case)
    one_after_another = [
        [r for r in stcn_tracker.session().track(list(frames), masks={0: first})] for frames, first in videos
    ]
    sessions = [stcn_tracker.session(num_frames=len(frames)) for frames, _ in videos]
    for session, (_, first) in zip(sessions, videos):
        session.add_masks(0, first)
    interleaved = [[], []]
    for t in range(len(case["frames"])):  # frame by frame, in turn
        for i, (session, (frames, _)) in enumerate(zip(sessions, videos)):
            interleaved[i].append(session.step(frames[t]))
    for alone, mixed in zip(one_after_another, interleaved):
        for a, b in zip(alone, mixed):
            np.testing.assert_array_equal(a.labels, b.labels)
            torch.testing.assert_close(a.probabilities, b.probabilities, atol=0, rtol=0)


@pytest.fixture(scope="module")
def lite_tracker():
    return vostool.load(device="cpu", size=64)


def _moving_squares(frames: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    background = (rng.random((64, 96, 3)) * 60).astype(np.uint8)
    images, labels = [], []
    for t in range(frames):
        image, label = background.copy(), np.zeros((64, 96), np.uint8)
        image[8:32, 8 + 3 * t : 32 + 3 * t] = (230, 60, 40)
        label[8:32, 8 + 3 * t : 32 + 3 * t] = 1
        image[36:60, 60 - 2 * t : 84 - 2 * t] = (40, 200, 230)
        label[36:60, 60 - 2 * t : 84 - 2 * t] = 7
        images.append(image)
        labels.append(label)
    return images, labels


def test_objects_added_on_a_later_frame_and_removed(lite_tracker):
    images, truth = _moving_squares()
    session = lite_tracker.session()
    session.add_masks(0, np.where(truth[0] == 1, 1, 0).astype(np.uint8))
    session.add_masks(2, np.where(truth[2] == 7, 7, 0).astype(np.uint8))
    ids = [session.step(image).object_ids for image in images[:4]]
    assert ids == [(1,), (1,), (1, 7), (1, 7)]
    session.remove(1)
    result = session.step(images[4])
    assert result.object_ids == (7,) and set(np.unique(result.labels)) <= {0, 7}
    assert result.probabilities.shape == (2, 64, 96)
    assert ((result.labels == 7) & (truth[4] == 7)).sum() / ((result.labels == 7) | (truth[4] == 7)).sum() > 0.6
    assert session.object_ids == (7,)


def test_removed_object_leaves_no_memory_rows(lite_tracker):
    images, truth = _moving_squares()
    session = lite_tracker.session()
    session.add_masks(0, truth[0])
    for image in images[:3]:
        session.step(image)
    bank = session._propagator.bank
    assert all(entry.objects == (0, 1) for entry in bank.entries)
    session.remove(1)
    assert all(entry.objects == (0,) for entry in bank.entries)
    assert session.step(images[3]).object_ids == (7,)


def test_removing_an_object_matches_never_having_it(lite_tracker):
    images, truth = _moving_squares()
    only_seven = np.where(truth[0] == 7, 7, 0).astype(np.uint8)
    alone = [r.labels for r in lite_tracker.session().track(images, masks={0: only_seven})]
    session = lite_tracker.session()
    session.add_masks(0, truth[0])
    session.remove(1)  # before the first frame: object 1 is never tracked
    np.testing.assert_array_equal(np.stack([session.step(i).labels for i in images]), np.stack(alone))


def test_torch_frames_give_the_numpy_results(lite_tracker):
    images, truth = _moving_squares(3)
    from_numpy = [r.labels for r in lite_tracker.session().track(images, masks={0: truth[0]})]
    tensors = [torch.from_numpy(image) for image in images]
    from_torch = [r.labels for r in lite_tracker.session().track(tensors, masks={0: truth[0]})]
    np.testing.assert_array_equal(np.stack(from_numpy), np.stack(from_torch))


def test_session_errors_are_user_errors(lite_tracker):
    images, truth = _moving_squares(2)
    session = lite_tracker.session()
    session.add_masks(0, truth[0])
    session.step(images[0])
    with pytest.raises(VostoolError, match="frame 0 was already segmented"):
        session.add_masks(0, truth[0])
    with pytest.raises(VostoolError, match="non-negative integer ids"):
        session.add_masks(1, truth[1].astype(np.float32))
    session.add_masks(1, truth[1][:32])
    with pytest.raises(VostoolError, match="the mask for frame 1 is 32x96 but the frames are 64x96"):
        session.step(images[1])


def test_load_validates_before_building(monkeypatch):
    import vostool.api

    monkeypatch.setattr(vostool.api, "load_network", lambda *a, **k: pytest.fail("built before validating"))
    with pytest.raises(vostool.SettingsError, match=r"^mem_every=0: "):
        vostool.load("stcn", mem_every=0)


def test_readme_streaming_example_runs(capsys, monkeypatch):
    """The README's streaming example, as written, on the demo clip."""
    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    example = readme.split("### Streaming: frames in, masks out")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(REPO_ROOT)
    exec(compile(example, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 36 and lines[0].startswith("0 {1: ") and lines[-1].startswith("35 {")
    assert len(eval(lines[10].split(" ", 1)[1])) == 2 and len(eval(lines[21].split(" ", 1)[1])) == 1
