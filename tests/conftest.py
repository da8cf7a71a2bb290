"""Shared fixtures. Reference data lives in ../shared next to the repository and is never copied in."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

# Set before torch loads OpenMP. Where other work shares the cores, a thread that spins while it waits
# for a descheduled sibling holds up every parallel region for a time slice: on a 2-core machine at
# load 6, 12 frames of the default model at 480p took 51-67 s that way and 17-25 s with passive waiting.
# Passive waiting costs little on idle cores and changes no result (the same threads split the same
# work). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

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


def load_script(path: Path) -> ModuleType:
    """A script (not a package module) imported by its path, registered under its stem (its dataclasses
    look their module up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthweights():
    """The official synthetic-weights builder from ../shared/spec/synthweights.py."""
    return load_script(require(SPEC / "synthweights.py"))


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


# ------------------------------------------------------------------------------ parity fixtures


class ParityFixtures(NamedTuple):
    """The three module-scoped fixtures :func:`parity_fixtures` makes (each one a pytest fixture)."""

    manifest: Any  # the model's manifest.json, as a dict
    state: Any  # the synthetic state_dict the parity vectors were produced with
    file: Any  # that state_dict saved like a released checkpoint (a bare state_dict .pth)


def parity_fixtures(
    model: str,
    *,
    variant: str | None = None,
    layout: str = "eval_network_layout",
    seed: int = 0,
    manifest: str = "manifest",
    state: str = "synth_state",
    file: str = "synth_file",
) -> ParityFixtures:
    """Module-scoped fixtures for the parity vectors in ``../shared/spec/<model>``.

    ``manifest`` is the parsed manifest.json; ``state`` the synthetic state_dict built (once per test
    module) by the official ``synthweights.synth_state_dict`` from the manifest's ``layout`` (under
    ``variants/<variant>`` when given) with ``seed``; ``file`` that state_dict saved with ``torch.save``.
    The keyword arguments of the same names are the fixture names. Bind the returned fixtures at module
    level of a test module, to attributes of those names, and request them as usual::

        from tests.conftest import parity_fixtures

        manifest, synth_state, synth_file = parity_fixtures("stcn")
        manifest, synth_b, synth_file = parity_fixtures(
            "simvos", variant="simvos-b", layout="checkpoint_layout", state="synth_b")
        synth_l = parity_fixtures(
            "simvos", variant="simvos-l", layout="checkpoint_layout", state="synth_l", file="synth_l_file").state

        def test_layout(manifest, synth_state): ...

    Only the fixtures a test requests are built, and ``file`` saves the same state_dict that ``state``
    returns (it is built once per module however many of the two are requested). The state_dict is
    shared by the tests of the module: copy it (``dict(synth_state)``) before changing entries.
    """
    spec_dir = SPEC / model
    built: dict[str, dict[str, torch.Tensor]] = {}  # test module -> its state_dict, while the module runs

    def load_manifest(synthweights) -> dict:
        return synthweights.load_manifest(require(spec_dir / "manifest.json"))

    def built_state(request: pytest.FixtureRequest, synthweights) -> dict[str, torch.Tensor]:
        module = request.module.__name__
        if module not in built:
            section = load_manifest(synthweights)
            if variant is not None:
                section = section["variants"][variant]
            built[module] = synthweights.synth_state_dict(section[layout], seed=seed)
            request.addfinalizer(lambda: built.pop(module, None))  # free it when the module is done
        return built[module]

    def manifest_fixture(synthweights) -> dict:
        return load_manifest(synthweights)

    def state_fixture(request: pytest.FixtureRequest, synthweights) -> dict[str, torch.Tensor]:
        return built_state(request, synthweights)

    def file_fixture(request: pytest.FixtureRequest, synthweights, tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp(model) / f"{variant or model}_synthetic.pth"
        torch.save(built_state(request, synthweights), path)
        return path

    return ParityFixtures(
        pytest.fixture(scope="module", name=manifest)(manifest_fixture),
        pytest.fixture(scope="module", name=state)(state_fixture),
        pytest.fixture(scope="module", name=file)(file_fixture),
    )
