"""The models: one package per model (``stcn/``, ``simvos/``, ...), each a torch-free spec in its
``__init__`` with the network and engine adapter beside it; ``registry`` is the table of them.

    >>> from vostool.models import get_spec
    >>> get_spec("stcn").default_checkpoint.name
    'stcn-s012'
"""

__all__ = ["DEFAULT_MODEL", "MODELS", "CheckpointSpec", "ModelSpec", "get_spec"]


def __getattr__(name: str):
    # Lazy, so that importing one network module does not first load every spec and plugin.
    if name in ("DEFAULT_MODEL", "MODELS", "get_spec"):
        from vostool.models import registry

        return getattr(registry, name)
    if name in ("CheckpointSpec", "ModelSpec"):
        from vostool.models import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'vostool.models' has no attribute {name!r}")
