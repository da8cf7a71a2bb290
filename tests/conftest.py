"""Shared fixtures. Reference data lives in ../shared next to the repository and is never copied in."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SPEC = SHARED / "spec"
DAVIS_MINI = SHARED / "data" / "davis-mini"
EVAL_VECTORS = SHARED / "data" / "eval-vectors"


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when a piece of ../shared is absent."""
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (../shared is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def synthweights():
    """The official synthetic-weights builder from ../shared/spec/synthweights.py."""
    script = require(SPEC / "synthweights.py")
    spec = importlib.util.spec_from_file_location("synthweights", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthweights"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    # Parity vectors were produced with 2 CPU threads; keep the thread count stable between tests.
    torch.set_num_threads(2)
    yield


def settings_for(model: str, *, short_side: int | None | str = "default", **changes):
    """``model``'s official settings with ``changes`` (ModelSettings fields) and, when given, another
    pre-processing short side (None: native size)."""
    import dataclasses

    from vostool.models.registry import get_spec

    settings = get_spec(model).defaults
    if short_side != "default":
        changes["preprocessing"] = dataclasses.replace(settings.preprocessing, short_side=short_side)
    return dataclasses.replace(settings, **changes)
