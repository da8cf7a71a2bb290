"""CLI-level parity: official checkpoints (synthetic weights saved as .pth) through `vostool segment`.

The frames of a parity case are written losslessly as PNG, `vostool segment --model M --weights file.pth`
runs on them, and the label PNGs it writes are compared with the labels the official code produced.
"""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from tests.conftest import parity_fixtures
from tests.helpers import read_label_pngs, save_palette_png, spec_case, write_frames
from vostool.cli import app

runner = CliRunner()

# The released checkpoints' layouts, saved like released files.
stcn_weights = parity_fixtures("stcn", layout="checkpoint_layout", file="stcn_weights").file
simvos_b_weights = parity_fixtures(
    "simvos", variant="simvos-b", layout="checkpoint_layout", file="simvos_b_weights"
).file


def write_case(tmp_path, frames: np.ndarray, first_mask: np.ndarray):
    frames_dir = tmp_path / "frames"
    write_frames(frames_dir, frames)
    return frames_dir, save_palette_png(tmp_path / "mask.png", first_mask)


def run_segment(frames_dir, mask, weights, model, extra=()):
    out = frames_dir.parent / "out"
    result = runner.invoke(
        app,
        ["segment", str(frames_dir), "--mask", str(mask), "--model", model, "--weights", str(weights),
         "--out", str(out), "--device", "cpu", "--quiet", *extra],
    )
    assert result.exit_code == 0, result.output
    return read_label_pngs(out)


def test_stcn_cli_matches_official_davis_path(stcn_weights, tmp_path):
    # The CLI's plumbing (frames and mask from disk, labels to PNG) on the official DAVIS path; the
    # default generic path at 480p is the same library call, checked in tests/test_stcn.py.
    case = spec_case("stcn", "case_clip", tensors=False)
    frames_dir, mask = write_case(tmp_path, case["frames"], case["first_mask"])
    labels = run_segment(frames_dir, mask, stcn_weights, "stcn", ["--size", "-1"])
    differ = labels != case["labels"]
    assert (case["margin"][differ] < 1e-4).all(), f"{differ.sum()} labels differ where the official margin is large"


def test_simvos_cli_matches_official_clip(simvos_b_weights, tmp_path):
    case = spec_case("simvos", "case_clip", tensors=False)
    frames_dir, mask = write_case(tmp_path, case["frames"], case["first_mask"])
    # The official DAVIS evaluation runs at the stored size: --size -1
    labels = run_segment(frames_dir, mask, simvos_b_weights, "simvos-b", ["--size", "-1"])
    probs = np.sort(case["probs"], axis=1)
    margin = probs[:, -1] - probs[:, -2]
    differ = labels != case["labels"]
    assert (margin[differ] < 1e-4).all(), f"{differ.sum()} labels differ where the official margin is large"
