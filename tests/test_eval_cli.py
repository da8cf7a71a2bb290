"""`vostool eval` through the CLI: the official numbers as JSON and CSV, and the documented errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from tests.conftest import DAVIS_MINI, EVAL_VECTORS, require
from tests.helpers import paint_boxes, write_davis
from vostool.cli import app

runner = CliRunner()


def test_eval_results_json_and_csv_match_the_official_numbers(tmp_path):
    variant = require(EVAL_VECTORS / "shift-8-5")
    expected = json.loads((variant / "expected.json").read_text())["global"]
    csv = tmp_path / "scores.csv"
    result = runner.invoke(app, ["eval", "--davis", str(require(DAVIS_MINI)), "--results", str(variant),
                                 "--workers", "1", "--csv", str(csv), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    flat = got.get("global", got)
    for key, value in expected.items():
        assert abs(flat[key] - value) <= 1e-6, key
    assert csv.read_text().count("\n") >= 7  # global row + 6 objects


def test_eval_extra_id_is_an_error_not_a_silent_abort():
    result = runner.invoke(app, ["eval", "--davis", str(require(DAVIS_MINI)),
                                 "--results", str(require(EVAL_VECTORS / "extra-id")), "--workers", "1", "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_eval_needs_results_or_model(tmp_path):
    result = runner.invoke(app, ["eval", "--davis", str(tmp_path)])
    assert result.exit_code == 2 and "--results" in result.output


def _tiny_davis(root: Path) -> Path:
    """Two 4-frame DAVIS-layout sequences of a yellow box sliding over a grey background."""
    images, annotations = {}, {}
    for seq, shift in (("a", 2), ("b", -2)):
        images[seq], annotations[seq] = [], []
        for t in range(4):
            x = 40 + shift * t
            img, lab = paint_boxes(np.full((64, 96, 3), 30, np.uint8), [(np.s_[16:48, x : x + 24], (240, 200, 40), 1)])
            images[seq].append(img)
            annotations[seq].append(lab)
    return write_davis(root, annotations, images)


def test_eval_with_model_segments_then_scores(tmp_path):
    """`--model` on a tiny DAVIS-layout set: results are written per sequence, then scored."""
    root = _tiny_davis(tmp_path / "davis")
    results = tmp_path / "results"
    result = runner.invoke(app, ["eval", "--davis", str(root), "--model", "propagate-lite0", "--results",
                                 str(results), "--size", "128", "--device", "cpu", "--workers", "1", "--json",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in results.iterdir()) == ["a", "b"]
    assert len(list((results / "b").glob("*.png"))) == 4
    scores = json.loads(result.stdout)
    assert scores.get("global", scores)["J&F-Mean"] > 0.7


def test_segment_davis_uses_a_given_network(tmp_path, monkeypatch):
    """Scoring a variant of a model (scripts/sweep_propagate.py) must not rebuild the shipped one."""
    import vostool.api
    import torch

    from vostool.eval.predict import segment_davis
    from vostool.models.propagate_lite0.adapter import build as build_propagate_lite0
    from vostool.models.registry import get_spec
    from vostool.settings import RunSettings
    from vostool.tracker import Tracker

    def refuse(*args, **kwargs):
        raise AssertionError("load_network called although a network was given")

    monkeypatch.setattr(vostool.api, "load_network", refuse)
    network = build_propagate_lite0(None, "cpu", get_spec("propagate-lite0").settings_for(RunSettings(size=128)))
    network.propagation.temperature = 0.2
    tracker = Tracker(network, "propagate-lite0", torch.device("cpu"))
    names = segment_davis(_tiny_davis(tmp_path / "davis"), tmp_path / "results", tracker=tracker)
    assert names == ["a", "b"] and len(list((tmp_path / "results" / "a").glob("*.png"))) == 4
