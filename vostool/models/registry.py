"""The models vostool can run, by name: the one table from names to :class:`~vostool.models.spec.ModelSpec`.

A model is listed here only once it is finished (network, checkpoint loading and parity tests). Adding
one means adding its package under ``vostool/models/`` (its ``__init__`` defines ``SPEC``, or ``SPECS``
for several variants) and its name to ``_BUILT_IN``; a model published as a separate distribution
registers itself instead through an entry point in the ``vostool.models`` group, resolving to a
``ModelSpec`` or an iterable of them::

    [project.entry-points."vostool.models"]
    mymodel = "mymodel:SPEC"

IO, engine, CLI and the weights cache do not change. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from vostool.errors import UnknownModelError
from vostool.models.spec import Layout, ModelSpec

ENTRY_POINT_GROUP = "vostool.models"
DEFAULT_MODEL = "lite0-stcn"

# The built-in model packages (vostool/models/<name>/), in the order `--help` and `weights list` show them.
_BUILT_IN = ("propagate_lite0", "lite0_stcn", "stcn", "sitvos", "simvos", "jointformer")


def _package_specs(package: str) -> tuple[ModelSpec, ...]:
    module = importlib.import_module(f"vostool.models.{package}")
    return tuple(getattr(module, "SPECS", None) or (module.SPEC,))


def _plugin_specs(entry_point: EntryPoint) -> list[ModelSpec]:
    """The specs an entry point resolves to; a broken plugin is skipped with a warning, never fatal."""
    try:
        loaded = entry_point.load()
    except Exception as exc:  # noqa: BLE001 - a third-party import may fail in any way
        warnings.warn(f"vostool model plugin {entry_point.value!r} cannot be loaded: {exc}", stacklevel=3)
        return []
    specs = [loaded] if isinstance(loaded, ModelSpec) else list(loaded) if isinstance(loaded, Iterable) else []
    if not specs or not all(isinstance(spec, ModelSpec) for spec in specs):
        warnings.warn(f"vostool model plugin {entry_point.value!r} is not a ModelSpec or specs", stacklevel=3)
        return []
    return specs


def _table() -> dict[str, ModelSpec]:
    table = {spec.name: spec for package in _BUILT_IN for spec in _package_specs(package)}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        for spec in _plugin_specs(entry_point):
            if spec.name in table:
                warnings.warn(f"vostool model plugin {entry_point.value!r}: the name {spec.name!r} is "
                              "taken, the plugin's model is ignored", stacklevel=2)
                continue
            table[spec.name] = spec
    return table


MODELS: dict[str, ModelSpec] = _table()


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; :class:`UnknownModelError` lists the available names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model '{name}' (available: {', '.join(MODELS)})") from None


def layout_of(model: str) -> Layout:
    """The checkpoint layout ``model`` loads (the default layout provider of :mod:`vostool.weights`)."""
    return get_spec(model).layout()
