"""`vostool eval` through the CLI: the official numbers as JSON and CSV, and the documented errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import DAVIS_MINI, EVAL_VECTORS, require
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
