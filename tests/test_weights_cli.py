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


def _lite0_stcn_checkpoints(folder, seeds=(0, 1)) -> list:
    """Checkpoint files with lite0-stcn's exact layout and random fp16 tensors, one per seed."""
    from vostool.models.checkpoint import save_checkpoint
    from vostool.models.registry import layout_of

    paths = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        state = {name: torch.randn(shape, generator=generator).half() for name, shape in layout_of("lite0-stcn").items()}
        paths.append(folder / f"run{seed}.pth")
        save_checkpoint(paths[-1], state)
    return paths


def test_blend_averages_two_checkpoints_tensor_by_tensor(tmp_path):
    first, second = _lite0_stcn_checkpoints(tmp_path)
    result = runner.invoke(app, ["weights", "blend", str(first), str(second), "--share", "0.25",
                                 "--out", str(tmp_path / "blend.pth"), "--model", "lite0-stcn"])
    assert result.exit_code == 0, result.output
    a, b, blend = (torch.load(p, weights_only=True) for p in (first, second, tmp_path / "blend.pth"))
    assert list(blend) == list(a)
    for name in a:
        assert blend[name].dtype == torch.float16
        expected = (0.75 * a[name].float() + 0.25 * b[name].float()).half()
        assert torch.equal(blend[name], expected), name
    runner.invoke(app, ["weights", "blend", str(first), str(second), "--share", "0.25", "--out", str(tmp_path / "again.pth")])
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "blend.pth").read_bytes()  # same bytes, same sha256
    runner.invoke(app, ["weights", "blend", str(first), str(second), "--share", "0", "--out", str(tmp_path / "zero.pth")])
    assert all(torch.equal(v, a[k]) for k, v in torch.load(tmp_path / "zero.pth", weights_only=True).items())


def test_blend_errors_name_the_option_or_file_and_keep_the_inputs(tmp_path):
    from tests.helpers import assert_one_line_error

    first, second = _lite0_stcn_checkpoints(tmp_path)
    before = first.read_bytes()
    blend = ["weights", "blend", str(first), str(second)]
    assert_one_line_error(runner.invoke(app, [*blend, "--share", "1.5", "--out", str(tmp_path / "x.pth")]),
                          "--share must be between 0 and 1")
    assert_one_line_error(runner.invoke(app, [*blend, "--out", str(first)]), "run0.pth", "would overwrite the FIRST input")
    assert first.read_bytes() == before
    assert_one_line_error(runner.invoke(app, [*blend, "--out", str(tmp_path / "x.pth"), "--model", "stcn"]), "run0.pth")
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a checkpoint")
    assert_one_line_error(runner.invoke(app, ["weights", "blend", str(first), str(not_weights), "--out", str(tmp_path / "x.pth")]),
                          "notes.pth")
    assert not (tmp_path / "x.pth").exists()
