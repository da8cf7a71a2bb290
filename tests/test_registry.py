"""The model registry: names, errors, and checkpoint layouts identical to the released files' manifests."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SPEC, require
from vostool.errors import ModelError
from vostool.models.registry import DEFAULT_MODEL, MODELS, get_spec, layout_of


def test_default_model_is_registered_and_offline():
    assert DEFAULT_MODEL in MODELS and not MODELS[DEFAULT_MODEL].needs_checkpoint


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ModelError, match="unknown model 'nope'.*propagate-lite0"):
        get_spec("nope")


def manifest_layout(model_dir: str, variant: str | None) -> dict[str, tuple[int, ...]]:
    manifest = json.loads(require(SPEC / model_dir / "manifest.json").read_text())
    layout = manifest["variants"][variant]["checkpoint_layout"] if variant else manifest["checkpoint_layout"]
    return {name: tuple(entry["shape"]) for name, entry in layout.items()}


@pytest.mark.parametrize(
    "model, spec_dir, variant",
    [("stcn", "stcn", None), ("simvos-b", "simvos", "simvos-b"), ("simvos-l", "simvos", "simvos-l"),
     ("simvos-bs", "simvos", "simvos-bs"), ("sitvos", "sitvos", None)],
)
def test_checkpoint_layout_equals_the_released_manifest(model, spec_dir, variant):
    assert layout_of(model) == manifest_layout(spec_dir, variant)


def test_every_checkpoint_model_has_a_registry_entry():
    from vostool.weights import default_checkpoint, unreleased_reason

    for name, info in MODELS.items():
        if info.needs_checkpoint:
            # A default download, or the recorded reason why its authors released none (SITVOS).
            assert default_checkpoint(name) is not None or unreleased_reason(name) is not None, name
