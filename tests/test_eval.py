"""DAVIS 2017 J&F evaluator: parity with the official tool, the documented deviations, morphology."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from tests.conftest import DAVIS_MINI, EVAL_VECTORS, require
from tests.helpers import save_palette_png, write_davis
from vostool.errors import InputError, OutputError
from vostool.eval import METRIC_KEYS, evaluate_davis, report_table
from vostool.eval.metrics import boundary_f, boundary_radius, decay_limits, frame_scores, jaccard, summarise
from vostool.eval.morphology import boundary_map, dilate_disk, disk_footprint

VARIANTS = [
    "exact",
    "dilate-3",
    "erode-3",
    "shift-8-5",
    "drop-last-object",
    "swap-ids",
    "extra-id",
    "extra-id-edge-frames",
    "empty-frames",
    "empty-sequence",
]
TOLERANCE = 1e-6


# ---------------------------------------------------------------- helpers: tiny DAVIS folders


# Colours unlike DAVIS's: the evaluator must read the PNGs' indices, never their colours.
SCRAMBLED_PALETTE = [value for index in range(256) for value in (index, 255 - index, (index * 7) % 256)]


def write_labels(path: Path, labels: np.ndarray) -> None:
    """An indexed (palette) PNG holding ``labels``."""
    save_palette_png(path, labels, SCRAMBLED_PALETTE)


def make_davis(root: Path, sequences: dict[str, np.ndarray], subset: str = "val") -> Path:
    """DAVIS layout under ``root/davis`` with the given label stacks (T, H, W) as ground truth."""
    return write_davis(root / "davis", sequences, subset=subset, palette=SCRAMBLED_PALETTE)


def write_results(root: Path, sequences: dict[str, np.ndarray], skip_edges: bool = False) -> Path:
    """Predictions in the DAVIS results layout; ``skip_edges`` leaves out the first and last frame."""
    results = root / "results"
    for name, stack in sequences.items():
        frames = range(1, len(stack) - 1) if skip_edges else range(len(stack))
        for t in frames:
            write_labels(results / name / f"{t:05d}.png", stack[t])
    results.mkdir(exist_ok=True)
    return results


def square_sequence(n_frames: int, size: int = 16, objects: int = 1) -> np.ndarray:
    """Ground truth with ``objects`` fixed, non-overlapping 4x4 squares (ids 1..objects)."""
    stack = np.zeros((n_frames, size, size), dtype=np.uint8)
    for index in range(objects):
        top = 2 + 5 * index
        stack[:, top : top + 4, 3:7] = index + 1
    return stack


@pytest.fixture
def tiny(tmp_path):
    """Two small sequences, ground truth and a perfect prediction."""
    sequences = {"alpha": square_sequence(6, objects=2), "beta": square_sequence(5)}
    return make_davis(tmp_path, sequences), write_results(tmp_path, sequences), sequences


# ---------------------------------------------------------------- parity with the official tool


def load_expected(variant: str) -> dict:
    require(DAVIS_MINI)
    return json.loads((require(EVAL_VECTORS / variant) / "expected.json").read_text())


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "extra-id"])
def test_matches_official_evaluator(variant):
    expected = load_expected(variant)
    assert expected["status"] == "ok"
    # One variant goes through the process pool, the others in-process (faster on 2 cores).
    report = evaluate_davis(DAVIS_MINI, EVAL_VECTORS / variant, workers=2 if variant == "shift-8-5" else 1)

    assert report.sequences == expected["sequences"]
    assert set(report.global_metrics) == set(METRIC_KEYS)
    for key, value in expected["global"].items():
        assert report.global_metrics[key] == pytest.approx(value, abs=TOLERANCE), key

    assert [o.name for o in report.per_object] == [row["Sequence"] for row in expected["per_object"]]
    for result, row in zip(report.per_object, expected["per_object"]):
        values = result.metrics()
        for key in ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"):
            assert values[key] == pytest.approx(row[key], abs=TOLERANCE), (row["Sequence"], key)
    # The CSV the tool wrote (3 decimals) agrees too.
    for result, row in zip(report.per_object, expected["per_sequence_csv"]):
        assert round(result.j_mean, 3) == pytest.approx(row["J-Mean"], abs=5e-4)
        assert round(result.f_mean, 3) == pytest.approx(row["F-Mean"], abs=5e-4)


def test_extra_id_is_an_input_error_naming_sequence_and_frame():
    expected = load_expected("extra-id")
    assert expected["status"] == "aborted"  # the official tool printed a message and exited 0
    with pytest.raises(InputError) as caught:
        evaluate_davis(DAVIS_MINI, EVAL_VECTORS / "extra-id", workers=1)
    message = str(caught.value)
    # Frame 00000 is not scored, so the first offending frame read is 00001 of the first sequence.
    assert "blackswan" in message and "00001" in message
    assert "object id 2" in message and "1 object" in message


def test_extra_id_rule_on_synthetic_data(tmp_path):
    truth = square_sequence(5)
    prediction = truth.copy()
    prediction[3, 12:15, 12:15] = 2
    davis = make_davis(tmp_path, {"seq": truth})
    results = write_results(tmp_path, {"seq": prediction})
    with pytest.raises(InputError, match=r"result frame 00003 of sequence seq holds object id 2"):
        evaluate_davis(davis, results, workers=1)
    # The same extra object only in the unscored first and last frames changes nothing.
    prediction = truth.copy()
    prediction[[0, -1], 12:15, 12:15] = 2
    write_results(tmp_path, {"seq": prediction})
    assert evaluate_davis(davis, results, workers=1).global_metrics["J&F-Mean"] == 1.0


# ---------------------------------------------------------------- documented deviations and errors


def test_decay_is_correct_beyond_256_frames(tmp_path):
    # 302 frames, 300 scored. The prediction is perfect for the first 150 scored frames and empty
    # for the last 150. The first quarter of the scored frames lies in the perfect half (J = F = 1)
    # and the last quarter in the empty half (J = F = 0), so Decay = 1 - 0 = 1 exactly, the means
    # and recalls are 1/2. (The official tool wraps its quarter limits in uint8 here.)
    n_frames, half = 302, 150
    truth = square_sequence(n_frames)
    prediction = truth.copy()
    prediction[1 + half :] = 0
    davis = make_davis(tmp_path, {"long": truth})
    results = write_results(tmp_path, {"long": prediction})
    report = evaluate_davis(davis, results, workers=1)
    (result,) = report.per_object
    assert result.n_frames == 300
    assert (result.j_mean, result.j_recall, result.j_decay) == (0.5, 0.5, 1.0)
    assert (result.f_mean, result.f_recall, result.f_decay) == (0.5, 0.5, 1.0)
    assert report.global_metrics["J-Decay"] == report.global_metrics["F-Decay"] == 1.0


def test_decay_limits_by_hand():
    # round(linspace(1, n, 5)) - 1 with halves rounded up:
    # n=300: 1, 75.75, 150.5, 225.25, 300 -> 0, 75, 150, 224, 299 (beyond uint8 range)
    assert decay_limits(300).tolist() == [0, 75, 150, 224, 299]
    # n=48: 1, 12.75, 24.5, 36.25, 48 -> 0, 12, 24, 35, 47
    assert decay_limits(48).tolist() == [0, 12, 24, 35, 47]
    assert decay_limits(1).tolist() == [0, 0, 0, 0, 0]


def test_summary_statistics_by_hand():
    values = np.array([1.0, 0.5, 0.75, 0.0, 0.25, 0.6])
    # n=6: 1, 2.25, 3.5, 4.75, 6 rounded (halves up) minus 1 -> limits 0, 1, 3, 4, 5: the first
    # quarter is frames 0..1, the last quarter frames 4..5 (a quarter ends on the next one's start).
    stats = summarise(values)
    assert stats.mean == pytest.approx(3.1 / 6)
    assert stats.recall == pytest.approx(3 / 6)  # 1.0, 0.75, 0.6 are > 0.5; 0.5 is not
    assert stats.decay == pytest.approx((1.0 + 0.5) / 2 - (0.25 + 0.6) / 2)


def test_missing_result_frame_names_sequence_and_frame(tiny, tmp_path):
    davis, results, _ = tiny
    (results / "alpha" / "00003.png").unlink()
    for workers in (1, 2):  # the error also crosses the process boundary intact
        with pytest.raises(InputError, match=r"result frame 00003 of sequence alpha is missing"):
            evaluate_davis(davis, results, workers=workers)


def test_first_and_last_result_frames_are_not_required(tmp_path):
    sequences = {"seq": square_sequence(5)}
    davis = make_davis(tmp_path, sequences)
    results = write_results(tmp_path, sequences, skip_edges=True)
    assert evaluate_davis(davis, results, workers=1).global_metrics["J&F-Mean"] == 1.0


def test_missing_sequence_folder(tiny):
    davis, results, _ = tiny
    for path in (results / "beta").iterdir():
        path.unlink()
    (results / "beta").rmdir()
    with pytest.raises(InputError, match=r"result folder of sequence beta not found"):
        evaluate_davis(davis, results, workers=1)


def test_stale_csv_files_are_ignored(tiny):
    davis, results, _ = tiny
    stale = {
        "global_results-val.csv": ",".join(METRIC_KEYS) + "\n" + ",".join(["0.1"] * 7) + "\n",
        "per-sequence_results-val.csv": "Sequence,J-Mean,F-Mean\nalpha_1,0.1,0.1\n",
    }
    for name, text in stale.items():
        (results / name).write_text(text)
    report = evaluate_davis(davis, results, workers=1)
    assert all(report.global_metrics[key] == 1.0 for key in ("J&F-Mean", "J-Mean", "F-Mean"))
    assert {name: (results / name).read_text() for name in stale} == stale  # nothing rewritten


def test_fewer_predicted_objects_score_as_empty(tiny, tmp_path):
    davis, results, sequences = tiny
    prediction = sequences["alpha"].copy()
    prediction[prediction == 2] = 0
    write_results(tmp_path, {"alpha": prediction})
    report = evaluate_davis(davis, results, workers=1)
    by_name = {o.name: o for o in report.per_object}
    assert by_name["alpha_1"].j_mean == 1.0 and by_name["alpha_1"].f_mean == 1.0
    assert by_name["alpha_2"].j_mean == 0.0 and by_name["alpha_2"].f_mean == 0.0
    assert report.global_metrics["J-Mean"] == pytest.approx(2 / 3)


def test_malformed_inputs_are_input_errors(tiny, tmp_path):
    davis, results, sequences = tiny
    frame = results / "beta" / "00002.png"
    Image.new("RGB", (16, 16)).save(frame)
    with pytest.raises(InputError, match=r"result frame 00002 of sequence beta is a RGB image"):
        evaluate_davis(davis, results, workers=1)
    write_labels(frame, np.zeros((8, 16)))
    with pytest.raises(InputError, match=r"result frame 00002 of sequence beta is 16x8"):
        evaluate_davis(davis, results, workers=1)
    write_labels(frame, sequences["beta"][2])
    write_labels(davis / "Annotations" / "480p" / "beta" / "00000.png", np.zeros((16, 16)))
    with pytest.raises(InputError, match=r"first annotation frame of sequence beta has no object"):
        evaluate_davis(davis, results, workers=1)


def test_annotations_must_cover_every_frame(tiny):
    davis, results, _ = tiny
    images = davis / "JPEGImages" / "480p" / "beta"
    images.mkdir(parents=True)
    for t in range(7):
        Image.new("RGB", (16, 16)).save(images / f"{t:05d}.jpg")
    with pytest.raises(InputError, match=r"sequence beta has 7 frames but 5 annotation PNGs"):
        evaluate_davis(davis, results, workers=1)


# ---------------------------------------------------------------- report


def test_report_outputs(tiny, tmp_path):
    davis, results, _ = tiny
    calls = []
    report = evaluate_davis(davis, results, workers=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert [o.name for o in report.per_object] == ["alpha_1", "alpha_2", "beta_1"]

    csv_path = tmp_path / "out" / "scores.csv"
    report.to_csv(csv_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["Sequence"] for row in rows] == ["GLOBAL", "alpha", "alpha", "beta"]
    assert float(rows[0]["J&F-Mean"]) == report.global_metrics["J&F-Mean"]
    assert [p.name for p in csv_path.parent.iterdir()] == ["scores.csv"]  # no temporary left

    data = json.loads(json.dumps(report.to_json()))
    assert data["global"] == report.global_metrics
    assert [(o["sequence"], o["object"]) for o in data["per_object"]] == [("alpha", 1), ("alpha", 2), ("beta", 1)]

    table = report_table(report)
    assert table.row_count == 1 + len(report.per_object)
    console = Console(record=True, width=160, file=io.StringIO())
    report.render(console)
    text = console.export_text()
    assert "Global" in text and "alpha" in text and "J&F-Mean" in text

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError):
        report.to_csv(blocker / "scores.csv")


# ---------------------------------------------------------------- metrics and morphology


def test_disk_footprint_matches_definition():
    for radius in range(0, 10):
        footprint = disk_footprint(radius)
        dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        assert np.array_equal(footprint, dy**2 + dx**2 <= radius**2)
    # 8 px is the tolerance at 854x480: ceil(0.008 * 979.6).
    assert boundary_radius(480, 854) == 8
    assert disk_footprint(8).sum() == 197


def brute_force_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    height, width = mask.shape
    out = np.zeros_like(mask)
    for y in range(height):
        for x in range(width):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    inside = 0 <= y + dy < height and 0 <= x + dx < width
                    if inside and dy * dy + dx * dx <= radius * radius and mask[y + dy, x + dx]:
                        out[y, x] = True
    return out


def test_dilate_disk_matches_brute_force():
    rng = np.random.default_rng(0)
    for radius in (0, 1, 2, 3, 5, 8):
        masks = rng.random((2, 13, 19)) < 0.04
        expected = np.stack([brute_force_dilation(m, radius) for m in masks])
        assert np.array_equal(dilate_disk(masks, radius), expected), radius
    single = np.zeros((5, 5), dtype=bool)
    single[2, 2] = True
    assert np.array_equal(dilate_disk(single, 2), disk_footprint(2))
    assert np.array_equal(dilate_disk(single, 30), np.ones((5, 5), dtype=bool))


def brute_force_boundary(seg: np.ndarray) -> np.ndarray:
    height, width = seg.shape
    out = np.zeros_like(seg)
    for y in range(height):
        for x in range(width):
            if y == height - 1 and x == width - 1:
                continue  # the bottom-right pixel is never a boundary
            if y == height - 1:
                neighbours = [(y, x + 1)]
            elif x == width - 1:
                neighbours = [(y + 1, x)]
            else:
                neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            out[y, x] = any(seg[y, x] != seg[ny, nx] for ny, nx in neighbours)
    return out


def test_boundary_map_matches_brute_force():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 11, 14)) < 0.5
    masks[3] = True  # a full frame only has boundary where the image border rules say
    expected = np.stack([brute_force_boundary(m) for m in masks])
    assert np.array_equal(boundary_map(masks), expected)


def test_scores_by_hand():
    gt = np.zeros((5, 40, 40), dtype=bool)
    gt[:, 10:20, 10:20] = True
    pred = gt.copy()
    pred[1] = False  # empty prediction: J = F = 0
    pred[2] = np.roll(gt[2], 25, axis=1)  # far away (> 3 px): J = 0, F = 0
    pred[3, 10:20, 10:15] = False  # half the square: J = 50/100
    gt[4] = pred[4] = False  # both empty: J = F = 1
    j = jaccard(gt, pred)
    f = boundary_f(gt, pred, radius=3)
    assert j.tolist() == [1.0, 0.0, 0.0, 0.5, 1.0]
    assert f[[0, 1, 2, 4]].tolist() == [1.0, 0.0, 0.0, 1.0]
    # Prediction but no ground truth: precision 0, recall 1 -> F = 0.
    assert boundary_f(gt[4:5], gt[0:1], radius=3).tolist() == [0.0]
    # Moving the boundary by less than the tolerance keeps F = 1.
    assert boundary_f(gt[:1], np.roll(gt[:1], 2, axis=2), radius=3).tolist() == [1.0]


def test_cropped_scores_equal_full_frame_scores():
    # frame_scores works on a window around the masks; it must give exactly the full-frame numbers,
    # also for masks touching the image border (where the boundary rule is special).
    rng = np.random.default_rng(2)
    for trial in range(20):
        height, width = rng.integers(8, 40, size=2)
        gt = np.zeros((3, height, width), dtype=bool)
        pred = np.zeros_like(gt)
        for stack in (gt, pred):
            for t in range(3):
                y0, x0 = rng.integers(0, height), rng.integers(0, width)
                stack[t, y0 : y0 + rng.integers(1, 12), x0 : x0 + rng.integers(1, 12)] = True
        radius = int(rng.integers(1, 5))
        j, f = frame_scores(gt, pred, radius)
        assert np.array_equal(j, jaccard(gt, pred)), trial
        assert np.array_equal(f, boundary_f(gt, pred, radius)), trial
    empty = np.zeros((3, 9, 9), dtype=bool)
    assert [scores.tolist() for scores in frame_scores(empty, empty, 2)] == [[1.0] * 3, [1.0] * 3]
