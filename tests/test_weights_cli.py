"""`vostool weights list|path|verify` through the CLI (downloads are tested against a local server in
tests/test_weights.py)."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from vostool.cli import app
from vostool.models.checkpoint import expected_layout
from vostool.models.stcn.network import STCNNet

runner = CliRunner()


def test_list_shows_every_model_and_the_bundled_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSTOOL_HOME", str(tmp_path))
    result = runner.invoke(app, ["weights", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    models = {r["model"] for r in rows}
    assert {"propagate-lite0", "stcn", "simvos-b", "simvos-l", "simvos-bs"} <= models
    lite = next(r for r in rows if r["model"] == "propagate-lite0")
    assert lite["cached"] and lite["available"]
    stcn = next(r for r in rows if r["model"] == "stcn" and r["default"])
    assert stcn["cached"] is None and stcn["source"] and stcn["available"]
    assert all(r["available"] for r in rows if r["model"] == "jointformer")


def test_path_is_inside_vostool_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSTOOL_HOME", str(tmp_path))
    result = runner.invoke(app, ["weights", "path", "stcn"])
    assert result.exit_code == 0 and result.stdout.strip().startswith(str(tmp_path))


def test_verify_accepts_a_matching_file_and_rejects_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSTOOL_HOME", str(tmp_path))
    with torch.device("meta"):
        layout = expected_layout(STCNNet())
    good = tmp_path / "stcn.pth"
    torch.save({k: torch.zeros(shape) for k, shape in layout.items()}, good)
    result = runner.invoke(app, ["weights", "verify", str(good), "--model", "stcn"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    result = runner.invoke(app, ["weights", "verify", str(good), "--model", "simvos-b"])
    assert result.exit_code == 2 and "missing" in result.output


def test_unknown_checkpoint_name_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSTOOL_HOME", str(tmp_path))
    result = runner.invoke(app, ["weights", "download", "no-such-checkpoint"])
    assert result.exit_code == 2 and "no-such-checkpoint" in result.output
