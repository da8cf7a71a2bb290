"""The per-frame loop never waits for work another thread can do: the next frame is prepared in the
reader thread, and labels reach the host (and get their ids) in the writer thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import vostool
from tests.helpers import gradient_frames
from vostool.engine.labels import HostLabels
from vostool.pipeline import segment_stream
from vostool.tracker import Session


def _mask() -> np.ndarray:
    labels = np.zeros((48, 64), np.uint8)
    labels[8:30, 10:34] = 3
    labels[30:44, 40:60] = 7
    return labels


@pytest.fixture(scope="module")
def tracker():
    return vostool.load(device="cpu", size=64)


def test_frames_are_prepared_by_the_reader_and_labels_resolved_by_the_writer(tracker, monkeypatch) -> None:
    frames = gradient_frames(6)
    expected = [r.labels.copy() for r in tracker.session(len(frames)).track(frames, {0: _mask()})]
    prepared_in, resolved_in = [], []
    prepare, numpy = Session.prepare, HostLabels.numpy

    def recording_prepare(self, frame):
        prepared_in.append(threading.current_thread().name)
        return prepare(self, frame)

    def recording_numpy(self):
        if self._array is None:
            resolved_in.append(threading.current_thread().name)
        return numpy(self)

    monkeypatch.setattr(Session, "prepare", recording_prepare)
    monkeypatch.setattr(HostLabels, "numpy", recording_numpy)
    written = []
    names = [f"{t:05d}" for t in range(len(frames))]
    segment_stream(tracker.session(len(frames)), frames, names, {0: _mask()},
                   lambda name, frame, labels: written.append(labels.copy()))
    assert prepared_in == ["vostool-reader"] * len(frames)
    assert set(resolved_in) == {"vostool-writer"} and len(resolved_in) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(written, expected, strict=True))


def test_a_frame_of_another_size_is_still_reported_with_its_index(tracker) -> None:
    frames = gradient_frames(3)
    frames.append(np.zeros((40, 64, 3), np.uint8))
    with pytest.raises(vostool.VostoolError, match="frame 3 is 40x64 but the video's frames are 48x64"):
        segment_stream(tracker.session(4), frames, ["a", "b", "c", "d"], {0: _mask()}, lambda *_: None)


def test_host_labels_map_channels_to_ids() -> None:
    index = torch.tensor([[0, 1], [2, 1]], dtype=torch.uint8)
    labels = HostLabels(index, np.array([0, 3, 7], np.uint8))
    assert labels.numpy().tolist() == [[0, 3], [7, 3]]
    assert labels.numpy() is labels.numpy()  # resolved once
    assert HostLabels.ready(np.ones((2, 2), np.uint8)).numpy().sum() == 4


@pytest.mark.cuda
def test_cuda_labels_arrive_through_pinned_memory(tracker) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    index = torch.randint(0, 3, (480, 854), dtype=torch.uint8, device="cuda")
    labels = HostLabels(index, np.array([0, 3, 7], np.uint8))
    expected = np.array([0, 3, 7], np.uint8)[index.cpu().numpy()]
    assert np.array_equal(labels.numpy(), expected)
    cuda = vostool.load(device="cuda", size=64)
    frames = gradient_frames(4)
    on_cpu = [r.labels for r in tracker.session(4).track(frames, {0: _mask()})]
    on_gpu = [r.labels for r in cuda.session(4).track(frames, {0: _mask()})]
    assert np.mean([np.mean(a == b) for a, b in zip(on_cpu, on_gpu)]) > 0.99


def test_a_read_only_frame_is_segmented_without_a_warning(tracker, recwarn) -> None:
    frame = gradient_frames(1)[0]
    frame.flags.writeable = False  # as frames decoded from bytes are
    session = tracker.session(1)
    session.add_masks(0, _mask())
    assert session.step(frame).labels.shape == (48, 64)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
